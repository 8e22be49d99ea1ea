"""Event corrections: void or amend a stored event, never delete or edit it.

A void sets ``voided_at`` on the row that counts for the key (the event, or the amendment that
replaced it): every aggregation leaves such rows out (``billing.usage.COUNTED_SQL``). An amend
does the same and adds a row with the amended properties, its value extracted like ingest's,
pointing at the keyed original. Each correction is an ``EventCorrection`` row (actor, reason,
before, after) and an audit entry, written in one transaction. A correction of a period already
invoiced is flagged ``late`` so the incremental drift sweep re-checks that window only; money
then follows through the drift resolutions (rerun, correction credit, supplementary invoice).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ingest.exceptions import EventAlreadyVoided, EventNotCorrectable
from ingest.models import (
    EventArchive,
    EventCorrection,
    EventKey,
    InvoicedWatermark,
    Metric,
    UsageEvent,
)
from ingest.partitions import month_of
from ingest.validation import canonical_hash, extract_value, properties_json
from neruba import audit
from neruba.errors import NotFound, ValidationFailed
from neruba.models import ApiKey, Customer


def event_for_key(*, idempotency_key: str) -> UsageEvent:
    # Through the key registry: it names the event's id and month, so the lookup reads one
    # partition (the events table has no index on the key). A registered key whose event is
    # not in the live table belongs to an archived month: nothing there can be corrected.
    registered = EventKey.objects.filter(idempotency_key=idempotency_key).first()
    event = None
    if registered is not None:
        event = (
            UsageEvent.objects.select_related("customer", "metric")
            .filter(pk=registered.event_id, timestamp=registered.timestamp)
            .first()
        )
    if event is None:
        if (
            registered is not None
            and EventArchive.objects.filter(month=month_of(registered.timestamp)).exists()
        ):
            raise EventNotCorrectable(
                "The event's month is archived: it can no longer be corrected.",
                details={"idempotency_key": idempotency_key, "archived": True},
            )
        raise NotFound("No stored event has that idempotency key.")
    return event


def _actor_fields(actor: audit.Actor | ApiKey) -> dict[str, Any]:
    if isinstance(actor, ApiKey):
        return {"actor": None, "actor_label": f"api key {actor.prefix}"}
    if getattr(actor, "is_authenticated", False):
        return {"actor": actor, "actor_label": actor.get_username()}  # type: ignore[union-attr]
    return {"actor": None, "actor_label": "system"}


def _snapshot(row: UsageEvent) -> dict[str, Any]:
    return {
        "event_id": row.pk,
        "value": None if row.value is None else str(row.value),
        "distinct_value": row.distinct_value,
        "properties": row.properties,
        "counted": row.voided_at is None,
    }


def period_invoiced(customer_id: int, timestamp: datetime) -> bool:
    through = (
        InvoicedWatermark.objects.filter(customer_id=customer_id)
        .values_list("invoiced_through", flat=True)
        .first()
    )
    return through is not None and timestamp < through


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    return reason


def _lock_counted(event: UsageEvent) -> tuple[UsageEvent, UsageEvent | None]:
    """Locks the keyed event (corrections of one key take turns) and returns it with the row
    that counts for its key now (``None`` once voided)."""
    if event.idempotency_key is None:
        raise EventNotCorrectable(
            "This row is an amendment; correct the event it amends (by its key).",
            details={"event_id": event.pk, "amends": event.amends_id},
        )
    original = UsageEvent.objects.select_for_update().select_related("customer", "metric")
    # The timestamp names the event's partition (amendments share the original's timestamp).
    original_row = original.get(pk=event.pk, timestamp=event.timestamp)
    if original_row.voided_at is None:
        return original_row, original_row
    current = (
        UsageEvent.objects.select_for_update()
        .filter(amends=original_row, timestamp=original_row.timestamp, voided_at__isnull=True)
        .order_by("-id")
        .first()
    )
    return original_row, current


def event_void(*, event: UsageEvent, actor: audit.Actor | ApiKey, reason: str) -> EventCorrection:
    """Voids an event: from now on no aggregation counts it. The key stays taken forever (a
    re-sent event with it is a duplicate or a conflict, never accepted)."""
    reason = _require_reason(reason)
    with transaction.atomic():
        original, row = _lock_counted(event)
        if row is None:
            raise EventAlreadyVoided(details={"idempotency_key": original.idempotency_key})
        now = timezone.now()
        before = _snapshot(row)
        UsageEvent.objects.filter(pk=row.pk, timestamp=row.timestamp).update(voided_at=now)
        late = row.late or period_invoiced(row.customer_id, row.timestamp)
        correction = EventCorrection.objects.create(
            event=original,
            excluded=row,
            kind=EventCorrection.Kind.VOID,
            reason=reason,
            created_at=now,
            before=before,
            after={"counted": False},
            late=late,
            **_actor_fields(actor),
        )
        audit.record(
            actor=actor,
            action="usage_event.void",
            target=original,
            reason=reason,
            before=before,
            after={"counted": False, "correction_id": correction.pk, "invoiced_period": late},
            customer=original.customer,
        )
    return correction


def event_amend(
    *, event: UsageEvent, actor: audit.Actor | ApiKey, reason: str, properties: Any
) -> EventCorrection:
    """Amends an event's properties: the row counting for the key stops counting and a new row
    with the amended properties (value and distinct value extracted as at ingest) counts in its
    place. Customer, metric and timestamp stay the original's."""
    reason = _require_reason(reason)
    if not isinstance(properties, dict):
        raise ValidationFailed(
            "`properties` must be a JSON object.", details={"properties": "object required"}
        )
    props_json = properties_json(properties)
    max_bytes = settings.NERUBA["NERUBA_INGEST_MAX_PROPERTIES_BYTES"]
    if len(props_json.encode()) > max_bytes:
        raise ValidationFailed(
            f"`properties` is larger than {max_bytes} bytes.",
            code="properties_too_large",
            details={"max_bytes": max_bytes},
        )
    with transaction.atomic():
        original, row = _lock_counted(event)
        if row is None:
            raise EventAlreadyVoided(
                "The event is voided: there is nothing counted to amend.",
                details={"idempotency_key": original.idempotency_key},
            )
        metric: Metric = original.metric
        try:
            value, distinct = extract_value(metric.aggregation, metric.field, properties)
        except ValueError as exc:
            raise ValidationFailed(
                str(exc), code="invalid_value", details={"metric": metric.code}
            ) from None
        now = timezone.now()
        before = _snapshot(row)
        late = row.late or period_invoiced(row.customer_id, row.timestamp)
        UsageEvent.objects.filter(pk=row.pk, timestamp=row.timestamp).update(voided_at=now)
        replacement = UsageEvent.objects.create(
            idempotency_key=None,
            customer_id=original.customer_id,
            metric_id=original.metric_id,
            timestamp=original.timestamp,
            value=value,
            distinct_value=distinct,
            properties=properties,
            payload_hash=canonical_hash(
                original.customer.external_id, metric.code, original.timestamp, props_json
            ),
            received_at=now,
            source="amend",
            late=late,
            amends=original,
        )
        after = _snapshot(replacement)
        correction = EventCorrection.objects.create(
            event=original,
            excluded=row,
            replacement=replacement,
            kind=EventCorrection.Kind.AMEND,
            reason=reason,
            created_at=now,
            before=before,
            after=after,
            late=late,
            **_actor_fields(actor),
        )
        audit.record(
            actor=actor,
            action="usage_event.amend",
            target=original,
            reason=reason,
            before=before,
            after={**after, "correction_id": correction.pk, "invoiced_period": late},
            customer=original.customer,
        )
    return correction


# --- bulk ------------------------------------------------------------------------------------


@dataclass
class BulkVoidResult:
    customer: str
    metric: str
    starts_at: datetime
    ends_at: datetime
    matched: int
    voided: int
    invoiced: int
    dry_run: bool
    bulk_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "metric": self.metric,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "matched": self.matched,
            "voided": self.voided,
            "invoiced_period": self.invoiced,
            "dry_run": self.dry_run,
            "bulk_id": self.bulk_id,
        }


def _counted_in_range(customer: Customer, metric: Metric, starts_at: datetime, ends_at: datetime):  # type: ignore[no-untyped-def]
    # usage_billing_idx (customer, metric, timestamp) bounds the scan to the range.
    return UsageEvent.objects.filter(
        customer=customer,
        metric=metric,
        timestamp__gte=starts_at,
        timestamp__lt=ends_at,
        voided_at__isnull=True,
    )


_BULK_INSERT = """
INSERT INTO {corrections} (event_id, excluded_id, kind, reason, actor_id, actor_label,
  created_at, before, after, late, bulk_id)
SELECT COALESCE(e.amends_id, e.id), e.id, 'void', %s, %s, %s, %s,
  {json}('event_id', e.id, 'value', {value}, 'distinct_value', e.distinct_value,
         'properties', {props}, 'counted', {true}),
  {json}('counted', {false}),
  (e.late OR e.timestamp < %s), %s
FROM {events} e WHERE e.id IN ({ids})
"""


def _bulk_sql(ids: list[int]) -> str:
    pg = connection.vendor == "postgresql"
    return _BULK_INSERT.format(
        corrections=EventCorrection._meta.db_table,
        events=UsageEvent._meta.db_table,
        json="jsonb_build_object" if pg else "json_object",
        value="e.value::text" if pg else "CAST(e.value AS TEXT)",
        props="e.properties" if pg else "json(e.properties)",
        true="true" if pg else "json('true')",
        false="false" if pg else "json('false')",
        ids=",".join(str(int(i)) for i in ids),
    )


def _bulk_audit(
    actor: audit.Actor | ApiKey, reason: str, result: BulkVoidResult, customer: Customer
) -> None:
    audit.record(
        actor=actor,
        action="usage_event.void_bulk",
        target=customer,
        reason=reason,
        before={"matched": result.matched, "invoiced_period": result.invoiced},
        after={
            "metric": result.metric,
            "starts_at": result.starts_at.isoformat(),
            "ends_at": result.ends_at.isoformat(),
            "bulk_id": result.bulk_id,
        },
        customer=customer,
    )


def events_void_bulk(
    *,
    customer: Customer,
    metric: Metric,
    starts_at: datetime,
    ends_at: datetime,
    actor: audit.Actor | ApiKey,
    reason: str,
    dry_run: bool = True,
    chunk_size: int = 5000,
    on_progress: Callable[[int, int], None] | None = None,
) -> BulkVoidResult:
    """Voids every counted event of ``customer`` and ``metric`` with ``starts_at <= timestamp <
    ends_at``. Dry run (the default) only counts them.

    Set-based, in chunks of ``chunk_size`` events by id, one transaction per chunk (one
    INSERT … SELECT of the correction rows and one UPDATE of ``voided_at``), so a large void
    neither holds locks for long nor loses the chunks done when interrupted: re-running it
    voids the rest. Touches no invoice: voided events in invoiced periods are flagged for the
    incremental drift sweep. One audit entry for the whole operation names its ``bulk_id``; each
    event's correction row carries it."""
    if ends_at <= starts_at:
        raise ValidationFailed(
            "The range is empty.", details={"ends_at": "must be after starts_at"}
        )
    query = _counted_in_range(customer, metric, starts_at, ends_at)
    matched = query.count()
    through = (
        InvoicedWatermark.objects.filter(customer=customer)
        .values_list("invoiced_through", flat=True)
        .first()
    )
    invoiced = 0
    if through is not None:
        invoiced = query.filter(timestamp__lt=through).count()
    result = BulkVoidResult(
        customer=customer.external_id,
        metric=metric.code,
        starts_at=starts_at,
        ends_at=ends_at,
        matched=matched,
        voided=0,
        invoiced=invoiced,
        dry_run=dry_run,
    )
    if dry_run:
        return result
    reason = _require_reason(reason)
    result.bulk_id = uuid.uuid4().hex
    who = _actor_fields(actor)
    cutoff = through or starts_at  # no watermark: nothing in the range was invoiced
    adapt = connection.ops.adapt_datetimefield_value
    last = 0
    audited = False
    while True:
        ids = list(
            query.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:chunk_size]
        )
        if not ids:
            break
        last = ids[-1]
        now = timezone.now()
        with transaction.atomic(), connection.cursor() as cursor:
            if result.voided == 0 and not audited:
                # Written with the first chunk: the operation's audit entry commits with its
                # first writes; each correction row carries the bulk id, so the corrections of
                # the entry are exactly those rows, however far an interrupted run got.
                _bulk_audit(actor, reason, result, customer)
                audited = True
            # Lock the chunk first: a single void racing the bulk one takes its turn, and
            # rows voided meanwhile are left out of both statements.
            locked = list(
                UsageEvent.objects.select_for_update()
                .filter(pk__in=ids, voided_at__isnull=True)
                .order_by("pk")  # in id order, like a single correction (event, then amendment)
                .values_list("pk", flat=True)
            )
            if locked:
                cursor.execute(
                    _bulk_sql(locked),
                    [
                        reason,
                        who["actor"].pk if who["actor"] is not None else None,
                        who["actor_label"],
                        adapt(now),
                        adapt(cutoff),
                        result.bulk_id,
                    ],
                )
                result.voided += UsageEvent.objects.filter(pk__in=locked).update(voided_at=now)
        if on_progress is not None:
            on_progress(result.voided, matched)
    return result
