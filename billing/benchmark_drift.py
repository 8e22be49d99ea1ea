"""``manage.py benchmark drift``: the incremental usage drift sweep against a full pass over the
same invoiced data, measured in the same run. Sweep cost must grow with what changed (the late
events), not with the size of the events table.

Needs PostgreSQL (events are generated set-based with generate_series). It creates
subscriptions on a monthly plan whose last month is closed, bills that month with the real
billing scan, then adds ``--late`` late events and times both passes. Data is created under
the ``bench-drift-`` prefix and removed afterwards (``--keep`` leaves it). Run it against a
database of its own: the billing scan bills whatever else is due there, too."""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.utils import timezone

from billing import benchmark as billing_benchmark
from billing import services
from billing.drift import usage_drift_sweep
from billing.models import (
    BillingRun,
    DriftFinding,
    Plan,
    Price,
    Subscription,
)
from ingest.models import Metric
from neruba.models import Customer

PREFIX = "bench-drift-"  # under the billing benchmark's "bench-": its clean-up covers ours
TARGET_RATIO = 20.0

_EVENTS_SQL = """
INSERT INTO ingest_usageevent (
  idempotency_key, customer_id, metric_id, timestamp, value, distinct_value, properties,
  payload_hash, received_at, source, late
)
SELECT
  %(prefix)s || %(tag)s || '-' || g,
  %(first_customer)s + (g %% %(customers)s),
  %(metric)s,
  %(start)s::timestamptz + ((g::bigint * 7919) %% %(seconds)s) * interval '1 second',
  1,
  '',
  '{}'::jsonb,
  'bench',
  %(received)s,
  'bench',
  %(late)s
FROM generate_series(1, %(events)s) AS g
"""


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--late", type=int, default=100, help="Late events added after billing.")
    parser.add_argument("--repeat", type=int, default=3, help="Timed passes of each kind.")
    parser.add_argument("--keep", action="store_true", help="Leave the generated data.")


def _cleanup() -> None:
    """The billing benchmark's clean-up (everything under ``bench-``), after the findings that
    protect the windows."""
    DriftFinding.objects.filter(
        window__subscription__customer__external_id__startswith=billing_benchmark.PREFIX
    ).delete()
    billing_benchmark._cleanup()


def _month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _events(
    *,
    tag: str,
    first_customer: int,
    customers: int,
    metric: int,
    start: datetime,
    end: datetime,
    events: int,
    received: datetime,
    late: bool,
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            _EVENTS_SQL,
            {
                "prefix": PREFIX,
                "tag": tag,
                "first_customer": first_customer,
                "customers": customers,
                "metric": metric,
                "start": start,
                "seconds": int((end - start).total_seconds()),
                "events": events,
                "received": received,
                "late": late,
            },
        )


def _timed(repeat: int, work: Any) -> tuple[float, dict[str, int]]:
    times, counts = [], {}
    for _ in range(repeat):
        clock = time.perf_counter()
        counts = work()
        times.append(time.perf_counter() - clock)
    return statistics.median(times), counts


def run(command: BaseCommand, **options: Any) -> bool:
    out = command.stdout
    if connection.vendor != "postgresql":
        out.write("benchmark drift needs PostgreSQL (DATABASE_URL=postgres://...)")
        return False
    subs, events, late = options["subscriptions"], options["events"], options["late"]
    now = timezone.now()
    # The last closed month: billed (past the grace) and still inside the drift horizon.
    end = _month_start(now)
    if now - end < timedelta(hours=2):
        end = _month_start(end - timedelta(days=1))
    start = _month_start(end - timedelta(days=1))
    _cleanup()
    try:
        out.write(f"1. generating {subs} subscriptions and {events} events ({start:%Y-%m}) ...")
        metric = Metric.objects.create(
            code=f"{PREFIX}calls", name="Bench calls", aggregation="count"
        )
        plan = Plan.objects.create(code=f"{PREFIX}plan", name="Bench drift", base_amount=1000)
        Price.objects.create(plan=plan, metric=metric, unit_amount=Decimal("0.01"))
        customers = Customer.objects.bulk_create(
            [Customer(external_id=f"{PREFIX}{n}", name=f"Bench {n}") for n in range(subs)]
        )
        Subscription.objects.bulk_create(
            [Subscription(customer=c, plan=plan, started_at=start) for c in customers]
        )
        first = min(c.pk for c in customers)
        _events(
            tag="e",
            first_customer=first,
            customers=subs,
            metric=metric.pk,
            start=start,
            end=end,
            events=events,
            received=start + timedelta(days=1),
            late=False,
        )
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE ingest_usageevent")
        out.write("2. billing the month with the billing scan ...")
        clock = time.perf_counter()
        billed = services.billing_scan(trigger="command", as_of=end + timedelta(hours=2))
        out.write(
            f"   {billed.invoiced} invoices in {time.perf_counter() - clock:.1f}s ({billed.status})"
        )
        mark = timezone.now()
        _events(
            tag="late",
            first_customer=first,
            customers=subs,
            metric=metric.pk,
            start=start,
            end=end,
            events=late,
            received=mark,
            late=True,
        )
        out.write(f"3. {late} late events added; timing {options['repeat']} passes of each ...")
        incremental_s, incremental = _timed(
            options["repeat"], lambda: usage_drift_sweep(lease=None, since=mark)
        )
        full_s, full = _timed(options["repeat"], lambda: usage_drift_sweep(lease=None, since=None))
        ratio = full_s / incremental_s if incremental_s else float("inf")
        out.write(
            f"incremental drift sweep: {incremental['windows']} windows re-aggregated in "
            f"{incremental_s * 1000:.1f} ms (median)"
        )
        out.write(
            f"full drift pass:         {full['windows']} windows re-aggregated in "
            f"{full_s * 1000:.1f} ms (median)"
        )
        findings = DriftFinding.objects.filter(metric=metric, status="open").count()
        out.write(f"open drift findings: {findings} (windows touched by the late events)")
        ok = ratio >= TARGET_RATIO
        out.write(
            f"speed-up {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x): {'ok' if ok else 'MISSED'}"
        )
        return ok
    finally:
        if not options["keep"]:
            _cleanup()
            BillingRun.objects.filter(as_of=end + timedelta(hours=2)).delete()
