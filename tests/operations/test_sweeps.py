"""The sweep orchestrator, ``manage.py sweep``, each sweep's repair, beat and the console."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from billing import services
from billing.models import BillingRun, BillingWindow, Invoice, Price, ProviderSync
from ingest.models import IngestBatch, IngestRejection
from neruba import locks
from neruba.celery import _beat_schedule
from neruba.models import SchedulerLock
from operations.models import SweepRun
from operations.sweeps import SWEEPS, lock_name, sweep_run
from tests.billing.helpers import add_events
from tests.webhooks.helpers import invoice_event, make_invoice
from webhooks.models import StripeEvent

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 2, 3, 12, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _february() -> Iterator[None]:
    with time_machine.travel(NOW, tick=True):
        yield


@pytest.fixture
def invoiced(catalog: dict[str, Any]) -> Invoice:
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[datetime(2026, 1, 3, tzinfo=UTC)] * 10,
    )
    services.billing_scan(trigger="command")
    return Invoice.objects.get()


def test_sweep_runs_every_sweep_and_prints_one_summary_line_each(invoiced: Invoice) -> None:
    out = StringIO()
    call_command("sweep", stdout=out)
    text = out.getvalue()
    for name in SWEEPS:
        assert f"sweep {name}:" in text, name
        assert f"{name}: succeeded" in text, name
    assert text.strip().splitlines()[-1] == "7 sweep(s): 7 ok, 0 failed, 0 new finding(s)"
    runs = SweepRun.objects.all()
    assert sorted(r.sweep for r in runs) == sorted(SWEEPS)
    assert {(r.trigger, r.status) for r in runs} == {("command", "succeeded")}
    assert all(r.finished_at and "seconds" in r.counts for r in runs)
    assert not SchedulerLock.objects.exclude(holder="").filter(name__startswith="sweep:").exists()


def test_only_and_dry_run_select_sweeps_and_write_nothing_but_their_run(invoiced: Invoice) -> None:
    old = timezone.now() - timedelta(days=200)
    IngestBatch.objects.create(size=1, received_at=old)
    out = StringIO()
    call_command("sweep", "--only", "retention", "--only", "outbox", "--dry-run", stdout=out)
    assert "retention: succeeded (dry run)" in out.getvalue() and "batches=1" in out.getvalue()
    assert IngestBatch.objects.count() == 1
    assert set(SweepRun.objects.values_list("sweep", "dry_run")) == {
        ("retention", True),
        ("outbox", True),
    }
    assert not SchedulerLock.objects.filter(name__startswith="sweep:").exists()
    with pytest.raises(CommandError):
        call_command("sweep", "--only", "nope", stdout=StringIO(), stderr=StringIO())


def test_a_sweep_whose_lock_is_held_records_lock_held_and_does_nothing() -> None:
    IngestBatch.objects.create(size=1, received_at=timezone.now() - timedelta(days=200))
    other = locks.lock_acquire(name=lock_name("retention"), holder="other-worker")
    assert other is not None

    run = sweep_run(name="retention", trigger="beat")

    assert (run.status, run.finished_at is not None, run.counts) == ("lock_held", True, {})
    assert IngestBatch.objects.count() == 1
    locks.lock_release(lease=other)
    assert sweep_run(name="retention", trigger="beat").counts["batches"] == 1


def test_a_failing_sweep_fails_the_command_but_not_the_other_sweeps(
    invoiced: Invoice, catalog: dict[str, Any]
) -> None:
    Price.objects.filter(metric__code="api_calls").update(model="graduated", tiers="oops")
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[datetime(2026, 1, 4, tzinfo=UTC)],
    )
    out = StringIO()
    with pytest.raises(CommandError, match="usage_drift"):
        call_command("sweep", stdout=out)
    assert "usage_drift: failed" in out.getvalue()
    assert "retention: succeeded" in out.getvalue()
    failed = SweepRun.objects.get(sweep="usage_drift")
    assert failed.status == "failed" and failed.error
    assert not SchedulerLock.objects.exclude(holder="").filter(name__startswith="sweep:").exists()


def test_stuck_runs_whose_lease_expired_are_abandoned_and_their_windows_released(
    invoiced: Invoice,
) -> None:
    dead = locks.lock_acquire(name=services.BILLING_LOCK, holder="killed-worker")
    assert dead is not None
    stuck = BillingRun.objects.create(
        trigger="beat", holder="killed-worker", token=dead.token, as_of=timezone.now()
    )
    window = BillingWindow.objects.create(
        subscription=invoiced.subscription,
        period_start=datetime(2026, 2, 1, tzinfo=UTC),
        period_end=datetime(2026, 3, 1, tzinfo=UTC),
        status=BillingWindow.Status.BILLING,
        claimed_by_run=stuck,
    )
    live = sweep_run(name="stuck_runs", trigger="command")
    assert live.counts["runs_abandoned"] == 0, "the lease is still live"
    with time_machine.travel(timezone.now() + timedelta(minutes=5), tick=True):
        run = sweep_run(name="stuck_runs", trigger="command")
    assert (run.counts["runs_abandoned"], run.counts["windows_released"]) == (1, 1)
    stuck.refresh_from_db()
    window.refresh_from_db()
    assert stuck.status == "abandoned" and stuck.finished_at is not None
    assert (window.status, window.claimed_by_run) == ("pending", None)
    again = sweep_run(name="stuck_runs", trigger="command")
    assert again.counts["runs_abandoned"] == 0, "safe to repeat"


def test_overdue_outbox_rows_are_sent_and_fresh_ones_left_to_their_task(invoiced: Invoice) -> None:
    sync = ProviderSync.objects.get(invoice=invoiced)
    ProviderSync.objects.filter(pk=sync.pk).update(
        status="pending", sent_at=None, next_attempt_at=timezone.now() - timedelta(minutes=1)
    )
    assert sweep_run(name="outbox", trigger="command").counts["due"] == 0
    ProviderSync.objects.filter(pk=sync.pk).update(
        status="failed", attempts=8, next_attempt_at=timezone.now() - timedelta(hours=1)
    )
    run = sweep_run(name="outbox", trigger="command")
    assert (run.counts["due"], run.counts["sent"]) == (1, 1)
    sync.refresh_from_db()
    assert sync.status == "sent"


def test_retention_prunes_batches_and_rejections_past_retention_only() -> None:
    old = timezone.now() - timedelta(days=91)
    IngestBatch.objects.create(size=1, received_at=old)
    IngestBatch.objects.create(size=1)
    IngestRejection.objects.create(
        outcome="failed", error_code="x", error_message="x", raw_payload={}, created_at=old
    )
    ancient = SweepRun.objects.create(sweep="outbox", trigger="beat", started_at=old)
    run = sweep_run(name="retention", trigger="command")
    assert (run.counts["batches"], run.counts["rejections"], run.counts["sweep_runs"]) == (1, 1, 1)
    assert not SweepRun.objects.filter(pk=ancient.pk).exists()
    assert IngestBatch.objects.count() == 1 and not IngestRejection.objects.exists()


def test_due_webhook_events_are_retried_and_those_past_the_limit_become_dead(
    settings: Any,
) -> None:
    settings.NERUBA = {**settings.NERUBA, "STRIPE_WEBHOOK_MAX_ATTEMPTS": 3}
    invoice = make_invoice(provider_invoice_id="in_sweep")
    event = StripeEvent.objects.create(
        stripe_id="evt_sweep_1",
        type="invoice.paid",
        created=timezone.now(),
        raw_body=b"{}",
        payload=_payload(invoice, "evt_sweep_1"),
        status="failed",
        attempts=1,
        next_attempt_at=timezone.now() - timedelta(minutes=1),
    )
    hopeless = StripeEvent.objects.create(
        stripe_id="evt_sweep_2",
        type="invoice.paid",
        created=timezone.now(),
        raw_body=b"{}",
        payload=_payload(invoice, "evt_sweep_2", customer="cus_someone_else"),  # mismatch: fails
        status="failed",
        attempts=2,
        next_attempt_at=timezone.now() - timedelta(minutes=1),
    )
    dry = sweep_run(name="webhook_retries", trigger="command", dry_run=True)
    assert (dry.counts["due"], dry.counts["dead_if_failing"]) == (2, 1)

    run = sweep_run(name="webhook_retries", trigger="command")

    event.refresh_from_db()
    hopeless.refresh_from_db()
    invoice.refresh_from_db()
    assert (event.status, invoice.status) == ("processed", "paid")
    assert hopeless.status == "dead" and hopeless.attempts == 3
    assert (run.counts["processed"], run.counts["dead"]) == (1, 1)
    again = sweep_run(name="webhook_retries", trigger="command")
    assert again.counts["processed"] == again.counts["failed"] == 0


def _payload(invoice: Invoice, stripe_id: str, customer: str = "") -> dict[str, Any]:
    body, _ = invoice_event(invoice, type="invoice.paid", id=stripe_id)
    payload = json.loads(body)
    if customer:
        payload["data"]["object"]["customer"] = customer
    return payload


def test_the_drift_sweep_is_incremental_between_full_passes(invoiced: Invoice) -> None:
    first = sweep_run(name="usage_drift", trigger="beat")
    assert first.counts["full"] == 1 and first.counts["windows"] == 1
    second = sweep_run(name="usage_drift", trigger="beat")
    assert second.counts["full"] == 0 and second.counts["windows"] == 0
    forced = sweep_run(name="usage_drift", trigger="command", full=True)
    assert forced.counts["full"] == 1
    with time_machine.travel(timezone.now() + timedelta(days=1, minutes=1), tick=True):
        daily = sweep_run(name="usage_drift", trigger="beat")
    assert daily.counts["full"] == 1, "NERUBA_DRIFT_FULL_INTERVAL elapsed"


def test_beat_runs_every_sweep_on_its_configured_interval(settings: Any) -> None:
    settings.NERUBA = {
        **settings.NERUBA,
        "NERUBA_SWEEP_INTERVAL": 600,
        "NERUBA_SWEEP_RECONCILIATION_INTERVAL": 7200,
        "NERUBA_SWEEP_RETENTION_INTERVAL": 86400,
    }
    schedule = _beat_schedule()
    sweeps = {
        entry["args"][0]: entry["schedule"]
        for entry in schedule.values()
        if entry["task"] == "operations.sweep"
    }
    assert set(sweeps) == set(SWEEPS)
    assert sweeps["usage_drift"] == 600.0 and sweeps["reconciliation"] == 7200.0
    assert sweeps["retention"] == 86400.0


def test_the_sweep_tasks_run_the_orchestrator() -> None:
    from operations import tasks

    assert tasks.sweep.delay("retention").get() == "succeeded"
    assert tasks.sweep_all.delay().get() == dict.fromkeys(SWEEPS, "succeeded")
    assert SweepRun.objects.filter(trigger="beat").count() == 1 + len(SWEEPS)


def test_the_console_home_shows_the_last_run_of_each_sweep(
    invoiced: Invoice, console_user: Any
) -> None:
    sweep_run(name="retention", trigger="beat")
    sweep_run(name="usage_drift", trigger="command")
    Price.objects.filter(metric__code="api_calls").update(unit_amount=Decimal("0.5"))
    client = Client()
    client.force_login(console_user("Operations"))
    html = client.get("/admin/").content.decode()
    assert 'id="panel-sweeps"' in html and "Last sweeps" in html
    assert "retention" in html and "usage_drift" in html
    support = Client()
    support.force_login(console_user("Support"))
    assert 'id="panel-sweeps"' in support.get("/admin/").content.decode()


def test_a_sweep_that_lost_its_lease_writes_nothing(
    invoiced: Invoice, catalog: dict[str, Any]
) -> None:
    from billing.drift import usage_drift_sweep
    from billing.models import DriftFinding

    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[datetime(2026, 1, 4, tzinfo=UTC)],
    )
    lease = locks.lock_acquire(name=lock_name("usage_drift"), holder="paused-sweeper")
    assert lease is not None
    with time_machine.travel(timezone.now() + timedelta(minutes=5), tick=True):
        taker = locks.lock_acquire(name=lock_name("usage_drift"), holder="next-sweeper")
        assert taker is not None and taker.token == lease.token + 1
        with pytest.raises(locks.LockLost):
            usage_drift_sweep(lease=lease, since=None)
    assert not DriftFinding.objects.exists()
    assert usage_drift_sweep(lease=taker, since=None)["findings"] == 1


def test_new_findings_are_counted_in_the_sweep_findings_metric(
    invoiced: Invoice, catalog: dict[str, Any]
) -> None:
    from prometheus_client import REGISTRY

    def findings() -> float:
        value = REGISTRY.get_sample_value("neruba_sweep_findings_total", {"sweep": "usage_drift"})
        return value or 0.0

    before = findings()
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[datetime(2026, 1, 4, tzinfo=UTC)],
    )
    assert sweep_run(name="usage_drift", trigger="beat").findings == 1
    assert sweep_run(name="usage_drift", trigger="beat", full=True).findings == 0
    assert findings() - before == 1


def test_a_sweep_run_left_running_by_a_dead_process_is_closed_by_the_next_run() -> None:
    dead = SweepRun.objects.create(sweep="outbox", trigger="beat")
    other = SweepRun.objects.create(sweep="retention", trigger="beat")
    run = sweep_run(name="outbox", trigger="beat")
    dead.refresh_from_db()
    other.refresh_from_db()
    assert run.status == "succeeded"
    assert dead.status == "failed" and "abandoned" in dead.error and dead.finished_at
    assert other.status == "running", "another sweep's run is not ours to close"
