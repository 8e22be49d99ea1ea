"""Ingest's sweeps: retention of ingest batches and rejections (``ingest_prune``) and the
monthly event partitions kept ahead; entry points ``operations.sweeps`` orchestrates."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from ingest.models import IngestBatch, IngestRejection
from ingest.partitions import (
    add_months,
    default_partition_months,
    known_months_forget,
    month_of,
    partition_months,
    partitioned,
    partitions_ensure,
)
from ingest.services import ingest_prune
from neruba.fencing import fenced
from neruba.locks import Lease


def retention_sweep(
    *, lease: Lease | None, now: datetime | None = None, dry_run: bool = False
) -> dict[str, int]:
    """Prunes batches and rejections older than ``NERUBA_INGEST_RETENTION``; the delete runs in
    a transaction that first re-checks the sweep's lease. A dry run counts what would go."""
    now = now or timezone.now()
    if dry_run:
        cutoff = now - timedelta(seconds=settings.NERUBA["NERUBA_INGEST_RETENTION"])
        return {
            "batches": IngestBatch.objects.filter(received_at__lt=cutoff).count(),
            "rejections": IngestRejection.objects.filter(created_at__lt=cutoff).count(),
            "findings": 0,
        }
    with fenced(lease):
        pruned = ingest_prune(now=now)
    return {**pruned, "findings": 0}


# Partitions kept ready ahead of today, so ingest's on-demand path is the exception.
PARTITIONS_AHEAD = 3


def partitions_sweep(
    *, lease: Lease | None, now: datetime | None = None, dry_run: bool = False
) -> dict[str, int]:
    """PostgreSQL: creates the partitions of this month and the next ``PARTITIONS_AHEAD``, and
    one for every month with rows waiting in the default partition (their rows move in). DDL,
    each month in its own short transaction that re-checks the lease first (see
    ``partitions_ensure``). A dry run counts the months that would be created."""
    now = now or timezone.now()
    current = month_of(now)
    wanted = {add_months(current, n) for n in range(PARTITIONS_AHEAD + 1)}
    waiting = set(default_partition_months())
    wanted |= waiting
    if not partitioned():
        return {"created": 0, "moved_months": 0, "findings": 0}
    missing = sorted(wanted - set(partition_months()))
    if dry_run:
        return {"created": len(missing), "moved_months": len(waiting), "findings": 0}
    known_months_forget(months=missing)
    created = []
    for month in missing:
        # One fenced transaction per month: the DDL and any rows moved out of the default
        # partition commit together, and only while the lease is ours.
        with fenced(lease):
            created += partitions_ensure(months=[month])
    return {"created": len(created), "moved_months": len(waiting), "findings": 0}
