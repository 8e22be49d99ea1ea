"""Ingest reads that feed the API and the console."""

from __future__ import annotations

from typing import Any

from ingest.models import (
    EventArchive,
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
    history.sort(key=lambda entry: entry["at"])
    counter = EventDuplicates.objects.filter(event=event).first() if event else None
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
    }
