"""Billing's sweeps, the entry points ``operations.sweeps`` orchestrates: usage drift
(``billing.drift``), payment reconciliation (``billing.reconcile``), stuck runs and windows,
and the provider outbox. Each takes the sweep's lease (``None`` on a dry run), re-checks it in
every writing transaction, and returns counts; ``findings`` counts new findings."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from billing.drift import usage_drift_sweep
from billing.models import BillingRun, BillingWindow, ProviderSync
from billing.reconcile import reconciliation_sweep
from billing.services.outbox import SYNC_MAX_ATTEMPTS, provider_sync_send
from billing.services.scan import BILLING_LOCK, SHARD_UNFINISHED
from neruba.fencing import fenced, lease_renew
from neruba.locks import Lease, lock_live_token

# A dry-run billing pass takes no lease; one still "running" after this was killed.
DRY_RUN_STALE = timedelta(hours=6)
# Outbox rows are sent by a task right after their invoice commits and retried by it with
# backoff; the sweep takes over rows overdue by more than this (a lost task, a dead worker).
OUTBOX_GRACE = timedelta(minutes=5)
OUTBOX_BATCH = 500

__all__ = [
    "outbox_sweep",
    "reconciliation_sweep",
    "stuck_runs_sweep",
    "usage_drift_sweep",
]


def stuck_runs_sweep(
    *, lease: Lease | None, now: datetime | None = None, dry_run: bool = False
) -> dict[str, int]:
    """Billing runs still ``running`` whose lease is gone are marked ``abandoned``; windows left
    in ``billing`` by a run that is over go back to ``pending`` for the next scan.

    The ``billing-scan`` lock row is locked first: a scan that takes the lease meanwhile waits
    for this transaction, so its brand-new run (with the next token) is never mistaken for a
    stuck one. The wait for that row is bounded (``LockBusy``, the sweep fails and the next one
    retries) and the lease's expiry is read by the database clock. A run holding the live lease
    (same token, not expired) is left alone."""
    now = now or timezone.now()
    with fenced(lease):
        live_token = lock_live_token(name=BILLING_LOCK, lock_row=True)
        stuck = BillingRun.objects.filter(status=BillingRun.Status.RUNNING).filter(
            Q(dry_run=False) | Q(dry_run=True, started_at__lt=now - DRY_RUN_STALE)
        )
        if live_token is not None:
            stuck = stuck.exclude(dry_run=False, token=live_token)
        # A fanned-out run released the scan lease; it lives while its shards do (each under
        # its own lease, redelivered by the broker if its worker dies).
        stuck = stuck.exclude(shards__status__in=SHARD_UNFINISHED)
        run_ids = list(stuck.values_list("pk", flat=True))
        windows = BillingWindow.objects.filter(status=BillingWindow.Status.BILLING).filter(
            Q(claimed_by_run__isnull=True)
            | ~Q(claimed_by_run__status=BillingRun.Status.RUNNING)
            | Q(claimed_by_run__in=run_ids)
        )
        window_ids = list(windows.values_list("pk", flat=True))
        if not dry_run:
            BillingRun.objects.filter(pk__in=run_ids).update(
                status=BillingRun.Status.ABANDONED, finished_at=now
            )
            BillingWindow.objects.filter(pk__in=window_ids).update(
                status=BillingWindow.Status.PENDING, claimed_by_run=None
            )
    return {"runs_abandoned": len(run_ids), "windows_released": len(window_ids), "findings": 0}


def outbox_sweep(
    *,
    lease: Lease | None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Retries provider sync rows (pending or failed) overdue by more than ``OUTBOX_GRACE``
    through ``provider_sync_send``. The send talks to the provider outside any transaction;
    what keeps a concurrent task and this sweep from doing anything twice is the provider's
    idempotency key (the invoice number) and the row's ``sent`` status, so the lease is only
    renewed between rows."""
    now = now or timezone.now()
    due = ProviderSync.objects.filter(
        status__in=[ProviderSync.Status.PENDING, ProviderSync.Status.FAILED],
        next_attempt_at__lte=now - OUTBOX_GRACE,
    ).order_by("next_attempt_at", "id")
    counts = {"due": 0, "sent": 0, "failed": 0, "gave_up": 0, "findings": 0}
    rows = list(due[:OUTBOX_BATCH])
    counts["due"] = len(rows)
    if dry_run:
        return counts
    for row in rows:
        lease_renew(lease)
        try:
            provider_sync_send(sync=row)
        except Exception:  # recorded on the row (error, backoff) by the service
            counts["failed"] += 1
            if row.attempts + 1 >= SYNC_MAX_ATTEMPTS:
                counts["gave_up"] += 1
            continue
        counts["sent"] += 1
    return counts
