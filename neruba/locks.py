"""Lease locks with fencing tokens.

A lease is taken with a conditional UPDATE (the lock is free or expired) that increments the
lock's token, or with an INSERT guarded by the unique name when the lock has never existed.
The token is the fence: every write made under the lock calls ``lock_assert_held`` in the same
transaction, which re-reads the lock row *for update*, so a holder that paused past its lease
(GC, SIGSTOP, a slow network) cannot write after another holder took over, and a takeover
waits for an in-flight fenced write to commit. TTL locks alone only save work; the database
constraints of each app are what make double effects impossible.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from neruba import audit
from neruba.errors import NerubaError
from neruba.metrics import LOCK_ACQUISITIONS
from neruba.models import SchedulerLock


class LockLost(NerubaError):
    code = "lock_lost"
    http_status = 409
    message = "The scheduler lock is no longer held by this worker."


class LockNotReleasable(NerubaError):
    code = "lock_not_releasable"
    http_status = 409
    message = "The lock is still within its lease and cannot be released."


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    token: int


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _ttl(ttl: timedelta | None) -> timedelta:
    return ttl if ttl is not None else settings.NERUBA_LOCK_TTL


def lock_acquire(
    *, name: str, holder: str | None = None, ttl: timedelta | None = None
) -> Lease | None:
    """Take the lease if it is free or expired. Returns the lease, or ``None`` when held."""
    holder = holder or default_holder()
    now = timezone.now()
    expires = now + _ttl(ttl)
    with transaction.atomic():
        taken = (
            SchedulerLock.objects.filter(name=name)
            .filter(Q(holder="") | Q(expires_at__isnull=True) | Q(expires_at__lte=now))
            .update(
                holder=holder,
                token=F("token") + 1,
                acquired_at=now,
                heartbeat_at=now,
                expires_at=expires,
            )
        )
        if taken:
            # Our UPDATE holds the row lock until commit, so this reads our own token.
            token = SchedulerLock.objects.filter(name=name).values_list("token", flat=True).get()
            LOCK_ACQUISITIONS.labels(lock=name, result="acquired").inc()
            return Lease(name=name, holder=holder, token=token)
    if SchedulerLock.objects.filter(name=name).exists():
        LOCK_ACQUISITIONS.labels(lock=name, result="held").inc()
        return None
    try:
        with transaction.atomic():
            SchedulerLock.objects.create(
                name=name,
                holder=holder,
                token=1,
                acquired_at=now,
                heartbeat_at=now,
                expires_at=expires,
            )
    except IntegrityError:
        LOCK_ACQUISITIONS.labels(lock=name, result="held").inc()
        return None  # another process inserted it first and holds it
    LOCK_ACQUISITIONS.labels(lock=name, result="acquired").inc()
    return Lease(name=name, holder=holder, token=1)


def lock_heartbeat(*, lease: Lease, ttl: timedelta | None = None) -> bool:
    """Extend the lease while the token is still ours. False means the lock was lost."""
    now = timezone.now()
    return bool(
        SchedulerLock.objects.filter(
            name=lease.name, token=lease.token, holder=lease.holder
        ).update(heartbeat_at=now, expires_at=now + _ttl(ttl))
    )


def lock_release(*, lease: Lease) -> bool:
    now = timezone.now()
    return bool(
        SchedulerLock.objects.filter(
            name=lease.name, token=lease.token, holder=lease.holder
        ).update(holder="", expires_at=now)
    )


def lock_is_held(*, lease: Lease) -> bool:
    """Inside a transaction: lock the lock row and check the lease is still ours and unexpired."""
    row = (
        SchedulerLock.objects.select_for_update()
        .filter(name=lease.name)
        .values("token", "holder", "expires_at")
        .first()
    )
    return bool(
        row
        and row["token"] == lease.token
        and row["holder"] == lease.holder
        and row["expires_at"] is not None
        and row["expires_at"] > timezone.now()
    )


def lock_assert_held(*, lease: Lease) -> None:
    """The fence. Call inside the transaction of every write made under the lock."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("lock_assert_held must run inside the writing transaction")
    if not lock_is_held(lease=lease):
        raise LockLost(details={"lock": lease.name, "token": lease.token})


def lock_force_release(*, lock: SchedulerLock, actor: audit.Actor, reason: str) -> SchedulerLock:
    """Operator release of an *expired* lease (a crashed holder). A live lease is refused: the
    holder may still be writing, and the next acquire would take an expired lease anyway."""
    with transaction.atomic():
        row = SchedulerLock.objects.select_for_update().get(pk=lock.pk)
        now = timezone.now()
        if row.holder and row.expires_at is not None and row.expires_at > now:
            raise LockNotReleasable(
                details={"lock": row.name, "expires_at": row.expires_at.isoformat()}
            )
        before = {"holder": row.holder, "token": row.token, "expires_at": row.expires_at}
        row.holder = ""
        row.expires_at = now
        row.save(update_fields=["holder", "expires_at"])
        audit.record(
            actor=actor,
            action="lock.release",
            target=row,
            reason=reason,
            before=before,
            after={"holder": "", "token": row.token},
        )
    return row
