"""Ingest: meter definitions, usage events, one batch per request and each rejected item."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from neruba.models import ApiKey, Customer


class Aggregation(models.TextChoices):
    COUNT = "count", "count"
    SUM = "sum", "sum"
    MAX = "max", "max"
    UNIQUE_COUNT = "unique_count", "unique count"


class Outcome(models.TextChoices):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    FAILED = "failed"
    REPLAY = "replay"


class Metric(models.Model):
    code = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    aggregation = models.CharField(max_length=20, choices=Aggregation.choices)
    field = models.CharField(
        max_length=100,
        blank=True,
        help_text="Property carrying the value (sum, max) or the distinct key (unique_count).",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class IngestBatch(models.Model):
    """One per ingest request (or replay run): who sent it, how big, what happened to each item."""

    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key_prefix = models.CharField(max_length=16, blank=True, db_index=True)
    source = models.CharField(max_length=20, default="api")
    request_id = models.CharField(max_length=64, blank=True)
    size = models.PositiveIntegerField(default=0)
    bytes = models.PositiveIntegerField(default=0)
    accepted = models.PositiveIntegerField(default=0)
    duplicate = models.PositiveIntegerField(default=0)
    conflict = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    replay = models.PositiveIntegerField(default=0)
    duration_ms = models.FloatField(default=0)
    # The backfill this batch loaded history for; its counts add up from its batches.
    backfill = models.ForeignKey(
        "Backfill", null=True, blank=True, on_delete=models.PROTECT, related_name="batches"
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name_plural = "ingest batches"

    def __str__(self) -> str:
        return f"Batch {self.pk} ({self.size} items)"


class UsageEvent(models.Model):
    """A stored usage event. The idempotency key is unique forever.

    A stored event is never edited or deleted. A correction (``EventCorrection``) takes it out
    of every aggregation by setting ``voided_at`` once; an amendment adds a new row carrying the
    amended values (``amends`` points at the keyed original, the key stays the original's)."""

    # Unique by the constraint below: a column-level unique=True would add a second, pattern-ops
    # index on PostgreSQL that no query uses (keys are only ever looked up exactly). NULL only on
    # the row an amendment adds: the key belongs to the original, which keeps it forever, and a
    # NULL never takes a client's key nor matches a lookup by key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    # Indexed as the leading column of usage_billing_idx; every index here costs each ingest.
    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="usage_events", db_index=False
    )
    metric = models.ForeignKey(Metric, on_delete=models.PROTECT, related_name="usage_events")
    timestamp = models.DateTimeField()
    # The metric's field extracted at ingest so billing aggregates in SQL.
    value = models.DecimalField(max_digits=30, decimal_places=10, null=True, blank=True)
    distinct_value = models.CharField(max_length=255, blank=True)
    properties = models.JSONField(default=dict, blank=True)
    payload_hash = models.CharField(max_length=64)
    received_at = models.DateTimeField(default=timezone.now)
    # Batches are pruned by retention; the id stays as a trace, without a constraint.
    batch = models.ForeignKey(
        IngestBatch,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="events",
    )
    source = models.CharField(max_length=20, default="api")
    late = models.BooleanField(default=False)
    rejection = models.OneToOneField(
        "IngestRejection",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="replayed_event",
    )
    # Set once, by a void or an amendment: from then on no aggregation counts this row. NULL
    # (counted) needs no default on the insert path, and adding the column rewrites nothing.
    voided_at = models.DateTimeField(null=True, blank=True)
    # On an amendment's row: the keyed event it amends (every amendment points at the original).
    # Indexed only where set (below): a plain index would cost every ingested event a write.
    # No database constraint: on PostgreSQL the events table is partitioned and its key is
    # (id, timestamp), so nothing can reference the id alone (PROTECT is kept by Django).
    amends = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="amendments",
        db_index=False,
        db_constraint=False,
    )

    class Meta:
        ordering = ["-id"]
        permissions = [("correct_usageevent", "Can void or amend usage events")]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="usage_event_key_unique")
        ]
        indexes = [
            models.Index(fields=["customer", "metric", "timestamp"], name="usage_billing_idx"),
            models.Index(fields=["customer", "-timestamp"], name="usage_customer_recent_idx"),
            models.Index(fields=["received_at"], name="usage_received_idx"),
            models.Index(
                fields=["received_at"], condition=models.Q(late=True), name="usage_late_idx"
            ),
            models.Index(
                fields=["amends"],
                condition=models.Q(amends__isnull=False),
                name="usage_amends_idx",
            ),
        ]

    def __str__(self) -> str:
        if self.idempotency_key is None:
            return f"amendment {self.pk} of event {self.amends_id}"
        return self.idempotency_key

    def save(self, *args: Any, **kwargs: Any) -> None:
        """An event saved through the ORM (fixtures, tests, scripts; ingest writes by SQL)
        registers its key in the same transaction, so the registry stays the whole truth."""
        adding = self._state.adding
        with transaction.atomic():
            super().save(*args, **kwargs)
            # An amendment's row has no key of its own (the original keeps it): it claims none.
            if adding and self.idempotency_key is not None:
                EventKey.objects.create(
                    idempotency_key=self.idempotency_key,
                    event_id=self.pk,
                    timestamp=self.timestamp,
                    payload_hash=self.payload_hash,
                )

    @property
    def counted(self) -> bool:
        return self.voided_at is None


class EventKey(models.Model):
    """The key registry: one narrow row per idempotency key ever stored, kept forever.

    On PostgreSQL usage events are range-partitioned by month on their timestamp, and a unique
    index on a partitioned table must include the partition key: the events table alone could
    only keep a key unique within its month. This table is where a key is claimed (ingest's
    ``INSERT … ON CONFLICT`` runs against its primary key, in the same statement that stores
    the event), where a duplicate or a conflict is told apart (by ``payload_hash``), and where
    a lookup by key learns the event's id and month, so it reads one partition. It outlives
    archival: an archived month's keys stay here, and stay refused. SQLite keeps a plain events
    table with its own unique key; this registry is written there too so reads are the same."""

    idempotency_key = models.CharField(max_length=255, primary_key=True)
    event_id = models.BigIntegerField()
    timestamp = models.DateTimeField()
    payload_hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return self.idempotency_key


class EventArchive(models.Model):
    """A month of events detached from the partitioned table and exported (``manage.py
    archive_events``). Its keys stay in EventKey; lookups answer "archived"."""

    month = models.DateField(unique=True, help_text="First day of the archived month (UTC).")
    events = models.BigIntegerField(default=0)
    path = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    bytes = models.BigIntegerField(default=0)
    archived_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-month"]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} ({self.events} events)"


class EventDuplicates(models.Model):
    """How often an event's key came back with the same payload, and when last. Kept beside
    the event rather than on it: bumping a counter on the wide, many-indexed event row writes a
    new version of it (and an entry in every index), so a batch of duplicates would cost more
    than a batch of new events. This narrow row has one index."""

    # No database constraint: on PostgreSQL events are partitioned by month and their primary
    # key is (id, timestamp), so nothing can reference the id alone (see EventKey).
    event = models.OneToOneField(
        UsageEvent,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="duplicates",
        db_constraint=False,
    )
    count = models.PositiveIntegerField(default=0)
    last_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "event duplicates"

    def __str__(self) -> str:
        return f"{self.event_id}: {self.count}"


class IngestRejection(models.Model):
    """A failed or conflicting item, with the raw payload exactly as the client sent it."""

    class Status(models.TextChoices):
        OPEN = "open"
        REPLAYED = "replayed"
        # Closed by a person with a reason (a conflict whose original stands, a too-old event):
        # kept, audited, and still replayable should the cause turn out fixable.
        DISMISSED = "dismissed"

    batch = models.ForeignKey(
        IngestBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="rejections"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    idempotency_key = models.CharField(max_length=255, blank=True, db_index=True)
    customer_ref = models.CharField(max_length=200, blank=True, db_index=True)
    metric_ref = models.CharField(max_length=100, blank=True, db_index=True)
    api_key_prefix = models.CharField(max_length=16, blank=True, db_index=True)
    error_code = models.CharField(max_length=50, db_index=True)
    error_message = models.TextField()
    # How the raw payload is written (api, openmeter, lago): a replay parses it the same way.
    surface = models.CharField(max_length=20, default="api")
    raw_payload = models.JSONField()
    # No database constraint: events are partitioned on PostgreSQL (see EventDuplicates.event).
    original_event = models.ForeignKey(
        UsageEvent,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conflicts",
        db_constraint=False,
    )
    differing_fields = models.JSONField(default=list, blank=True)
    replay_attempts = models.PositiveIntegerField(default=0)
    last_replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("replay_ingestrejection", "Can replay failed ingest items")]
        indexes = [models.Index(fields=["status", "error_code", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.outcome} {self.idempotency_key or '(no key)'}: {self.error_code}"


class InvoicedWatermark(models.Model):
    """How far a customer's usage has been invoiced. Billing advances it (billing may call
    ingest; ingest never imports billing); ingest flags events older than it as ``late`` so the
    drift sweep re-checks their windows."""

    customer = models.OneToOneField(
        Customer, on_delete=models.CASCADE, related_name="invoiced_watermark"
    )
    invoiced_through = models.DateTimeField()
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.customer_id} invoiced through {self.invoiced_through:%Y-%m-%d %H:%M}"


class Backfill(models.Model):
    """History loaded through a door of its own: events older than ``NERUBA_INGEST_MAX_AGE``
    enter only through an open backfill, and only inside its time window. While open, its counts
    add up from its batches; closing freezes them and opens drift findings for the invoiced
    windows it touched."""

    class Status(models.TextChoices):
        OPEN = "open"
        CLOSED = "closed"

    reason = models.TextField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    source = models.CharField(max_length=20, default="api")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key_prefix = models.CharField(max_length=16, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # Frozen on close (while open they are summed from the batches).
    accepted = models.PositiveIntegerField(default=0)
    duplicate = models.PositiveIntegerField(default=0)
    conflict = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    late = models.PositiveIntegerField(default=0)
    windows_touched = models.PositiveIntegerField(default=0)
    findings = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Backfill {self.pk} ({self.status})"


class EventCorrection(models.Model):
    """A void or an amendment of a stored event: who, why, before and after. Append-only, like
    the event itself: the event row only gets ``voided_at`` (it stops counting), an amendment
    adds a row with the new values."""

    class Kind(models.TextChoices):
        VOID = "void"
        AMEND = "amend"

    # The event references carry no database constraint: the partitioned events table has no
    # unique id alone to reference, and archival detaches a month whose corrections stay here
    # (the history then says the event was archived). PROTECT is still kept by Django.
    # The keyed event the correction is about (an amendment of an amendment still names it).
    event = models.ForeignKey(
        UsageEvent, on_delete=models.PROTECT, related_name="corrections", db_constraint=False
    )
    # The row this correction stopped counting: the event, or the amendment that replaced it.
    excluded = models.ForeignKey(
        UsageEvent, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    # The row counted instead (amendments only).
    replacement = models.OneToOneField(
        UsageEvent,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="amendment_record",
        db_constraint=False,
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    reason = models.TextField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    before = models.JSONField(default=dict)
    after = models.JSONField(default=dict)
    # The event's period was already invoiced: the drift sweep re-checks its window.
    late = models.BooleanField(default=False)
    # Corrections made by one bulk command share an id (the audit entry names it).
    bulk_id = models.CharField(max_length=32, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["created_at"], condition=models.Q(late=True), name="correction_late_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of event {self.event_id}"
