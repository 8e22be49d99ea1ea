"""Helpers for work done under a lease (``neruba.locks``): a transaction that re-checks the
fencing token before anything is written, and a heartbeat that stops the work once the lease
is lost. Sweeps use them; ``lease=None`` (a dry run, or a caller that needs no lock) skips
the check."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import transaction

from neruba.locks import Lease, LockLost, lock_assert_held, lock_heartbeat


@contextmanager
def fenced(lease: Lease | None) -> Iterator[None]:
    """One transaction whose first statement is the fence: a holder paused past its lease finds
    another holder's token and raises ``LockLost`` before writing anything."""
    with transaction.atomic():
        if lease is not None:
            lock_assert_held(lease=lease)
        yield


def lease_renew(lease: Lease | None) -> None:
    """Extends the lease between units of work; raises ``LockLost`` when it was taken over."""
    if lease is not None and not lock_heartbeat(lease=lease):
        raise LockLost(details={"lock": lease.name, "token": lease.token})
