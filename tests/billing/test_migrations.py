"""Data migration billing 0006: the upgrade repairs what earlier versions did with Stripe refunds
and lost disputes (spendable credit), from rows as those versions left them."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps

from billing.ledger import credit_balance
from billing.models import CreditEntry, Dispute, Invoice, PaymentFinding, Refund
from neruba.models import AuditEntry
from tests.webhooks.helpers import make_invoice

pytestmark = pytest.mark.django_db

migration = importlib.import_module("billing.migrations.0006_i12_reverse_cash_credits")


def _legacy_grant(invoice: Invoice, key: str, amount: int, reason_code: str) -> CreditEntry:
    return CreditEntry.objects.create(
        customer=invoice.customer,
        currency="USD",
        amount=amount,
        kind="grant",
        reason_code=reason_code,
        invoice=invoice,
        source_key=key,
        note=f"Stripe {reason_code}",
    )


@pytest.fixture
def legacy() -> dict[str, Any]:
    """A paid 19.00 invoice refunded in full and lost in a dispute, a refund that failed after
    it succeeded, each credited the old way; and a goodwill credit that must stay."""
    invoice = make_invoice(total=1900, status=Invoice.Status.PAID)
    for refund_id, status in (("re_old", "succeeded"), ("re_failed", "failed")):
        Refund.objects.create(
            stripe_refund_id=refund_id,
            charge_id="ch_old",
            customer=invoice.customer,
            invoice=invoice,
            amount=1900 if refund_id == "re_old" else 700,
            currency="USD",
            status=status,
        )
    Dispute.objects.create(
        stripe_dispute_id="dp_old",
        charge_id="ch_old",
        customer=invoice.customer,
        invoice=invoice,
        amount=1900,
        currency="USD",
        status="lost",
    )
    refund = _legacy_grant(invoice, "refund:re_old", 1900, "refund")
    _legacy_grant(invoice, "dispute:dp_old", 1900, "dispute")
    failed = _legacy_grant(invoice, "refund:re_failed", 700, "refund")
    CreditEntry.objects.create(
        customer=invoice.customer,
        currency="USD",
        amount=-700,
        kind="reversal",
        reason_code="refund",
        reverses=failed,
        source_key="refund-reversal:re_failed",
    )
    CreditEntry.objects.create(
        customer=invoice.customer,
        currency="USD",
        amount=250,
        kind="grant",
        reason_code="goodwill",
        note="outage",
    )
    assert credit_balance(customer=invoice.customer, currency="USD") == 1900 + 1900 + 250
    return {"invoice": invoice, "refund_grant": refund}


def test_the_upgrade_reverses_every_cash_credit_with_an_audited_entry_and_fills_the_invoice(
    legacy: dict[str, Any],
) -> None:
    invoice = legacy["invoice"]
    migration.forwards(apps, None)

    # Only the goodwill credit is spendable now.
    assert credit_balance(customer=invoice.customer, currency="USD") == 250
    reversals = CreditEntry.objects.filter(source_key__startswith="cash-refund-reversal:")
    assert sorted(reversals.values_list("amount", "reason_code")) == [
        (-1900, "dispute"),
        (-1900, "refund"),
    ]
    assert {r.note for r in reversals} == {"cash refund recorded on the invoice"}
    assert reversals.get(reason_code="refund").reverses == legacy["refund_grant"]
    audits = AuditEntry.objects.filter(action="credit.reverse")
    assert audits.count() == 2
    assert {a.reason for a in audits} == {"cash refund recorded on the invoice"}
    assert {a.actor_label for a in audits} == {"system"}

    invoice.refresh_from_db()
    assert (invoice.amount_paid, invoice.amount_refunded, invoice.amount_disputed) == (
        1900,
        1900,
        1900,
    )
    assert invoice.amount_collected == -1900
    finding = PaymentFinding.objects.get()
    assert finding.status == "open" and finding.invoice == invoice
    assert finding.detail == (
        "charge ch_old returned 38.00 of 19.00 USD: refunded and lost in dispute"
    )


def test_running_the_upgrade_twice_changes_nothing_the_second_time(
    legacy: dict[str, Any],
) -> None:
    migration.forwards(apps, None)
    entries, audits = CreditEntry.objects.count(), AuditEntry.objects.count()
    migration.forwards(apps, None)
    assert (CreditEntry.objects.count(), AuditEntry.objects.count()) == (entries, audits)
    assert PaymentFinding.objects.count() == 1
    assert credit_balance(customer=legacy["invoice"].customer, currency="USD") == 250
