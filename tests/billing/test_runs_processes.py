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
from django.db.models import Count, Q, Sum

from billing import services
from billing.models import BillingRun, BillingWindow, Invoice, InvoiceLine
from billing.services import invoicing
from tests import factories, processes
from tests.billing.helpers import add_events
from tests.factories import leases_expire

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
    leases_expire(services.BILLING_LOCK)  # its TTL runs out
    recovery = services.billing_scan(trigger="beat", as_of=AS_OF)
    assert (recovery.status, recovery.invoiced) == ("succeeded", 13)
    assert BillingRun.objects.get(pk=int(ready.read_text())).status == "abandoned"
    _assert_one_live_invoice_per_window()
    assert Invoice.objects.count() == 18
    assert Invoice.objects.aggregate(total=Sum("total"))["total"] == clean.invoiced_amount
    _assert_gapless_numbers()


SHORT_TTL = timedelta(seconds=3)
# Takeover bound: the TTL, the acquire's bounded wait, and the retry cadence below.
TAKEOVER_WITHIN = SHORT_TTL.total_seconds() + 5


def _stall(ready: str, go: str) -> None:
    Path(ready).write_text("1")
    while not Path(go).exists():  # the parent SIGSTOPs us somewhere in here
        time.sleep(0.01)


def _scan_then_stall(as_of: str, ready: str, go: str, where: str) -> tuple[str, list[Any], int]:
    """A scan (batches of two windows) that stalls in its second batch: between transactions,
    idle inside the fenced transaction after its invoices are written, or mid-COPY of its
    invoice lines. Runs in a child process, so the patches below are its own."""
    batches = {"n": 0}

    def progress(run: BillingRun) -> None:
        if where == "between" and run.invoiced == 2 and not Path(ready).exists():
            _stall(ready, go)

    # The writer looks ``_rows_insert`` up in its own module, so that is where it is patched.
    original = invoicing._rows_insert
    armed = {"copy": False}

    def rows_insert(*, model: Any, columns: list[str], rows: list[tuple]) -> list[int]:
        if model is Invoice:
            batches["n"] += 1
            armed["copy"] = where == "copy" and batches["n"] == 2
        ids = original(model=model, columns=columns, rows=rows)
        if where == "idle" and model is InvoiceLine and batches["n"] == 2:
            _stall(ready, go)  # idle in the fenced transaction, its invoices written
        return ids

    invoicing._rows_insert = rows_insert  # type: ignore[assignment]
    if where == "copy":
        import psycopg

        original_write = psycopg.Copy.write_row

        def write_row(self: Any, row: Any) -> None:
            original_write(self, row)
            if armed["copy"]:
                armed["copy"] = False
                _stall(ready, go)  # inside COPY of the second batch's invoices

        psycopg.Copy.write_row = write_row  # type: ignore[method-assign]
    run = services.billing_scan(
        trigger="beat", as_of=datetime.fromisoformat(as_of), batch_size=2, on_progress=progress
    )
    return run.status, run.errors, run.invoiced


def _take_over() -> tuple[BillingRun, float]:
    """Scans until one is not ``lock_held``; returns it and how long that took."""
    started = time.monotonic()
    while True:
        run = services.billing_scan(trigger="beat", as_of=AS_OF, batch_size=2)
        elapsed = time.monotonic() - started
        if run.status != "lock_held" or elapsed > TAKEOVER_WITHIN * 3:
            return run, elapsed
        time.sleep(0.2)


@pytest.mark.parametrize("where", ["between", "idle", "copy"])
def test_a_holder_stopped_anywhere_is_taken_over_within_its_ttl_and_its_writes_are_refused(
    catalog: dict[str, Any], tmp_path: Path, settings: Any, where: str
) -> None:
    """Stopped between transactions, idle in its fenced transaction (holding the invoice
    counter's row lock), or mid-COPY (where PostgreSQL defers the statement timeout): the next
    scan takes over within the TTL plus a few seconds and bills everything, the resumed holder
    writes nothing, and the totals equal an uninterrupted run's."""
    settings.NERUBA_LOCK_TTL = SHORT_TTL  # the child inherits it
    catalog["subscription"].delete()
    _subscriptions(catalog, 4, "stop")
    clean = services.billing_scan(trigger="command", as_of=AS_OF, dry_run=True)
    assert clean.invoiced == 8
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc, queue = processes.start(_scan_then_stall, AS_OF.isoformat(), str(ready), str(go), where)
    _wait_for(ready)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        committed = Invoice.objects.count()
        assert committed == 2, "the first batch committed before the stall"
        taker, elapsed = _take_over()
        assert (taker.status, taker.invoiced) == ("succeeded", 6), taker.errors
        assert elapsed <= TAKEOVER_WITHIN, f"took over after {elapsed:.1f}s"
    finally:
        go.write_text("go")
        os.kill(proc.pid, signal.SIGCONT)
    status, value = queue.get(timeout=60)
    proc.join(timeout=30)
    assert status == "ok", value
    stalled_status, errors, stalled_invoiced = value
    assert (stalled_status, stalled_invoiced) == ("failed", 2)
    assert "lock lost" in errors[-1]["error"]
    _assert_one_live_invoice_per_window()
    assert Invoice.objects.filter(run=taker).count() == 6
    assert Invoice.objects.count() == 8
    assert Invoice.objects.aggregate(total=Sum("total"))["total"] == clean.invoiced_amount
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
