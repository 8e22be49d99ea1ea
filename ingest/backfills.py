"""Backfills: loading history older than the ingest window, through a record of its own.

A backfill is opened with a reason and a time window, takes events (same outcomes, keys unique
forever) only inside that window, and is closed. Closing freezes its counts and hands the
invoiced windows its events fell into to whoever listens on ``backfill_closed`` (billing opens
one drift finding per window and metric there: money never changes silently; ingest does not
import billing).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.dispatch import Signal
from django.utils import timezone

from ingest.exceptions import BackfillClosed
from ingest.models import Backfill, IngestBatch, UsageEvent
from ingest.services import IngestResult, events_ingest
from neruba import audit
from neruba.errors import NotFound, ValidationFailed
from neruba.models import ApiKey

# Sent inside the close's transaction with ``backfill``. A receiver returns (invoiced windows
# touched, drift findings opened).
backfill_closed = Signal()

_COUNTED = ("accepted", "duplicate", "conflict", "failed")


def backfill_create(
    *,
    reason: str,
    starts_at: datetime,
    ends_at: datetime,
    actor: audit.Actor | ApiKey,
    source: str = "api",
) -> Backfill:
    """Opens a backfill for ``[starts_at, ends_at)``. The window must be non-empty and may not
    reach into the future (beyond the ingest skew): a backfill loads history."""
    reason = (reason or "").strip()
    problems: dict[str, str] = {}
    if not reason:
        problems["reason"] = "required"
    if ends_at <= starts_at:
        problems["ends_at"] = "must be after starts_at"
    skew = timedelta(seconds=settings.NERUBA["NERUBA_INGEST_MAX_SKEW"])
    if ends_at > timezone.now() + skew:
        problems["ends_at"] = "may not be in the future: a backfill loads history"
    if problems:
        raise ValidationFailed("The backfill is not valid.", details=problems)
    user = actor if getattr(actor, "is_authenticated", False) else None
    with transaction.atomic():
        backfill = Backfill.objects.create(
            reason=reason,
            starts_at=starts_at,
            ends_at=ends_at,
            source=source,
            created_by=user if not isinstance(actor, ApiKey) else None,
            api_key_prefix=actor.prefix if isinstance(actor, ApiKey) else "",
        )
        audit.record(
            actor=actor,
            action="backfill.create",
            target=backfill,
            reason=reason,
            after={"starts_at": starts_at.isoformat(), "ends_at": ends_at.isoformat()},
        )
    return backfill


def backfill_get(*, backfill_id: Any) -> Backfill:
    try:
        return Backfill.objects.get(pk=_pk(backfill_id))
    except Backfill.DoesNotExist:
        raise NotFound("No backfill has that id.", details={"backfill": backfill_id}) from None


def _pk(backfill_id: Any) -> int:
    try:
        pk = int(backfill_id)
    except (TypeError, ValueError, OverflowError):
        pk = 0
    if not 0 < pk < 2**63:
        raise NotFound("No backfill has that id.", details={"backfill": backfill_id})
    return pk


def backfill_counts(*, backfill: Backfill) -> dict[str, int]:
    """Outcome counts: frozen on a closed backfill, summed from the batches of an open one."""
    if backfill.status == Backfill.Status.CLOSED:
        return {name: getattr(backfill, name) for name in (*_COUNTED, "late")}
    sums = IngestBatch.objects.filter(backfill=backfill).aggregate(
        **{name: Sum(name) for name in _COUNTED}
    )
    counts = {name: int(sums[name] or 0) for name in _COUNTED}
    counts["late"] = _late_events(backfill).count()
    return counts


def _late_events(backfill: Backfill) -> Any:
    # Late events are found through the partial index on received_at WHERE late, bounded by
    # the backfill's lifetime, then narrowed to its batches.
    return UsageEvent.objects.filter(
        late=True,
        received_at__gte=backfill.created_at,
        batch_id__in=IngestBatch.objects.filter(backfill=backfill).values("id"),
    )


def backfill_ingest(
    *,
    backfill_id: Any,
    payloads: Sequence[Any],
    api_key: ApiKey | None,
    cloudevents: bool = False,
    body_bytes: int = 0,
    request_id: str = "",
) -> IngestResult:
    """Ingests a request's items into an open backfill: the same outcomes as ``events_ingest``,
    the backfill's window instead of the ingest window.

    The backfill row is read FOR SHARE in the batch's transaction: concurrent batches of one
    backfill do not wait on each other (nothing writes the backfill row per batch; its counts
    are summed from the batches), while a close (FOR UPDATE) waits for the batches in flight
    and every batch after it finds the backfill closed."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            backfill = _share_locked(backfill_id)
        else:
            backfill = backfill_get(backfill_id=backfill_id)
        if backfill.status != Backfill.Status.OPEN:
            raise BackfillClosed(details={"backfill": backfill.pk, "closed_at": backfill.closed_at})
        return events_ingest(
            payloads=payloads,
            api_key=api_key,
            cloudevents=cloudevents,
            body_bytes=body_bytes,
            request_id=request_id,
            backfill=backfill,
        )


def _share_locked(backfill_id: Any) -> Backfill:
    # Django's select_for_update has no FOR SHARE. One statement: a batch is round-trip bound.
    pk = _pk(backfill_id)
    rows = list(
        Backfill.objects.raw(
            f"SELECT * FROM {Backfill._meta.db_table} WHERE id = %s FOR SHARE",  # noqa: S608
            [pk],
        )
    )
    if not rows:
        raise NotFound("No backfill has that id.", details={"backfill": backfill_id})
    return rows[0]


def backfill_close(
    *, backfill: Backfill, actor: audit.Actor | ApiKey, reason: str = ""
) -> Backfill:
    """Closes an open backfill: freezes its counts and, in the same transaction, sends
    ``backfill_closed`` so billing opens drift findings for the invoiced windows its late events
    (those stored into periods already invoiced) fell into, instead of changing money."""
    with transaction.atomic():
        locked = Backfill.objects.select_for_update().get(pk=backfill.pk)
        if locked.status != Backfill.Status.OPEN:
            raise BackfillClosed(details={"backfill": locked.pk, "closed_at": locked.closed_at})
        counts = backfill_counts(backfill=locked)
        findings = 0
        windows = 0
        for _receiver, answer in backfill_closed.send(sender=Backfill, backfill=locked):
            if isinstance(answer, tuple):
                windows, findings = windows + answer[0], findings + answer[1]
        for name in (*_COUNTED, "late"):
            setattr(locked, name, counts[name])
        locked.windows_touched = windows
        locked.findings = findings
        locked.status = Backfill.Status.CLOSED
        locked.closed_at = timezone.now()
        locked.save()
        audit.record(
            actor=actor,
            action="backfill.close",
            target=locked,
            reason=reason or locked.reason,
            before={"status": Backfill.Status.OPEN},
            after={
                "status": locked.status,
                **counts,
                "invoiced_windows": windows,
                "drift_findings": findings,
            },
        )
    return locked


def backfill_dict(backfill: Backfill) -> dict[str, Any]:
    counts = backfill_counts(backfill=backfill)
    return {
        "id": backfill.pk,
        "reason": backfill.reason,
        "starts_at": backfill.starts_at,
        "ends_at": backfill.ends_at,
        "source": backfill.source,
        "status": backfill.status,
        "created_at": backfill.created_at,
        "closed_at": backfill.closed_at,
        "counts": {name: counts[name] for name in _COUNTED},
        "late": counts["late"],
        "invoiced_windows": backfill.windows_touched,
        "drift_findings": backfill.findings,
    }
