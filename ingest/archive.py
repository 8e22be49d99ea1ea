"""Archival of a month of usage events without DELETE (PostgreSQL): the month's partition is
exported, detached and dropped in one transaction; its keys stay in the registry (EventKey),
so a reused key is still refused, and lookups answer "archived"."""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ingest.exceptions import ArchiveRefused
from ingest.models import EventArchive, UsageEvent
from ingest.partitions import (
    add_months,
    known_months_forget,
    partition_months,
    partition_name,
    partitioned,
)
from neruba import audit
from neruba.errors import ValidationFailed


@dataclass
class ArchivePlan:
    month: date
    events: int
    path: str
    dry_run: bool
    seconds: float = 0.0
    bytes: int = 0
    sha256: str = ""

    def describe(self) -> str:
        verb = "would archive" if self.dry_run else "archived"
        where = f"to {self.path}" if self.path else ""
        took = "" if self.dry_run else f" in {self.seconds:.2f} s ({self.bytes} bytes)"
        return f"{self.month:%Y-%m}: {verb} {self.events} events {where}{took}".strip()


def _archivable(month: date) -> None:
    """Refuses what must not go: archival off (the default), a month too recent, one that is
    not a partition (SQLite; already archived; never had one)."""
    if not partitioned():
        raise ArchiveRefused(
            "Archival needs the partitioned event store (PostgreSQL).", details={"engine": "sqlite"}
        )
    conf = settings.NERUBA
    after = conf["NERUBA_EVENT_ARCHIVE_AFTER"]
    if after <= 0:
        raise ArchiveRefused(
            "Archival is off: set NERUBA_EVENT_ARCHIVE_AFTER (billing records are kept).",
            details={"setting": "NERUBA_EVENT_ARCHIVE_AFTER"},
        )
    # Never a month ingest could still write to: older than both the archive age and the
    # oldest timestamp ingest accepts.
    horizon = timezone.now() - timedelta(seconds=max(after, conf["NERUBA_INGEST_MAX_AGE"]))
    end = add_months(month, 1)
    if end > horizon.date():
        raise ArchiveRefused(
            f"{month:%Y-%m} is too recent to archive (months ending before {horizon:%Y-%m-%d}).",
            details={"month": f"{month:%Y-%m}", "horizon": horizon.isoformat()},
        )
    if EventArchive.objects.filter(month=month).exists():
        raise ArchiveRefused(
            f"{month:%Y-%m} is already archived.", details={"month": f"{month:%Y-%m}"}
        )
    if month not in partition_months():
        raise ArchiveRefused(
            f"{month:%Y-%m} has no partition to archive.", details={"month": f"{month:%Y-%m}"}
        )


def events_month_archive(
    *,
    month: date,
    actor: audit.Actor,
    reason: str,
    directory: Path,
    dry_run: bool = True,
    keep_table: bool = False,
) -> ArchivePlan:
    """Exports the month's partition to ``directory`` (gzipped CSV with a header, the event
    table's columns), then detaches and drops it, records an EventArchive row and the audit
    entry — all in one transaction that first locks the partition against writes, so nothing
    written after the export could be dropped with it, and a failure at any step leaves the
    month attached and nothing recorded (an export file may be left behind; it is rewritten
    on the next attempt). ``keep_table`` leaves the detached table in place (renamed) instead of
    dropping it. A dry run counts the rows and writes nothing."""
    _archivable(month)
    table = partition_name(month)
    path = directory / f"usage-events-{month:%Y-%m}.csv.gz"
    if dry_run:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - our partition name
            return ArchivePlan(month, int(cursor.fetchone()[0]), str(path), True)
    reason = reason.strip()
    if not reason:
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with transaction.atomic():
        with connection.cursor() as cursor:
            # 1. Writers to this month wait (readers do not) until the month is gone.
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
            # 2. Export through COPY, streamed to the file; the digest covers what was written.
            partial = path.with_suffix(".partial")
            with (
                open(partial, "wb") as raw,
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as out,
            ):
                pg = cursor.cursor  # psycopg's own cursor, for COPY
                with pg.copy(f"COPY {table} TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                    for chunk in copy:
                        out.write(chunk)
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
            exact = int(cursor.fetchone()[0])
            with open(partial, "rb") as written:
                for block in iter(lambda: written.read(1 << 20), b""):
                    digest.update(block)
            size = partial.stat().st_size
            os.replace(partial, path)
            # 3. Detach (a catalog change) and drop or keep the table: no row is deleted.
            cursor.execute(f"ALTER TABLE {UsageEvent._meta.db_table} DETACH PARTITION {table}")
            if keep_table:
                cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_archived")
            else:
                cursor.execute(f"DROP TABLE {table}")
        archive = EventArchive.objects.create(
            month=month, events=exact, path=str(path), sha256=digest.hexdigest(), bytes=size
        )
        audit.record(
            actor=actor,
            action="usage_events.archive",
            target=archive,
            reason=reason,
            after={
                "month": f"{month:%Y-%m}",
                "events": exact,
                "path": str(path),
                "sha256": archive.sha256,
                "table_kept": f"{table}_archived" if keep_table else "",
            },
        )
    known_months_forget(months=[month])
    seconds = time.perf_counter() - started
    return ArchivePlan(month, exact, str(path), False, seconds, size, archive.sha256)
