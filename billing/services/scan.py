"""The billing scan: one leased run that bills every due window in fenced batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from billing import messages
from billing.drafts import InvoiceDraft, invoice_draft, metric_aggregations, window_ref
from billing.models import BillingRun, BillingWindow, Plan
from billing.selectors import prices_by_plan
from billing.services.invoicing import (
    _invoices_write,
    _window_rows,
    billing_cutoff,
    windows_due,
    windows_generate,
)
from billing.usage import usage_for_windows
from neruba import audit
from neruba.fencing import LeasedRun, Outcome, fenced, leased_run
from neruba.locks import Lease, LockLost
from neruba.metrics import BILLING_RUN_DURATION, BILLING_RUNS, WINDOWS_INVOICED

logger = logging.getLogger(__name__)


BILLING_LOCK = "billing-scan"
SHARD_UNFINISHED = ("pending", "running")
DEFAULT_CHUNK = 10000
DEFAULT_BATCH = 1000


def _runs_abandon(*, current: BillingRun) -> None:
    """Runs still marked running when we hold the lock lost it (killed, stopped): their lease
    expired, so they are over."""
    # A fanned-out run is over when its shards are, whoever holds the scan lease.
    BillingRun.objects.filter(status=BillingRun.Status.RUNNING, dry_run=False).exclude(
        pk=current.pk
    ).exclude(shards__status__in=SHARD_UNFINISHED).update(
        status=BillingRun.Status.ABANDONED, finished_at=timezone.now()
    )


def _window_failed(*, run: BillingRun, window_id: int | None, exc: Exception, record: bool) -> None:
    run.failed += 1
    message = f"{type(exc).__name__}: {exc}"
    if len(run.errors) < 100:
        run.errors.append({"window": window_id, "error": message[:500]})
    if record:
        BillingWindow.objects.filter(pk=window_id).update(
            status=BillingWindow.Status.FAILED, last_error=message[:2000]
        )


def _batch_bill(
    *, run: BillingRun, lease: Lease | None, drafts: list[InvoiceDraft], late_numbers: bool = False
) -> None:
    """Bills a batch of windows in one fenced transaction; if anything in it fails (a window
    billed meanwhile, a bad price) the batch is retried one window per transaction so each
    window gets its own outcome. LockLost is never swallowed: the scan must stop."""
    if len(drafts) > 1:
        try:
            with fenced(lease):
                invoices = _invoices_write(
                    drafts=drafts, lease=lease, run=run, late_numbers=late_numbers
                )
        except LockLost:
            raise
        except Exception:
            # Retried one window per transaction below, where each outcome is recorded.
            logger.info("billing batch failed; retrying per window", exc_info=True)
        else:
            run.invoiced += len(invoices)
            run.invoiced_amount += sum(i.total for i in invoices)
            WINDOWS_INVOICED.inc(len(invoices))
            return
    for draft in drafts:
        try:
            with fenced(lease):
                invoice = _invoices_write(
                    drafts=[draft], lease=lease, run=run, late_numbers=late_numbers
                )[0]
        except LockLost:
            raise
        except IntegrityError:
            run.already_invoiced += 1
            continue
        except Exception as exc:  # one bad window must not stop the scan
            _window_failed(run=run, window_id=draft.window.id, exc=exc, record=True)
            continue
        run.invoiced += 1
        run.invoiced_amount += invoice.total
        WINDOWS_INVOICED.inc()


_COUNT_FIELDS = ["scanned", "invoiced", "already_invoiced", "failed", "invoiced_amount", "errors"]


def billing_scan(
    *,
    trigger: str,
    as_of: datetime | None = None,
    actor: audit.Actor = None,
    dry_run: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Callable[[BillingRun], None] | None = None,
) -> BillingRun:
    """Bills every closed window (past the grace period) without a live invoice, oldest first.

    A ``leased_run`` (``neruba.fencing``) on the ``billing-scan`` lease:
    1. Take the lease; if it is held, record a ``lock_held`` run and return.
    2. Create the missing window rows up to ``as_of - grace``.
    3. Per chunk of due windows: aggregate usage in one GROUP BY, price each window.
    4. Per batch: one fenced transaction (the token checked first and last); a batch that
       fails is retried one window per transaction. Heartbeat after each batch.
    5. Release the lease and record the outcome.

    Double billing is impossible even if the lock breaks: the partial unique constraint on
    live regular invoices per window turns the second write into ``already_invoiced``.
    A dry run takes no lock and writes nothing but its run row (and window rows)."""
    as_of = as_of or timezone.now()
    cutoff = billing_cutoff(as_of=as_of)
    clock = time.monotonic()
    user = actor if getattr(actor, "is_authenticated", False) else None

    def held(holder: str) -> BillingRun:
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

    def start(holder: str, lease: Lease | None) -> BillingRun:
        return BillingRun.objects.create(
            trigger=trigger,
            holder=holder,
            token=lease.token if lease else None,
            as_of=as_of,
            dry_run=dry_run,
            actor=user,
        )

    def body(leased: LeasedRun[BillingRun]) -> None:
        _scan_windows(
            leased=leased,
            cutoff=cutoff,
            dry_run=dry_run,
            chunk_size=chunk_size,
            batch_size=batch_size,
            on_progress=on_progress,
        )

    def finish(run: BillingRun, outcome: Outcome) -> str:
        if outcome.lock_lost:
            details = getattr(outcome.error, "details", {})
            run.errors.append({"window": None, "error": f"lock lost: {details}"})
            run.status = BillingRun.Status.FAILED
        elif outcome.error is not None:
            message = f"{type(outcome.error).__name__}: {outcome.error}"
            run.errors.append({"window": None, "error": message[:500]})
            run.status = BillingRun.Status.FAILED
        elif run.failed == 0:
            run.status = BillingRun.Status.SUCCEEDED
        else:
            run.status = BillingRun.Status.PARTIAL if run.invoiced else BillingRun.Status.FAILED
        run.finished_at = timezone.now()
        with transaction.atomic():
            run.save(update_fields=[*_COUNT_FIELDS, "status", "finished_at"])
            messages.billing_run_failed_published(run=run)
        BILLING_RUNS.labels(status=run.status).inc()
        BILLING_RUN_DURATION.observe(time.monotonic() - clock)
        return run.status

    return leased_run(
        lock=BILLING_LOCK,
        job="billing_scan",
        dry_run=dry_run,
        held=held,
        start=start,
        body=body,
        finish=finish,
        abandon=lambda run: _runs_abandon(current=run),
        reraise=True,
    )


def due_drafts(
    *, due: QuerySet[BillingWindow], run: BillingRun, chunk_size: int, record: bool
) -> Iterator[list[InvoiceDraft]]:
    """The windows of ``due``, a chunk at a time in (period_end, id) order (keyset paging, so
    windows billed meanwhile never shift a page), priced into drafts. Each chunk counts as
    scanned on ``run``; a window whose pricing fails is counted failed there (a bad price fails
    its window, not the pass) and, with ``record``, marked failed. Used by the one-process scan
    and by each shard of a fanned-out pass."""
    prices = prices_by_plan()
    plans: dict[int, Plan] = {}
    aggregations = metric_aggregations()
    last: tuple[datetime, int] | None = None
    while True:
        page = due
        if last is not None:
            page = due.filter(Q(period_end__gt=last[0]) | Q(period_end=last[0], id__gt=last[1]))
        chunk = _window_rows(page[:chunk_size], plans)
        if not chunk:
            return
        last = (chunk[-1].period_end, chunk[-1].id)
        usage = usage_for_windows(
            windows=[window_ref(w, prices.get(w.plan.pk, [])) for w in chunk],
            aggregations=aggregations,
        )
        run.scanned += len(chunk)
        drafts = []
        for w in chunk:
            try:
                drafts.append(
                    invoice_draft(
                        window=w, usage=usage.get(w.id, {}), prices=prices.get(w.plan.pk, [])
                    )
                )
            except Exception as exc:
                _window_failed(run=run, window_id=w.id, exc=exc, record=record)
        yield drafts


def _scan_windows(
    *,
    leased: LeasedRun[BillingRun],
    cutoff: datetime,
    dry_run: bool,
    chunk_size: int,
    batch_size: int,
    on_progress: Callable[[BillingRun], None] | None,
) -> None:
    """Steps 2 to 4 of ``billing_scan``."""
    run = leased.record
    windows_generate(through=cutoff)
    for drafts in due_drafts(
        due=windows_due(cutoff=cutoff), run=run, chunk_size=chunk_size, record=not dry_run
    ):
        if dry_run:
            run.invoiced += len(drafts)
            run.invoiced_amount += sum(d.subtotal for d in drafts)
            continue
        for first in range(0, len(drafts), batch_size):
            _batch_bill(run=run, lease=leased.lease, drafts=drafts[first : first + batch_size])
            leased.renew()
            run.save(update_fields=_COUNT_FIELDS)
            if on_progress is not None:
                on_progress(run)
