from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils.dateparse import parse_datetime

from ingest.backfills import backfill_close, backfill_create, backfill_dict, backfill_ingest
from neruba.errors import NerubaError


def _when(raw: str) -> datetime:
    value = parse_datetime(raw)
    if value is None or value.tzinfo is None:
        raise CommandError(f"expected an ISO 8601 time with an offset, got {raw!r}")
    return value


class _DryRun(Exception):
    """Raised to roll the dry run's transaction back."""


def _progress(out: Any, done: int, total: int, started: float, final: bool = False) -> None:
    width = 30
    filled = width * done // max(total, 1)
    rate = done / max(time.perf_counter() - started, 1e-9)
    line = (
        f"[{'=' * filled}{'>' if filled < width else ''}{' ' * (width - filled - 1)}] "
        f"{done}/{total} events ({100 * done // max(total, 1)} %), {rate:,.0f} events/s"
    )
    if out.isatty():
        out.write("\r" + line, ending="\n" if final else "")
    else:
        out.write(line)
    out.flush()


class Command(BaseCommand):
    help = (
        "Load history from an NDJSON file (one event per line, as POST /api/v1/events takes) "
        "through a backfill. Dry run unless --apply: every batch is ingested in a transaction "
        "that is rolled back, so the summary shows the real outcomes and nothing is kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", required=True, help="NDJSON file, one event per line.")
        parser.add_argument("--reason", required=True, help="Why (kept on the backfill, audited).")
        parser.add_argument(
            "--starts-at", type=_when, help="Window start (default: the file's oldest timestamp)."
        )
        parser.add_argument(
            "--ends-at", type=_when, help="Window end, exclusive (default: just past the newest)."
        )
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--apply", action="store_true", help="Load for real.")
        parser.add_argument(
            "--keep-open", action="store_true", help="Leave the backfill open (close it later)."
        )

    def _lines(self, path: Path) -> Iterator[tuple[int, str]]:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        if not path.is_file():
            raise CommandError(f"no such file: {path}")
        size = options["batch_size"]
        if not 1 <= size <= 1000:
            raise CommandError("--batch-size must be between 1 and 1000")
        apply = options["apply"]

        # 1. First pass: count the events and find the window the file needs.
        total, oldest, newest = 0, None, None
        for _, line in self._lines(path):
            total += 1
            try:
                stamp = json.loads(line).get("timestamp")
                when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
            except (ValueError, AttributeError):
                continue
            if when is None or when.tzinfo is None:
                continue
            oldest = when if oldest is None or when < oldest else oldest
            newest = when if newest is None or when > newest else newest
        starts_at = options["starts_at"] or oldest
        ends_at = options["ends_at"] or (newest + timedelta(microseconds=1) if newest else None)
        if starts_at is None or ends_at is None:
            raise CommandError("the file has no event with a valid timestamp")
        mode = "apply" if apply else "dry run"
        self.stdout.write(
            f"backfill_events ({mode}): {total} event(s) from {path}, window "
            f"{starts_at.isoformat()} to {ends_at.isoformat()}"
        )

        # 2. Open the backfill, load in batches, close it. A dry run does all of it in one
        # transaction rolled back at the end.
        summary: dict[str, Any] = {}
        unparseable: list[int] = []
        try:
            with transaction.atomic() if not apply else nullcontext():
                summary = self._load(
                    path, size, total, starts_at, ends_at, options, unparseable, apply
                )
                if not apply:
                    raise _DryRun
        except _DryRun:
            pass
        except NerubaError as exc:
            raise CommandError(f"{exc.code}: {exc.message} {exc.details}") from None

        counts = summary["counts"]
        for number in unparseable[:20]:
            self.stderr.write(f"line {number}: not a JSON object, skipped")
        failed = counts["failed"] + counts["conflict"] + len(unparseable)
        self.stdout.write(
            f"backfill {summary['id'] if apply else '(dry run)'} {summary['status']}: "
            f"{counts['accepted']} accepted, {counts['duplicate']} duplicate, "
            f"{counts['conflict']} conflict, {counts['failed']} failed, "
            f"{len(unparseable)} unparseable; {summary['late']} into invoiced periods, "
            f"{summary['invoiced_windows']} invoiced window(s), "
            f"{summary['drift_findings']} drift finding(s) opened"
            + ("" if apply else " — nothing was kept (run with --apply)")
        )
        if failed:
            raise CommandError(f"{failed} event(s) were not stored; see the rejections")

    def _load(
        self,
        path: Path,
        size: int,
        total: int,
        starts_at: datetime,
        ends_at: datetime,
        options: dict[str, Any],
        unparseable: list[int],
        apply: bool,
    ) -> dict[str, Any]:
        backfill = backfill_create(
            reason=options["reason"],
            starts_at=starts_at,
            ends_at=ends_at,
            actor=None,
            source="command",
        )
        started = time.perf_counter()
        done = 0
        batch: list[Any] = []
        last_shown = 0.0
        err = self.stderr
        for number, line in self._lines(path):
            try:
                item = json.loads(line)
            except ValueError:
                item = None
            if not isinstance(item, dict):
                unparseable.append(number)
                done += 1
                continue
            batch.append(item)
            if len(batch) == size:
                backfill_ingest(backfill_id=backfill.pk, payloads=batch, api_key=None)
                done += len(batch)
                batch = []
                if time.perf_counter() - last_shown > 1:
                    _progress(err, done, total, started)
                    last_shown = time.perf_counter()
        if batch:
            backfill_ingest(backfill_id=backfill.pk, payloads=batch, api_key=None)
            done += len(batch)
        _progress(err, done, total, started, final=True)
        if not options["keep_open"]:
            backfill = backfill_close(backfill=backfill, actor=None, reason=options["reason"])
        return backfill_dict(backfill)
