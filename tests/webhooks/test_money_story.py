"""The money story end to end: Stripe refunds and disputes, built from stripe-mock's
``fixtures3.json`` object shapes (``webhooks/fixtures/stripe_objects.json`` is a verbatim subset),
signed with the ``stripe`` SDK and posted to the real ``/webhooks/stripe`` endpoint.

Every case is delivered three times, then every event is replayed once, in the order sent and
with the newest snapshots first. Whatever the order, the invoice's cash amounts, the credit
ledger and the payment findings come out the same, to the cent, and no credit ever moves."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from billing.ledger import credit_balance
from billing.models import CreditEntry, Invoice, PaymentFinding
from neruba.models import AuditEntry, Customer
from operations.support_messages import messages_for_customer
from tests import factories, processes
from tests.webhooks.helpers import delivery, invoice_event, make_invoice, post
from webhooks import services
from webhooks.models import StripeEvent
from webhooks.samples import stripe_object

NOW = int(time.time())
TOTAL = 1900  # a 19.00 USD invoice, paid by one charge


@dataclass(frozen=True)
class Expected:
    refunded: int
    disputed: int
    open_finding: str | None = None  # the finding's sentence, when one must be open
    # Findings opened and closed again on the way (only when the snapshots come in order: with
    # the newest first, the charge is never seen over-returned).
    closed_findings: int = 0


def _charge(invoice: Invoice, charge_id: str, **fields: Any) -> dict[str, Any]:
    return stripe_object(
        "charge",
        id=charge_id,
        customer=invoice.customer.stripe_customer_id,
        invoice=invoice.provider_invoice_id,
        amount=TOTAL,
        amount_captured=TOTAL,
        captured=True,
        currency="usd",
        **fields,
    )


def _refund(refund_id: str, charge_id: str, amount: int, status: str = "succeeded") -> Any:
    return stripe_object(
        "refund", id=refund_id, charge=charge_id, amount=amount, status=status, currency="usd"
    )


def _dispute(dispute_id: str, charge_id: str, status: str) -> Any:
    return stripe_object(
        "dispute", id=dispute_id, charge=charge_id, amount=TOTAL, status=status, currency="usd"
    )


def _full_refund(invoice: Invoice, ch: str) -> list[tuple[dict[str, Any], str, int]]:
    refund = _refund("re_full", ch, TOTAL)
    charge = _charge(
        invoice,
        ch,
        amount_refunded=TOTAL,
        refunded=True,
        refunds={"object": "list", "data": [refund], "has_more": False, "url": "/v1/refunds"},
    )
    return [(charge, "charge.refunded", 10)]


def _two_partial_refunds(invoice: Invoice, ch: str) -> list[tuple[dict[str, Any], str, int]]:
    return [
        (_refund("re_part_1", ch, 475), "refund.created", 10),
        (_refund("re_part_1", ch, 475), "charge.refund.updated", 11),
        (_refund("re_part_2", ch, 633), "refund.created", 20),
    ]


def _refund_then_lost_dispute(invoice: Invoice, ch: str) -> list[tuple[dict[str, Any], str, int]]:
    return [
        (_refund("re_then_dp", ch, TOTAL), "refund.created", 10),
        (_dispute("dp_after_refund", ch, "needs_response"), "charge.dispute.created", 20),
        (_dispute("dp_after_refund", ch, "lost"), "charge.dispute.closed", 30),
    ]


def _lost_then_won(invoice: Invoice, ch: str) -> list[tuple[dict[str, Any], str, int]]:
    return [
        (_dispute("dp_appeal", ch, "needs_response"), "charge.dispute.created", 10),
        (_dispute("dp_appeal", ch, "lost"), "charge.dispute.closed", 20),
        (_dispute("dp_appeal", ch, "won"), "charge.dispute.updated", 30),
    ]


def _refund_fails(invoice: Invoice, ch: str) -> list[tuple[dict[str, Any], str, int]]:
    return [
        (_refund("re_fails_later", ch, TOTAL), "refund.created", 10),
        (_refund("re_fails_later", ch, TOTAL, status="failed"), "refund.failed", 20),
    ]


def _refund_lost_then_won(invoice: Invoice, ch: str) -> list[tuple[dict[str, Any], str, int]]:
    return [
        *_refund_then_lost_dispute(invoice, ch),
        (_dispute("dp_after_refund", ch, "won"), "charge.dispute.updated", 40),
    ]


CASES = {
    "full refund": (_full_refund, Expected(refunded=TOTAL, disputed=0)),
    "two partial refunds": (_two_partial_refunds, Expected(refunded=1108, disputed=0)),
    "refund then lost dispute": (
        _refund_then_lost_dispute,
        Expected(
            refunded=TOTAL,
            disputed=TOTAL,
            open_finding="charge {ch} returned 38.00 of 19.00 USD: refunded and lost in dispute",
        ),
    ),
    "lost dispute then won on appeal": (_lost_then_won, Expected(refunded=0, disputed=0)),
    "refund that fails after succeeding": (_refund_fails, Expected(refunded=0, disputed=0)),
    "refund, lost dispute, then won on appeal": (
        _refund_lost_then_won,
        Expected(refunded=TOTAL, disputed=0, closed_findings=1),
    ),
}


def _paid_invoice(deliver: Any, name: str) -> tuple[Invoice, str]:
    n = sum(map(ord, name))
    customer = factories.CustomerFactory(
        external_id=f"money-{n}", name="Acme Money", stripe_customer_id=f"cus_money_{n}"
    )
    invoice = make_invoice(customer=customer, total=TOTAL)
    deliver(*invoice_event(invoice, type="invoice.paid", created=NOW - 100, amount_paid=TOTAL))
    charge_id = f"ch_money_{n}"
    deliver(*delivery(_charge(invoice, charge_id), type="charge.succeeded", created=NOW - 90))
    return invoice, charge_id


def _assert_story(invoice: Invoice, charge_id: str, expected: Expected, order: str) -> None:
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert (invoice.total, invoice.amount_paid) == (TOTAL, TOTAL)
    assert (invoice.amount_refunded, invoice.amount_disputed) == (
        expected.refunded,
        expected.disputed,
    )
    assert invoice.amount_collected == TOTAL - expected.refunded - expected.disputed
    # Cash never becomes credit: not one ledger entry, a zero spendable balance.
    assert not CreditEntry.objects.filter(customer=invoice.customer).exists()
    assert credit_balance(customer=invoice.customer, currency="USD") == 0
    findings = PaymentFinding.objects.filter(charge__charge_id=charge_id)
    open_ = list(findings.filter(status=PaymentFinding.Status.OPEN))
    if expected.open_finding is None:
        assert open_ == []
    else:
        assert [f.detail for f in open_] == [expected.open_finding.format(ch=charge_id)]
        assert (open_[0].collected, open_[0].returned) == (TOTAL, 2 * TOTAL)
        assert open_[0].invoice == invoice
    closed = findings.filter(status=PaymentFinding.Status.RESOLVED)
    assert closed.count() == (expected.closed_findings if order == "as sent" else 0)
    assert all(f.resolution == "in_step" for f in closed)


@pytest.mark.django_db
@pytest.mark.parametrize("order", ["as sent", "newest first"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_money_path_adds_up_to_the_cent_through_redeliveries_replays_and_reordering(
    deliver: Any, case: str, order: str
) -> None:
    build, expected = CASES[case]
    invoice, charge_id = _paid_invoice(deliver, case)
    events = build(invoice, charge_id)
    if order == "newest first":
        events = sorted(events, key=lambda e: -e[2])
    signed = [
        delivery(obj, type=type, id=f"evt_{charge_id}_{i}", created=NOW - 50 + offset)
        for i, (obj, type, offset) in enumerate(events)
    ]
    for body, signature in signed:
        for _ in range(3):  # Stripe redelivers
            assert deliver(body, signature).status_code == 200
    _assert_story(invoice, charge_id, expected, order)
    audit_count = AuditEntry.objects.count()

    operator = factories.console_user("Operations")
    for event in StripeEvent.objects.filter(stripe_id__startswith=f"evt_{charge_id}_").order_by(
        "id"
    ):
        services.event_replay(event=event, actor=operator, reason="money story drill")
        assert event.status == StripeEvent.Status.PROCESSED

    _assert_story(invoice, charge_id, expected, order)
    # A replay changes nothing: the only new audit entries are the replays themselves.
    new_actions = set(
        AuditEntry.objects.order_by("id")[audit_count:].values_list("action", flat=True)
    )
    assert new_actions == {"stripe_event.replay"}


@pytest.mark.django_db
def test_the_replies_tell_the_cash_story_and_never_offer_credit_for_cash(deliver: Any) -> None:
    invoice, ch = _paid_invoice(deliver, "replies")
    for i, (obj, type, offset) in enumerate(_two_partial_refunds(invoice, ch)):
        deliver(*delivery(obj, type=type, id=f"evt_reply_{i}", created=NOW - 50 + offset))
    texts = {m.template.key: m.body for m in messages_for_customer(customer=invoice.customer)}
    assert "refund processed: 6.33 USD back to your card" in texts["refund_processed"]
    assert "credit_issued" not in texts

    for i, status in enumerate(["needs_response", "lost"]):
        deliver(
            *delivery(
                _dispute("dp_reply", ch, status),
                type="charge.dispute.closed" if status == "lost" else "charge.dispute.created",
                id=f"evt_reply_dp_{i}",
                created=NOW - 20 + i,
            )
        )
    texts = {m.template.key: m.body for m in messages_for_customer(customer=invoice.customer)}
    assert "dispute closed: lost" in texts["dispute_lost"]
    assert "19.00 USD" in texts["dispute_lost"]
    for body in texts.values():
        assert "credit" not in body.lower() and "next invoice" not in body.lower()


def _post_signed(body: bytes, signature: str) -> int:
    # Autocommit (transaction=True): the after-commit processing runs in this process.
    return post(Client(), body, signature).status_code


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("linked", [True, False], ids=["invoice known", "charge only"])
def test_a_refund_and_a_lost_dispute_processed_at_once_raise_one_finding_and_exact_sums(
    linked: bool,
) -> None:
    """Workers take the refund and the dispute of one charge at the same moment: the invoice
    row lock (when the charge is known to pay one) and the charge row lock make them settle one
    after the other, so the later one sees the earlier one's row and the over-return is found
    exactly once."""
    customer = Customer.objects.create(
        external_id="race", name="Race", currency="USD", stripe_customer_id="cus_race"
    )
    invoice = make_invoice(customer=customer, total=TOTAL, status=Invoice.Status.PAID)
    Invoice.objects.filter(pk=invoice.pk).update(amount_paid=TOTAL, amount_collected=TOTAL)
    charge = _charge(invoice, "ch_race")
    if not linked:
        del charge["invoice"]
    assert _post_signed(*delivery(charge, type="charge.succeeded")) == 200
    signed = [
        delivery(_refund("re_race", "ch_race", TOTAL), type="refund.created", id="evt_race_re"),
        delivery(
            _dispute("dp_race", "ch_race", "lost"), type="charge.dispute.closed", id="evt_race_dp"
        ),
    ] * 3  # each delivered three times, all at once

    results = processes.run_all(_post_signed, signed)

    assert results == [200] * 6
    invoice.refresh_from_db()
    if linked:
        assert (invoice.amount_refunded, invoice.amount_disputed) == (TOTAL, TOTAL)
        assert invoice.amount_collected == -TOTAL
    else:
        assert (invoice.amount_refunded, invoice.amount_collected) == (0, TOTAL)
    finding = PaymentFinding.objects.get()
    assert finding.status == "open" and finding.returned == 2 * TOTAL
    assert finding.detail == (
        "charge ch_race returned 38.00 of 19.00 USD: refunded and lost in dispute"
    )
    assert AuditEntry.objects.filter(action="payment_finding.open").count() == 1
    assert not CreditEntry.objects.exists()


@pytest.mark.django_db
def test_a_refund_seen_before_its_charge_was_tied_to_the_invoice_counts_there_once_it_is(
    deliver: Any,
) -> None:
    customer = factories.CustomerFactory(external_id="late-link", stripe_customer_id="cus_ll")
    invoice = make_invoice(customer=customer, total=TOTAL)
    deliver(*invoice_event(invoice, type="invoice.paid", created=NOW - 100, amount_paid=TOTAL))
    bare = _charge(invoice, "ch_late_link")
    del bare["invoice"]  # newer API versions do not put the invoice on the charge
    deliver(*delivery(bare, type="charge.succeeded", created=NOW - 90))
    deliver(*delivery(_refund("re_ll", "ch_late_link", 633), type="refund.created", created=NOW))
    invoice.refresh_from_db()
    assert invoice.amount_refunded == 0  # nothing yet ties the charge to the invoice

    deliver(*delivery(_charge(invoice, "ch_late_link"), type="charge.captured", created=NOW))

    invoice.refresh_from_db()
    assert (invoice.amount_refunded, invoice.amount_collected) == (633, TOTAL - 633)
    assert not CreditEntry.objects.exists()


@pytest.mark.django_db
def test_an_older_refund_snapshot_never_undoes_a_newer_one_embedded_in_the_charge(
    deliver: Any,
) -> None:
    invoice, ch = _paid_invoice(deliver, "embedded")
    succeeded = _refund("re_embedded", ch, TOTAL)
    charge = _charge(
        invoice,
        ch,
        amount_refunded=TOTAL,
        refunded=True,
        refunds={"object": "list", "data": [succeeded], "has_more": False, "url": "/v1/refunds"},
    )
    deliver(*delivery(charge, type="charge.refunded", id="evt_emb_new", created=NOW))
    # The refund's own, older event (still pending then) arrives late.
    pending = _refund("re_embedded", ch, TOTAL, status="pending")
    deliver(*delivery(pending, type="refund.created", id="evt_emb_old", created=NOW - 30))

    invoice.refresh_from_db()
    assert invoice.amount_refunded == TOTAL
    assert StripeEvent.objects.get(stripe_id="evt_emb_old").status == "processed"
