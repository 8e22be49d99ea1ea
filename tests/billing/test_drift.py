"""Usage drift: late events after invoicing become findings; resolving them leaves invoices and
ledger equal to what billing all the events cleanly would charge."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db.models import Sum

from billing import services
from billing.drift import FindingNotOpen, ResolutionInvalid, finding_resolve, usage_drift_sweep
from billing.models import CreditEntry, DriftFinding, Invoice
from ingest.models import UsageEvent
from ingest.services import events_ingest
from neruba.models import AuditEntry
from operations.sweeps import sweep_run

pytestmark = pytest.mark.django_db

JAN = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 2, 3, 12, tzinfo=UTC)
_keys = itertools.count()


@pytest.fixture(autouse=True)
def _february() -> Iterator[None]:
    with time_machine.travel(NOW, tick=True):
        yield


def ingest(metric: str, count: int, *, day: int = 5, seconds: int | None = None) -> None:
    """Events through the ingest service, which flags those of invoiced periods late."""
    payloads = [
        {
            "idempotency_key": f"drift-{next(_keys)}",
            "customer": "acme",
            "metric": metric,
            "timestamp": (JAN + timedelta(days=day, minutes=n)).isoformat(),
            "properties": {} if seconds is None else {"seconds": seconds},
        }
        for n in range(count)
    ]
    result = events_ingest(payloads=payloads, api_key=None)
    assert result.counts["accepted"] == count, result.results[0].get("error")


@pytest.fixture
def january(catalog: dict[str, Any]) -> Invoice:
    ingest("api_calls", 100)
    ingest("compute_seconds", 1, seconds=150)
    services.billing_scan(trigger="command")
    invoice = Invoice.objects.get()
    assert invoice.subtotal == 1000 + 50 + 125  # base + 100 x 0.5 + (100 x 1 + 50 x 0.5)
    return invoice


def _clean_total(invoice: Invoice) -> int:
    """What billing every event stored now would charge for the window."""
    return services.window_draft(window=invoice.window).subtotal


def _charged(invoice: Invoice) -> int:
    """What the customer is charged for the window: live invoices minus correction credits."""
    invoices = (
        Invoice.objects.filter(window=invoice.window)
        .exclude(status="void")
        .aggregate(total=Sum("subtotal"))["total"]
    )
    credits = CreditEntry.objects.filter(
        kind="grant", reason_code="correction", invoice__window=invoice.window
    ).aggregate(total=Sum("amount"))["total"]
    return int(invoices or 0) - int(credits or 0)


def test_late_events_after_invoicing_become_one_finding_with_the_priced_delta(
    january: Invoice,
) -> None:
    ingest("api_calls", 40)
    assert UsageEvent.objects.filter(late=True).count() == 40

    counts = usage_drift_sweep(lease=None, since=NOW - timedelta(hours=1))

    assert counts["windows"] == 1 and counts["findings"] == 1 and counts["full"] == 0
    finding = DriftFinding.objects.get()
    assert (finding.kind, finding.metric.code, finding.status) == ("usage", "api_calls", "open")
    assert (finding.invoiced_quantity, finding.actual_quantity) == (100, 140)
    assert finding.delta_amount == 20 and finding.invoice == january
    assert january.number in finding.detail
    january.window.refresh_from_db()
    assert january.window.drift_checked_at is not None


def test_a_window_without_late_events_is_not_reaggregated_by_an_incremental_sweep(
    january: Invoice,
) -> None:
    counts = usage_drift_sweep(lease=None, since=NOW - timedelta(hours=1))
    assert counts["windows"] == 0
    full = usage_drift_sweep(lease=None, since=None)
    assert (full["windows"], full["findings"], full["full"]) == (1, 0, 1)


def test_repeating_the_drift_sweep_finds_nothing_new_and_moves_the_open_finding(
    january: Invoice,
) -> None:
    ingest("api_calls", 40)
    first = sweep_run(name="usage_drift", trigger="command")
    assert (first.status, first.findings, first.counts["full"]) == ("succeeded", 1, 1)
    second = sweep_run(name="usage_drift", trigger="command")
    assert (second.findings, second.counts["full"], second.counts["updated"]) == (0, 0, 0)

    ingest("api_calls", 10)
    third = sweep_run(name="usage_drift", trigger="command")
    assert (third.findings, third.counts["updated"]) == (0, 1)
    finding = DriftFinding.objects.get()
    assert (finding.actual_quantity, finding.delta_amount) == (150, 25)


def test_resolving_an_unpaid_invoice_by_rerun_charges_what_a_clean_billing_would(
    january: Invoice, console_user: Any
) -> None:
    ingest("api_calls", 40)
    ingest("compute_seconds", 2, seconds=30)
    usage_drift_sweep(lease=None, since=None)
    assert DriftFinding.objects.filter(status="open").count() == 2
    finding = DriftFinding.objects.get(metric__code="api_calls")
    finance = console_user("Finance")

    preview = finding_resolve(finding=finding, action="rerun", actor=finance, reason="")
    assert not preview.applied and preview.rerun is not None
    assert preview.rerun.action == "supersede" and Invoice.objects.count() == 1

    result = finding_resolve(
        finding=finding, action="rerun", actor=finance, reason="late events", dry_run=False
    )

    assert result.applied and len(result.resolved) == 2, "the rerun settles the whole window"
    january.refresh_from_db()
    assert january.status == "void"
    assert _charged(january) == _clean_total(january) == 1000 + 70 + 155
    assert set(DriftFinding.objects.values_list("status", "resolution")) == {("resolved", "rerun")}
    entry = AuditEntry.objects.get(action="drift_finding.resolve")
    assert entry.actor == finance and entry.reason == "late events"
    assert AuditEntry.objects.filter(action="invoice.rerun").count() == 1
    again = usage_drift_sweep(lease=None, since=None)
    assert again["findings"] == 0 and DriftFinding.objects.filter(status="open").count() == 0


def test_resolving_a_paid_over_billed_invoice_by_credit_leaves_the_ledger_in_step(
    january: Invoice,
) -> None:
    services.invoice_mark_paid(invoice=january, actor=None, reason="wire")
    ingest("compute_seconds", 1, seconds=-30)  # a correction event: 150 -> 120 seconds
    usage_drift_sweep(lease=None, since=None)
    finding = DriftFinding.objects.get()
    assert (finding.invoiced_quantity, finding.actual_quantity, finding.delta_amount) == (
        150,
        120,
        -15,
    )
    with pytest.raises(ResolutionInvalid):
        finding_resolve(finding=finding, action="rerun", actor=None, reason="x", dry_run=False)

    result = finding_resolve(
        finding=finding, action="credit", actor=None, reason="over-billed", dry_run=False
    )

    assert result.rerun is not None and result.rerun.action == "credit"
    credit = CreditEntry.objects.get(kind="grant")
    assert (credit.amount, credit.reason_code, credit.invoice) == (15, "correction", january)
    january.refresh_from_db()
    assert january.status == "paid" and january.subtotal == 1175, "history is not rewritten"
    assert _charged(january) == _clean_total(january) == 1160
    assert DriftFinding.objects.get().resolution == "credit"
    assert usage_drift_sweep(lease=None, since=None)["findings"] == 0, "settled stays settled"


def test_resolving_a_paid_under_billed_invoice_issues_a_supplementary_invoice(
    january: Invoice,
) -> None:
    services.invoice_mark_paid(invoice=january, actor=None, reason="card")
    ingest("api_calls", 30)
    usage_drift_sweep(lease=None, since=None)
    finding = DriftFinding.objects.get()
    result = finding_resolve(
        finding=finding, action="credit", actor=None, reason="under-billed", dry_run=False
    )
    assert result.rerun is not None and result.rerun.action == "supplementary"
    assert Invoice.objects.get(kind="supplementary").subtotal == 15
    assert _charged(january) == _clean_total(january)
    assert DriftFinding.objects.get().resolution == "supplementary"
    ingest("api_calls", 2)
    usage_drift_sweep(lease=None, since=None)
    newer = DriftFinding.objects.get(status="open")
    assert (newer.invoiced_quantity, newer.actual_quantity, newer.delta_amount) == (130, 132, 1)


def test_an_ignored_finding_stays_ignored_and_is_audited_with_its_reason(
    january: Invoice,
) -> None:
    ingest("api_calls", 3)
    usage_drift_sweep(lease=None, since=None)
    finding = DriftFinding.objects.get()
    with pytest.raises(Exception, match="reason"):
        finding_resolve(finding=finding, action="ignore", actor=None, reason=" ", dry_run=False)
    finding_resolve(
        finding=finding, action="ignore", actor=None, reason="test traffic", dry_run=False
    )
    finding.refresh_from_db()
    assert (finding.status, finding.resolution, finding.resolution_reason) == (
        "ignored",
        "ignore",
        "test traffic",
    )
    assert AuditEntry.objects.get(action="drift_finding.resolve").reason == "test traffic"
    assert usage_drift_sweep(lease=None, since=None)["findings"] == 0
    with pytest.raises(FindingNotOpen):
        finding_resolve(finding=finding, action="ignore", actor=None, reason="x", dry_run=False)
    assert Invoice.objects.count() == 1


def test_resolve_drift_is_a_dry_run_by_default_and_applies_with_a_reason(
    january: Invoice,
) -> None:
    ingest("api_calls", 4)
    usage_drift_sweep(lease=None, since=None)
    finding = DriftFinding.objects.get()
    out = StringIO()
    call_command("resolve_drift", "--finding", str(finding.pk), "--action", "rerun", stdout=out)
    assert "supersede" in out.getvalue() and "dry run" in out.getvalue()
    assert Invoice.objects.count() == 1 and DriftFinding.objects.get().status == "open"
    with pytest.raises(CommandError, match="reason"):
        call_command("resolve_drift", "--finding", str(finding.pk), "--action", "rerun", "--apply")
    out = StringIO()
    call_command(
        "resolve_drift",
        "--finding",
        str(finding.pk),
        "--action",
        "rerun",
        "--reason",
        "late",
        "--apply",
        stdout=out,
    )
    assert "applied" in out.getvalue() and "created" in out.getvalue()
    assert DriftFinding.objects.get().status == "resolved"
    with pytest.raises(CommandError, match="failed"):
        call_command(
            "resolve_drift",
            "--finding",
            str(finding.pk),
            "--action",
            "ignore",
            "--reason",
            "x",
            "--apply",
            stdout=StringIO(),
            stderr=StringIO(),
        )


def test_a_drift_dry_run_counts_findings_without_writing_them(january: Invoice) -> None:
    ingest("api_calls", 5)
    run = sweep_run(name="usage_drift", trigger="command", dry_run=True)
    assert run.status == "succeeded" and run.dry_run and run.findings == 1
    assert not DriftFinding.objects.exists()


def test_a_finding_with_no_money_difference_closes_as_no_change_without_voiding_anything(
    january: Invoice, console_user: Any
) -> None:
    # One more call at half a cent: 100.5 rounds half-even back to 50, so only the quantity
    # moved. The sweep records it (quantities differ), the rerun changes nothing.
    ingest("api_calls", 1)
    usage_drift_sweep(lease=None, since=None)
    finding = DriftFinding.objects.get()
    assert (finding.invoiced_quantity, finding.actual_quantity, finding.delta_amount) == (
        100,
        101,
        0,
    )
    finance = console_user("Finance")
    preview = finding_resolve(finding=finding, action="rerun", actor=finance, reason="")
    assert preview.rerun is not None and preview.rerun.action == "none"
    assert "nothing is voided, issued or credited" in preview.render()

    result = finding_resolve(
        finding=finding, action="rerun", actor=finance, reason="one late call", dry_run=False
    )

    assert result.applied and result.rerun is not None and not result.rerun.applied
    january.refresh_from_db()
    assert january.status == "finalized" and Invoice.objects.count() == 1
    assert not AuditEntry.objects.filter(action="invoice.rerun").exists()
    assert not CreditEntry.objects.exists()
    finding.refresh_from_db()
    assert (finding.status, finding.resolution) == ("resolved", "no_change")
    assert AuditEntry.objects.get(action="drift_finding.resolve").reason == "one late call"
    # The accepted quantity stands: sweeping again opens nothing.
    assert usage_drift_sweep(lease=None, since=None)["findings"] == 0


def test_a_rerun_finding_no_difference_changes_nothing_and_the_sweep_opens_no_finding(
    january: Invoice,
) -> None:
    assert usage_drift_sweep(lease=None, since=None)["findings"] == 0
    result = services.invoice_rerun(invoice=january, actor=None, reason="check", dry_run=False)
    assert result.action == "none" and not result.applied and result.created == []
    january.refresh_from_db()
    assert january.status == "finalized" and Invoice.objects.count() == 1
    assert not AuditEntry.objects.filter(action="invoice.rerun").exists()
