"""Stored Stripe events and each attempt to process them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from billing.models import Invoice
from neruba.models import Customer


class StripeEvent(models.Model):
    """A verified Stripe event, stored raw before anything else happens to it."""

    class Status(models.TextChoices):
        RECEIVED = "received"
        PROCESSING = "processing"
        PROCESSED = "processed"
        FAILED = "failed"
        IGNORED = "ignored"
        DEAD = "dead"

    stripe_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100, db_index=True)
    api_version = models.CharField(max_length=40, blank=True)
    livemode = models.BooleanField(default=False)
    created = models.DateTimeField(help_text="When Stripe created the event.")
    raw_body = models.BinaryField(help_text="The exact bytes Stripe signed.")
    payload = models.JSONField()
    headers = models.JSONField(default=dict, blank=True)
    secret_hint = models.CharField(
        max_length=40, blank=True, help_text="Which configured secret matched (index and last 4)."
    )
    object_id = models.CharField(max_length=100, blank=True, db_index=True)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.SET_NULL, related_name="stripe_events"
    )
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.SET_NULL, related_name="stripe_events"
    )
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RECEIVED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        permissions = [("replay_stripeevent", "Can replay Stripe webhook events")]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["status", "-received_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.stripe_id} ({self.type})"


class EventAttempt(models.Model):
    class Trigger(models.TextChoices):
        HTTP = "http"
        RETRY = "retry"
        REPLAY = "replay"

    event = models.ForeignKey(StripeEvent, on_delete=models.CASCADE, related_name="event_attempts")
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, blank=True)
    notes = models.TextField(blank=True, help_text="What the handler changed, one per line.")
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.trigger} attempt on {self.event_id}: {self.outcome}"
