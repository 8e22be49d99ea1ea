"""Billing fanned out across Celery workers.

The scan (still under the one ``billing-scan`` lease) splits the due windows into shards of
contiguous customer-id ranges, records them as BillingShard rows of its run and enqueues one
``billing.shard`` task per shard after commit. Each worker bills its shard under its own fenced
lease (``billing-shard:<run>:<index>``), with the single-process pass's own chunk, price and
batch code; invoice numbers are taken last in each batch transaction (``late_numbers``) so the
gapless counter serialises shards only for the numbering statement and the commit. The run's
counts are the sum of its shards', written as each one finishes; the run is over when every
shard is.

A worker killed mid-shard leaves its task unacknowledged (``acks_late``,
``reject_on_worker_lost``): the broker redelivers it, the new worker waits out the dead one's
lease (the task retries while the lease is held) and bills what is still due. Windows the dead
worker committed are invoiced and not due any more; a batch it had not committed rolled back
whole; and the partial unique constraint on live invoices per window stays the last word."""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from billing.models import BillingRun, BillingShard, Invoice
from billing.services.invoicing import billing_cutoff, windows_due, windows_generate
from billing.services.scan import (
    BILLING_LOCK,
    DEFAULT_BATCH,
    DEFAULT_CHUNK,
    _batch_bill,
    _runs_abandon,
    due_drafts,
)
from neruba import audit
from neruba.fencing import fenced
from neruba.locks import LockLost, default_holder, lock_acquire, lock_heartbeat, lock_release
from neruba.metrics import BILLING_RUNS

logger = logging.getLogger(__name__)

UNFINISHED = (BillingShard.Status.PENDING, BillingShard.Status.RUNNING)
_SHARD_COUNTS = ["scanned", "invoiced", "already_invoiced", "failed", "invoiced_amount"]


def shard_lock_name(shard: BillingShard) -> str:
    return f"billing-shard:{shard.run_id}:{shard.index}"


def customer_ranges(*, customer_ids: list[int], shards: int) -> list[tuple[int, int]]:
    """Splits sorted distinct customer ids into at most ``shards`` contiguous ranges with about
    the same number of customers each (windows per customer are alike: one per interval)."""
    if not customer_ids:
        return []
    shards = max(1, min(shards, len(customer_ids)))
    size, extra = divmod(len(customer_ids), shards)
    ranges, start = [], 0
    for n in range(shards):
        end = start + size + (1 if n < extra else 0)
        ranges.append((customer_ids[start], customer_ids[end - 1]))
        start = end
    return ranges


def shards_in_flight() -> BillingShard | None:
    """A shard of a running run not finished yet: a new scan must not fan the same windows out
    a second time while it is billed."""
    return (
        BillingShard.objects.filter(status__in=UNFINISHED, run__status=BillingRun.Status.RUNNING)
        .order_by("run_id")
        .first()
    )


def shards_create(
    *,
    run: BillingRun,
    cutoff: datetime,
    shards: int,
    queue: str | None = None,
    enqueue: bool = True,
) -> list[BillingShard]:
    """The shards of ``run`` over the windows due at ``cutoff``; their tasks go out after the
    commit (a task never runs before its row exists)."""
    customer_ids = sorted(
        set(windows_due(cutoff=cutoff).values_list("subscription__customer_id", flat=True))
    )
    ranges = customer_ranges(customer_ids=customer_ids, shards=shards)
    with transaction.atomic():
        created = BillingShard.objects.bulk_create(
            [
                BillingShard(run=run, index=n, customer_from=low, customer_to=high)
                for n, (low, high) in enumerate(ranges)
            ]
        )
        ids = [shard.pk for shard in created]

        def send() -> None:
            from billing.tasks import billing_shard

            for pk in ids:
                billing_shard.apply_async(args=[pk], queue=queue)

        if enqueue:  # the benchmark bills the shards itself, in its own processes
            transaction.on_commit(send)
    return created


def run_aggregate(*, run_id: int) -> BillingRun:
    """The run's counts as the sum of its shards'; once every shard is finished, its status and
    end. The run row is locked so two shards finishing at once add up."""
    with transaction.atomic():
        run = BillingRun.objects.select_for_update().get(pk=run_id)
        shards = BillingShard.objects.filter(run_id=run_id)
        totals = shards.aggregate(**{name: Sum(name) for name in _SHARD_COUNTS})
        for name in _SHARD_COUNTS:
            setattr(run, name, totals[name] or 0)
        run.errors = [e for shard in shards.order_by("index") for e in shard.errors][:100]
        fields = [*_SHARD_COUNTS, "errors"]
        if (
            run.status == BillingRun.Status.RUNNING
            and not shards.filter(status__in=UNFINISHED).exists()
        ):
            if shards.filter(status=BillingShard.Status.FAILED).exists() and not run.invoiced:
                run.status = BillingRun.Status.FAILED
            elif run.failed or shards.exclude(status=BillingShard.Status.SUCCEEDED).exists():
                run.status = BillingRun.Status.PARTIAL
            else:
                run.status = BillingRun.Status.SUCCEEDED
            run.finished_at = timezone.now()
            fields += ["status", "finished_at"]
        run.save(update_fields=fields)
    return run


def shard_bill(
    *,
    shard_id: int,
    holder: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    batch_size: int = DEFAULT_BATCH,
) -> str:
    """Bills one shard: every window of its run's cutoff still due whose customer is in the
    shard's range. Returns ``billed``, ``done`` (finished before: a redelivery) or
    ``lock_held`` (another worker holds the shard's lease, or a dead one's has not expired;
    the task retries).

    1. Take the shard's lease; mark the shard running (attempts + 1).
    2. Per chunk: aggregate, price, and per batch one fenced transaction (numbers last).
    3. Heartbeat after each batch; save the shard's counts.
    4. Finish the shard, add it up into the run, release the lease."""
    shard = BillingShard.objects.select_related("run").get(pk=shard_id)
    if shard.status not in UNFINISHED:
        return "done"
    holder = holder or default_holder()
    lease = lock_acquire(name=shard_lock_name(shard), holder=holder)
    if lease is None:
        return "lock_held"
    try:
        shard.refresh_from_db()
        if shard.status not in UNFINISHED:
            return "done"
        run = shard.run
        BillingShard.objects.filter(pk=shard.pk).update(
            status=BillingShard.Status.RUNNING,
            attempts=shard.attempts + 1,
            holder=holder,
            token=lease.token,
            started_at=shard.started_at or timezone.now(),
        )
        # The shard's own tally: an unsaved run with the real id, so invoices and windows
        # record the run while the counts stay the shard's until they are added up.
        tally = BillingRun(pk=run.pk, trigger=run.trigger, as_of=run.as_of)
        for name in _SHARD_COUNTS:
            setattr(tally, name, getattr(shard, name))
        tally.errors = list(shard.errors)
        status = _shard_pass(
            shard=shard, tally=tally, lease=lease, chunk_size=chunk_size, batch_size=batch_size
        )
        # Counted from the invoices themselves: a worker killed between a batch's commit and
        # the save of its counts must not leave those invoices out of the run's totals.
        issued = Invoice.objects.filter(
            run_id=run.pk,
            customer_id__gte=shard.customer_from,
            customer_id__lte=shard.customer_to,
        ).aggregate(n=Count("id"), amount=Sum("total"))
        tally.invoiced, tally.invoiced_amount = issued["n"], issued["amount"] or 0
        BillingShard.objects.filter(pk=shard.pk).update(
            status=status,
            finished_at=timezone.now(),
            errors=tally.errors[:100],
            **{name: getattr(tally, name) for name in _SHARD_COUNTS},
        )
        run_aggregate(run_id=run.pk)
        return "billed"
    finally:
        lock_release(lease=lease)


def _shard_pass(
    *, shard: BillingShard, tally: BillingRun, lease: object, chunk_size: int, batch_size: int
) -> str:
    cutoff = billing_cutoff(as_of=shard.run.as_of)
    due = windows_due(cutoff=cutoff).filter(
        subscription__customer_id__gte=shard.customer_from,
        subscription__customer_id__lte=shard.customer_to,
    )
    try:
        for drafts in due_drafts(due=due, run=tally, chunk_size=chunk_size, record=True):
            for start in range(0, len(drafts), batch_size):
                _batch_bill(
                    run=tally,
                    lease=lease,  # type: ignore[arg-type]
                    drafts=drafts[start : start + batch_size],
                    late_numbers=True,
                )
                if not lock_heartbeat(lease=lease):  # type: ignore[arg-type]
                    raise LockLost(details={"lock": shard_lock_name(shard)})
                BillingShard.objects.filter(pk=shard.pk).update(
                    **{name: getattr(tally, name) for name in _SHARD_COUNTS}
                )
    except LockLost as exc:
        tally.errors.append({"window": None, "error": f"lock lost: {exc.details}"})
        return BillingShard.Status.FAILED
    if tally.failed:
        return BillingShard.Status.PARTIAL if tally.invoiced else BillingShard.Status.FAILED
    return BillingShard.Status.SUCCEEDED


def billing_scan_fanout(
    *,
    trigger: str,
    shards: int,
    as_of: datetime | None = None,
    actor: audit.Actor = None,
    queue: str | None = None,
) -> BillingRun:
    """The scan of a fanned-out pass: under the ``billing-scan`` lease, create the missing
    windows and split the due ones into ``shards`` customer ranges whose tasks go out on
    commit; the run stays ``running`` until its shards finish (see ``run_aggregate``).

    1. Take the ``billing-scan`` lease; held: a ``lock_held`` run, nothing else.
    2. Shards of an earlier run still in flight: this run is ``lock_held`` too (the same
       windows must not be fanned out twice; the constraint would refuse the second invoice,
       but only after pricing it again).
    3. Windows up to the cutoff; the shards, in a transaction fenced by the lease.
    4. Release the lease (the shards hold their own)."""
    as_of = as_of or timezone.now()
    cutoff = billing_cutoff(as_of=as_of)
    holder = default_holder()
    user = actor if getattr(actor, "is_authenticated", False) else None
    lease = lock_acquire(name=BILLING_LOCK, holder=holder)
    if lease is None:
        run = BillingRun.objects.create(
            trigger=trigger,
            holder=holder,
            as_of=as_of,
            status=BillingRun.Status.LOCK_HELD,
            finished_at=timezone.now(),
            actor=user,
        )
        BILLING_RUNS.labels(status=run.status).inc()
        return run
    try:
        run = BillingRun.objects.create(
            trigger=trigger, holder=holder, token=lease.token, as_of=as_of, actor=user
        )
        _runs_abandon(current=run)
        busy = shards_in_flight()
        if busy is not None:
            run.status = BillingRun.Status.LOCK_HELD
            run.errors = [{"window": None, "error": f"shards of run {busy.run_id} in flight"}]
            run.finished_at = timezone.now()
            run.save(update_fields=["status", "errors", "finished_at"])
            BILLING_RUNS.labels(status=run.status).inc()
            return run
        windows_generate(through=cutoff)
        with fenced(lease):
            created = shards_create(run=run, cutoff=cutoff, shards=shards, queue=queue)
            if not created:
                run.status = BillingRun.Status.SUCCEEDED
                run.finished_at = timezone.now()
                run.save(update_fields=["status", "finished_at"])
    finally:
        lock_release(lease=lease)
    return run
