"""Beat names tasks by string (the kernel imports no app), so a typo would only show at run
time, as a task nobody ever runs."""

from __future__ import annotations

from django.conf import settings

from neruba.celery import _beat_schedule, app


def test_every_beat_entry_names_a_registered_task() -> None:
    app.loader.import_default_modules()
    schedule = _beat_schedule()
    assert schedule
    unknown = {
        name: entry["task"] for name, entry in schedule.items() if entry["task"] not in app.tasks
    }
    assert unknown == {}


def test_beat_records_the_heartbeat_readiness_needs_well_within_its_max_age() -> None:
    entry = _beat_schedule()["scheduler-heartbeat"]
    assert entry["task"] == "operations.heartbeat"
    assert float(entry["schedule"]) * 2 < settings.NERUBA["NERUBA_HEARTBEAT_MAX_AGE"]


def test_billing_work_is_acked_late_one_task_at_a_time() -> None:
    assert settings.CELERY_TASK_ACKS_LATE is True
    assert settings.CELERY_TASK_REJECT_ON_WORKER_LOST is True
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
