from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from ingest.services import ingest_prune


@shared_task(name="ingest.prune", acks_late=True, time_limit=3600)
def prune() -> dict[str, int]:
    """Retention sweep for ingest batches and rejections (NERUBA_INGEST_RETENTION)."""
    return ingest_prune(now=timezone.now())
