from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from billing.models.catalog import Subscription
from billing.models.runs import BillingRun, BillingWindow
from ingest.models import Metric
from neruba.models import Customer


class Invoice(models.Model):
    class Status(models.TextChoices):
        FINALIZED = "finalized"
        PAID = "paid"
        PAYMENT_FAILED = "payment_failed"
        VOID = "void"
        UNCOLLECTIBLE = "uncollectible"

    class Kind(models.TextChoices):
        REGULAR = "regular"
        SUPPLEMENTARY = "supplementary"

    number = models.CharField(max_length=40, unique=True)
    # Indexed by (customer, -issued_at) below; a second index on the column alone would only
    # cost writes.
    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="invoices", db_index=False
    )
    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, related_name="invoices"
    )
    window = models.ForeignKey(BillingWindow, on_delete=models.PROTECT, related_name="invoices")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.REGULAR)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.FINALIZED)
    currency = models.CharField(max_length=3)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    subtotal = models.BigIntegerField(default=0)
    credits_applied = models.BigIntegerField(default=0)
    total = models.BigIntegerField(default=0)
    # The cash story, in minor units, kept in step by ``billing.payments`` from the provider's
    # facts: what arrived, what went back to the card (refunds, lost disputes) and the net.
    # Never credit: money returned to a card is not spendable on the next invoice. Defaults
    # live in the database too: the billing pass COPYs new invoices without these columns (all
    # zero at issue), and the previous release can still insert rows after the upgrade.
    amount_paid = models.BigIntegerField(default=0, db_default=0)
    amount_refunded = models.BigIntegerField(default=0, db_default=0)
    amount_disputed = models.BigIntegerField(default=0, db_default=0, help_text="Lost in disputes.")
    amount_collected = models.BigIntegerField(
        default=0, db_default=0, help_text="Paid less refunded less lost in disputes."
    )
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )
    run = models.ForeignKey(
        BillingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="invoices"
    )
    issued_at = models.DateTimeField(default=timezone.now, db_index=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    provider = models.CharField(max_length=20, default="local")
    provider_invoice_id = models.CharField(max_length=100, blank=True)
    provider_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-issued_at", "-id"]
        permissions = [
            ("rerun_invoice", "Can void and rerun an invoice"),
            ("mark_invoice_paid", "Can mark an invoice paid (local provider)"),
        ]
        constraints = [
            # Even a broken lock cannot double-bill: one live regular invoice per window.
            models.UniqueConstraint(
                fields=["window"],
                condition=Q(kind="regular") & ~Q(status="void"),
                name="one_live_invoice_per_window",
            )
        ]
        indexes = [
            models.Index(fields=["customer", "-issued_at"]),
            models.Index(fields=["status", "currency"]),
            # Webhooks look invoices up by their provider id; invoices not pushed yet have none.
            models.Index(
                fields=["provider_invoice_id"],
                condition=~Q(provider_invoice_id=""),
                name="invoice_provider_id",
            ),
        ]

    def __str__(self) -> str:
        return self.number


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    metric = models.ForeignKey(
        Metric, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    description = models.CharField(max_length=300)
    quantity = models.DecimalField(max_digits=30, decimal_places=10)
    unit_amount = models.DecimalField(max_digits=20, decimal_places=10)
    amount = models.BigIntegerField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.description


class InvoiceCounter(models.Model):
    """Gapless invoice numbers: the row is locked and incremented inside the invoice's
    transaction, so a rolled-back invoice gives its number back."""

    name = models.CharField(max_length=40, unique=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class ProviderSync(models.Model):
    """Outbox row written in the invoice's transaction; a task sends it to the provider."""

    class Action(models.TextChoices):
        PUSH = "push"
        VOID = "void"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    # Indexed by the (invoice, action) unique constraint.
    invoice = models.ForeignKey(
        Invoice, on_delete=models.PROTECT, related_name="provider_syncs", db_index=False
    )
    action = models.CharField(max_length=10, choices=Action.choices, default=Action.PUSH)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "action"], name="one_sync_per_action")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.invoice_id} ({self.status})"
