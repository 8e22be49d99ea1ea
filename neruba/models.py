"""Kernel models: customers, API keys, the audit log, scheduler locks and support notes."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey

SCOPES = ("ingest", "read", "write")


class Customer(models.Model):
    external_id = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True)
    currency = models.CharField(max_length=3, default="USD")
    stripe_customer_id = models.CharField(max_length=100, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["external_id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})"


class ApiKey(AbstractAPIKey):
    """API key, hashed at rest (SHA-512 of a high-entropy key); only ``prefix`` is visible."""

    scopes = models.JSONField(default=list, help_text="Any of: ingest, read, write.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    """Bulk UPDATE and DELETE skip ``save()`` and ``delete()``; refuse them here too, so no ORM
    path rewrites history (on PostgreSQL a trigger also refuses raw SQL)."""

    def update(self, **kwargs: Any) -> int:
        raise RuntimeError("Audit entries are append-only.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise RuntimeError("Audit entries are append-only.")

    def bulk_update(self, *args: Any, **kwargs: Any) -> int:
        raise RuntimeError("Audit entries are append-only.")


class AuditEntry(models.Model):
    """Append-only: there is no update or delete path anywhere, the console included."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_label = models.CharField(max_length=150, help_text="Username, api key or 'system'.")
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=100, db_index=True)
    target_id = models.CharField(max_length=200, db_index=True)
    target_repr = models.CharField(max_length=300, blank=True)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_entries"
    )
    reason = models.TextField(blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["target_type", "target_id", "-created_at"])]
        permissions = [
            ("export_auditentry", "Can export the audit log and the credit ledger as CSV")
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id_shown} by {self.actor_label}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not kwargs.get("force_insert"):
            raise RuntimeError("Audit entries are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise RuntimeError("Audit entries are append-only.")

    @property
    def target_id_shown(self) -> str:
        """The target id as people see it: entries written before API keys were named by prefix
        hold the key's full id (``prefix.<stored hash>``); only the prefix is ever shown."""
        if (
            self.target_type == "neruba.apikey"
            and "." in self.target_id
            and not self.target_id.startswith("prefix:")
        ):
            return f"prefix:{self.target_id.split('.', 1)[0]}"
        return self.target_id


class SchedulerLock(models.Model):
    """A lease lock with a fencing token; see ``neruba.locks``."""

    name = models.CharField(max_length=100, unique=True)
    holder = models.CharField(max_length=200, blank=True)
    token = models.BigIntegerField(default=0)
    acquired_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        permissions = [("release_schedulerlock", "Can release an expired scheduler lock")]

    def __str__(self) -> str:
        return self.name


class SupportNote(models.Model):
    """A note on any record (customer, invoice, event, webhook event). Notes are never edited:
    a correction is another note."""

    content_type = models.ForeignKey(ContentType, on_delete=models.PROTECT)
    object_id = models.CharField(max_length=200)
    target = GenericForeignKey("content_type", "object_id")
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="support_notes"
    )
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["content_type", "object_id"])]

    def __str__(self) -> str:
        return f"Note by {self.author_id} on {self.content_type_id}:{self.object_id}"


class OutboxMessage(models.Model):
    """A fact some part of Neruba committed, as the message integrators will receive.

    The kernel owns the row so billing (and any app below webhooks) can write it inside the
    transaction of the fact without importing webhooks: the message commits or rolls back with
    the fact. ``webhooks`` fans committed messages out to subscribed endpoints after commit and
    its sweep picks up any whose fan-out never ran (a worker died, the broker was down).
    ``body`` is the exact JSON that is signed and sent, so every retry and replay sends the same
    bytes under the same ``msg_id``."""

    msg_id = models.CharField(max_length=40, unique=True)
    type = models.CharField(max_length=60)
    body = models.TextField(help_text="The exact JSON body sent to endpoints.")
    created_at = models.DateTimeField(default=timezone.now)
    fanned_out_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # Ids grow with time, so the newest-first console list walks the primary key. Every
        # index here is paid by each billing batch (one row per invoice): only the ones a read
        # needs (by message id; a type since a time; the sweep's not-yet-fanned-out rows).
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["type", "created_at"], name="outbox_type_created"),
            models.Index(
                fields=["created_at"],
                name="outbox_pending_fanout",
                condition=models.Q(fanned_out_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.msg_id} ({self.type})"


class OutboxBatch(models.Model):
    """Many facts of one type committed together (a billing batch's invoices), as one row of
    references written in their transaction. A billing batch pays one small INSERT for its
    messages instead of rendering and storing a body per invoice while it holds its locks; the
    fan-out expands the row into one ``OutboxMessage`` per reference (rendered by the renderer
    the publishing app registered, from the committed rows) and marks it expanded, in one
    transaction, so it expands exactly once."""

    type = models.CharField(max_length=60)
    refs = models.TextField(help_text="JSON list of the facts' references (e.g. invoice numbers).")
    created_at = models.DateTimeField(default=timezone.now)
    expanded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["created_at"],
                name="outbox_batch_pending",
                condition=models.Q(expanded_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.type} batch {self.pk}"
