"""The credit ledger: append-only entries; the balance is their sum."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Sum

from billing import messages
from billing.models import CreditEntry, Invoice, ReasonCode
from neruba import audit
from neruba.errors import ValidationFailed
from neruba.models import Customer


def credit_balance(*, customer: Customer, currency: str) -> int:
    total = CreditEntry.objects.filter(customer=customer, currency=currency.upper()).aggregate(
        total=Sum("amount")
    )["total"]
    return int(total or 0)


def credit_grant(
    *,
    customer: Customer,
    amount: int,
    reason_code: str,
    actor: audit.Actor,
    reason: str,
    currency: str | None = None,
    invoice: Invoice | None = None,
    source_key: str | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[CreditEntry, bool]:
    """Grants a credit (positive ``amount``, minor units). Idempotent on ``source_key``: a second
    grant for the same fact (a refund id, a dispute id) returns the first entry and ``False``.
    The audit entry commits with the ledger entry."""
    if amount <= 0:
        raise ValidationFailed("A credit must be a positive amount.", details={"amount": amount})
    if reason_code not in ReasonCode.values:
        raise ValidationFailed(
            "Unknown reason code.",
            details={"reason_code": reason_code, "allowed": list(ReasonCode.values)},
        )
    if not reason.strip():
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    currency = (currency or customer.currency).upper()
    if source_key:
        existing = CreditEntry.objects.filter(source_key=source_key).first()
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            entry = CreditEntry.objects.create(
                customer=customer,
                currency=currency,
                amount=amount,
                kind=CreditEntry.Kind.GRANT,
                reason_code=reason_code,
                invoice=invoice,
                source_key=source_key,
                note=reason,
                actor=actor if getattr(actor, "is_authenticated", False) else None,
            )
            audit.record(
                actor=actor,
                action="credit.grant",
                target=entry,
                customer=customer,
                reason=reason,
                after={
                    "amount": amount,
                    "currency": currency,
                    "reason_code": reason_code,
                    "invoice": invoice.number if invoice else None,
                    "source_key": source_key,
                    **(extra or {}),
                },
            )
            messages.credit_granted_published(entry=entry)
    except IntegrityError:
        # A concurrent grant for the same fact won the unique source_key.
        return CreditEntry.objects.get(source_key=source_key), False
    return entry, True
