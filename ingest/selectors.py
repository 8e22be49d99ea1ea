"""Ingest reads that feed the API and the console."""

from __future__ import annotations

from typing import Any

from ingest.models import (
    EventArchive,
    EventCorrection,
    EventDuplicates,
    EventKey,
    IngestRejection,
    Outcome,
    UsageEvent,
)
from ingest.partitions import month_of


def event_history(*, idempotency_key: str) -> dict[str, Any] | None:
    """The stored event for a key (if any) and every outcome it had: accepted or replay from
    the event row, conflicts and failures from the rejections with that key. Duplicates are
    counted per event (``duplicate_count``, ``last_duplicate_at``), not listed one by one.
    ``None`` when the key was never seen (or its rejections were pruned). ``archived`` says
    where an event of an archived month went."""
    event, archived = None, None
    # The key registry knows the event's id and month: the lookup reads one partition. A key
    # registered whose event is not in the live table belongs to an archived month.
    registered = EventKey.objects.filter(idempotency_key=idempotency_key).first()
    if registered is not None:
        event = (
            UsageEvent.objects.select_related("customer", "metric")
            .filter(pk=registered.event_id, timestamp=registered.timestamp)
            .first()
        )
        if event is None:
            archived = EventArchive.objects.filter(month=month_of(registered.timestamp)).first()
    rejections = list(
        IngestRejection.objects.filter(idempotency_key=idempotency_key).order_by("created_at", "id")
    )
    if event is None and archived is None and not rejections:
        return None
    history: list[dict[str, Any]] = []
    if event is not None:
        history.append(
            {
                "outcome": Outcome.REPLAY if event.rejection_id else Outcome.ACCEPTED,
                "at": event.received_at,
                "batch_id": event.batch_id,
                "event_id": event.pk,
                "rejection_id": event.rejection_id,
                "status": None,
                "error": None,
            }
        )
    for rejection in rejections:
        details: dict[str, Any] = {}
        if rejection.outcome == Outcome.CONFLICT:
            details = {
                "original_event_id": rejection.original_event_id,
                "differing_fields": rejection.differing_fields,
            }
        history.append(
            {
                "outcome": rejection.outcome,
                "at": rejection.created_at,
                "batch_id": rejection.batch_id,
                "event_id": rejection.original_event_id,
                "rejection_id": rejection.pk,
                "status": rejection.status,
                "error": {
                    "code": rejection.error_code,
                    "message": rejection.error_message,
                    "details": details,
                },
            }
        )
    counter = EventDuplicates.objects.filter(event=event).first() if event else None
    corrections = event_corrections(event=event) if event is not None else []
    for correction in corrections:
        history.append(
            {
                "outcome": correction["kind"],
                "at": correction["at"],
                "batch_id": None,
                "event_id": correction["replacement_event_id"] or correction["excluded_event_id"],
                "rejection_id": None,
                "status": None,
                "error": None,
            }
        )
    history.sort(key=lambda entry: entry["at"])
    return {
        "idempotency_key": idempotency_key,
        "event": event,
        # The month's archive when the event was archived (its key stays refused).
        "archived": None
        if archived is None
        else {
            "event_id": registered.event_id if registered else None,
            "timestamp": registered.timestamp if registered else None,
            "month": f"{archived.month:%Y-%m}",
            "archived_at": archived.archived_at,
            "path": archived.path,
        },
        "duplicate_count": counter.count if counter else 0,
        "last_duplicate_at": counter.last_at if counter else None,
        "history": history,
        "counted": counting_row(event=event) is not None if event is not None else False,
        "counted_event": counting_row(event=event) if event is not None else None,
        "corrections": corrections,
    }


def counting_row(*, event: UsageEvent) -> UsageEvent | None:
    """The row that counts for the event's key now: the event itself, the latest amendment
    that replaced it, or ``None`` once voided."""
    if event.voided_at is None:
        return event
    # Amendments share the original's timestamp: the lookup reads its one partition.
    return (
        UsageEvent.objects.filter(amends=event, timestamp=event.timestamp, voided_at__isnull=True)
        .order_by("-id")
        .first()
    )


def event_corrections(*, event: UsageEvent) -> list[dict[str, Any]]:
    """Every void and amendment of a keyed event, oldest first: who, when, why, before, after."""
    return [
        {
            "id": c.pk,
            "kind": c.kind,
            "at": c.created_at,
            "actor": c.actor_label,
            "reason": c.reason,
            "before": c.before,
            "after": c.after,
            "excluded_event_id": c.excluded_id,
            "replacement_event_id": c.replacement_id,
            "invoiced_period": c.late,
            "bulk_id": c.bulk_id,
        }
        for c in EventCorrection.objects.filter(event=event).order_by("created_at", "id")
    ]
