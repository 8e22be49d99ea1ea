"""One handler per Stripe event type. Handlers read the stored payload, find the Neruba objects
it is about and call billing's payment services, which are idempotent and order-safe.

A handler returns ``ignored`` for objects Neruba does not know (another product on the same
Stripe account, an invoice created by hand in the dashboard): that is not a failure and must
not be retried. It raises for anything that should be retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from billing import payments
from billing.models import Dispute, Invoice, PaymentCharge, Refund
from neruba.models import Customer
from webhooks.exceptions import StripeCustomerMismatch
from webhooks.models import StripeEvent


@dataclass
class HandlerResult:
    outcome: str  # "processed" or "ignored"
    notes: list[str] = field(default_factory=list)
    invoice: Invoice | None = None
    customer: Customer | None = None


def _ignored(note: str) -> HandlerResult:
    return HandlerResult(outcome="ignored", notes=[note])


def _id(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def _charge_amount(charge: dict[str, Any] | None) -> int | None:
    """What a charge object says it collected (captured, else its amount), when we have one."""
    if not charge:
        return None
    for key in ("amount_captured", "amount"):
        value = charge.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if isinstance(value, int) else None


def _source(event: StripeEvent) -> str:
    return f"stripe {event.type} {event.stripe_id}"


def _obj(event: StripeEvent) -> dict[str, Any]:
    return event.payload["data"]["object"]


def _metadata(obj: dict[str, Any] | None) -> dict[str, Any]:
    meta = (obj or {}).get("metadata")
    return meta if isinstance(meta, dict) else {}


def _stale(event: StripeEvent, object_id: str) -> bool:
    """True when a newer snapshot of the same Stripe object was already applied: an older event
    delivered late must not undo it."""
    return (
        StripeEvent.objects.filter(
            object_id=object_id, status=StripeEvent.Status.PROCESSED, created__gt=event.created
        )
        .exclude(pk=event.pk)
        .exists()
    )


def _refund_stale(event: StripeEvent, refund_id: str, charge_id: str) -> bool:
    """A refund's snapshots come as the refund itself (``refund.*``, ``charge.refund.updated``)
    and, with older API versions, embedded in ``charge.refunded`` (whose object is the charge).
    Either kind, when newer and already applied, makes this snapshot stale."""
    if _stale(event, refund_id):
        return True
    if not charge_id:
        return False
    newer = StripeEvent.objects.filter(
        object_id=charge_id,
        type="charge.refunded",
        status=StripeEvent.Status.PROCESSED,
        created__gt=event.created,
    ).exclude(pk=event.pk)
    for payload in newer.values_list("payload", flat=True)[:20]:
        embedded = ((payload.get("data") or {}).get("object") or {}).get("refunds") or {}
        if any(_id(r) == refund_id for r in embedded.get("data") or []):
            return True
    return False


def _customer_by_stripe(stripe_customer_id: str) -> Customer | None:
    if not stripe_customer_id:
        return None
    return Customer.objects.filter(stripe_customer_id=stripe_customer_id).first()


def _charge_context(
    *, event: StripeEvent, charge_id: str, objects: list[dict[str, Any]]
) -> tuple[Customer | None, Invoice | None]:
    """The customer and invoice a charge belongs to. Newer Stripe API versions no longer put the
    invoice on the charge, so we also use what earlier events and records taught us."""
    customer: Customer | None = None
    invoice: Invoice | None = None
    for obj in objects:
        invoice = invoice or payments.invoice_for_provider(
            provider_invoice_id=_id(obj.get("invoice")),
            invoice_number=str(_metadata(obj).get("neruba_invoice_number") or ""),
        )
        customer = customer or _customer_by_stripe(_id(obj.get("customer")))
    if charge_id and (customer is None or invoice is None):
        known_charge = (
            PaymentCharge.objects.filter(charge_id=charge_id)
            .select_related("customer", "invoice")
            .first()
        )
        if known_charge is not None:
            customer = customer or known_charge.customer
            invoice = invoice or known_charge.invoice
    if charge_id and (customer is None or invoice is None):
        for model in (Refund, Dispute):
            known = (
                model.objects.filter(charge_id=charge_id)
                .exclude(customer=None)
                .select_related("customer", "invoice")
                .first()
            )
            if known is not None:
                customer = customer or known.customer
                invoice = invoice or known.invoice
        earlier = (
            StripeEvent.objects.filter(object_id=charge_id)
            .exclude(pk=event.pk)
            .exclude(customer=None, invoice=None)
            .select_related("customer", "invoice")
            .first()
        )
        if earlier is not None:
            customer = customer or earlier.customer
            invoice = invoice or earlier.invoice
    if customer is None and invoice is not None:
        customer = invoice.customer
    return customer, invoice


# --- invoices ---------------------------------------------------------------------------------

INVOICE_STATUS = {
    "invoice.paid": Invoice.Status.PAID,
    "invoice.payment_succeeded": Invoice.Status.PAID,
    "invoice.payment_failed": Invoice.Status.PAYMENT_FAILED,
    "invoice.voided": Invoice.Status.VOID,
    "invoice.marked_uncollectible": Invoice.Status.UNCOLLECTIBLE,
}


def handle_invoice(event: StripeEvent) -> HandlerResult:
    obj = _obj(event)
    invoice = payments.invoice_for_provider(
        provider_invoice_id=_id(obj.get("id")),
        invoice_number=str(_metadata(obj).get("neruba_invoice_number") or ""),
    )
    if invoice is None:
        return _ignored(f"no Neruba invoice for Stripe invoice {obj.get('id')}")
    stripe_customer = _id(obj.get("customer"))
    linked = invoice.customer.stripe_customer_id
    if stripe_customer and linked and stripe_customer != linked:
        # Fails (and retries, then dies) rather than ignoring: money moved at Stripe for an
        # invoice we issued, and only an operator can tell which customer link is wrong.
        raise StripeCustomerMismatch(
            f"Stripe invoice {obj.get('id')} belongs to {stripe_customer}, but invoice "
            f"{invoice.number}'s customer {invoice.customer.external_id} is linked to {linked}",
            details={"stripe_customer": stripe_customer, "linked": linked},
        )
    details = {
        "stripe_event": event.stripe_id,
        "amount_paid": obj.get("amount_paid"),
        "amount_due": obj.get("amount_due"),
        "attempt_count": obj.get("attempt_count"),
        "next_payment_attempt": _ts(obj.get("next_payment_attempt")),
        "hosted_invoice_url": obj.get("hosted_invoice_url"),
    }
    change = payments.invoice_payment_status_record(
        invoice=invoice,
        status=INVOICE_STATUS[event.type],
        occurred_at=event.created,
        provider_invoice_id=_id(obj.get("id")),
        source=_source(event),
        details=details,
        amount_paid=obj.get("amount_paid") if isinstance(obj.get("amount_paid"), int) else None,
    )
    return HandlerResult("processed", change.notes, invoice=invoice, customer=invoice.customer)


# --- charges ----------------------------------------------------------------------------------


def handle_charge(event: StripeEvent) -> HandlerResult:
    """A charge that collected money: remembered with its amount, so a later refund or dispute
    is measured against what the charge really collected."""
    charge = _obj(event)
    charge_id = _id(charge.get("id"))
    customer, invoice = _charge_context(event=event, charge_id=charge_id, objects=[charge])
    if customer is None:
        return _ignored(f"charge {charge_id} is not a Neruba customer's")
    change = payments.charge_record(
        charge_id=charge_id,
        amount=_charge_amount(charge),
        currency=str(charge.get("currency") or customer.currency),
        customer=customer,
        invoice=invoice,
        source=_source(event),
    )
    return HandlerResult("processed", change.notes, invoice=invoice, customer=customer)


# --- refunds ----------------------------------------------------------------------------------


def _apply_refund(
    event: StripeEvent, refund: dict[str, Any], charge: dict[str, Any] | None
) -> HandlerResult:
    refund_id = _id(refund.get("id"))
    charge_id = _id(refund.get("charge")) or _id((charge or {}).get("id"))
    customer, invoice = _charge_context(
        event=event, charge_id=charge_id, objects=[refund, *([charge] if charge else [])]
    )
    if customer is None:
        return _ignored(f"refund {refund_id}: charge {charge_id} is not a Neruba customer's")
    change = payments.refund_record(
        stripe_refund_id=refund_id,
        charge_id=charge_id,
        amount=int(refund.get("amount") or 0),
        currency=str(refund.get("currency") or customer.currency),
        status=str(refund.get("status") or ""),
        reason=str(refund.get("reason") or ""),
        stripe_created=_ts(refund.get("created")),
        customer=customer,
        invoice=invoice,
        source=_source(event),
        stale=_refund_stale(event, refund_id, charge_id),
        charge_amount=_charge_amount(charge),
    )
    return HandlerResult("processed", change.notes, invoice=invoice, customer=customer)


def handle_charge_refunded(event: StripeEvent) -> HandlerResult:
    charge = _obj(event)
    refunds = (charge.get("refunds") or {}).get("data") or []
    if not refunds:
        # Since API version 2022-11-15 the charge no longer embeds its refunds; each refund is
        # then recorded from its own refund.created / charge.refund.updated event.
        return _ignored(f"charge {charge.get('id')} carries no refund objects")
    results = [_apply_refund(event, refund, charge) for refund in refunds]
    merged = HandlerResult("ignored")
    for result in results:
        merged.notes += result.notes
        if result.outcome == "processed":
            merged.outcome = "processed"
            merged.invoice = merged.invoice or result.invoice
            merged.customer = merged.customer or result.customer
    return merged


def handle_refund(event: StripeEvent) -> HandlerResult:
    return _apply_refund(event, _obj(event), None)


# --- disputes ---------------------------------------------------------------------------------


def handle_dispute(event: StripeEvent) -> HandlerResult:
    dispute = _obj(event)
    dispute_id = _id(dispute.get("id"))
    charge = dispute.get("charge") if isinstance(dispute.get("charge"), dict) else None
    charge_id = _id(dispute.get("charge"))
    customer, invoice = _charge_context(
        event=event, charge_id=charge_id, objects=[dispute, *([charge] if charge else [])]
    )
    if customer is None:
        return _ignored(f"dispute {dispute_id}: charge {charge_id} is not a Neruba customer's")
    change = payments.dispute_record(
        stripe_dispute_id=dispute_id,
        charge_id=charge_id,
        amount=int(dispute.get("amount") or 0),
        currency=str(dispute.get("currency") or customer.currency),
        status=str(dispute.get("status") or ""),
        reason=str(dispute.get("reason") or ""),
        stripe_created=_ts(dispute.get("created")),
        occurred_at=event.created,
        customer=customer,
        invoice=invoice,
        source=_source(event),
        stale=_stale(event, dispute_id),
        charge_amount=_charge_amount(charge),
    )
    return HandlerResult("processed", change.notes, invoice=invoice, customer=customer)


# --- customers --------------------------------------------------------------------------------


def handle_customer(event: StripeEvent) -> HandlerResult:
    obj = _obj(event)
    stripe_id = _id(obj.get("id"))
    deleted = event.type == "customer.deleted" or bool(obj.get("deleted"))
    customer = _customer_by_stripe(stripe_id)
    external_id = _metadata(obj).get("external_id") or _metadata(obj).get("neruba_external_id")
    if customer is None and external_id and not deleted:
        customer = Customer.objects.filter(external_id=str(external_id)).first()
    if customer is None:
        return _ignored(f"no Neruba customer for Stripe customer {stripe_id}")
    if _stale(event, stripe_id):
        return HandlerResult(
            "processed", [f"customer {customer.external_id}: older snapshot, kept as is"]
        )
    if deleted:
        change = payments.customer_stripe_link(
            customer=customer, stripe_customer_id="", source=_source(event)
        )
    elif customer.stripe_customer_id and customer.stripe_customer_id != stripe_id:
        # Two Stripe customers claim the same external id; keep the existing link for a human.
        return HandlerResult(
            "processed",
            [
                f"customer {customer.external_id} stays linked to "
                f"{customer.stripe_customer_id}, not {stripe_id}"
            ],
            customer=customer,
        )
    else:
        change = payments.customer_stripe_link(
            customer=customer, stripe_customer_id=stripe_id, source=_source(event)
        )
    return HandlerResult("processed", change.notes, customer=customer)


HANDLERS: dict[str, Callable[[StripeEvent], HandlerResult]] = {
    **dict.fromkeys(INVOICE_STATUS, handle_invoice),
    "charge.succeeded": handle_charge,
    "charge.captured": handle_charge,
    "charge.refunded": handle_charge_refunded,
    "charge.refund.updated": handle_refund,
    "refund.created": handle_refund,
    "refund.updated": handle_refund,
    "refund.failed": handle_refund,
    **dict.fromkeys(
        [
            "charge.dispute.created",
            "charge.dispute.updated",
            "charge.dispute.closed",
            "charge.dispute.funds_withdrawn",
            "charge.dispute.funds_reinstated",
        ],
        handle_dispute,
    ),
    "customer.created": handle_customer,
    "customer.updated": handle_customer,
    "customer.deleted": handle_customer,
}


def dispatch(event: StripeEvent) -> HandlerResult:
    handler = HANDLERS.get(event.type)
    if handler is None:
        return _ignored(f"Neruba does not handle {event.type} events")
    return handler(event)
