"""Billing scans in real processes against PostgreSQL: contention, a killed worker, a stopped
holder, and gapless numbers."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.db.models import Count, Q, Sum
from django.utils import timezone

from billing import services
from billing.models import BillingRun, BillingWindow, Invoice
from tests import factories, processes
from tests.billing.helpers import add_events

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

JAN = datetime(2026, 1, 1, tzinfo=UTC)
AS_OF = datetime(2026, 3, 1, 2, tzinfo=UTC)  # January and February are closed and past grace


def _subscriptions(catalog: dict[str, Any], count: int, prefix: str) -> None:
    for n in range(count):
        customer = factories.CustomerFactory(external_id=f"{prefix}-{n}")
        factories.SubscriptionFactory(customer=customer, plan=catalog["plan"], started_at=JAN)
        add_events(
            customer=customer,
            metric=catalog["metrics"]["api_calls"],
            timestamps=[JAN + timedelta(days=d, hours=n) for d in range(0, 50, 3)],
        )


def _wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _assert_one_live_invoice_per_window() -> None:
    windows = BillingWindow.objects.filter(period_end__lte=AS_OF).annotate(
        live=Count("invoices", filter=~Q(invoices__status="void"))
    )
    assert windows.exists()
    assert sorted({w.live for w in windows}) == [1]


def _assert_gapless_numbers() -> None:
    numbers = sorted(
        int(n.rsplit("-", 1)[1]) for n in Invoice.objects.values_list("number", flat=True)
    )
    assert numbers == list(range(1, len(numbers) + 1))


def _scan(as_of: str) -> tuple[str, int, int]:
    run = services.billing_scan(trigger="beat", as_of=datetime.fromisoformat(as_of), batch_size=2)
    return run.status, run.invoiced, run.already_invoiced


def test_eight_concurrent_scans_repeated_twenty_times_bill_each_window_exactly_once(
    catalog: dict[str, Any],
) -> None:
    catalog["subscription"].delete()
    for round_ in range(20):
        _subscriptions(catalog, 2, f"r{round_}")  # four new closed windows each round
        results = processes.run_all(_scan, [(AS_OF.isoformat(),)] * 8)
        invoiced = sum(r[1] for r in results)
        assert invoiced == 4, results
        assert {r[0] for r in results} <= {"succeeded", "lock_held"}
        # Losers either found the lock held or, holding it later, nothing left to bill.
        assert all(r[0] == "lock_held" or r[1] + r[2] in (0, 4) for r in results)
        _assert_one_live_invoice_per_window()
    assert BillingRun.objects.count() == 160
    assert Invoice.objects.count() == 80
    _assert_gapless_numbers()


def _scan_then_hang(as_of: str, ready: str, after: int) -> None:
    def progress(run: BillingRun) -> None:
        if run.invoiced >= after:
            Path(ready).write_text(str(run.pk))
            signal.pause()  # wait here to be killed

    services.billing_scan(
        trigger="beat", as_of=datetime.fromisoformat(as_of), batch_size=1, on_progress=progress
    )


def test_a_scan_killed_mid_run_is_finished_by_the_next_scan_after_the_lease_expires(
    catalog: dict[str, Any], tmp_path: Path
) -> None:
    _subscriptions(catalog, 8, "kill")
    clean = services.billing_scan(trigger="command", as_of=AS_OF, dry_run=True)
    assert clean.invoiced == 18
    ready = tmp_path / "ready"
    proc, _ = processes.start(_scan_then_hang, AS_OF.isoformat(), str(ready), 5)
    _wait_for(ready)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert Invoice.objects.count() == 5

    held = services.billing_scan(trigger="beat", as_of=AS_OF)
    assert held.status == "lock_held", "the dead worker's lease is still live"
    with time_machine.travel(timezone.now() + timedelta(minutes=5), tick=True):
        recovery = services.billing_scan(trigger="beat", as_of=AS_OF)
    assert (recovery.status, recovery.invoiced) == ("succeeded", 13)
    assert BillingRun.objects.get(pk=int(ready.read_text())).status == "abandoned"
    _assert_one_live_invoice_per_window()
    assert Invoice.objects.count() == 18
    assert Invoice.objects.aggregate(total=Sum("total"))["total"] == clean.invoiced_amount
    _assert_gapless_numbers()


def _scan_then_stall(as_of: str, ready: str, go: str) -> tuple[str, list[Any], int]:
    def progress(run: BillingRun) -> None:
        if run.invoiced == 1 and not Path(ready).exists():
            Path(ready).write_text("1")
            while not Path(go).exists():  # the parent SIGSTOPs us somewhere in here
                time.sleep(0.01)

    run = services.billing_scan(
        trigger="beat", as_of=datetime.fromisoformat(as_of), batch_size=1, on_progress=progress
    )
    return run.status, run.errors, run.invoiced


def test_a_holder_stopped_past_its_lease_has_its_writes_refused_by_the_fence(
    catalog: dict[str, Any], tmp_path: Path
) -> None:
    _subscriptions(catalog, 4, "stop")
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc, queue = processes.start(_scan_then_stall, AS_OF.isoformat(), str(ready), str(go))
    _wait_for(ready)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        with time_machine.travel(timezone.now() + timedelta(minutes=5), tick=True):
            taker = services.billing_scan(trigger="beat", as_of=AS_OF)
        assert (taker.status, taker.invoiced) == ("succeeded", 9)
    finally:
        go.write_text("go")
        os.kill(proc.pid, signal.SIGCONT)
    status, value = queue.get(timeout=60)
    proc.join(timeout=30)
    assert status == "ok", value
    stalled_status, errors, stalled_invoiced = value
    assert stalled_status == "failed" and stalled_invoiced == 1
    assert "lock lost" in errors[-1]["error"]
    _assert_one_live_invoice_per_window()
    assert Invoice.objects.filter(run=taker).count() == 9
    assert Invoice.objects.count() == 10
    _assert_gapless_numbers()


def _bill_windows(window_ids: list[int]) -> list[str]:
    numbers = []
    for window in BillingWindow.objects.filter(pk__in=window_ids).select_related(
        "subscription__plan", "subscription__customer"
    ):
        invoice = services.window_bill(window=window)
        assert invoice is not None
        numbers.append(invoice.number)
    return numbers


def test_invoice_numbers_stay_gapless_when_processes_bill_concurrently(
    catalog: dict[str, Any],
) -> None:
    _subscriptions(catalog, 11, "num")
    services.windows_generate(through=AS_OF)
    ids = list(BillingWindow.objects.values_list("id", flat=True))
    assert len(ids) == 24
    results = processes.run_all(_bill_windows, [(ids[i::4],) for i in range(4)])
    assert sum(len(r) for r in results) == 24
    _assert_gapless_numbers()
