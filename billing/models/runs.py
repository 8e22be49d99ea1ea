from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from billing.models.catalog import Subscription


class BillingWindow(models.Model):
    """One billing period of one subscription. Windows are rows, so catch-up after downtime is
    "every closed window with no live invoice", never "what is due today"."""

    class Status(models.TextChoices):
        PENDING = "pending"
        BILLING = "billing"
        INVOICED = "invoiced"
        FAILED = "failed"

    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="windows")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    claimed_by_run = models.ForeignKey(
        "BillingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    billed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    drift_checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["period_start", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start"], name="one_window_per_start"
            )
        ]
        indexes = [models.Index(fields=["status", "period_end"])]

    def __str__(self) -> str:
        return f"{self.subscription} {self.period_start:%Y-%m-%d}..{self.period_end:%Y-%m-%d}"


class BillingRun(models.Model):
    class Trigger(models.TextChoices):
        BEAT = "beat"
        COMMAND = "command"
        CONSOLE = "console"
        RERUN = "rerun"

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        PARTIAL = "partial"
        FAILED = "failed"
        LOCK_HELD = "lock_held"
        ABANDONED = "abandoned"

    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    holder = models.CharField(max_length=200, blank=True)
    token = models.BigIntegerField(null=True, blank=True)
    as_of = models.DateTimeField()
    dry_run = models.BooleanField(default=False)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    scanned = models.PositiveIntegerField(default=0)
    invoiced = models.PositiveIntegerField(default=0)
    already_invoiced = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    invoiced_amount = models.BigIntegerField(
        default=0, help_text="Sum of invoice totals written (or, on a dry run, that would be)."
    )
    errors = models.JSONField(default=list, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["status", "-started_at"])]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.trigger}, {self.status})"


class BillingShard(models.Model):
    """One customer-id range of a fanned-out billing run (``billing_scan(shards=N)``), billed by
    a Celery worker under its own fenced lease ``billing-shard:<run>:<index>``. The run's counts
    are the sum of its shards' once they finish."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        PARTIAL = "partial"
        FAILED = "failed"

    run = models.ForeignKey(BillingRun, on_delete=models.CASCADE, related_name="shards")
    index = models.PositiveIntegerField()
    customer_from = models.BigIntegerField(help_text="First customer id of the range.")
    customer_to = models.BigIntegerField(help_text="Last customer id of the range (inclusive).")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    holder = models.CharField(max_length=200, blank=True)
    token = models.BigIntegerField(null=True, blank=True)
    scanned = models.PositiveIntegerField(default=0)
    invoiced = models.PositiveIntegerField(default=0)
    already_invoiced = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    invoiced_amount = models.BigIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="one_shard_per_index")]

    def __str__(self) -> str:
        return f"Run {self.run_id} shard {self.index} ({self.status})"
