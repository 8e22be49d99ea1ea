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
    detach_seconds: float = 0.0

    def describe(self) -> str:
        verb = "would archive" if self.dry_run else "archived"
        where = f"to {self.path}" if self.path else ""
        took = (
            ""
            if self.dry_run
            else f" in {self.seconds:.2f} s (detached from the live store in "
            f"{self.detach_seconds:.2f} s; export {self.bytes} bytes)"
        )
        return f"{self.month:%Y-%m}: {verb} {self.events} events {where}{took}".strip()


def _archivable(month: date) -> EventArchive | None:
    """Refuses what must not go: archival off (the default), a month too recent, one that is
    not a partition (SQLite; already archived; never had one). Returns the archive to resume
    when a month was detached but its export did not finish."""
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
    existing = EventArchive.objects.filter(month=month).first()
    if existing is not None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [f"{partition_name(month)}_archived"]
            )
            detached = bool(cursor.fetchone()[0])
        if not existing.path and detached:
            return existing  # detached, export not finished: resume
        raise ArchiveRefused(
            f"{month:%Y-%m} is already archived.", details={"month": f"{month:%Y-%m}"}
        )
    if month not in partition_months():
        raise ArchiveRefused(
            f"{month:%Y-%m} has no partition to archive.", details={"month": f"{month:%Y-%m}"}
        )
    return None


def events_month_archive(
    *,
    month: date,
    actor: audit.Actor,
    reason: str,
    directory: Path,
    dry_run: bool = True,
    keep_table: bool = False,
) -> ArchivePlan:
    """Archives a month of events without a DELETE.

    1. One short transaction: detach the month's partition (a catalog change; it waits for
       writes in flight to it and makes later ones impossible), rename it
       ``…_archived``, count its rows, record the EventArchive row and the audit entry. This is
       the only step the live store notices.
    2. Export the detached table with COPY to ``directory`` (gzipped CSV with a header, the
       event table's columns) and record the file's path, size and sha256.
    3. Drop the detached table, unless ``keep_table``.

    A failure in step 1 leaves the month attached and nothing recorded. A failure in step 2 or
    3 leaves the detached table in place and the archive without a path: running the command
    again resumes there. A dry run counts the rows and writes nothing."""
    resume = _archivable(month)
    table = partition_name(month)
    detached = f"{table}_archived"
    path = directory / f"usage-events-{month:%Y-%m}.csv.gz"
    if dry_run:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {detached if resume else table}")  # noqa: S608
            return ArchivePlan(month, int(cursor.fetchone()[0]), str(path), True)
    reason = reason.strip()
    if not reason:
        raise ValidationFailed("A reason is required.", details={"reason": "required"})
    started = time.perf_counter()
    if resume is None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {UsageEvent._meta.db_table} DETACH PARTITION {table}")
            cursor.execute(f"ALTER TABLE {table} RENAME TO {detached}")
            cursor.execute(f"SELECT count(*) FROM {detached}")  # noqa: S608 - our names
            events = int(cursor.fetchone()[0])
            archive = EventArchive.objects.create(month=month, events=events)
            audit.record(
                actor=actor,
                action="usage_events.archive",
                target=archive,
                reason=reason,
                after={"month": f"{month:%Y-%m}", "events": events, "table": detached},
            )
        known_months_forget(months=[month])
    else:
        archive = resume
    detach_seconds = time.perf_counter() - started
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with connection.cursor() as cursor:
        with (
            open(partial, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as out,
        ):
            pg = cursor.cursor  # psycopg's own cursor, for COPY
            with pg.copy(f"COPY {detached} TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                for chunk in copy:
                    out.write(chunk)
    digest = hashlib.sha256()
    with open(partial, "rb") as written:
        for block in iter(lambda: written.read(1 << 20), b""):
            digest.update(block)
    os.replace(partial, path)
    archive.path, archive.sha256, archive.bytes = str(path), digest.hexdigest(), path.stat().st_size
    archive.save(update_fields=["path", "sha256", "bytes"])
    if not keep_table:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {detached}")
    seconds = time.perf_counter() - started
    plan = ArchivePlan(month, archive.events, str(path), False, seconds, archive.bytes)
    plan.sha256 = archive.sha256
    plan.detach_seconds = detach_seconds
    return plan
