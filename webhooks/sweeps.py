"""Webhooks' sweep: failed Stripe events whose backoff is due are retried, and those past
``STRIPE_WEBHOOK_MAX_ATTEMPTS`` become ``dead`` (``events_retry_due``); lapsed claims of dead
workers are taken over. The entry point ``operations.sweeps`` orchestrates.

Processing is guarded by the event's own claim (a conditional UPDATE), not by the sweep's
lease, so the lease is renewed between rounds only: a second sweep, the retry beat and the
HTTP path can race without processing an event twice."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from neruba.fencing import lease_renew
from neruba.locks import Lease
from webhooks.models import StripeEvent
from webhooks.services import RETRY_BATCH, events_retry_due

Status = StripeEvent.Status
MAX_ROUNDS = 20


def _due(now: datetime) -> Q:
    return Q(next_attempt_at__lte=now) & Q(
        status__in=[Status.RECEIVED, Status.FAILED, Status.PROCESSING]
    )


def events_retry_count(*, now: datetime) -> dict[str, int]:
    """What a retry would take on now, without processing anything (the dry run)."""
    due = StripeEvent.objects.filter(_due(now))
    by_status = Counter(due.values_list("status", flat=True))
    last_chance = due.filter(
        attempts__gte=settings.NERUBA["STRIPE_WEBHOOK_MAX_ATTEMPTS"] - 1
    ).count()
    return {
        "due": sum(by_status.values()),
        "received": by_status.get(Status.RECEIVED, 0),
        "failed": by_status.get(Status.FAILED, 0),
        "lapsed_claims": by_status.get(Status.PROCESSING, 0),
        "dead_if_failing": last_chance,
        "findings": 0,
    }


def webhook_retries_sweep(
    *, lease: Lease | None, now: datetime | None = None, dry_run: bool = False
) -> dict[str, int]:
    """Retries due events in rounds of ``RETRY_BATCH`` until none is left (bounded)."""
    now = now or timezone.now()
    if dry_run:
        return events_retry_count(now=now)
    totals: Counter[str] = Counter()
    dead_before = StripeEvent.objects.filter(status=Status.DEAD).count()
    for _ in range(MAX_ROUNDS):
        lease_renew(lease)
        counts = events_retry_due(now=timezone.now())
        totals.update(counts)
        if sum(counts.values()) < RETRY_BATCH:
            break
    dead = StripeEvent.objects.filter(status=Status.DEAD).count() - dead_before
    return {
        "processed": totals["processed"],
        "ignored": totals["ignored"],
        "failed": totals["failed"],
        "skipped": totals["skipped"],
        "dead": max(dead, 0),
        "findings": 0,
    }
