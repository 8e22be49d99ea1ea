"""Sweeps against faults in real processes on PostgreSQL: concurrent sweeps, a billing worker
killed mid-run, a Celery worker killed mid-processing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from billing import services
from billing.models import BillingRun, Invoice
from neruba.models import AuditEntry
from operations.models import SweepRun
from operations.sweeps import sweep_run
from tests import processes
from tests.billing.helpers import add_events

# The billing process tests' helpers: the same subscriptions and the same hanging scan.
from tests.billing.test_runs_processes import _scan_then_hang, _subscriptions, _wait_for
from tests.webhooks.helpers import invoice_event, make_invoice
from webhooks import tasks as webhook_tasks
from webhooks.models import EventAttempt, StripeEvent

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

JAN = datetime(2026, 1, 1, tzinfo=UTC)
AS_OF = datetime(2026, 3, 1, 2, tzinfo=UTC)


def _sweep_paused(name: str, ready: str, go: str) -> str:
    def pause(run: SweepRun) -> None:
        Path(ready).write_text(str(run.pk))
        while not Path(go).exists():
            time.sleep(0.01)

    return sweep_run(name=name, trigger="beat", on_running=pause).status


def _sweep(name: str) -> str:
    return sweep_run(name=name, trigger="beat").status


def test_two_sweeps_started_at_once_run_once_and_the_second_records_lock_held(
    tmp_path: Path,
) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    first, queue = processes.start(_sweep_paused, "stuck_runs", str(ready), str(go))
    _wait_for(ready)
    try:
        [second] = processes.run_all(_sweep, [("stuck_runs",)])
    finally:
        go.write_text("go")
    status, value = queue.get(timeout=60)
    first.join(timeout=30)
    assert (status, value, second) == ("ok", "succeeded", "lock_held")
    runs = SweepRun.objects.order_by("started_at")
    assert [r.status for r in runs] == ["succeeded", "lock_held"]
    # Eight more at once: each either ran or found the lock held; never an error.
    results = processes.run_all(_sweep, [("stuck_runs",)] * 8)
    assert set(results) <= {"succeeded", "lock_held"} and "succeeded" in results


def test_a_billing_worker_killed_mid_run_is_abandoned_by_one_sweep_and_billed_by_the_next_scan(
    catalog: dict[str, Any], tmp_path: Path
) -> None:
    _subscriptions(catalog, 6, "kill")
    clean = services.billing_scan(trigger="command", as_of=AS_OF, dry_run=True)
    ready = tmp_path / "ready"
    proc, _ = processes.start(_scan_then_hang, AS_OF.isoformat(), str(ready), 4)
    _wait_for(ready)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    killed = BillingRun.objects.get(pk=int(ready.read_text()))
    assert killed.status == "running" and Invoice.objects.count() == 4

    with time_machine.travel(timezone.now() + timedelta(minutes=5), tick=True):
        sweep = sweep_run(name="stuck_runs", trigger="command")
        killed.refresh_from_db()
        assert (sweep.status, sweep.counts["runs_abandoned"]) == ("succeeded", 1)
        assert killed.status == "abandoned" and killed.finished_at is not None
        assert sweep_run(name="stuck_runs", trigger="command").counts["runs_abandoned"] == 0
        scan = services.billing_scan(trigger="beat", as_of=AS_OF)

    assert (scan.status, scan.invoiced) == ("succeeded", clean.invoiced - 4)
    assert Invoice.objects.count() == clean.invoiced
    assert Invoice.objects.aggregate(total=Sum("total"))["total"] == clean.invoiced_amount


@pytest.mark.redis
def test_a_celery_worker_killed_mid_processing_leaves_the_event_to_be_retried_exactly_once(
    tmp_path: Path,
) -> None:
    invoice = make_invoice(provider_invoice_id="in_killed_worker")
    body, _ = invoice_event(invoice, type="invoice.paid", id="evt_killed_worker")
    payload = json.loads(body)
    # Stored as event_receive stores it; the task is sent to the real worker below.
    event = StripeEvent.objects.create(
        stripe_id=payload["id"],
        type=payload["type"],
        created=datetime.fromtimestamp(payload["created"], tz=UTC),
        raw_body=body,
        payload=payload,
        object_id="in_killed_worker",
        next_attempt_at=timezone.now() + timedelta(minutes=5),
    )
    marker = tmp_path / "handler-started"
    queue = f"sweeps-test-{uuid.uuid4().hex[:8]}"
    worker = _start_worker(queue=queue, marker=marker)
    try:
        from neruba.celery import app

        with warnings.catch_warnings():  # send_task always goes to the broker: that is the point
            warnings.simplefilter("ignore")
            app.send_task("webhooks.process_event", args=[event.pk], queue=queue)
        _wait_for(marker, seconds=90)
        event.refresh_from_db()
        assert (event.status, event.attempts) == ("processing", 1)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
        _purge(queue)

    not_yet = sweep_run(name="webhook_retries", trigger="command")
    assert not_yet.counts["processed"] == 0, "the dead worker's claim is still within its lease"
    with time_machine.travel(timezone.now() + timedelta(minutes=16), tick=True):
        run = sweep_run(name="webhook_retries", trigger="command")
        again = sweep_run(name="webhook_retries", trigger="command")

    event.refresh_from_db()
    invoice.refresh_from_db()
    assert (run.counts["processed"], again.counts["processed"]) == (1, 0)
    assert (event.status, event.attempts, invoice.status) == ("processed", 2, "paid")
    attempts = list(EventAttempt.objects.filter(event=event).order_by("started_at"))
    assert [(a.trigger, a.outcome) for a in attempts] == [("http", ""), ("retry", "processed")]
    assert AuditEntry.objects.filter(action="invoice.payment_status").count() == 1
    # The broker would redeliver the unacknowledged task later: it finds nothing to claim.
    assert webhook_tasks.process_event(event.pk) == "not claimed"
    assert AuditEntry.objects.filter(action="invoice.payment_status").count() == 1


def _start_worker(*, queue: str, marker: Path) -> subprocess.Popen[bytes]:
    db = connection.settings_dict
    env = {
        **os.environ,
        "NERUBA_ENV": "test",
        "NERUBA_CELERY_REAL": "1",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "NERUBA_TEST_SLOW_HANDLER": str(marker),
        "PYTHONPATH": str(settings.BASE_DIR),
    }
    celery = Path(sys.executable).with_name("celery")
    return subprocess.Popen(
        [
            str(celery),
            "-A",
            "tests.operations.slow_worker",
            "worker",
            "--pool",
            "solo",
            "--queues",
            queue,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ],
        cwd=settings.BASE_DIR,
        env=env,
    )


def _purge(queue: str) -> None:
    from neruba.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def test_every_sweep_runs_in_autocommit_as_the_command_runs_it(catalog: dict[str, Any]) -> None:
    from io import StringIO

    from django.core.management import call_command

    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[JAN + timedelta(days=2)] * 3,
    )
    with time_machine.travel(datetime(2026, 2, 3, tzinfo=UTC), tick=True):
        services.billing_scan(trigger="command")
        add_events(
            customer=catalog["customer"],
            metric=catalog["metrics"]["api_calls"],
            timestamps=[JAN + timedelta(days=3)],
        )
        dry, real = StringIO(), StringIO()
        call_command("sweep", "--dry-run", stdout=dry)
        call_command("sweep", stdout=real)
    assert "7 ok, 0 failed, 1 new finding(s) (dry run)" in dry.getvalue()
    assert "7 ok, 0 failed, 1 new finding(s)" in real.getvalue()
