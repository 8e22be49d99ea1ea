from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from billing.models.invoices import Invoice
from billing.models.runs import BillingWindow
from ingest.models import Metric


class DriftFinding(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"
        IGNORED = "ignored"

    class Resolution(models.TextChoices):
        RERUN = "rerun"
        CREDIT = "credit"
        SUPPLEMENTARY = "supplementary"
        IGNORE = "ignore"
        # Resolved by a rerun that found no amount to change: nothing voided or issued.
        NO_CHANGE = "no_change", "no change"

    kind = models.CharField(
        max_length=30,
        default="usage",
        help_text="usage (quantities) or payment (provider mismatch).",
    )
    window = models.ForeignKey(
        BillingWindow, on_delete=models.PROTECT, related_name="drift_findings"
    )
    metric = models.ForeignKey(
        Metric, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="drift_findings"
    )
    invoiced_quantity = models.DecimalField(max_digits=30, decimal_places=10, default=0)
    actual_quantity = models.DecimalField(max_digits=30, decimal_places=10, default=0)
    delta_amount = models.BigIntegerField(default=0)
    detail = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    resolution = models.CharField(max_length=20, choices=Resolution.choices, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("resolve_driftfinding", "Can resolve or ignore a drift finding")]
        constraints = [
            models.UniqueConstraint(
                fields=["window", "metric", "kind"],
                condition=Q(status="open"),
                name="one_open_finding_per_window_metric",
            )
        ]

    def __str__(self) -> str:
        return f"Drift {self.kind} {self.window_id}/{self.metric_id}: {self.delta_amount}"
