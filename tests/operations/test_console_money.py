"""The money story in the console: the customer hub, the invoice page and the credit ledger show
cash (paid, refunded, lost in disputes, collected) apart from spendable credit; an over-returned
charge is a payment finding finance closes; a credit in another currency is refused."""

from __future__ import annotations

from typing import Any

import pytest
import time_machine

from billing import payments
from billing.models import CreditEntry, Invoice, PaymentFinding
from billing.services import invoice_mark_paid
from neruba.models import AuditEntry
from tests.operations.console import FEB_LATER, JAN, bill_january, call, client_for, ingest

pytestmark = pytest.mark.django_db

FINDING = "refunded and lost in dispute"


@pytest.fixture
def over_returned(catalog: dict[str, Any]) -> Invoice:
    """Acme's January invoice, paid, then refunded in full and lost in a dispute."""
    with time_machine.travel(JAN, tick=False):
        ingest(*(call(f"k-{i}") for i in range(4)))
    with time_machine.travel(FEB_LATER, tick=False):
        invoice = bill_january()
    invoice_mark_paid(invoice=invoice, actor=None, reason="wire")
    invoice.refresh_from_db()
    common = {
        "charge_id": "ch_console",
        "currency": "usd",
        "reason": "",
        "stripe_created": None,
        "customer": invoice.customer,
        "invoice": invoice,
        "source": "test",
    }
    payments.refund_record(
        stripe_refund_id="re_console", amount=invoice.total, status="succeeded", **common
    )
    payments.dispute_record(
        stripe_dispute_id="dp_console",
        amount=invoice.total,
        status="lost",
        occurred_at=FEB_LATER,
        **common,
    )
    invoice.refresh_from_db()
    return invoice


def _major(amount: int) -> str:
    return f"{amount / 100:.2f}"


def test_the_hub_shows_the_cash_story_apart_from_a_zero_credit_balance(
    over_returned: Invoice, console_user: Any
) -> None:
    total = over_returned.total
    assert (over_returned.amount_refunded, over_returned.amount_disputed) == (total, total)
    assert over_returned.amount_collected == -total
    html = (
        client_for(console_user, "Support")
        .get(f"/admin/neruba/customer/{over_returned.customer_id}/change/")
        .content.decode()
    )
    balance = html.split('id="hub-balance"')[1].split("</div>")[0]
    assert "No credits." in balance
    cash = html.split('id="hub-cash"')[1].split("</table>")[0]
    row = (
        f"<td>USD</td><td>{_major(total)}</td><td>{_major(total)}</td><td>{_major(total)}</td>"
        f"<td>{_major(total)}</td><td><strong>{_major(-total)}</strong></td>"
    )
    assert row in cash
    assert f"returned {_major(2 * total)} of {_major(total)} USD: {FINDING}" in html
    assert "dispute closed: lost" in html  # the ready-to-send reply
    assert not CreditEntry.objects.exists()


def test_the_invoice_page_shows_the_cash_story_refunds_disputes_and_the_finding(
    over_returned: Invoice, console_user: Any
) -> None:
    html = (
        client_for(console_user, "Finance")
        .get(f"/admin/billing/invoice/{over_returned.pk}/change/")
        .content.decode()
    )
    t = _major(over_returned.total)
    assert (
        f"charged {t}, paid {t}, refunded {t}, lost in disputes {t}, collected "
        f"{_major(-over_returned.total)} USD"
    ) in html
    assert "re_console" in html and "dp_console" in html
    assert FINDING in html


def test_the_ledger_filtered_to_a_customer_shows_its_cash_beside_the_credit_balance(
    over_returned: Invoice, console_user: Any
) -> None:
    html = (
        client_for(console_user, "Finance")
        .get("/admin/billing/creditentry/?customer=acme")
        .content.decode()
    )
    box = html.split('id="ledger-cash"')[1].split("</table>")[0]
    t = _major(over_returned.total)
    assert f"<td>USD</td><td><strong>0.00</strong></td><td>{t}</td><td>{t}</td><td>{t}</td>" in box
    assert f"<td>{_major(-over_returned.total)}</td>" in box


def test_finance_closes_a_payment_finding_with_a_reason_and_support_cannot(
    over_returned: Invoice, console_user: Any
) -> None:
    finding = PaymentFinding.objects.get()
    url = f"/admin/billing/paymentfinding/{finding.pk}/action/close_payment_findings/"
    support = client_for(console_user, "Support")
    assert support.get(f"/admin/billing/paymentfinding/{finding.pk}/change/").status_code == 200
    assert support.post(url, {"confirm": "yes", "reason": "x"}).status_code == 403

    finance = client_for(console_user, "Finance")
    preview = finance.get(url).content.decode()
    assert "no balance moves" in preview
    done = finance.post(url, {"confirm": "yes", "reason": "loss accepted"}, follow=True)
    assert b"1 done" in done.content
    finding.refresh_from_db()
    assert (finding.status, finding.resolution) == ("resolved", "handled")
    entry = AuditEntry.objects.get(action="payment_finding.close", reason="loss accepted")
    assert entry.actor.username == "finance-user"

    # The same facts arriving again (a replay) do not reopen what finance handled.
    payments.dispute_record(
        stripe_dispute_id="dp_console",
        charge_id="ch_console",
        amount=over_returned.total,
        currency="usd",
        status="lost",
        reason="",
        stripe_created=None,
        occurred_at=FEB_LATER,
        customer=over_returned.customer,
        invoice=over_returned,
        source="replay",
    )
    assert not PaymentFinding.objects.filter(status="open").exists()
    assert not CreditEntry.objects.exists()


def test_a_credit_in_another_currency_is_refused_in_the_console_with_the_reason(
    catalog: dict[str, Any], console_user: Any
) -> None:
    customer = catalog["customer"]
    finance = client_for(console_user, "Finance")
    form = {
        "customer": str(customer.pk),
        "amount": "100",
        "currency": "XYZ",
        "reason_code": "goodwill",
        "note": "sorry",
    }
    page = finance.post("/admin/billing/creditentry/add/", form)
    assert page.status_code == 200
    assert "must be in the customer&#x27;s currency (USD), not XYZ" in page.content.decode()

    url = f"/admin/neruba/customer/{customer.pk}/action/issue_credit/"
    done = finance.post(
        url,
        {
            "confirm": "yes",
            "reason": "sorry",
            "amount": "100",
            "currency": "EUR",
            "reason_code": "goodwill",
        },
        follow=True,
    )
    text = done.content.decode()
    assert "1 failed" in text and "must be in USD, the customer&#x27;s currency, not EUR" in text
    assert not CreditEntry.objects.exists()

    refused_code = finance.post(
        url, {"confirm": "yes", "reason": "x", "amount": "100", "reason_code": "refund"}
    )
    assert refused_code.status_code == 200  # the form shows the error, nothing granted
    assert "Select a valid choice" in refused_code.content.decode()
    assert not CreditEntry.objects.exists()

    ok = finance.post(
        url,
        {
            "confirm": "yes",
            "reason": "chose credit",
            "amount": "100",
            "reason_code": "refund_as_credit",
        },
        follow=True,
    )
    assert b"1 done" in ok.content
    entry = CreditEntry.objects.get()
    assert (entry.amount, entry.currency, entry.reason_code) == (100, "USD", "refund_as_credit")
