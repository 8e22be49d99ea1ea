from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from billing import services
from billing.ledger import credit_balance, credit_grant
from billing.models import BillingRun, CreditEntry, Invoice, Price
from neruba.models import AuditEntry
from tests.billing.helpers import add_events
from tests.factories import MetricFactory

pytestmark = pytest.mark.django_db

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB_BILLED = datetime(2026, 2, 1, 2, tzinfo=UTC)


@pytest.fixture
def january(catalog: dict[str, Any]) -> Invoice:
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[JAN + timedelta(days=1)] * 100,
    )
    services.billing_scan(trigger="command", as_of=FEB_BILLED)
    return Invoice.objects.get()


def _late_calls(catalog: dict[str, Any], count: int) -> None:
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[JAN + timedelta(days=9)] * count,
    )


def test_a_dry_run_rerun_shows_the_diff_and_changes_nothing(
    catalog: dict[str, Any], january: Invoice
) -> None:
    _late_calls(catalog, 40)
    result = services.invoice_rerun(invoice=january, actor=None, reason="", dry_run=True)
    assert (result.action, result.old_subtotal, result.new_subtotal) == ("supersede", 1050, 1070)
    calls_old = next(line for line in result.old_lines if line["metric"] == "api_calls")
    calls_new = next(line for line in result.new_lines if line["metric"] == "api_calls")
    assert (calls_old["quantity"], calls_new["quantity"]) == ("100", "140")
    assert "qty 100 -> 140" in result.render()
    january.refresh_from_db()
    assert january.status == "finalized" and Invoice.objects.count() == 1
    assert not AuditEntry.objects.filter(action="invoice.rerun").exists()


def test_an_unpaid_invoice_is_voided_and_superseded_with_its_credits_given_back(
    catalog: dict[str, Any], january: Invoice, console_user: Any
) -> None:
    customer = catalog["customer"]
    credit_grant(customer=customer, amount=300, reason_code="goodwill", actor=None, reason="x")
    services.billing_scan(trigger="command", as_of=datetime(2026, 3, 1, 2, tzinfo=UTC))
    february = Invoice.objects.get(period_start=datetime(2026, 2, 1, tzinfo=UTC))
    assert february.credits_applied == 300
    finance = console_user("Finance")
    result = services.invoice_rerun(
        invoice=february, actor=finance, reason="price fix", dry_run=False
    )
    # Nothing changed in February's usage: the rerun is a no-op.
    assert result.action == "none" and not result.applied
    Price.objects.filter(metric__code="api_calls").update(unit_amount=Decimal("0.25"))
    _late_calls(catalog, 10)
    result = services.invoice_rerun(
        invoice=january, actor=finance, reason="price fix", dry_run=False
    )
    assert result.action == "supersede" and result.applied
    january.refresh_from_db()
    new = Invoice.objects.get(number=result.created[0])
    assert january.status == "void" and january.voided_at is not None
    assert new.supersedes == january and new.window == january.window
    assert new.subtotal == 1000 + 28  # 110 x 0.25 = 27.5 -> 28 (half-even)
    assert new.run.trigger == BillingRun.Trigger.RERUN
    entry = AuditEntry.objects.get(action="invoice.rerun")
    assert entry.reason == "price fix" and entry.actor == finance
    assert january.provider_syncs.filter(action="void").exists()
    # February's credits stay consumed; January consumed none.
    assert credit_balance(customer=customer, currency="USD") == 0


def test_voiding_an_invoice_that_used_credits_returns_them_before_the_new_one_consumes(
    catalog: dict[str, Any],
) -> None:
    customer = catalog["customer"]
    credit_grant(customer=customer, amount=400, reason_code="goodwill", actor=None, reason="x")
    services.billing_scan(trigger="command", as_of=FEB_BILLED)
    invoice = Invoice.objects.get()
    assert invoice.credits_applied == 400
    _late_calls(catalog, 2)
    result = services.invoice_rerun(invoice=invoice, actor=None, reason="late", dry_run=False)
    new = Invoice.objects.get(number=result.created[0])
    assert new.credits_applied == 400 and new.total == 1001 - 400
    assert CreditEntry.objects.filter(kind="reversal", invoice=invoice).get().amount == 400
    assert credit_balance(customer=customer, currency="USD") == 0


def test_a_paid_over_billed_invoice_gets_a_correction_credit_once(
    catalog: dict[str, Any], january: Invoice
) -> None:
    services.invoice_mark_paid(invoice=january, actor=None, reason="wire received")
    Price.objects.filter(metric__code="api_calls").update(unit_amount=Decimal("0.1"))
    result = services.invoice_rerun(
        invoice=january, actor=None, reason="overcharged", dry_run=False
    )
    assert (result.action, result.delta) == ("credit", -40)
    entry = CreditEntry.objects.get(kind="grant")
    assert (entry.amount, entry.reason_code, entry.invoice) == (40, "correction", january)
    again = services.invoice_rerun(invoice=january, actor=None, reason="again", dry_run=False)
    assert again.action == "none", "a repeated rerun is a no-op"
    january.refresh_from_db()
    assert january.status == "paid" and january.subtotal == 1050, "history is not rewritten"


def test_a_paid_under_billed_invoice_gets_a_supplementary_invoice(
    catalog: dict[str, Any], january: Invoice
) -> None:
    services.invoice_mark_paid(invoice=january, actor=None, reason="card")
    _late_calls(catalog, 30)
    result = services.invoice_rerun(window=january.window, actor=None, reason="late", dry_run=False)
    assert (result.action, result.delta) == ("supplementary", 15)
    extra = Invoice.objects.get(kind="supplementary")
    assert extra.subtotal == 15 and extra.window == january.window
    assert extra.lines.get().description == f"Correction to {january.number}"
    again = services.invoice_rerun(window=january.window, actor=None, reason="x", dry_run=True)
    assert again.action == "none"


def test_rerun_billing_is_a_dry_run_by_default_and_applies_with_a_reason(
    catalog: dict[str, Any], january: Invoice
) -> None:
    _late_calls(catalog, 4)
    out = StringIO()
    call_command("rerun_billing", "--customer", "acme", "--period", "2026-01", stdout=out)
    assert "supersede" in out.getvalue() and "dry run" in out.getvalue()
    assert Invoice.objects.count() == 1
    with pytest.raises(CommandError, match="reason"):
        call_command("rerun_billing", "--window", str(january.window_id), "--apply")
    out = StringIO()
    call_command(
        "rerun_billing",
        "--window",
        str(january.window_id),
        "--apply",
        "--reason",
        "late",
        stdout=out,
    )
    assert "applied" in out.getvalue()
    assert Invoice.objects.filter(status="void").count() == 1


def test_run_billing_prints_the_summary_and_fails_when_a_window_fails(
    catalog: dict[str, Any],
) -> None:
    out = StringIO()
    call_command("run_billing", "--at", "2026-02-01T02:00:00", "--dry-run", stdout=out)
    assert "would invoice 1" in out.getvalue()
    out = StringIO()
    call_command("run_billing", "--at", "2026-02-01T02:00:00", stdout=out)
    assert "succeeded" in out.getvalue() and Invoice.objects.count() == 1
    broken = MetricFactory(code="broken")
    Price.objects.create(plan=catalog["plan"], metric=broken, model="graduated", tiers="oops")
    add_events(
        customer=catalog["customer"], metric=broken, timestamps=[datetime(2026, 2, 3, tzinfo=UTC)]
    )
    with pytest.raises(CommandError, match="failed"):
        call_command("run_billing", "--at", "2026-03-01T02:00:00", stdout=StringIO())


def test_a_window_whose_invoice_was_voided_outside_a_rerun_is_billed_only_by_a_rerun(
    catalog: dict[str, Any], january: Invoice
) -> None:
    Invoice.objects.filter(pk=january.pk).update(status="void")  # as a Stripe void webhook would
    again = services.billing_scan(trigger="beat", as_of=FEB_BILLED + timedelta(hours=1))
    assert again.scanned == 0
    result = services.invoice_rerun(
        window=january.window, actor=None, reason="re-issue", dry_run=False
    )
    assert result.action == "invoice" and result.applied
    assert Invoice.objects.exclude(status="void").get().window == january.window


def test_a_credit_in_another_currency_or_for_cash_is_refused_by_the_service(
    catalog: dict[str, Any],
) -> None:
    from billing.exceptions import CreditCurrencyMismatch
    from neruba.errors import ValidationFailed

    customer = catalog["customer"]
    with pytest.raises(CreditCurrencyMismatch) as refused:
        credit_grant(
            customer=customer,
            amount=100,
            reason_code="goodwill",
            actor=None,
            reason="x",
            currency="XYZ",
        )
    assert refused.value.code == "credit_currency_mismatch"
    assert refused.value.details == {"currency": "XYZ", "customer_currency": "USD"}
    for cash in ("refund", "dispute"):
        with pytest.raises(ValidationFailed) as not_credit:
            credit_grant(customer=customer, amount=100, reason_code=cash, actor=None, reason="x")
        assert "cash" in not_credit.value.message
    assert not CreditEntry.objects.exists()
    entry, created = credit_grant(
        customer=customer,
        amount=100,
        reason_code="goodwill",
        actor=None,
        reason="x",
        currency="usd",
    )
    assert created and entry.currency == "USD"
