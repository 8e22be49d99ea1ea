"""Lease locks with fencing tokens, with every wait bounded and every time the database's.

A lease is taken with a conditional UPDATE (the lock is free or expired) that increments the
lock's token, or with an INSERT guarded by the unique name when the lock has never existed.
The token is the fence: every write made under the lock runs in a fenced transaction
(``neruba.fencing.fenced``) that checks the token when it starts and again, with the lock row
locked, right before it commits. A holder that paused past its lease (GC, SIGSTOP, a frozen VM)
therefore cannot commit after another holder took over. TTL locks alone only save work; the
database constraints of each app are what make double effects impossible.

Why the waits are bounded (on PostgreSQL; SQLite is one file on one host, where the process
clock *is* the database clock and the busy timeout bounds every wait):

- Expiry is computed by the database (``clock_timestamp()``) when the row is taken, so a
  holder's clock skew or a wait before the UPDATE cannot shorten or lengthen a lease.
- Acquire, heartbeat, release and the final fence wait at most ``NERUBA_LOCK_WAIT`` for the row
  (``lock_timeout``); an acquire that runs out is ``lock_held``.
- The fence holds the lock row only from the final check to the commit, not across the batch.
- A fenced transaction carries ``statement_timeout`` and ``idle_in_transaction_session_timeout``
  below the TTL and names itself in ``application_name`` (``neruba-fence <token> <lock>``). A
  holder stopped idle in its transaction or mid-statement is cut off by PostgreSQL; one stopped
  mid-COPY (PostgreSQL defers a cancel while it waits for COPY data) is terminated by the next
  holder when it takes the expired lease, so its row locks (the invoice counter, unique index
  entries) never block the takeover. That needs the same database role for every process, or
  ``pg_signal_backend``.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from neruba import audit
from neruba.errors import NerubaError
from neruba.metrics import LOCK_ACQUISITIONS
from neruba.models import SchedulerLock

logger = logging.getLogger(__name__)

FENCE_APP_NAME = "neruba-fence"
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout (and of NOWAIT)


class LockLost(NerubaError):
    code = "lock_lost"
    http_status = 409
    message = "The scheduler lock is no longer held by this worker."


class LockNotReleasable(NerubaError):
    code = "lock_not_releasable"
    http_status = 409
    message = "The lock is still within its lease and cannot be released."


class LockBusy(NerubaError):
    code = "lock_busy"
    http_status = 409
    message = "The lock row is busy (a holder is committing); try again in a moment."


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    token: int
    ttl: timedelta | None = None


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _ttl(ttl: timedelta | None) -> timedelta:
    return ttl if ttl is not None else settings.NERUBA_LOCK_TTL


def _ms(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() * 1000))


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def is_lock_timeout(exc: BaseException) -> bool:
    """True for PostgreSQL's ``lock_timeout`` (or NOWAIT) error, however Django wrapped it."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if getattr(candidate, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            return True
    return False


def _bound_wait(cursor: object, wait: timedelta | None = None) -> None:
    """Inside a transaction: wait at most ``NERUBA_LOCK_WAIT`` for any row lock."""
    bound = wait if wait is not None else settings.NERUBA_LOCK_WAIT
    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{_ms(bound)}ms"])


def db_now() -> datetime:
    """The database's clock (PostgreSQL), or this host's (SQLite: the same machine)."""
    if not _postgres():
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def fence_bounds(ttl: timedelta | None = None) -> timedelta:
    """The statement and idle-in-transaction limit of a fenced transaction: half the TTL, so
    PostgreSQL cuts a stopped holder off before its lease can be taken over."""
    return _ttl(ttl) / 2


# --- acquire -------------------------------------------------------------------------------------


def _acquire_postgres(*, name: str, holder: str, ttl: timedelta) -> int | None:
    seconds = ttl.total_seconds()
    for attempt in (1, 2):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                _bound_wait(cursor)
                # The expiry is computed here, by the database, after the row is taken.
                cursor.execute(
                    "UPDATE neruba_schedulerlock SET holder = %s, token = token + 1,"
                    " acquired_at = clock_timestamp(), heartbeat_at = clock_timestamp(),"
                    " expires_at = clock_timestamp() + make_interval(secs => %s)"
                    " WHERE name = %s AND (holder = '' OR expires_at IS NULL"
                    " OR expires_at <= clock_timestamp()) RETURNING token",
                    [holder, seconds, name],
                )
                row = cursor.fetchone()
                if row is None:
                    cursor.execute(
                        "INSERT INTO neruba_schedulerlock"
                        " (name, holder, token, acquired_at, heartbeat_at, expires_at)"
                        " VALUES (%s, %s, 1, clock_timestamp(), clock_timestamp(),"
                        " clock_timestamp() + make_interval(secs => %s))"
                        " ON CONFLICT (name) DO NOTHING RETURNING token",
                        [name, holder, seconds],
                    )
                    row = cursor.fetchone()
                return int(row[0]) if row is not None else None
        except DatabaseError as exc:
            if not is_lock_timeout(exc):
                raise
            # The row is locked: a holder is between its final fence and its commit, or was
            # stopped there. If its lease has run out it is cut off and we try once more.
            if attempt == 1 and _expired(name=name):
                fenced_backends_end(name=name, below_token=None)
                continue
            return None
    return None


def _expired(*, name: str) -> bool:
    """The committed lease (no row lock needed: a plain read sees the last commit)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT holder = '' OR expires_at IS NULL OR expires_at <= clock_timestamp()"
            " FROM neruba_schedulerlock WHERE name = %s",
            [name],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def fenced_backends_end(*, name: str, below_token: int | None) -> int:
    """Terminates PostgreSQL sessions still inside a fenced transaction of an *expired* lease of
    ``name`` (tokens below ``below_token``; any token when ``None``). Their transactions roll
    back, releasing every row lock they held. Returns how many were ended."""
    if not _postgres():
        return 0
    ended = 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name LIKE %s",
            [f"{FENCE_APP_NAME} %"],
        )
        for pid, app in cursor.fetchall():
            parts = app.split(" ", 2)
            if len(parts) != 3 or parts[2] != name[: 63 - len(parts[0]) - len(parts[1]) - 2]:
                continue
            if below_token is not None and int(parts[1]) >= below_token:
                continue
            try:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
                ended += bool(cursor.fetchone()[0])
            except DatabaseError:
                # No privilege to signal it: the statement and idle timeouts still cut it off.
                logger.warning("cannot end the stale holder of %s (pid %s)", name, pid)
    if ended:
        logger.warning("ended %d session(s) of an expired lease of %s", ended, name)
    return ended


def lock_acquire(
    *, name: str, holder: str | None = None, ttl: timedelta | None = None
) -> Lease | None:
    """Take the lease if it is free or expired. Returns the lease, or ``None`` when held (or when
    the row stayed locked longer than ``NERUBA_LOCK_WAIT``)."""
    holder = holder or default_holder()
    ttl = _ttl(ttl)
    if _postgres():
        token = _acquire_postgres(name=name, holder=holder, ttl=ttl)
        if token is None:
            LOCK_ACQUISITIONS.labels(lock=name, result="held").inc()
            return None
        if token > 1:
            # A holder of an older token may be stopped inside a fenced transaction (mid-COPY
            # is the one PostgreSQL's timeouts cannot cut): its lease is over, end it.
            fenced_backends_end(name=name, below_token=token)
        LOCK_ACQUISITIONS.labels(lock=name, result="acquired").inc()
        return Lease(name=name, holder=holder, token=token, ttl=ttl)
    return _acquire_sqlite(name=name, holder=holder, ttl=ttl)


def _acquire_sqlite(*, name: str, holder: str, ttl: timedelta) -> Lease | None:
    now = timezone.now()
    expires = now + ttl
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
            # Our UPDATE holds the write lock until commit, so this reads our own token.
            token = SchedulerLock.objects.filter(name=name).values_list("token", flat=True).get()
            LOCK_ACQUISITIONS.labels(lock=name, result="acquired").inc()
            return Lease(name=name, holder=holder, token=token, ttl=ttl)
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
    return Lease(name=name, holder=holder, token=1, ttl=ttl)


# --- heartbeat and release -----------------------------------------------------------------------


def _owned_update_postgres(*, lease: Lease, assignments: str, params: list[object]) -> bool:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            _bound_wait(cursor)
            cursor.execute(
                "UPDATE neruba_schedulerlock SET "  # noqa: S608 - assignments are our literals
                + assignments
                + " WHERE name = %s AND token = %s AND holder = %s",
                [*params, lease.name, lease.token, lease.holder],
            )
            return cursor.rowcount == 1
    except DatabaseError as exc:
        if is_lock_timeout(exc):
            return False  # the caller treats it as lost: stopping is always safe
        raise


def lock_heartbeat(*, lease: Lease, ttl: timedelta | None = None) -> bool:
    """Extend the lease while the token is still ours. False means the lock was lost."""
    ttl = _ttl(ttl if ttl is not None else lease.ttl)
    if _postgres():
        return _owned_update_postgres(
            lease=lease,
            assignments="heartbeat_at = clock_timestamp(),"
            " expires_at = clock_timestamp() + make_interval(secs => %s)",
            params=[ttl.total_seconds()],
        )
    now = timezone.now()
    return bool(
        SchedulerLock.objects.filter(
            name=lease.name, token=lease.token, holder=lease.holder
        ).update(heartbeat_at=now, expires_at=now + ttl)
    )


def lock_release(*, lease: Lease) -> bool:
    if _postgres():
        return _owned_update_postgres(
            lease=lease, assignments="holder = '', expires_at = clock_timestamp()", params=[]
        )
    return bool(
        SchedulerLock.objects.filter(
            name=lease.name, token=lease.token, holder=lease.holder
        ).update(holder="", expires_at=timezone.now())
    )


_HELD = (
    "SELECT token = %s AND holder = %s AND expires_at > clock_timestamp()"
    " FROM neruba_schedulerlock WHERE name = %s"
)
_HELD_FOR_UPDATE = _HELD + " FOR UPDATE"
_LIVE = (
    "SELECT token, holder <> '' AND expires_at > clock_timestamp()"
    " FROM neruba_schedulerlock WHERE name = %s"
)
_LIVE_FOR_UPDATE = _LIVE + " FOR UPDATE"

# --- the fence -----------------------------------------------------------------------------------


def lock_is_held(*, lease: Lease, lock_row: bool = False) -> bool:
    """Is the lease still ours and unexpired, by the database clock? With ``lock_row`` (inside a
    transaction) the lock row is locked until commit, so no takeover can commit before us."""
    if not _postgres():
        rows = SchedulerLock.objects.filter(name=lease.name)
        if lock_row:
            rows = rows.select_for_update()
        row = rows.values("token", "holder", "expires_at").first()
        return bool(
            row
            and row["token"] == lease.token
            and row["holder"] == lease.holder
            and row["expires_at"] is not None
            and row["expires_at"] > timezone.now()
        )
    with connection.cursor() as cursor:
        if lock_row:
            _bound_wait(cursor)
        cursor.execute(
            _HELD_FOR_UPDATE if lock_row else _HELD, [lease.token, lease.holder, lease.name]
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def _in_transaction() -> None:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("the fence must run inside the writing transaction")


def lock_assert_held(*, lease: Lease) -> None:
    """The fence's first half, at the start of a fenced transaction: bounds the transaction
    (PostgreSQL cuts it off if this process stops inside it), names it so a later holder can
    end it, and checks the token. Holds no row lock."""
    _in_transaction()
    if _postgres():
        bound = f"{_ms(fence_bounds(lease.ttl))}ms"
        app = f"{FENCE_APP_NAME} {lease.token} {lease.name}"[:63]
        with connection.cursor() as cursor:
            # Named *before* the check: a takeover that commits after our check sees the name.
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true),"
                " set_config('idle_in_transaction_session_timeout', %s, true),"
                " set_config('application_name', %s, true)",
                [bound, bound, app],
            )
    if not lock_is_held(lease=lease):
        raise LockLost(details={"lock": lease.name, "token": lease.token})


def lock_confirm_held(*, lease: Lease) -> None:
    """The fence's second half, the last statement before commit: the lock row is locked (a
    bounded wait), so a takeover waits for our commit, and a lease lost meanwhile rolls back."""
    _in_transaction()
    try:
        held = lock_is_held(lease=lease, lock_row=True)
    except DatabaseError as exc:
        if not is_lock_timeout(exc):
            raise
        held = False
    if not held:
        raise LockLost(details={"lock": lease.name, "token": lease.token})


# --- reads for sweeps and the console ------------------------------------------------------------


def lock_live_token(*, name: str, lock_row: bool = False) -> int | None:
    """The token of the live lease of ``name``, by the database clock, or ``None`` (free or
    expired). With ``lock_row`` (inside a transaction) the row is locked with a bounded wait;
    ``LockBusy`` when it stays locked."""
    if not _postgres():
        rows = SchedulerLock.objects.filter(name=name)
        if lock_row:
            rows = rows.select_for_update()
        lock = rows.first()
        live = lock is not None and lock.holder and lock.expires_at and lock.expires_at > db_now()
        return lock.token if live else None
    try:
        with connection.cursor() as cursor:
            if lock_row:
                _bound_wait(cursor)
            cursor.execute(_LIVE_FOR_UPDATE if lock_row else _LIVE, [name])
            row = cursor.fetchone()
    except DatabaseError as exc:
        if is_lock_timeout(exc):
            raise LockBusy(details={"lock": name}) from exc
        raise
    return int(row[0]) if row and row[1] else None


def lock_live_holder(*, name: str) -> str:
    """The holder of the live lease of ``name`` by the database clock ("" when free or
    expired). One query, no lock: for the console and metrics."""
    if not _postgres():
        lock = SchedulerLock.objects.filter(name=name).first()
        live = lock is not None and lock.holder and lock.expires_at and lock.expires_at > db_now()
        return lock.holder if live else ""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT holder FROM neruba_schedulerlock WHERE name = %s AND holder <> ''"
            " AND expires_at > clock_timestamp()",
            [name],
        )
        row = cursor.fetchone()
    return row[0] if row else ""


def lock_force_release(*, lock: SchedulerLock, actor: audit.Actor, reason: str) -> SchedulerLock:
    """Operator release of an *expired* lease (a crashed holder). A live lease is refused: the
    holder may still be writing, and the next acquire would take an expired lease anyway. The
    wait for the row is bounded (``LockBusy``), and a holder of the expired lease still inside
    a fenced transaction is ended, so the release frees everything it held."""
    if _postgres() and _expired(name=lock.name):
        fenced_backends_end(name=lock.name, below_token=None)
    with transaction.atomic():
        try:
            with connection.cursor() as cursor:
                if _postgres():
                    _bound_wait(cursor)
                row = SchedulerLock.objects.select_for_update().get(pk=lock.pk)
        except DatabaseError as exc:
            if is_lock_timeout(exc):
                raise LockBusy(details={"lock": lock.name}) from exc
            raise
        now = db_now()
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
