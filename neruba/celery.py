"""The Celery app. Beat names tasks by string so the kernel imports no app."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "neruba.settings")

app = Celery("neruba")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _beat_schedule() -> dict[str, dict[str, object]]:
    """Every periodic task, named by string. Intervals come from the configuration list."""
    from django.conf import settings

    return {
        "scheduler-heartbeat": {"task": "operations.heartbeat", "schedule": 30.0},
        "billing-scan": {
            "task": "billing.scan",
            "schedule": float(settings.NERUBA["NERUBA_BILLING_SCAN_INTERVAL"]),
        },
        # Failed Stripe events whose backoff elapsed, and claims whose worker died.
        "webhooks-retry-due": {"task": "webhooks.retry_due", "schedule": 60.0},
    }


@app.on_after_configure.connect
def _setup_beat(sender: Celery, **kwargs: object) -> None:
    sender.conf.beat_schedule = _beat_schedule()
