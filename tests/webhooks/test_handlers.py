from __future__ import annotations

import time
from typing import Any

import pytest

from billing.models import CreditEntry, Dispute, Invoice, Refund
from neruba.models import AuditEntry
from tests import factories
from tests.webhooks.helpers import delivery, invoice_event, make_invoice
from webhooks.models import StripeEvent
from webhooks.samples import stripe_object

NOW = int(time.time())


def status_of(stripe_id: str) -> str:
    return StripeEvent.objects.get(stripe_id=stripe_id).status


@pytest.mark.django_db
def test_invoice_paid_marks_the_invoice_paid_and_audits_it_as_the_system(deliver: Any) -> None:
    invoice = make_invoice()
    deliver(*invoice_event(invoice, type="invoice.payment_succeeded", id="evt_paid"))
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID and invoice.paid_at is not None
    entry = AuditEntry.objects.get(action="invoice.payment_status")
    assert entry.actor_label == "system" and entry.target_id == str(invoice.pk)
    assert entry.before["status"] == "finalized" and entry.after["status"] == "paid"
    assert "evt_paid" in entry.reason


@pytest.mark.django_db
def test_payment_failed_arriving_after_paid_leaves_the_invoice_paid(deliver: Any) -> None:
    invoice = make_invoice()
    # Stripe created the failure first, but it is delivered after the payment.
    deliver(*invoice_event(invoice, type="invoice.paid", id="evt_p", created=NOW - 60))
    deliver(*invoice_event(invoice, type="invoice.payment_failed", id="evt_f", created=NOW - 120))
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert status_of("evt_f") == StripeEvent.Status.PROCESSED
    # Even a failure reported later than the payment cannot undo it: paid is final.
    deliver(*invoice_event(invoice, type="invoice.payment_failed", id="evt_f2", created=NOW))
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert AuditEntry.objects.filter(action="invoice.payment_status").count() == 1


@pytest.mark.django_db
def test_a_failed_payment_is_recorded_and_a_later_payment_wins(deliver: Any) -> None:
    invoice = make_invoice()
    deliver(*invoice_event(invoice, type="invoice.payment_failed", created=NOW - 60))
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAYMENT_FAILED
    entry = AuditEntry.objects.get(action="invoice.payment_status")
    assert entry.after["status"] == "payment_failed" and "attempt_count" in entry.after
    deliver(*invoice_event(invoice, type="invoice.paid", created=NOW))
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID


@pytest.mark.django_db
def test_an_older_failure_does_not_undo_a_newer_uncollectible(deliver: Any) -> None:
    invoice = make_invoice()
    deliver(*invoice_event(invoice, type="invoice.marked_uncollectible", created=NOW))
    deliver(*invoice_event(invoice, type="invoice.payment_failed", created=NOW - 600))
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.UNCOLLECTIBLE


@pytest.mark.django_db
def test_voided_invoice_is_final(deliver: Any) -> None:
    invoice = make_invoice()
    deliver(*invoice_event(invoice, type="invoice.voided", created=NOW - 10))
    deliver(*invoice_event(invoice, type="invoice.paid", created=NOW))
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.VOID and invoice.voided_at is not None


@pytest.mark.django_db
def test_an_invoice_is_found_by_its_number_in_stripe_metadata(deliver: Any) -> None:
    invoice = make_invoice()
    Invoice.objects.filter(pk=invoice.pk).update(provider_invoice_id="")
    obj = stripe_object(
        "invoice",
        id="in_from_dashboard",
        customer=invoice.customer.stripe_customer_id,
        metadata={"neruba_invoice_number": invoice.number},
    )
    deliver(*delivery(obj, type="invoice.paid", id="evt_meta"))
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    assert invoice.provider_invoice_id == "in_from_dashboard"
    assert StripeEvent.objects.get(stripe_id="evt_meta").invoice == invoice


def refund_charge(customer_stripe_id: str, *, refund_id: str = "re_1", amount: int = 1500) -> Any:
    refund = stripe_object("refund", id=refund_id, amount=amount, charge="ch_refunded")
    charge = stripe_object(
        "charge",
        id="ch_refunded",
        customer=customer_stripe_id,
        amount=5000,
        amount_refunded=amount,
        refunded=False,
        refunds={"object": "list", "data": [refund], "has_more": False, "url": "/v1/refunds"},
    )
    return refund, charge


@pytest.mark.django_db
def test_a_refund_is_cash_on_its_invoice_and_never_credit_however_often_it_arrives(
    deliver: Any,
) -> None:
    invoice = make_invoice()
    customer = invoice.customer
    refund, charge = refund_charge(customer.stripe_customer_id)
    charge["invoice"] = invoice.provider_invoice_id

    deliver(*delivery(charge, type="charge.refunded", id="evt_refunded", created=NOW - 5))
    deliver(*delivery(refund, type="charge.refund.updated", id="evt_ref_upd", created=NOW))
    deliver(*delivery(charge, type="charge.refunded", id="evt_refunded_again", created=NOW))

    stored = Refund.objects.get(stripe_refund_id="re_1")
    assert (stored.amount, stored.currency, stored.status) == (1500, "USD", "succeeded")
    assert stored.customer == customer and stored.charge_id == "ch_refunded"
    assert stored.invoice == invoice
    assert not CreditEntry.objects.filter(customer=customer).exists()
    invoice.refresh_from_db()
    assert (invoice.amount_refunded, invoice.amount_disputed) == (1500, 0)
    assert {status_of(e) for e in ("evt_refunded", "evt_ref_upd", "evt_refunded_again")} == {
        "processed"
    }


@pytest.mark.django_db
def test_a_refund_that_later_fails_comes_off_the_invoice_and_no_credit_moves(
    deliver: Any,
) -> None:
    invoice = make_invoice()
    refund, charge = refund_charge(invoice.customer.stripe_customer_id, refund_id="re_fails")
    charge["invoice"] = invoice.provider_invoice_id
    deliver(*delivery(charge, type="charge.refunded", created=NOW - 5))
    invoice.refresh_from_db()
    assert invoice.amount_refunded == 1500
    failed = {**refund, "status": "failed"}
    deliver(*delivery(failed, type="charge.refund.updated", created=NOW))
    deliver(*delivery(failed, type="charge.refund.updated", created=NOW))
    invoice.refresh_from_db()
    assert (invoice.amount_refunded, invoice.amount_collected) == (0, 0)
    assert not CreditEntry.objects.exists()
    assert Refund.objects.get(stripe_refund_id="re_fails").status == "failed"


@pytest.mark.django_db
def test_a_refund_event_without_embedded_refunds_is_ignored(deliver: Any) -> None:
    factories.CustomerFactory(external_id="rf2", stripe_customer_id="cus_rf2")
    charge = stripe_object("charge", customer="cus_rf2", amount_refunded=100)
    deliver(*delivery(charge, type="charge.refunded", id="evt_bare"))
    assert status_of("evt_bare") == "ignored"


def dispute(status: str, charge_id: str = "ch_disputed") -> dict[str, Any]:
    return stripe_object("dispute", id="dp_1", charge=charge_id, amount=5000, status=status)


@pytest.mark.django_db
def test_a_lost_dispute_is_cash_on_its_invoice_never_credit_and_never_reopens(
    deliver: Any,
) -> None:
    invoice = make_invoice()
    customer = invoice.customer
    # The charge is known from an earlier event about it.
    charge = stripe_object(
        "charge",
        id="ch_disputed",
        customer=customer.stripe_customer_id,
        invoice=invoice.provider_invoice_id,
        amount=5000,
    )
    deliver(*delivery(charge, type="charge.succeeded", id="evt_charge", created=NOW - 100))

    deliver(*delivery(dispute("needs_response"), type="charge.dispute.created", created=NOW - 90))
    assert not CreditEntry.objects.exists()
    deliver(*delivery(dispute("under_review"), type="charge.dispute.updated", created=NOW - 80))
    deliver(*delivery(dispute("lost"), type="charge.dispute.closed", id="evt_lost", created=NOW))
    deliver(*delivery(dispute("lost"), type="charge.dispute.closed", id="evt_lost2", created=NOW))
    # An older update delivered late.
    deliver(
        *delivery(
            dispute("needs_response"),
            type="charge.dispute.updated",
            id="evt_late",
            created=NOW - 70,
        )
    )

    record = Dispute.objects.get(stripe_dispute_id="dp_1")
    assert record.status == "lost" and record.closed_at is not None
    assert record.customer == customer
    assert record.invoice == invoice
    assert not CreditEntry.objects.exists()
    invoice.refresh_from_db()
    assert (invoice.amount_disputed, invoice.amount_refunded) == (5000, 0)
    assert status_of("evt_late") == "processed"


@pytest.mark.django_db
def test_a_won_dispute_leaves_the_ledger_alone(deliver: Any) -> None:
    factories.CustomerFactory(external_id="dw", stripe_customer_id="cus_dw")
    obj = {**dispute("won"), "charge": stripe_object("charge", id="ch_w", customer="cus_dw")}
    deliver(*delivery(obj, type="charge.dispute.closed"))
    assert Dispute.objects.get().status == "won"
    assert not CreditEntry.objects.exists()


@pytest.mark.django_db
def test_customer_updated_links_by_external_id_and_deleted_unlinks(deliver: Any) -> None:
    customer = factories.CustomerFactory(external_id="globex", stripe_customer_id="")
    obj = stripe_object("customer", id="cus_globex", metadata={"external_id": "globex"})
    deliver(*delivery(obj, type="customer.updated", created=NOW - 10))
    customer.refresh_from_db()
    assert customer.stripe_customer_id == "cus_globex"
    assert AuditEntry.objects.filter(action="customer.stripe_link").count() == 1

    deleted = stripe_object("deleted_customer", id="cus_globex")
    deliver(*delivery(deleted, type="customer.deleted", created=NOW))
    customer.refresh_from_db()
    assert customer.stripe_customer_id == ""
    # An older update arriving late does not bring the deleted link back.
    deliver(*delivery(obj, type="customer.updated", id="evt_cus_late", created=NOW - 5))
    customer.refresh_from_db()
    assert customer.stripe_customer_id == ""


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "type", "fields"),
    [
        ("invoice", "invoice.paid", {"id": "in_not_ours", "customer": "cus_nobody"}),
        ("refund", "charge.refund.updated", {"charge": "ch_not_ours"}),
        ("dispute", "charge.dispute.created", {"charge": "ch_not_ours"}),
        ("customer", "customer.updated", {"id": "cus_nobody"}),
        ("customer", "customer.subscription.paused", {}),
    ],
)
def test_events_for_objects_neruba_does_not_know_are_ignored_not_failed(
    deliver: Any, name: str, type: str, fields: dict[str, Any]
) -> None:
    deliver(*delivery(stripe_object(name, **fields), type=type, id="evt_unknown"))
    event = StripeEvent.objects.get(stripe_id="evt_unknown")
    assert event.status == StripeEvent.Status.IGNORED and event.last_error == ""
    assert event.next_attempt_at is None
    assert event.event_attempts.get().notes
