"""The credit ledger: append-only entries; the balance is their sum."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Sum

from billing.exceptions import CreditCurrencyMismatch
from billing.models import GRANTABLE, CreditEntry, Invoice
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
    """Grants spendable credit (positive ``amount``, minor units) in the customer's currency.
    Idempotent on ``source_key``: a second grant for the same fact (a rerun's correction)
    returns the first entry and ``False``. The audit entry commits with the ledger entry.

    Only operator grants (goodwill, correction, refund as credit) and rerun corrections are
    credit. A Stripe refund or lost dispute is cash back on the card, recorded on its invoice
    by ``billing.payments``: the ``refund`` and ``dispute`` codes are refused here. A credit in
    another currency could never be consumed by the customer's invoices: refused too."""
    if amount <= 0:
        raise ValidationFailed("A credit must be a positive amount.", details={"amount": amount})
    if reason_code not in GRANTABLE:
        raise ValidationFailed(
            "Unknown reason code: a credit is goodwill, a correction, or a refund as credit "
            "(finance chose credit instead of a cash refund). Stripe refunds and lost disputes "
            "are cash, recorded on the invoice.",
            details={"reason_code": reason_code, "allowed": [str(c) for c in GRANTABLE]},
        )
    if not reason.strip():
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    currency = (currency or customer.currency).upper()
    if currency != customer.currency.upper():
        raise CreditCurrencyMismatch(
            f"A credit for {customer.external_id} must be in {customer.currency.upper()}, the "
            f"customer's currency, not {currency}.",
            details={"currency": currency, "customer_currency": customer.currency.upper()},
        )
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
    except IntegrityError:
        # A concurrent grant for the same fact won the unique source_key.
        return CreditEntry.objects.get(source_key=source_key), False
    return entry, True
