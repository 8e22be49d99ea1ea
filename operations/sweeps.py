"""Recovery and consistency sweeps: the orchestrator.

Each sweep is a service of the app that owns the data (``billing.sweeps``, ``ingest.sweeps``,
``webhooks.sweeps``); this module runs them by name under a lease lock ``sweep:<name>`` and
records every run as a ``SweepRun`` (trigger, start and end, counts, new findings, status).
A sweep whose lock is held records ``lock_held`` and does nothing: running the same sweep twice
at once is harmless. Each sweep re-checks its lease in every writing transaction and is safe
to repeat (a second run finds nothing new). A dry run takes no lock and writes nothing but its
``SweepRun`` row.

``manage.py sweep``, the Celery tasks ``operations.sweep`` / ``operations.sweep_all`` (beat)
and the console all call ``sweep_run``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from billing import sweeps as billing_sweeps
from billing.providers import PaymentProvider
from ingest import sweeps as ingest_sweeps
from neruba.locks import Lease, LockLost, default_holder, lock_acquire, lock_release
from neruba.metrics import SWEEP_FINDINGS
from operations.models import SweepRun
from webhooks import sweeps as webhook_sweeps

logger = logging.getLogger(__name__)

# Late events are stamped ``received_at`` before their transaction commits; an incremental
# drift pass starts this far before the previous one did so none slips between two sweeps.
DRIFT_OVERLAP = timedelta(minutes=10)


@dataclass
class SweepContext:
    lease: Lease | None
    now: datetime
    dry_run: bool
    since: datetime | None = None
    full: bool = False
    provider: PaymentProvider | None = None
    on_progress: Callable[[dict[str, int]], None] | None = None


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    run: Callable[[SweepContext], dict[str, Any]]
    interval_setting: str


def _drift_since(ctx: SweepContext) -> datetime | None:
    """Where an incremental drift pass starts, or ``None`` for a full pass: asked for (``full``),
    none recorded yet, or the last one older than ``NERUBA_DRIFT_FULL_INTERVAL``."""
    if ctx.full:
        return None
    if ctx.since is not None:
        return ctx.since
    done = SweepRun.objects.filter(
        sweep="usage_drift", status=SweepRun.Status.SUCCEEDED, dry_run=False
    )
    last_full = done.filter(counts__full=1).order_by("-started_at").first()
    every = timedelta(seconds=settings.NERUBA["NERUBA_DRIFT_FULL_INTERVAL"])
    if last_full is None or last_full.started_at <= ctx.now - every:
        return None
    last = done.order_by("-started_at").first()
    assert last is not None  # last_full is one
    return last.started_at - DRIFT_OVERLAP


def _usage_drift(ctx: SweepContext) -> dict[str, Any]:
    return billing_sweeps.usage_drift_sweep(
        lease=ctx.lease,
        now=ctx.now,
        since=_drift_since(ctx),
        dry_run=ctx.dry_run,
        on_progress=ctx.on_progress,
    )


def _reconciliation(ctx: SweepContext) -> dict[str, Any]:
    return billing_sweeps.reconciliation_sweep(
        lease=ctx.lease,
        now=ctx.now,
        dry_run=ctx.dry_run,
        provider=ctx.provider,
        on_progress=ctx.on_progress,
    )


def _retention(ctx: SweepContext) -> dict[str, Any]:
    """Ingest's retention, and the sweeps' own run records past the same retention."""
    counts = ingest_sweeps.retention_sweep(lease=ctx.lease, now=ctx.now, dry_run=ctx.dry_run)
    cutoff = ctx.now - timedelta(seconds=settings.NERUBA["NERUBA_INGEST_RETENTION"])
    old = SweepRun.objects.filter(started_at__lt=cutoff)
    counts["sweep_runs"] = old.count() if ctx.dry_run else old.delete()[0]
    return counts


SWEEPS: dict[str, Sweep] = {
    sweep.name: sweep
    for sweep in (
        Sweep(
            "usage_drift",
            "Invoiced quantities against the events stored now (late events, replays).",
            _usage_drift,
            "NERUBA_SWEEP_INTERVAL",
        ),
        Sweep(
            "stuck_runs",
            "Billing runs whose lease expired are abandoned; their windows released.",
            lambda ctx: billing_sweeps.stuck_runs_sweep(
                lease=ctx.lease, now=ctx.now, dry_run=ctx.dry_run
            ),
            "NERUBA_SWEEP_INTERVAL",
        ),
        Sweep(
            "webhook_retries",
            "Failed Stripe events whose backoff is due are retried; past the limit, dead.",
            lambda ctx: webhook_sweeps.webhook_retries_sweep(
                lease=ctx.lease, now=ctx.now, dry_run=ctx.dry_run
            ),
            "NERUBA_SWEEP_INTERVAL",
        ),
        Sweep(
            "reconciliation",
            "Invoices at Stripe with no payment outcome after NERUBA_RECONCILE_AFTER.",
            _reconciliation,
            "NERUBA_SWEEP_RECONCILIATION_INTERVAL",
        ),
        Sweep(
            "outbox",
            "Provider sync rows pending or failed past their retry time are sent again.",
            lambda ctx: billing_sweeps.outbox_sweep(
                lease=ctx.lease, now=ctx.now, dry_run=ctx.dry_run
            ),
            "NERUBA_SWEEP_INTERVAL",
        ),
        Sweep(
            "partitions",
            "PostgreSQL: monthly event partitions created ahead; rows in the default one moved.",
            lambda ctx: ingest_sweeps.partitions_sweep(
                lease=ctx.lease, now=ctx.now, dry_run=ctx.dry_run
            ),
            "NERUBA_SWEEP_INTERVAL",
        ),
        Sweep(
            "retention",
            "Ingest batches, rejections and sweep runs past NERUBA_INGEST_RETENTION are pruned.",
            _retention,
            "NERUBA_SWEEP_RETENTION_INTERVAL",
        ),
    )
}


def lock_name(name: str) -> str:
    return f"sweep:{name}"


def _runs_abandon(current: SweepRun) -> None:
    """Earlier runs of this sweep still marked running died with their process: we hold the
    lease now, so theirs expired. A dry run holds no lease; one running for a day is dead."""
    stale = SweepRun.objects.filter(sweep=current.sweep, status=SweepRun.Status.RUNNING).filter(
        Q(dry_run=False) | Q(started_at__lt=current.started_at - timedelta(days=1))
    )
    stale.exclude(pk=current.pk).update(
        status=SweepRun.Status.FAILED,
        error="abandoned: its process stopped before finishing (lease expired)",
        finished_at=current.started_at,
    )


def sweep_run(
    *,
    name: str,
    trigger: str,
    dry_run: bool = False,
    since: datetime | None = None,
    full: bool = False,
    provider: PaymentProvider | None = None,
    on_running: Callable[[SweepRun], None] | None = None,
    on_progress: Callable[[dict[str, int]], None] | None = None,
) -> SweepRun:
    """Runs one sweep and records it. ``on_running`` is called once the lease is taken and the
    run recorded (process tests pause there); long sweeps report counts to ``on_progress``
    after each chunk.

    1. Take the lease ``sweep:<name>`` (not on a dry run); if it is held, record ``lock_held``.
    2. Record the run as ``running``, call the app's sweep with the lease.
    3. Record the counts, the new findings and ``succeeded`` — or ``failed`` with the error
       (a lost lease included). Release the lease."""
    sweep = SWEEPS[name]
    holder = default_holder()
    lease = None if dry_run else lock_acquire(name=lock_name(name), holder=holder)
    if lease is None and not dry_run:
        return SweepRun.objects.create(
            sweep=name,
            trigger=trigger,
            status=SweepRun.Status.LOCK_HELD,
            finished_at=timezone.now(),
        )
    run = SweepRun.objects.create(sweep=name, trigger=trigger, dry_run=dry_run)
    if lease is not None:
        _runs_abandon(run)
    clock = time.monotonic()
    ctx = SweepContext(
        lease=lease,
        now=run.started_at,
        dry_run=dry_run,
        since=since,
        full=full,
        provider=provider,
        on_progress=on_progress,
    )
    try:
        if on_running is not None:
            on_running(run)
        counts = sweep.run(ctx)
        run.counts = {**counts, "seconds": round(time.monotonic() - clock, 3)}
        run.findings = int(counts.get("findings", 0))
        run.status = SweepRun.Status.SUCCEEDED
    except LockLost as exc:
        run.status, run.error = SweepRun.Status.FAILED, f"lock lost: {exc.details}"
    except Exception as exc:  # one failing sweep must not stop the others
        logger.exception("sweep %s failed", name)
        run.status, run.error = SweepRun.Status.FAILED, f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        run.finished_at = timezone.now()
        run.save(update_fields=["counts", "findings", "status", "error", "finished_at"])
        if lease is not None:
            lock_release(lease=lease)
    if run.findings and not dry_run:
        SWEEP_FINDINGS.labels(sweep=name).inc(run.findings)
    return run


def sweeps_run(
    *,
    trigger: str,
    names: list[str] | None = None,
    dry_run: bool = False,
    since: datetime | None = None,
    full: bool = False,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[SweepRun], None] | None = None,
    on_progress: Callable[[str, dict[str, int]], None] | None = None,
) -> list[SweepRun]:
    """Runs the named sweeps (all, in registry order, by default) one after the other."""
    runs = []
    for name in names or list(SWEEPS):
        if on_start is not None:
            on_start(name)
        progress = None
        if on_progress is not None:
            progress = functools.partial(on_progress, name)
        run = sweep_run(
            name=name,
            trigger=trigger,
            dry_run=dry_run,
            since=since,
            full=full,
            on_progress=progress,
        )
        runs.append(run)
        if on_done is not None:
            on_done(run)
    return runs


def sweep_summary(run: SweepRun) -> str:
    """One line per run: name, status, duration and counts."""
    counts = {k: v for k, v in run.counts.items() if k != "seconds"}
    shown = " ".join(f"{key}={value}" for key, value in counts.items())
    seconds = run.counts.get("seconds")
    took = f" in {seconds:.2f}s" if isinstance(seconds, int | float) else ""
    mode = " (dry run)" if run.dry_run else ""
    tail = f": {run.error}" if run.error else (f" — {shown}" if shown else "")
    return f"{run.sweep}: {run.status}{mode}{took}{tail}"


def sweeps_latest() -> list[SweepRun]:
    """The last run of each sweep (for the console home), in registry order."""
    latest = []
    for name in SWEEPS:
        run = SweepRun.objects.filter(sweep=name).order_by("-started_at", "-id").first()
        if run is not None:
            latest.append(run)
    return latest
