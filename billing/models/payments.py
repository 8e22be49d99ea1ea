from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from billing.models.invoices import Invoice
from neruba.models import Customer


class PaymentCharge(models.Model):
    """One provider charge (Stripe ``ch_…``): what it collected and what went back to the card.

    The row is the lock every refund and dispute of the charge takes first, so two events about
    one charge (a refund and a dispute delivered at once) settle one after the other. The sums
    are recomputed from the ``Refund`` and ``Dispute`` rows each time, never incremented, so a
    redelivery, a replay or an out-of-order snapshot cannot count anything twice."""

    charge_id = models.CharField(max_length=100, unique=True)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="charges"
    )
    currency = models.CharField(max_length=3, blank=True)
    amount = models.BigIntegerField(
        null=True, blank=True, help_text="What the charge collected, when an event showed it."
    )
    amount_refunded = models.BigIntegerField(default=0)
    amount_disputed = models.BigIntegerField(default=0, help_text="Lost in disputes.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.charge_id


class PaymentFinding(models.Model):
    """A charge that returned more than it collected (a refund plus a lost dispute, or refunds
    past the charge). Nothing moves any balance: finance settles it with the provider and
    closes it here; it closes by itself when the numbers come back in step (a refund that
    failed, a dispute won on appeal)."""

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    class Resolution(models.TextChoices):
        IN_STEP = "in_step", "back in step"
        HANDLED = "handled", "handled by finance"

    charge = models.ForeignKey(PaymentCharge, on_delete=models.PROTECT, related_name="findings")
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="payment_findings"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="payment_findings"
    )
    currency = models.CharField(max_length=3)
    collected = models.BigIntegerField(help_text="What the charge collected, minor units.")
    refunded = models.BigIntegerField(default=0)
    disputed = models.BigIntegerField(default=0, help_text="Lost in disputes.")
    returned = models.BigIntegerField(help_text="Refunded plus lost in disputes.")
    detail = models.TextField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    resolution = models.CharField(max_length=20, choices=Resolution.choices, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("resolve_paymentfinding", "Can close a payment finding")]
        constraints = [
            models.UniqueConstraint(
                fields=["charge"], condition=Q(status="open"), name="one_open_finding_per_charge"
            )
        ]
        indexes = [models.Index(fields=["status", "-created_at"])]

    def __str__(self) -> str:
        return f"Payment finding {self.pk}: {self.charge.charge_id if self.charge_id else ''}"
