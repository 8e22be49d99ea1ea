"""Reads for the console and the replay command."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Min, Q, QuerySet
from django.db.models.functions import TruncHour

from billing.models import Dispute, Refund
from neruba.models import OutboxMessage
from webhooks.models import DeliveryAttempt, OutboundDelivery, StripeEvent, WebhookEndpoint


def event_linked_records(*, event: StripeEvent) -> dict[str, list[Any]]:
    """The refunds and disputes an event is about: by its object id, the charge it names, or
    refunds embedded in a charge."""
    obj = event.payload.get("data", {}).get("object", {}) if event.payload else {}
    ids = {event.object_id} - {""}
    embedded = (obj.get("refunds") or {}).get("data") or [] if isinstance(obj, dict) else []
    ids |= {r.get("id") for r in embedded if isinstance(r, dict) and r.get("id")}
    charge = obj.get("charge") if isinstance(obj, dict) else None
    charge_id = charge.get("id") if isinstance(charge, dict) else charge
    charges = {c for c in (charge_id, event.object_id) if isinstance(c, str) and c}
    return {
        "refunds": list(
            Refund.objects.filter(Q(stripe_refund_id__in=ids) | Q(charge_id__in=charges))[:20]
        ),
        "disputes": list(
            Dispute.objects.filter(Q(stripe_dispute_id__in=ids) | Q(charge_id__in=charges))[:20]
        ),
    }


def events_for_replay(
    *,
    ids: list[str] | None = None,
    statuses: list[str] | None = None,
    types: list[str] | None = None,
    since: datetime | None = None,
) -> QuerySet[StripeEvent]:
    """Events chosen by Stripe id, status, type and receipt time, oldest first (the order
    Stripe sent them)."""
    events = StripeEvent.objects.all()
    if ids:
        events = events.filter(stripe_id__in=ids)
    if statuses:
        events = events.filter(status__in=statuses)
    if types:
        events = events.filter(type__in=types)
    if since is not None:
        events = events.filter(received_at__gte=since)
    return events.order_by("created", "id")


# --- outbound webhooks -------------------------------------------------------------------------


def outbound_backlog(*, now: datetime) -> dict[str, Any]:
    """Deliveries not yet delivered, by status, the age of the oldest one still to be sent
    (pending, sending or failed awaiting its retry) and the disabled endpoints. Index-backed
    counts on (status, next_attempt_at): the delivered rows are never counted."""
    waiting = ("pending", "sending", "failed")
    counts = dict.fromkeys((*waiting, "dead"), 0)
    for row in (
        OutboundDelivery.objects.filter(status__in=[*waiting, "dead"])
        .values("status")
        .annotate(n=Count("id"))
        .order_by()
    ):
        counts[row["status"]] = row["n"]
    oldest = OutboundDelivery.objects.filter(status__in=waiting).aggregate(m=Min("created_at"))["m"]
    unfanned = OutboxMessage.objects.filter(fanned_out_at__isnull=True).aggregate(
        m=Min("created_at")
    )["m"]
    starts = [t for t in (oldest, unfanned) if t is not None]
    return {
        "counts": counts,
        "oldest_pending_age": (now - min(starts)).total_seconds() if starts else 0.0,
        "disabled_endpoints": WebhookEndpoint.objects.filter(enabled=False).count(),
    }


def endpoint_stats(*, endpoint_id: int, now: datetime) -> dict[str, Any]:
    """Attempts of the last 24 hours per hour and outcome, and the success rate over them."""
    since = now - timedelta(hours=24)
    rows = list(
        DeliveryAttempt.objects.filter(delivery__endpoint_id=endpoint_id, started_at__gte=since)
        .annotate(hour=TruncHour("started_at"))
        .values("hour", "outcome")
        .annotate(n=Count("id"))
        .order_by()
    )
    total = sum(r["n"] for r in rows)
    delivered = sum(r["n"] for r in rows if r["outcome"] == "delivered")
    return {
        "rows": rows,
        "attempts": total,
        "delivered": delivered,
        "success_rate": (delivered / total) if total else None,
    }
