"""Reads for the console and the replay command."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from billing.models import Dispute, Refund
from webhooks.models import StripeEvent


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
