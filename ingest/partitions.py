"""Monthly partitions of the usage events table on PostgreSQL (see EventKey and migration
0008_i18): which months have one, creating them ahead (the sweep) and on demand (ingest), and
the months that were archived. On SQLite there is one plain table and every function here is a
no-op."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from datetime import UTC, date, datetime

from django.db import ProgrammingError, connection, transaction

from ingest.models import EventArchive, UsageEvent

# Months (first days) known to have a partition in this process. Partitions are only ever
# added while a process runs (archival removes a month, and marks it archived first), so a
# month found here needs no round trip; a miss asks the catalog once and then creates.
_known: set[date] = set()
_lock = threading.RLock()


def partition_name(month: date) -> str:
    return f"{UsageEvent._meta.db_table}_y{month:%Y}m{month:%m}"


def month_of(moment: datetime) -> date:
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def partitioned() -> bool:
    return connection.vendor == "postgresql"


def partition_months() -> list[date]:
    """The months that have a partition attached now, oldest first (empty on SQLite)."""
    if not partitioned():
        return []
    prefix = f"{UsageEvent._meta.db_table}_y"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [UsageEvent._meta.db_table],
        )
        names = [name for (name,) in cursor.fetchall() if name.startswith(prefix)]
    return sorted(date(int(n[-7:-3]), int(n[-2:]), 1) for n in names)


def partitions_ensure(*, months: Iterable[date]) -> list[date]:
    """Makes sure each month has its partition; returns the months created. Safe to call
    concurrently (the database function queues callers on an advisory lock and re-checks).
    Called by ingest for a month it has not seen, so a backfill or an event near a month's edge
    never waits for the sweep; and if it ever did reach the table first, the default partition
    would hold it until the partition is created (rows move across then): no event is refused
    for want of a partition."""
    if not partitioned():
        return []
    wanted = set(months) - _known
    if not wanted:
        return []
    with _lock:
        present = set(partition_months())
        # Inside a transaction the catalog also shows partitions that transaction created and
        # may yet roll back: cache only what is committed.
        if not connection.in_atomic_block:
            _known.update(present)
        wanted -= present
        # An archived month is never re-created: its rows (none should come: archival only
        # takes months older than ingest accepts) wait in the default partition instead.
        archived = set(EventArchive.objects.values_list("month", flat=True))
        created = []
        for month in sorted(wanted - archived):
            if _ensure_one(month):
                created.append(month)
            # Inside a caller's transaction the partition exists only once it commits; a
            # rollback must not leave the month cached as present.
            transaction.on_commit(functools.partial(_remember, month))
        return created


def _ensure_one(month: date) -> bool:
    # Concurrent callers queue on the function's advisory lock, but its re-check after the
    # lock can miss a partition another transaction committed meanwhile (the relation-name
    # lookup is answered from this backend's catalog cache, which taking an advisory lock
    # does not refresh): the CREATE then fails as a duplicate. Seen with several backfill
    # loads into one old month at once. The month has its partition then: not ours to create.
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT neruba_event_partition_ensure(%s)", [month])
            return bool(cursor.fetchone()[0])
    except ProgrammingError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != "42P07":  # duplicate_table
            raise
        return False


def _remember(month: date) -> None:
    with _lock:
        _known.add(month)


def known_months_forget(*, months: Iterable[date] | None = None) -> None:
    """Drops months from this process's cache (archival detached them; tests rebuild)."""
    with _lock:
        if months is None:
            _known.clear()
        else:
            _known.difference_update(months)


def default_partition_months() -> list[date]:
    """Months that have rows waiting in the default partition (should be none)."""
    if not partitioned():
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT date_trunc('month', \"timestamp\" AT TIME ZONE 'UTC')::date "  # noqa: S608
            f"FROM {UsageEvent._meta.db_table}_default ORDER BY 1"
        )
        return [month for (month,) in cursor.fetchall()]
