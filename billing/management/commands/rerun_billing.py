"""``manage.py rerun_billing --window ID | --customer EXT --period YYYY-MM[-DD] --reason "..."
[--apply]``: re-price windows from the events stored now. Dry run by default: prints the
diff (old lines vs new lines) and what would happen. With --apply, an unpaid invoice is voided
and superseded; a paid one gets a credit (over-billed) or a supplementary invoice."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import services
from billing.models import BillingWindow
from neruba.errors import NerubaError


def _period_start(raw: str) -> tuple[datetime, str]:
    for fmt, interval in (("%Y-%m-%d", "day"), ("%Y-%m", "month")):
        try:
            return datetime.strptime(raw, fmt).replace(tzinfo=UTC), interval
        except ValueError:
            continue
    raise CommandError(f"--period: expected YYYY-MM or YYYY-MM-DD, got {raw!r}")


class Command(BaseCommand):
    help = "Rerun billing for a window (dry run unless --apply)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--window", type=int, help="Billing window id.")
        parser.add_argument("--customer", help="Customer external id (with --period).")
        parser.add_argument("--period", help="YYYY-MM (monthly) or YYYY-MM-DD (daily).")
        parser.add_argument("--reason", default="", help="Why (required with --apply).")
        parser.add_argument("--apply", action="store_true", help="Make the change.")

    def handle(self, *args: Any, **options: Any) -> None:
        windows = self._windows(options)
        if options["apply"] and not options["reason"].strip():
            raise CommandError("--reason is required with --apply")
        failed = 0
        for window in windows:
            try:
                result = services.invoice_rerun(
                    window=window,
                    actor=None,
                    reason=options["reason"],
                    dry_run=not options["apply"],
                )
            except NerubaError as exc:
                failed += 1
                self.stderr.write(f"window {window.pk}: {exc.message} {exc.details}")
                continue
            self.stdout.write(result.render())
            if result.applied:
                self.stdout.write(f"  applied: {', '.join(result.created)}")
        mode = "applied" if options["apply"] else "dry run (use --apply to make the change)"
        self.stdout.write(f"{len(windows)} window(s), {failed} failed, {mode}")
        if failed:
            raise CommandError(f"{failed} window(s) failed")

    def _windows(self, options: dict[str, Any]) -> list[BillingWindow]:
        if options["window"]:
            windows = list(BillingWindow.objects.filter(pk=options["window"]))
        elif options["customer"] and options["period"]:
            start, interval = _period_start(options["period"])
            qs = BillingWindow.objects.filter(
                subscription__customer__external_id=options["customer"],
                subscription__plan__interval=interval,
            )
            end = services.period_end_of(interval=interval, start=start)
            windows = list(qs.filter(period_start__gte=start, period_start__lt=end))
        else:
            raise CommandError("give --window ID, or --customer EXT with --period")
        if not windows:
            raise CommandError("no billing window matches")
        return windows
