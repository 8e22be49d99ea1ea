from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from billing.models.invoices import Invoice
from neruba.models import Customer


class ReasonCode(models.TextChoices):
    GOODWILL = "goodwill"
    CORRECTION = "correction"
    # Finance chose credit *instead of* a cash refund: nothing went back to the card.
    REFUND_AS_CREDIT = "refund_as_credit", "refund as credit"
    # Earlier versions granted credit from Stripe refunds and lost disputes; migration
    # billing 0005 reversed every such grant. Kept so those entries still read right; never
    # granted again (``GRANTABLE``).
    REFUND = "refund", "refund (legacy, reversed)"
    DISPUTE = "dispute", "dispute (legacy, reversed)"


# What a credit grant may be for. Cash returned to a card (a refund, a lost dispute) is recorded
# on its invoice, never here.
GRANTABLE = (ReasonCode.GOODWILL, ReasonCode.CORRECTION, ReasonCode.REFUND_AS_CREDIT)


class CreditEntry(models.Model):
    """Append-only credit ledger. Balance per customer and currency is the sum of ``amount``;
    a correction is a new entry (a reversal), never an edit."""

    class Kind(models.TextChoices):
        GRANT = "grant"
        CONSUMPTION = "consumption"
        REVERSAL = "reversal"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="credit_entries")
    currency = models.CharField(max_length=3)
    amount = models.BigIntegerField(help_text="Minor units: + grant, - consumption.")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    reason_code = models.CharField(max_length=20, choices=ReasonCode.choices)
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="credit_entries"
    )
    reverses = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversals"
    )
    source_key = models.CharField(
        max_length=200,
        null=True,
        blank=True,
        unique=True,
        help_text="Idempotency key of the fact that caused it (e.g. refund:re_123).",
    )
    note = models.TextField(blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "credit entries"
        permissions = [("issue_credit", "Can issue a credit")]
        indexes = [models.Index(fields=["customer", "currency"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.currency} ({self.reason_code})"


class Refund(models.Model):
    stripe_refund_id = models.CharField(max_length=100, unique=True)
    charge_id = models.CharField(max_length=100, blank=True, db_index=True)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="refunds"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="refunds"
    )
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=30)
    reason = models.CharField(max_length=100, blank=True)
    stripe_created = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.stripe_refund_id


class Dispute(models.Model):
    stripe_dispute_id = models.CharField(max_length=100, unique=True)
    charge_id = models.CharField(max_length=100, blank=True, db_index=True)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="disputes"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="disputes"
    )
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=40)
    reason = models.CharField(max_length=100, blank=True)
    stripe_created = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.stripe_dispute_id
