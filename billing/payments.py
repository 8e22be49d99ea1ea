"""Payment facts reported by the provider (Stripe): invoice payment status, refunds, disputes and
the customer link. The webhook handlers call these; billing never imports ``webhooks``.

Every function is idempotent (the same fact applied twice changes nothing the second time) and
safe against out-of-order delivery: ``occurred_at`` is when the provider produced the fact, and
an older fact never undoes a newer one. Each change and its audit entry commit together.

Cash and credit never mix. A refund or a lost dispute is money already back on the customer's
card: it is recorded on its invoice (``amount_refunded``, ``amount_disputed``,
``amount_collected``) and never grants spendable credit. A charge that returned more than it
collected (refunded and then lost in a dispute) raises a ``PaymentFinding`` for finance.
Locks are always taken invoice first, then charge, then the refund or dispute row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone

from billing import messages
from billing.models import Dispute, Invoice, PaymentCharge, PaymentFinding, Refund
from neruba import audit
from neruba.errors import ValidationFailed
from neruba.models import Customer
from neruba.money import money

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
# Only these returned money to the card: a pending refund has not, a won dispute gave it back.
REFUND_SUCCEEDED = "succeeded"
DISPUTE_LOST = "lost"


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
    amount_paid: int | None = None,
) -> PaymentChange:
    """Applies a provider-reported status (paid, payment_failed, void, uncollectible).

    The invoice row is locked so two events for one invoice apply one after the other; a paid or
    void invoice never moves, and a lower-ranked status older than the current one is ignored.
    ``source`` names the fact (e.g. the Stripe event id) for the audit trail. Paid records
    ``amount_paid`` (what the provider reports, else the invoice's total) and the net
    collected; the invoice's charges are then re-checked for over-returns."""
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
                locked.amount_paid = amount_paid if amount_paid else locked.total
                updates += ["paid_at", "amount_paid"]
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
                    "amount_paid_recorded": locked.amount_paid,
                },
            )
        if "amount_paid" in updates:
            invoice_cash_refresh(invoice=locked)
            settled = invoice_charges_settle(invoice=locked, source=source)
            result.notes += settled.notes
            result.changed = result.changed or settled.changed
        if allowed:
            messages.invoice_status_published(invoice=locked)
    invoice.refresh_from_db()
    return result


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


# --- the cash story: refunds and lost disputes are money back on the card, never credit -------


def _sum(qs: Any) -> int:
    return int(qs.aggregate(total=Sum("amount"))["total"] or 0)


def invoice_cash_refresh(*, invoice: Invoice) -> dict[str, int] | None:
    """Recomputes the invoice's refunded, disputed and collected amounts from its refund and
    dispute rows (the caller holds the invoice's row lock). Recomputed, never incremented: the
    same refund seen three times, or a refund that failed after it succeeded, adds up right.
    Returns the before values when something changed, else ``None``."""
    refunded = _sum(Refund.objects.filter(invoice=invoice, status=REFUND_SUCCEEDED))
    disputed = _sum(Dispute.objects.filter(invoice=invoice, status=DISPUTE_LOST))
    collected = invoice.amount_paid - refunded - disputed
    before = {
        "amount_paid": invoice.amount_paid,
        "amount_refunded": invoice.amount_refunded,
        "amount_disputed": invoice.amount_disputed,
        "amount_collected": invoice.amount_collected,
    }
    after = {**before, "amount_refunded": refunded, "amount_disputed": disputed}
    after["amount_collected"] = collected
    if after == before:
        return None
    invoice.amount_refunded, invoice.amount_disputed = refunded, disputed
    invoice.amount_collected = collected
    invoice.save(update_fields=["amount_refunded", "amount_disputed", "amount_collected"])
    return before


def _cash_words(invoice: Invoice) -> str:
    cur = invoice.currency
    return (
        f"invoice {invoice.number}: paid {money(invoice.amount_paid, cur)}, refunded "
        f"{money(invoice.amount_refunded, cur)}, lost in disputes "
        f"{money(invoice.amount_disputed, cur)}, collected {money(invoice.amount_collected, cur)}"
    )


def over_return_detail(
    *, charge_id: str, collected: int, refunded: int, disputed: int, currency: str
) -> str:
    """The finding's sentence: ``charge ch_… returned $38.00 of $19.00: refunded and lost in
    dispute``."""
    if refunded and disputed:
        how = "refunded and lost in dispute"
    elif refunded:
        how = "refunds add up past the charge"
    else:
        how = "lost in disputes past the charge"
    return (
        f"charge {charge_id} returned {money(refunded + disputed, currency)} of "
        f"{money(collected, currency)}: {how}"
    )


def _charge_lock(
    *, charge_id: str, customer: Customer | None, invoice: Invoice | None, currency: str
) -> PaymentCharge:
    """The charge's row, created if new, locked. ``INSERT … ON CONFLICT DO NOTHING`` then
    ``SELECT … FOR UPDATE``: two first events about one charge both end up waiting on one row
    instead of one of them failing on the unique id."""
    PaymentCharge.objects.bulk_create(
        [PaymentCharge(charge_id=charge_id, customer=customer, invoice=invoice, currency=currency)],
        ignore_conflicts=True,
    )
    return PaymentCharge.objects.select_for_update().get(charge_id=charge_id)


def _charge_collected(
    *, charge: PaymentCharge, invoice: Invoice | None, refunded: int, largest_dispute: int
) -> int:
    """What the charge collected (see ``_charge_settle``): the amount an event showed, else what
    its invoice was paid, else the least it can have been."""
    if charge.amount:
        return charge.amount
    if invoice is not None and invoice.amount_paid > 0:
        return invoice.amount_paid
    return max(refunded, largest_dispute)


def _charge_settle(
    *,
    charge: PaymentCharge,
    invoice: Invoice | None,
    source: str,
    result: PaymentChange,
) -> None:
    """Brings a locked charge's sums, its invoice's cash amounts and its payment finding in step
    with the refund and dispute rows.

    What the charge collected is the amount an event showed for it, else what its invoice was
    paid, else the least it can have been (Stripe refunds at most the charge in total, and a
    dispute is at most the charge): so a refund plus a lost dispute of the full amount is always
    seen, even before the invoice's payment arrives."""
    refunds = Refund.objects.filter(charge_id=charge.charge_id)
    disputes = Dispute.objects.filter(charge_id=charge.charge_id)
    if invoice is not None:
        # Facts that arrived before the charge was known to pay this invoice count on it now.
        refunds.filter(invoice=None).update(invoice=invoice)
        disputes.filter(invoice=None).update(invoice=invoice)
    refunded = _sum(refunds.filter(status=REFUND_SUCCEEDED))
    disputed = _sum(disputes.filter(status=DISPUTE_LOST))
    largest_dispute = int(disputes.aggregate(m=Max("amount"))["m"] or 0)
    collected = _charge_collected(
        charge=charge, invoice=invoice, refunded=refunded, largest_dispute=largest_dispute
    )
    now = timezone.now()
    if (charge.amount_refunded, charge.amount_disputed) != (refunded, disputed):
        charge.amount_refunded, charge.amount_disputed = refunded, disputed
        charge.updated_at = now
        charge.save(update_fields=["amount_refunded", "amount_disputed", "updated_at"])
    if invoice is not None:
        before = invoice_cash_refresh(invoice=invoice)
        if before is not None:
            result.add(_cash_words(invoice))
            audit.record(
                actor=None,
                action="invoice.cash",
                target=invoice,
                customer=invoice.customer,
                reason=source,
                before=before,
                after={
                    "amount_paid": invoice.amount_paid,
                    "amount_refunded": invoice.amount_refunded,
                    "amount_disputed": invoice.amount_disputed,
                    "amount_collected": invoice.amount_collected,
                },
            )
    currency = charge.currency or (invoice.currency if invoice else "")
    open_finding = (
        PaymentFinding.objects.select_for_update()
        .filter(charge=charge, status=PaymentFinding.Status.OPEN)
        .first()
    )
    returned = refunded + disputed
    if returned > collected:
        values = {
            "customer": charge.customer,
            "invoice": invoice or charge.invoice,
            "currency": currency,
            "collected": collected,
            "refunded": refunded,
            "disputed": disputed,
            "returned": returned,
            "detail": over_return_detail(
                charge_id=charge.charge_id,
                collected=collected,
                refunded=refunded,
                disputed=disputed,
                currency=currency,
            ),
        }
        numbers = ("collected", "refunded", "disputed")
        if open_finding is not None:
            if all(getattr(open_finding, k) == values[k] for k in numbers):
                result.add(f"payment finding {open_finding.pk}: unchanged", changed=False)
                return
            before = {k: getattr(open_finding, k) for k in numbers}
            for key, value in values.items():
                setattr(open_finding, key, value)
            open_finding.updated_at = now
            open_finding.save()
            result.add(f"payment finding {open_finding.pk} updated: {values['detail']}")
            audit.record(
                actor=None,
                action="payment_finding.update",
                target=open_finding,
                customer=charge.customer,
                reason=source,
                before=before,
                after={k: values[k] for k in (*numbers, "detail")},
            )
            return
        handled = (
            PaymentFinding.objects.filter(
                charge=charge, resolution=PaymentFinding.Resolution.HANDLED
            )
            .order_by("-resolved_at", "-id")
            .first()
        )
        if handled is not None and all(getattr(handled, k) == values[k] for k in numbers):
            # Finance already settled exactly these numbers: a replay must not reopen it.
            result.add(f"payment finding {handled.pk}: already handled", changed=False)
            return
        finding = PaymentFinding.objects.create(
            charge=charge, created_at=now, updated_at=now, **values
        )
        result.add(f"payment finding {finding.pk} opened: {values['detail']}")
        audit.record(
            actor=None,
            action="payment_finding.open",
            target=finding,
            customer=charge.customer,
            reason=source,
            after={k: values[k] for k in (*numbers, "returned", "detail")},
        )
        messages.payment_finding_opened_published(
            finding=finding, data=messages.over_return_data(finding)
        )
    elif open_finding is not None:
        why = (
            f"back in step: charge {charge.charge_id} now returns {money(returned, currency)} of "
            f"{money(collected, currency)}"
        )
        open_finding.status = PaymentFinding.Status.RESOLVED
        open_finding.resolution = PaymentFinding.Resolution.IN_STEP
        open_finding.resolved_at = now
        open_finding.resolution_reason = why
        open_finding.refunded, open_finding.disputed = refunded, disputed
        open_finding.returned, open_finding.collected = returned, collected
        open_finding.updated_at = now
        open_finding.save()
        result.add(f"payment finding {open_finding.pk} closed: {why}")
        audit.record(
            actor=None,
            action="payment_finding.close",
            target=open_finding,
            customer=charge.customer,
            reason=source,
            after={"status": open_finding.status, "resolution": open_finding.resolution},
        )


def _lock_context(
    *, charge_id: str, customer: Customer, invoice: Invoice | None, currency: str
) -> tuple[PaymentCharge | None, Invoice | None]:
    """Locks, in the one order every payment path uses (invoice, then charge), the invoice the
    fact concerns and the charge. The invoice may be known only from an earlier fact about the
    charge."""
    if invoice is None and charge_id:
        known = (
            PaymentCharge.objects.filter(charge_id=charge_id)
            .values_list("invoice_id", flat=True)
            .first()
        )
        invoice = Invoice.objects.filter(pk=known).first() if known else None
    locked = Invoice.objects.select_for_update().get(pk=invoice.pk) if invoice else None
    if not charge_id:
        return None, locked
    charge = _charge_lock(charge_id=charge_id, customer=customer, invoice=locked, currency=currency)
    fill = []
    if charge.customer_id is None:
        charge.customer, fill = customer, [*fill, "customer"]
    if charge.invoice_id is None and locked is not None:
        charge.invoice, fill = locked, [*fill, "invoice"]
    if not charge.currency:
        charge.currency, fill = currency, [*fill, "currency"]
    if fill:
        charge.save(update_fields=fill)
    return charge, locked


def _charge_amount_note(charge: PaymentCharge, amount: int | None, result: PaymentChange) -> None:
    if amount and charge.amount != amount:
        charge.amount = amount
        charge.save(update_fields=["amount"])
        result.add(f"charge {charge.charge_id}: collected {money(amount, charge.currency)}")


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
    charge_amount: int | None = None,
) -> PaymentChange:
    """Keeps the ``Refund`` row in step with the provider and records the cash it returned on
    the invoice (``amount_refunded``, ``amount_collected``). A refund is money back on the
    customer's card: it never grants credit. A charge that returned more than it collected
    raises a payment finding instead of moving any balance. ``stale`` (a newer snapshot of this
    refund was already applied) keeps the row as it is; the sums are recomputed from the rows,
    so redeliveries, replays and a refund that fails after succeeding stay exact."""
    if amount <= 0:
        # Stripe never refunds nothing: a malformed object fails (and is retried, then dead)
        # where an operator sees it, instead of recording a refund of zero.
        raise ValidationFailed(
            "A refund must be a positive amount.",
            details={"refund": stripe_refund_id, "amount": amount},
        )
    result = PaymentChange()
    currency = currency.upper()
    with transaction.atomic():
        charge, locked = _lock_context(
            charge_id=charge_id, customer=customer, invoice=invoice, currency=currency
        )
        refund = _sync_record(
            model=Refund,
            label=f"refund {stripe_refund_id}",
            lookup={"stripe_refund_id": stripe_refund_id},
            values={
                "charge_id": charge_id,
                "customer": customer,
                "invoice": locked,
                "amount": amount,
                "currency": currency,
                "status": status,
                "reason": reason or "",
                "stripe_created": stripe_created,
            },
            refusal=lambda row: "older snapshot, kept as is" if stale else "",
            source=source,
            result=result,
        )
        _cash_settle(
            row=refund,
            charge=charge,
            invoice=locked,
            charge_amount=charge_amount,
            source=source,
            result=result,
        )
    return result


def _cash_settle(
    *,
    row: Refund | Dispute,
    charge: PaymentCharge | None,
    invoice: Invoice | None,
    charge_amount: int | None,
    source: str,
    result: PaymentChange,
) -> None:
    """After a refund or dispute row is in step (inside its transaction): link it to the
    invoice learnt late, then settle the charge's sums (and its over-return finding), or, for a
    charge Neruba never saw, recompute the invoice's cash amounts alone."""
    if row.invoice_id is None and invoice is not None:
        type(row).objects.filter(pk=row.pk).update(invoice=invoice)
    if charge is not None:
        _charge_amount_note(charge, charge_amount, result)
        _charge_settle(charge=charge, invoice=invoice, source=source, result=result)
    elif invoice is not None:
        invoice_cash_refresh(invoice=invoice)


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
    charge_amount: int | None = None,
) -> PaymentChange:
    """Keeps the ``Dispute`` row in step with the provider. A closed dispute never reopens from
    an older snapshot. A lost dispute is money the card issuer took back: it is recorded on the
    invoice (``amount_disputed``, ``amount_collected``) and never grants credit; won on appeal,
    it comes off again. Over-returned charges raise a payment finding."""

    def refusal(row: Dispute) -> str:
        if stale or (row.status in DISPUTE_CLOSED and status not in DISPUTE_CLOSED):
            return f"stays {row.status} ({status} is older)"
        return ""

    result = PaymentChange()
    currency = currency.upper()
    with transaction.atomic():
        charge, locked = _lock_context(
            charge_id=charge_id, customer=customer, invoice=invoice, currency=currency
        )
        dispute = _sync_record(
            model=Dispute,
            label=f"dispute {stripe_dispute_id}",
            lookup={"stripe_dispute_id": stripe_dispute_id},
            values={
                "charge_id": charge_id,
                "customer": customer,
                "invoice": locked,
                "amount": amount,
                "currency": currency,
                "status": status,
                "reason": reason or "",
                "stripe_created": stripe_created,
                "closed_at": occurred_at if status in DISPUTE_CLOSED else None,
            },
            refusal=refusal,
            source=source,
            result=result,
        )
        _cash_settle(
            row=dispute,
            charge=charge,
            invoice=locked,
            charge_amount=charge_amount,
            source=source,
            result=result,
        )
    return result


def charge_record(
    *,
    charge_id: str,
    amount: int | None,
    currency: str,
    customer: Customer,
    invoice: Invoice | None,
    source: str,
) -> PaymentChange:
    """Remembers a charge and what it collected (``charge.succeeded``), then re-checks its
    refunds and disputes against that amount. Idempotent: the same charge seen again changes
    nothing."""
    result = PaymentChange()
    with transaction.atomic():
        charge, locked = _lock_context(
            charge_id=charge_id, customer=customer, invoice=invoice, currency=currency.upper()
        )
        assert charge is not None
        _charge_amount_note(charge, amount, result)
        _charge_settle(charge=charge, invoice=locked, source=source, result=result)
    if not result.notes:
        result.add(f"charge {charge_id}: already known", changed=False)
    return result


def invoice_charges_settle(*, invoice: Invoice, source: str) -> PaymentChange:
    """Re-checks every charge of a locked invoice (its payment just arrived: what the charges
    collected may now be known). Runs in the caller's transaction, invoice before charges."""
    result = PaymentChange()
    for charge in PaymentCharge.objects.select_for_update().filter(invoice=invoice).order_by("id"):
        _charge_settle(charge=charge, invoice=invoice, source=source, result=result)
    return result


def payment_finding_close(
    *, finding: PaymentFinding, actor: audit.Actor, reason: str
) -> PaymentFinding:
    """Finance closes an over-return finding once it is settled with the provider. No balance
    moves: the cash already went back to the card. Audited; a replay of the same facts does
    not reopen it (``_charge_settle`` skips numbers finance already handled)."""
    from billing.exceptions import PaymentFindingNotOpen

    if not reason.strip():
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    with transaction.atomic():
        locked = PaymentFinding.objects.select_for_update().get(pk=finding.pk)
        if locked.status != PaymentFinding.Status.OPEN:
            raise PaymentFindingNotOpen(details={"finding": locked.pk, "status": locked.status})
        now = timezone.now()
        locked.status = PaymentFinding.Status.RESOLVED
        locked.resolution = PaymentFinding.Resolution.HANDLED
        locked.resolved_by = actor if getattr(actor, "is_authenticated", False) else None
        locked.resolved_at = now
        locked.resolution_reason = reason
        locked.updated_at = now
        locked.save()
        audit.record(
            actor=actor,
            action="payment_finding.close",
            target=locked,
            customer=locked.customer,
            reason=reason,
            before={"status": PaymentFinding.Status.OPEN},
            after={"status": locked.status, "resolution": locked.resolution},
        )
    return locked


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
