"""Ingest's sweep: retention of ingest batches and rejections (``ingest_prune``), the entry
point ``operations.sweeps`` orchestrates."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from ingest.models import IngestBatch, IngestRejection
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
