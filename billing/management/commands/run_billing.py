"""``manage.py run_billing [--at ISO] [--dry-run]``: one billing scan, for ops.

1. Take the billing-scan lease (or report that another scan holds it).
2. Bill every closed window past the grace period without a live invoice, oldest first,
   printing progress after each batch.
3. Print the outcome summary; exit non-zero when windows failed or the lock was held."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from billing import services
from billing.models import BillingRun


def _parse_at(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise CommandError(f"--at: not an ISO date-time: {raw!r}") from exc
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return value


class Command(BaseCommand):
    help = "Bill every closed window without a live invoice (dry-run with --dry-run)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--at", help="Bill as of this ISO date-time (default: now, UTC).")
        parser.add_argument("--dry-run", action="store_true", help="Price, but write nothing.")
        parser.add_argument("--batch-size", type=int, default=services.DEFAULT_BATCH)

    def handle(self, *args: Any, **options: Any) -> None:
        as_of = _parse_at(options["at"]) if options["at"] else None

        def progress(run: BillingRun) -> None:
            self.stdout.write(
                f"  ... scanned {run.scanned}, invoiced {run.invoiced}, "
                f"already invoiced {run.already_invoiced}, failed {run.failed}"
            )

        run = services.billing_scan(
            trigger=BillingRun.Trigger.COMMAND,
            as_of=as_of,
            dry_run=options["dry_run"],
            batch_size=max(1, options["batch_size"]),
            on_progress=progress,
        )
        for error in run.errors[:20]:
            self.stdout.write(f"  window {error.get('window')}: {error.get('error')}")
        verb = "would invoice" if run.dry_run else "invoiced"
        self.stdout.write(
            f"run {run.pk} {run.status}: scanned {run.scanned}, {verb} {run.invoiced} "
            f"(amount {run.invoiced_amount}), already invoiced {run.already_invoiced}, "
            f"failed {run.failed}"
        )
        if run.status == BillingRun.Status.LOCK_HELD:
            raise CommandError("another billing scan holds the billing-scan lock")
        if run.failed or run.status == BillingRun.Status.FAILED:
            raise CommandError(f"{run.failed} window(s) failed")
