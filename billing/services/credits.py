"""Operator money actions on the local provider: an offline payment, a finance-issued credit."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from billing import messages
from billing.exceptions import InvoiceStateInvalid
from billing.ledger import credit_grant
from billing.models import CreditEntry, Invoice
from billing.payments import invoice_cash_refresh
from billing.services.invoicing import UNPAID
from neruba import audit
from neruba.models import Customer


def invoice_mark_paid(*, invoice: Invoice, actor: audit.Actor, reason: str) -> Invoice:
    """Records an offline payment (the local provider keeps invoices open until then). Only an
    unpaid invoice can be marked paid; the audit entry commits with the change."""
    if not reason.strip():
        raise InvoiceStateInvalid("A reason is required.", details={"reason": "required"})
    with transaction.atomic():
        row = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if row.status not in UNPAID:
            raise InvoiceStateInvalid(
                "Only a finalized or payment-failed invoice can be marked paid.",
                details={"invoice": row.number, "status": row.status},
            )
        before = row.status
        now = timezone.now()
        row.status = Invoice.Status.PAID
        row.paid_at = now
        row.status_changed_at = now
        row.amount_paid = row.total
        row.save(update_fields=["status", "paid_at", "status_changed_at", "amount_paid"])
        invoice_cash_refresh(invoice=row)
        audit.record(
            actor=actor,
            action="invoice.mark_paid",
            target=row,
            customer=row.customer,
            reason=reason,
            before={"status": before},
            after={"status": row.status, "paid_at": now, "amount_paid": row.amount_paid},
        )
        messages.invoice_status_published(invoice=row)
    return row


def credit_issue(
    *,
    customer: Customer,
    amount: int,
    reason_code: str,
    actor: audit.Actor,
    reason: str,
    currency: str | None = None,
) -> CreditEntry:
    """A finance-issued credit (console). The ledger's ``credit_grant`` writes and audits it."""
    entry, _ = credit_grant(
        customer=customer,
        amount=amount,
        reason_code=reason_code,
        actor=actor,
        reason=reason,
        currency=currency,
    )
    return entry
