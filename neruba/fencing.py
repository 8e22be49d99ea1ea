"""Work done under a lease (``neruba.locks``): the fenced transaction, the heartbeat, and
``leased_run``, the one skeleton of every scheduled job (the billing scan, every sweep): take
the lease, record the run, do the work with a heartbeat between units and a fence in every
writing transaction, finish the record, release, count. ``lease=None`` (a dry run, or a caller
that needs no lock) skips the lease and the fence."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.db import DatabaseError, IntegrityError, connection, transaction

from neruba.locks import (
    Lease,
    LockLost,
    default_holder,
    lock_acquire,
    lock_assert_held,
    lock_confirm_held,
    lock_heartbeat,
    lock_is_held,
    lock_release,
)
from neruba.metrics import LEASED_RUN_DURATION, LEASED_RUNS

R = TypeVar("R")


@contextmanager
def fenced(lease: Lease | None) -> Iterator[None]:
    """One transaction fenced at both ends: the first statement checks the token (a holder
    paused past its lease finds another holder's token and writes nothing), the last locks the
    lock row and checks again (a lease lost while writing rolls the whole transaction back).

    PostgreSQL may cut this session off mid-transaction (the fence's statement and idle
    timeouts, or the next holder ending a stale session): when the lease is gone by then, that
    is reported as ``LockLost`` rather than a database error."""
    if lease is None:
        with transaction.atomic():
            yield
        return
    outermost = not connection.in_atomic_block
    try:
        with transaction.atomic():
            lock_assert_held(lease=lease)
            yield
            lock_confirm_held(lease=lease)
    except DatabaseError as exc:
        # Timeouts and ended sessions arrive as OperationalError, InternalError (idle in
        # transaction) or InterfaceError. Outermost only: a nested block cannot reconnect
        # inside its caller's transaction.
        if outermost and not isinstance(exc, IntegrityError) and not _still_held(lease):
            raise LockLost(details={"lock": lease.name, "token": lease.token}) from exc
        raise


def _still_held(lease: Lease) -> bool:
    try:
        return lock_is_held(lease=lease)
    except DatabaseError:
        connection.close()  # the session was ended; the next query opens a new one
        return lock_is_held(lease=lease)


def lease_renew(lease: Lease | None) -> None:
    """Extends the lease between units of work; raises ``LockLost`` when it was taken over."""
    if lease is not None and not lock_heartbeat(lease=lease):
        raise LockLost(details={"lock": lease.name, "token": lease.token})


@dataclass
class LeasedRun(Generic[R]):
    """What the body of a ``leased_run`` works with: its run record and its lease."""

    record: R
    lease: Lease | None
    holder: str

    def fenced(self) -> AbstractContextManager[None]:
        return fenced(self.lease)

    def renew(self) -> None:
        lease_renew(self.lease)


@dataclass(frozen=True)
class Outcome:
    """How the body ended: ``None`` error is a finished body; ``lock_lost`` a lost lease."""

    error: BaseException | None = None
    lock_lost: bool = False


def leased_run(
    *,
    lock: str,
    job: str,
    dry_run: bool,
    held: Callable[[str], R],
    start: Callable[[str, Lease | None], R],
    body: Callable[[LeasedRun[R]], None],
    finish: Callable[[R, Outcome], str],
    abandon: Callable[[R], None] | None = None,
    reraise: bool = False,
    holder: str | None = None,
) -> R:
    """The skeleton of every scheduled job.

    1. Take the lease ``lock`` (not on a dry run). When it is held, ``held(holder)`` records a
       ``lock_held`` run, which is returned: running a job twice at once is harmless.
    2. ``start(holder, lease)`` records the run; with the lease, ``abandon(record)`` closes
       earlier runs still marked running (their lease expired, so their process is gone).
    3. ``body(run)`` does the work: ``run.fenced()`` around every write, ``run.renew()``
       between units. A lost lease ends the body as ``Outcome(lock_lost=True)``; any other
       error as ``Outcome(error)``, re-raised after finishing when ``reraise``.
    4. ``finish(record, outcome)`` saves the final status and returns it; the lease is
       released and ``neruba_leased_runs_total{job,status}`` counted."""
    holder = holder or default_holder()
    lease = None if dry_run else lock_acquire(name=lock, holder=holder)
    if lease is None and not dry_run:
        LEASED_RUNS.labels(job=job, status="lock_held").inc()
        return held(holder)
    clock = time.monotonic()
    try:
        record = start(holder, lease)
    except BaseException:
        if lease is not None:
            lock_release(lease=lease)  # no record to finish: hand the lease back at once
        raise
    outcome = Outcome()
    try:
        if lease is not None and abandon is not None:
            abandon(record)
        body(LeasedRun(record=record, lease=lease, holder=holder))
    except LockLost as exc:
        outcome = Outcome(error=exc, lock_lost=True)
    except Exception as exc:
        outcome = Outcome(error=exc)
        if reraise:
            raise
    except BaseException as exc:  # interrupted (SIGINT, a worker shutting down): never a success
        outcome = Outcome(error=exc)
        raise
    finally:
        if not connection.in_atomic_block:
            # A session PostgreSQL ended under us is replaced before the record is saved.
            connection.close_if_unusable_or_obsolete()
        status = finish(record, outcome)
        if lease is not None:
            lock_release(lease=lease)
        LEASED_RUNS.labels(job=job, status=status).inc()
        LEASED_RUN_DURATION.labels(job=job).observe(time.monotonic() - clock)
    return record
