"""Stored Stripe events and each attempt to process them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from billing.models import Invoice
from neruba.models import Customer, OutboxMessage


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


# --- outbound: the company's own systems hear what billing did --------------------------------


class WebhookEndpoint(models.Model):
    """Where integrators want messages. ``secret`` signs every delivery (Standard Webhooks,
    ``whsec_`` + base64); during a rotation the previous secret signs too until
    ``previous_secret_expires_at``, so receivers can switch without dropping a message."""

    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=300, blank=True)
    event_types = models.JSONField(default=list, help_text="Message types this endpoint wants.")
    enabled = models.BooleanField(default=True)
    disabled_reason = models.TextField(blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    secret = models.CharField(max_length=100, editable=False)
    previous_secret = models.CharField(max_length=100, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="First failure since the last success."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        permissions = [("replay_outbounddelivery", "Can replay outbound webhook deliveries")]

    def __str__(self) -> str:
        return self.url

    def secret_hint(self) -> str:
        return f"whsec_…{self.secret[-4:]}" if self.secret else ""


class OutboundMessage(OutboxMessage):
    """The kernel's outbox row, seen from the webhooks app (console, replay)."""

    class Meta:
        proxy = True
        ordering = ["-id"]
        verbose_name = "outbound message"


class OutboundDelivery(models.Model):
    """One message for one endpoint. ``failed`` waits for its retry at ``next_attempt_at``;
    ``sending`` is claimed by ``claimed_by`` (a task id) since ``claimed_at``."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        DELIVERED = "delivered"
        FAILED = "failed"
        DEAD = "dead"

    message = models.ForeignKey(OutboxMessage, on_delete=models.PROTECT, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.PROTECT, related_name="deliveries"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "outbound deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["message", "endpoint"], name="delivery_once_per_endpoint"
            )
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["endpoint", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} → {self.endpoint_id} ({self.status})"


class DeliveryAttempt(models.Model):
    """One HTTP request (or the refusal to make one) for a delivery."""

    class Trigger(models.TextChoices):
        SEND = "send"
        RETRY = "retry"
        REPLAY = "replay"

    delivery = models.ForeignKey(
        OutboundDelivery, on_delete=models.CASCADE, related_name="delivery_attempts"
    )
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    latency_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=20, help_text="delivered, failed (retried) or dead.")
    response_excerpt = models.TextField(blank=True, help_text="First 2 KB of the response.")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"attempt on delivery {self.delivery_id}: {self.outcome}"
