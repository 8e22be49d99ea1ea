"""``manage.py sweep [--only NAME ...] [--dry-run] [--since ISO] [--full]``: runs the recovery
and consistency sweeps (usage_drift, stuck_runs, webhook_retries, reconciliation, outbox,
retention), printing progress and one summary line per sweep. Exits non-zero when a sweep
itself failed; a sweep whose lock is held (already running elsewhere) is reported, not failed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from operations.models import SweepRun
from operations.sweeps import SWEEPS, sweep_summary, sweeps_run


def _instant(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise CommandError(f"--since: expected an ISO 8601 time, got {raw!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Run the recovery and consistency sweeps (all, or --only NAME)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--only",
            action="append",
            choices=list(SWEEPS),
            metavar="NAME",
            help=f"Run only this sweep (repeatable): {', '.join(SWEEPS)}.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would change; write nothing."
        )
        parser.add_argument(
            "--since",
            help="usage_drift: re-check windows touched by late events received since this "
            "ISO time (default: since the previous sweep).",
        )
        parser.add_argument(
            "--full", action="store_true", help="usage_drift: re-check every invoiced window."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since = _instant(options["since"]) if options["since"] else None
        names = options["only"] or list(SWEEPS)
        runs = sweeps_run(
            trigger="command",
            names=names,
            dry_run=options["dry_run"],
            since=since,
            full=options["full"],
            on_start=lambda name: self.stdout.write(f"sweep {name}: {SWEEPS[name].description}"),
            on_done=lambda run: self.stdout.write(sweep_summary(run)),
            on_progress=lambda name, counts: self.stdout.write(
                f"  {name}: " + " ".join(f"{k}={v}" for k, v in counts.items())
            ),
        )
        failed = [run.sweep for run in runs if run.status == SweepRun.Status.FAILED]
        findings = sum(run.findings for run in runs)
        self.stdout.write(
            f"{len(runs)} sweep(s): {len(runs) - len(failed)} ok, {len(failed)} failed, "
            f"{findings} new finding(s){' (dry run)' if options['dry_run'] else ''}"
        )
        if failed:
            raise CommandError(f"sweep failed: {', '.join(failed)}")
