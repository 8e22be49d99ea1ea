"""Billing tasks: thin, take ids, call the service. Names are strings beat can refer to."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from billing import services
from billing import shards as billing_shards
from billing.models import BillingRun, ProviderSync


@shared_task(
    name="billing.scan",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=3300,
    time_limit=3500,
)
def billing_scan(trigger: str = BillingRun.Trigger.BEAT) -> int:
    # A second scan started while one runs records lock_held and exits: overlap is harmless.
    shards = settings.NERUBA["NERUBA_BILLING_SHARDS"]
    if shards > 0:
        return billing_shards.billing_scan_fanout(trigger=trigger, shards=shards).pk
    return services.billing_scan(trigger=trigger).pk


@shared_task(
    name="billing.shard",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,
    soft_time_limit=3300,
    time_limit=3500,
)
def billing_shard(self: object, shard_id: int) -> str:
    """Bills one shard of a fanned-out run. ``lock_held``: another worker bills it, or a
    killed worker's lease has not run out yet; try again shortly (well inside the broker's
    visibility timeout), the lease expires within NERUBA_LOCK_TTL."""
    outcome = billing_shards.shard_bill(shard_id=shard_id)
    if outcome == "lock_held":
        raise self.retry(countdown=5)  # type: ignore[attr-defined]
    return outcome


@shared_task(
    name="billing.provider_syncs_send",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=services.SYNC_MAX_ATTEMPTS,
    soft_time_limit=600,
)
def provider_syncs_send(self: object, sync_ids: list[int]) -> int:
    """Sends outbox rows; rows that fail are retried with exponential backoff (capped well
    below the broker's visibility timeout)."""
    failed: list[int] = []
    sent = 0
    for sync in ProviderSync.objects.filter(pk__in=sync_ids, status=ProviderSync.Status.PENDING):
        try:
            services.provider_sync_send(sync=sync)
            sent += 1
        except Exception:  # recorded on the row by the service; retried below
            failed.append(sync.pk)
    if failed:
        retries = self.request.retries  # type: ignore[attr-defined]
        raise self.retry(  # type: ignore[attr-defined]
            args=[failed],
            countdown=min(1800, 30 * 2**retries),
            max_retries=services.SYNC_MAX_ATTEMPTS,
        )
    return sent
