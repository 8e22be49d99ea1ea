"""Payment facts reported by the provider (Stripe): invoice payment status, refunds, disputes and
the customer link. The webhook handlers call these; billing never imports ``webhooks``.

Every function is idempotent (the same fact applied twice changes nothing the second time) and
safe against out-of-order delivery: ``occurred_at`` is when the provider produced the fact, and
an older fact never undoes a newer one. Each change and its audit entry commit together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from billing import messages
from billing.ledger import credit_grant
from billing.models import CreditEntry, Dispute, Invoice, ReasonCode, Refund
from neruba import audit
from neruba.models import Customer

# Higher rank wins regardless of timing; equal rank is a no-op. ``paid`` and ``void`` are
# terminal: once money arrived (or the invoice was cancelled) no late "failed" may undo it.
STATUS_RANK = {
    Invoice.Status.FINALIZED: 0,
    Invoice.Status.PAYMENT_FAILED: 1,
    Invoice.Status.UNCOLLECTIBLE: 2,
    Invoice.Status.PAID: 3,
    Invoice.Status.VOID: 3,
}
TERMINAL = {Invoice.Status.PAID, Invoice.Status.VOID}

# Stripe dispute statuses after which the outcome can no longer change.
DISPUTE_CLOSED = {"won", "lost", "warning_closed", "prevented"}
REFUND_FAILED = {"failed", "canceled"}


@dataclass
class PaymentChange:
    """What an operation did (or, in a dry run, would do), in words for the console."""

    changed: bool = False
    notes: list[str] = field(default_factory=list)

    def add(self, note: str, *, changed: bool = True) -> None:
        self.notes.append(note)
        self.changed = self.changed or changed


def invoice_for_provider(*, provider_invoice_id: str, invoice_number: str = "") -> Invoice | None:
    """The Neruba invoice behind a provider invoice: by the id we stored when pushing it, else by
    the invoice number we put in the provider invoice's metadata."""
    if provider_invoice_id:
        found = (
            Invoice.objects.select_related("customer")
            .filter(provider_invoice_id=provider_invoice_id)
            .first()
        )
        if found is not None:
            return found
    if invoice_number:
        return Invoice.objects.select_related("customer").filter(number=invoice_number).first()
    return None


def _transition_allowed(
    *, current: str, new: str, changed_at: datetime | None, occurred_at: datetime
) -> tuple[bool, str]:
    if current == new:
        return False, f"already {new}"
    if current in TERMINAL:
        return False, f"stays {current}: {current} is final, {new} reported later is ignored"
    if STATUS_RANK[new] > STATUS_RANK[current]:
        return True, ""
    # A lower-ranked status (e.g. failed after uncollectible) only wins when it is newer.
    if changed_at is not None and occurred_at <= changed_at:
        return False, (
            f"stays {current}: {new} happened at {occurred_at.isoformat()}, before the "
            f"current status was set at {changed_at.isoformat()}"
        )
    return True, ""


def invoice_payment_status_record(
    *,
    invoice: Invoice,
    status: str,
    occurred_at: datetime,
    provider_invoice_id: str = "",
    source: str,
    details: dict[str, Any] | None = None,
    actor: audit.Actor = None,
) -> PaymentChange:
    """Applies a provider-reported status (paid, payment_failed, void, uncollectible).

    The invoice row is locked so two events for one invoice apply one after the other; a paid or
    void invoice never moves, and a lower-ranked status older than the current one is ignored.
    ``source`` names the fact (e.g. the Stripe event id) for the audit trail."""
    if status not in STATUS_RANK or status == Invoice.Status.FINALIZED:
        raise ValueError(f"not a provider payment status: {status}")
    result = PaymentChange()
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        allowed, why = _transition_allowed(
            current=locked.status,
            new=status,
            changed_at=locked.status_changed_at,
            occurred_at=occurred_at,
        )
        updates: list[str] = []
        before = {"status": locked.status, "provider_invoice_id": locked.provider_invoice_id}
        if provider_invoice_id and not locked.provider_invoice_id:
            # Found through metadata: remember the provider id so later events match directly.
            locked.provider_invoice_id = provider_invoice_id
            updates.append("provider_invoice_id")
            result.add(f"invoice {locked.number}: linked to {provider_invoice_id}")
        if allowed:
            locked.status = status
            # The fact's own time, so a later comparison is against when it happened at the
            # provider, not when we happened to process it.
            locked.status_changed_at = max(occurred_at, locked.status_changed_at or occurred_at)
            updates += ["status", "status_changed_at"]
            if status == Invoice.Status.PAID:
                locked.paid_at = occurred_at
                updates.append("paid_at")
            elif status == Invoice.Status.VOID:
                locked.voided_at = occurred_at
                updates.append("voided_at")
            result.add(f"invoice {locked.number}: {before['status']} → {status}")
        else:
            result.add(f"invoice {locked.number}: {why}", changed=False)
        if updates:
            locked.save(update_fields=updates)
            audit.record(
                actor=actor,
                action="invoice.payment_status",
                target=locked,
                customer=locked.customer,
                reason=source,
                before=before,
                after={
                    "status": locked.status,
                    "provider_invoice_id": locked.provider_invoice_id,
                    "occurred_at": occurred_at,
                    **(details or {}),
                },
            )
        if allowed:
            messages.invoice_status_published(invoice=locked)
    invoice.refresh_from_db()
    return result


def _credit_reverse(*, entry: CreditEntry, source_key: str, reason: str) -> bool:
    """Appends the reversal of ``entry`` once (idempotent on ``source_key``)."""
    if CreditEntry.objects.filter(source_key=source_key).exists():
        return False
    reversal = CreditEntry.objects.create(
        customer=entry.customer,
        currency=entry.currency,
        amount=-entry.amount,
        kind=CreditEntry.Kind.REVERSAL,
        reason_code=entry.reason_code,
        invoice=entry.invoice,
        reverses=entry,
        source_key=source_key,
        note=reason,
    )
    audit.record(
        actor=None,
        action="credit.reverse",
        target=reversal,
        customer=entry.customer,
        reason=reason,
        after={"amount": reversal.amount, "reverses": entry.pk, "source_key": source_key},
    )
    return True


def _sync_record(
    *,
    model: type[Refund] | type[Dispute],
    label: str,
    lookup: dict[str, str],
    values: dict[str, Any],
    refusal: Callable[[Any], str],
    source: str,
    result: PaymentChange,
) -> Any:
    """Creates or updates a provider record (refund, dispute) to ``values``, audited. An update
    is skipped when ``refusal(row)`` names a reason (an older snapshot, a closed dispute)."""
    row, created = model.objects.select_for_update().get_or_create(**lookup, defaults=values)
    name = model._meta.model_name
    if created:
        result.add(f"{label}: recorded ({row.amount} {row.currency}, {row.status})")
        audit.record(
            actor=None,
            action=f"{name}.record",
            target=row,
            customer=row.customer,
            reason=source,
            after={"amount": row.amount, "currency": row.currency, "status": row.status},
        )
        return row
    if row.status == values["status"] and row.amount == values["amount"]:
        result.add(f"{label}: already {row.status}", changed=False)
        return row
    why = refusal(row)
    if why:
        result.add(f"{label}: {why}", changed=False)
        return row
    before = {"status": row.status, "amount": row.amount}
    row.status, row.amount = values["status"], values["amount"]
    row.invoice = row.invoice or values["invoice"]
    row.updated_at = timezone.now()
    fields = ["status", "amount", "invoice", "updated_at"]
    if isinstance(row, Dispute) and row.closed_at is None and values.get("closed_at"):
        row.closed_at = values["closed_at"]
        fields.append("closed_at")
    row.save(update_fields=fields)
    result.add(f"{label}: {before['status']} → {row.status}")
    audit.record(
        actor=None,
        action=f"{name}.update",
        target=row,
        customer=row.customer,
        reason=source,
        before=before,
        after={"status": row.status, "amount": row.amount},
    )
    return row


def refund_record(
    *,
    stripe_refund_id: str,
    charge_id: str,
    amount: int,
    currency: str,
    status: str,
    reason: str,
    stripe_created: datetime | None,
    customer: Customer,
    invoice: Invoice | None,
    source: str,
    stale: bool = False,
) -> PaymentChange:
    """Keeps the ``Refund`` row in step with the provider and, once it succeeded, credits the
    customer with reason ``refund``; a refund that later fails is reversed. The credit is keyed
    ``refund:<id>`` so redeliveries and replays never double it. ``stale`` (a newer snapshot of
    this refund was already applied) keeps the row as it is."""
    result = PaymentChange()
    with transaction.atomic():
        refund = _sync_record(
            model=Refund,
            label=f"refund {stripe_refund_id}",
            lookup={"stripe_refund_id": stripe_refund_id},
            values={
                "charge_id": charge_id,
                "customer": customer,
                "invoice": invoice,
                "amount": amount,
                "currency": currency.upper(),
                "status": status,
                "reason": reason or "",
                "stripe_created": stripe_created,
            },
            refusal=lambda row: "older snapshot, kept as is" if stale else "",
            source=source,
            result=result,
        )
        grant_key = f"refund:{stripe_refund_id}"
        grant = CreditEntry.objects.filter(source_key=grant_key).first()
        if refund.status == "succeeded" and grant is None:
            credit_grant(
                customer=refund.customer or customer,
                amount=refund.amount,
                reason_code=ReasonCode.REFUND,
                actor=None,
                reason=f"Stripe refund {stripe_refund_id} ({source})",
                currency=refund.currency,
                invoice=refund.invoice,
                source_key=grant_key,
                extra={"charge": charge_id},
            )
            result.add(f"credit +{refund.amount} {refund.currency} (refund)")
        elif refund.status in REFUND_FAILED and grant is not None:
            if _credit_reverse(
                entry=grant,
                source_key=f"refund-reversal:{stripe_refund_id}",
                reason=f"Stripe refund {stripe_refund_id} {refund.status} ({source})",
            ):
                result.add(f"credit -{grant.amount} {grant.currency} (refund {refund.status})")
    return result


def dispute_record(
    *,
    stripe_dispute_id: str,
    charge_id: str,
    amount: int,
    currency: str,
    status: str,
    reason: str,
    stripe_created: datetime | None,
    occurred_at: datetime,
    customer: Customer,
    invoice: Invoice | None,
    source: str,
    stale: bool = False,
) -> PaymentChange:
    """Keeps the ``Dispute`` row in step with the provider. A closed dispute never reopens from
    an older snapshot; a lost dispute credits the customer once with reason ``dispute`` (keyed
    ``dispute:<id>``)."""

    def refusal(row: Dispute) -> str:
        if stale or (row.status in DISPUTE_CLOSED and status not in DISPUTE_CLOSED):
            return f"stays {row.status} ({status} is older)"
        return ""

    result = PaymentChange()
    with transaction.atomic():
        dispute = _sync_record(
            model=Dispute,
            label=f"dispute {stripe_dispute_id}",
            lookup={"stripe_dispute_id": stripe_dispute_id},
            values={
                "charge_id": charge_id,
                "customer": customer,
                "invoice": invoice,
                "amount": amount,
                "currency": currency.upper(),
                "status": status,
                "reason": reason or "",
                "stripe_created": stripe_created,
                "closed_at": occurred_at if status in DISPUTE_CLOSED else None,
            },
            refusal=refusal,
            source=source,
            result=result,
        )
        if dispute.status == "lost":
            _, granted = credit_grant(
                customer=dispute.customer or customer,
                amount=dispute.amount,
                reason_code=ReasonCode.DISPUTE,
                actor=None,
                reason=f"Stripe dispute {stripe_dispute_id} lost ({source})",
                currency=dispute.currency,
                invoice=dispute.invoice,
                source_key=f"dispute:{stripe_dispute_id}",
                extra={"charge": charge_id},
            )
            if granted:
                result.add(f"credit +{dispute.amount} {dispute.currency} (dispute lost)")
    return result


def customer_stripe_link(
    *, customer: Customer, stripe_customer_id: str, source: str, actor: audit.Actor = None
) -> PaymentChange:
    """Sets (or, with ``""``, clears) the customer's Stripe id; audited, no-op when unchanged."""
    result = PaymentChange()
    with transaction.atomic():
        locked = Customer.objects.select_for_update().get(pk=customer.pk)
        if locked.stripe_customer_id == stripe_customer_id:
            result.add(f"customer {locked.external_id}: link unchanged", changed=False)
            return result
        before = {"stripe_customer_id": locked.stripe_customer_id}
        locked.stripe_customer_id = stripe_customer_id
        locked.save(update_fields=["stripe_customer_id"])
        audit.record(
            actor=actor,
            action="customer.stripe_link",
            target=locked,
            customer=locked,
            reason=source,
            before=before,
            after={"stripe_customer_id": stripe_customer_id},
        )
        result.add(
            f"customer {locked.external_id}: stripe id "
            f"{before['stripe_customer_id'] or '(none)'} → {stripe_customer_id or '(none)'}"
        )
    customer.stripe_customer_id = stripe_customer_id
    return result
