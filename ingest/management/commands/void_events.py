from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from ingest.corrections import events_void_bulk
from ingest.models import Metric
from neruba.errors import NerubaError
from neruba.models import Customer


def _when(raw: str) -> datetime:
    value = parse_datetime(raw)
    if value is None or value.tzinfo is None:
        raise CommandError(f"expected an ISO 8601 time with an offset, got {raw!r}")
    return value


class Command(BaseCommand):
    help = (
        "Void every counted event of a customer and metric in a time range (a client sent "
        "wrong events). Dry run unless --apply: prints how many events would be voided. Touches "
        "no invoice; invoiced windows become drift findings at the next sweep."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--customer", required=True, help="The customer's external id.")
        parser.add_argument("--metric", required=True, help="The metric's code.")
        parser.add_argument("--from", dest="starts_at", type=_when, required=True)
        parser.add_argument("--to", dest="ends_at", type=_when, required=True, help="Exclusive.")
        parser.add_argument("--reason", default="", help="Required with --apply; audited.")
        parser.add_argument("--apply", action="store_true", help="Void for real.")
        parser.add_argument("--chunk-size", type=int, default=5000)

    def handle(self, *args: Any, **options: Any) -> None:
        # 1. Resolve the customer and metric.
        customer = Customer.objects.filter(external_id=options["customer"]).first()
        metric = Metric.objects.filter(code=options["metric"]).first()
        if customer is None or metric is None:
            raise CommandError("no such customer or metric")
        apply = options["apply"]
        if apply and not options["reason"].strip():
            raise CommandError("--reason is required with --apply")
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            pct = 100 * done // max(total, 1)
            self.stderr.write(f"voided {done}/{total} ({pct} %), {rate:,.0f} events/s")

        # 2. Count (dry run) or void in chunks, with progress.
        try:
            result = events_void_bulk(
                customer=customer,
                metric=metric,
                starts_at=options["starts_at"],
                ends_at=options["ends_at"],
                actor=None,
                reason=options["reason"].strip() or "manage.py void_events",
                dry_run=not apply,
                chunk_size=options["chunk_size"],
                on_progress=progress,
            )
        except NerubaError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None

        # 3. Summary.
        if not apply:
            self.stdout.write(
                f"void_events (dry run): {result.matched} event(s) of {customer.external_id} / "
                f"{metric.code} would be voided, {result.invoiced} of them in invoiced periods "
                "— nothing changed (run with --apply --reason …)"
            )
            return
        self.stdout.write(
            f"void_events: voided {result.voided} of {result.matched} event(s) of "
            f"{customer.external_id} / {metric.code} in {time.perf_counter() - started:.1f} s, "
            f"{result.invoiced} in invoiced periods (the drift sweep re-checks those windows); "
            f"bulk id {result.bulk_id}"
        )
