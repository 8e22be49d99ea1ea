from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ingest.archive import events_month_archive
from neruba.errors import NerubaError


def _month(raw: str) -> date:
    try:
        year, month = (int(part) for part in raw.split("-"))
        return date(year, month, 1)
    except ValueError:
        raise CommandError(f"--month takes YYYY-MM, got {raw!r}") from None


class Command(BaseCommand):
    help = (
        "Archive a month of usage events (PostgreSQL): export its partition, then detach and "
        "drop it. Dry run unless --apply. Keys stay registered and refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", required=True, type=_month, help="The month, YYYY-MM.")
        parser.add_argument("--apply", action="store_true", help="Archive for real.")
        parser.add_argument(
            "--output",
            type=Path,
            default=None,
            help="Directory for the export (default: var/archive under the project).",
        )
        parser.add_argument(
            "--keep-table",
            action="store_true",
            help="Keep the detached table (renamed …_archived) instead of dropping it.",
        )
        parser.add_argument(
            "--reason", default="", help="Kept in the audit log (default: the command line)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        month: date = options["month"]
        directory = options["output"] or Path(settings.BASE_DIR) / "var" / "archive"
        reason = options["reason"].strip() or f"manage.py archive_events --month {month:%Y-%m}"
        try:
            plan = events_month_archive(
                month=month,
                actor=None,
                reason=reason,
                directory=directory,
                dry_run=not options["apply"],
                keep_table=options["keep_table"],
            )
        except NerubaError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        self.stdout.write(plan.describe())
        if plan.dry_run:
            self.stdout.write("dry run: nothing changed (run with --apply to archive)")
