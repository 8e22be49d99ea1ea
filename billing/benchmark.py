"""``manage.py benchmark billing``: a billing pass against one raw GROUP BY over the same events,
measured in the same run, at two event counts (memory must not grow with events).

Needs PostgreSQL (events are generated set-based with generate_series). Data is created under
the ``bench-`` prefix and removed afterwards (``--keep`` leaves it). Run it against a database
of its own: it bills whatever else is due there, too."""

from __future__ import annotations

import json
import os
import time
import traceback
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, connections, transaction

from billing import services
from billing import shards as billing_shards
from billing.models import (
    BillingRun,
    BillingWindow,
    CreditEntry,
    Invoice,
    InvoiceLine,
    Plan,
    Price,
    ProviderSync,
    Subscription,
)
from ingest.models import InvoicedWatermark, Metric, UsageEvent
from neruba.benchmarking import server_settle
from neruba.models import Customer

PREFIX = "bench-"
PERIOD_START = datetime(2020, 1, 1, tzinfo=UTC)
PERIOD_END = datetime(2020, 2, 1, tzinfo=UTC)
TARGET_RATIO = 2.0
# Two workers against one, windows/s of a fanned-out pass (DESIGN: "What fast means").
TARGET_SPEEDUP = 1.4

_EVENTS_SQL = """
INSERT INTO ingest_usageevent (
  idempotency_key, customer_id, metric_id, timestamp, value, distinct_value, properties,
  payload_hash, received_at, source, late
)
SELECT
  %(prefix)s || %(tag)s || '-' || g,
  %(first_customer)s + ((g / 2) %% %(customers)s),
  CASE WHEN g %% 2 = 0 THEN %(count_metric)s ELSE %(sum_metric)s END,
  %(start)s::timestamptz + ((g::bigint * 7919) %% %(seconds)s) * interval '1 second',
  CASE WHEN g %% 2 = 0 THEN NULL ELSE (g %% 97) / 10.0 END,
  '',
  '{}'::jsonb,
  'bench',
  now(),
  'bench',
  false
FROM generate_series(1, %(events)s) AS g
"""

_RAW_GROUP_BY = """
SELECT customer_id, metric_id, COUNT(*), SUM(value), MAX(value)
FROM ingest_usageevent
WHERE timestamp >= %s AND timestamp < %s
GROUP BY customer_id, metric_id
"""


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument(
        "--small-events",
        type=int,
        default=None,
        help="Event count of the first (smaller) size; default a quarter of --events.",
    )
    parser.add_argument("--batch-size", type=int, default=services.DEFAULT_BATCH)
    parser.add_argument(
        "--workers",
        default="",
        help="Also bill the larger size fanned out into shards, one process per shard, for each "
        "of these worker counts (e.g. 1,2): the windows/s curve.",
    )
    parser.add_argument("--keep", action="store_true", help="Leave the generated data.")


def _cleanup() -> None:
    customers = Customer.objects.filter(external_id__startswith=PREFIX)
    invoices = Invoice.objects.filter(customer__in=customers)
    with transaction.atomic():
        CreditEntry.objects.filter(customer__in=customers).delete()
        ProviderSync.objects.filter(invoice__in=invoices).delete()
        InvoiceLine.objects.filter(invoice__in=invoices).delete()
        invoices.update(supersedes=None)
        invoices.delete()
        BillingWindow.objects.filter(subscription__customer__in=customers).delete()
        Subscription.objects.filter(customer__in=customers).delete()
        # Raw delete: the ORM's collector would load every event into memory first.
        UsageEvent.objects.filter(customer__in=customers)._raw_delete(UsageEvent.objects.db)
        InvoicedWatermark.objects.filter(customer__in=customers).delete()
        customers.delete()
        Price.objects.filter(plan__code__startswith=PREFIX).delete()
        Plan.objects.filter(code__startswith=PREFIX).delete()
        Metric.objects.filter(code__startswith=PREFIX).delete()
        BillingRun.objects.filter(holder__startswith=PREFIX).delete()


def _generate(*, subscriptions: int, events: int, tag: str) -> None:
    calls = Metric.objects.create(code=f"{PREFIX}calls", name="Bench calls", aggregation="count")
    seconds = Metric.objects.create(
        code=f"{PREFIX}seconds", name="Bench seconds", aggregation="sum", field="seconds"
    )
    plan = Plan.objects.create(code=f"{PREFIX}plan", name="Bench", base_amount=1000)
    Price.objects.create(plan=plan, metric=calls, unit_amount=Decimal("0.01"))
    Price.objects.create(
        plan=plan,
        metric=seconds,
        model="graduated",
        tiers=[
            {"up_to": "100", "unit_amount": "1", "flat_amount": 0},
            {"up_to": None, "unit_amount": "0.5", "flat_amount": 0},
        ],
    )
    customers = Customer.objects.bulk_create(
        [
            Customer(external_id=f"{PREFIX}{n}", name=f"Bench {n}", currency="USD")
            for n in range(subscriptions)
        ],
        batch_size=5000,
    )
    Subscription.objects.bulk_create(
        [Subscription(customer=c, plan=plan, started_at=PERIOD_START) for c in customers],
        batch_size=5000,
    )
    first = min(c.pk for c in customers)
    assert max(c.pk for c in customers) - first == subscriptions - 1, "customer ids not dense"
    with connection.cursor() as cursor:
        cursor.execute(
            _EVENTS_SQL,
            {
                "prefix": PREFIX,
                "tag": tag,
                "first_customer": first,
                "customers": subscriptions,
                "count_metric": calls.pk,
                "sum_metric": seconds.pk,
                "start": PERIOD_START,
                "seconds": int((PERIOD_END - PERIOD_START).total_seconds()),
                "events": events,
            },
        )


def _group_by() -> tuple[float, int]:
    with connection.cursor() as cursor:
        clock = time.perf_counter()
        cursor.execute(_RAW_GROUP_BY, [PERIOD_START, PERIOD_END])
        rows = len(cursor.fetchall())
        return time.perf_counter() - clock, rows


def _billing_pass(*, as_of: datetime, batch_size: int) -> tuple[float, float, dict[str, Any]]:
    """Runs the billing pass in a forked process, so its peak RSS (from wait4) is its own and
    comparable between sizes. Returns (seconds, peak RSS in MB, run outcome)."""
    connections.close_all()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the billing worker
        code = 0
        try:
            os.close(read_end)
            clock = time.perf_counter()
            run = services.billing_scan(trigger="command", as_of=as_of, batch_size=batch_size)
            elapsed = time.perf_counter() - clock
            BillingRun.objects.filter(pk=run.pk).update(holder=PREFIX + run.holder)
            body = {
                "seconds": elapsed,
                "status": run.status,
                "invoiced": run.invoiced,
                "failed": run.failed,
            }
            os.write(write_end, json.dumps(body).encode())
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            connections.close_all()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status, usage = os.wait4(pid, 0)
    if status != 0 or not data:
        raise RuntimeError("the billing process failed (see above)")
    outcome = json.loads(data)
    return outcome["seconds"], usage.ru_maxrss / 1024, outcome


# What the billing pass writes, by table in dependency order (the bench plan's windows, their
# invoices, lines and outbox rows, its customers' ingest watermarks).
_BENCH_SUBSCRIPTIONS = "SELECT id FROM billing_subscription WHERE plan_id = {plan}"
_WRITTEN = [
    (BillingWindow, f"subscription_id IN ({_BENCH_SUBSCRIPTIONS})"),
    (Invoice, f"subscription_id IN ({_BENCH_SUBSCRIPTIONS})"),
    (InvoiceLine, "invoice_id IN (SELECT id FROM bench_written_billing_invoice)"),
    (ProviderSync, "invoice_id IN (SELECT id FROM bench_written_billing_invoice)"),
    (
        InvoicedWatermark,
        "customer_id IN (SELECT customer_id FROM billing_subscription WHERE plan_id = {plan})",
    ),
]


def _raw_writes() -> tuple[float, dict[str, float]]:
    """The write floor: the rows the billing pass just wrote, taken out and written again by
    plain SQL (one INSERT … SELECT per table, one transaction, windows straight in their final
    state, no Python between rows). No implementation that writes these rows is faster.
    Returns the seconds in all (the commit included) and per table."""
    plan = int(Plan.objects.get(code=f"{PREFIX}plan").pk)
    tables = [model._meta.db_table for model, _ in _WRITTEN]
    with connection.cursor() as cursor:
        for (_, where), table in zip(_WRITTEN, tables, strict=True):
            cursor.execute(
                f"CREATE TEMP TABLE bench_written_{table} AS "  # noqa: S608 - our names
                f"SELECT * FROM {table} WHERE {where.format(plan=plan)}"
            )
        with transaction.atomic():
            for table in reversed(tables):
                cursor.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM bench_written_{table})"  # noqa: S608
                )
    server_settle(*tables)
    with connection.cursor() as cursor:
        per_table: dict[str, float] = {}
        clock = time.perf_counter()
        with transaction.atomic():
            for table in tables:
                started = time.perf_counter()
                cursor.execute(f"INSERT INTO {table} SELECT * FROM bench_written_{table}")  # noqa: S608
                per_table[table] = time.perf_counter() - started
        elapsed = time.perf_counter() - clock
        for table in tables:
            cursor.execute(f"DROP TABLE bench_written_{table}")
    return elapsed, per_table


def _one_size(
    command: BaseCommand, *, subscriptions: int, events: int, batch_size: int
) -> dict[str, Any]:
    out = command.stdout
    _cleanup()
    out.write(f"  generating {subscriptions:,} subscriptions and {events:,} events ...")
    clock = time.perf_counter()
    _generate(subscriptions=subscriptions, events=events, tag=str(events))
    out.write(f"  generated in {time.perf_counter() - clock:.1f}s")
    # Both measurements start from a settled server: statistics current, the autovacuum that
    # millions of new rows would trigger already done, dirty pages flushed.
    server_settle(UsageEvent._meta.db_table, Customer._meta.db_table, Subscription._meta.db_table)
    _group_by()  # warm the cache so both measurements read the same pages
    group_by, groups = _group_by()
    out.write(f"  raw GROUP BY: {group_by:.2f}s ({groups:,} groups)")
    as_of = PERIOD_END + timedelta(seconds=settings.NERUBA["NERUBA_BILLING_GRACE"] + 1)
    billing, rss, outcome = _billing_pass(as_of=as_of, batch_size=batch_size)
    ratio = billing / group_by if group_by else float("inf")
    out.write(
        f"  billing pass: {billing:.2f}s for {outcome['invoiced']:,} windows "
        f"({outcome['status']}, failed {outcome['failed']}); ratio {ratio:.2f}x; "
        f"peak RSS of the billing process {rss:.0f} MB"
    )
    writes, per_table = _raw_writes()
    floor = group_by + writes
    tables = ", ".join(f"{table} {seconds:.2f}s" for table, seconds in per_table.items())
    out.write(
        f"  raw SQL writes of the same rows (one INSERT … SELECT per table, one transaction): "
        f"{writes:.2f}s ({tables}, commit {writes - sum(per_table.values()):.2f}s); "
        f"GROUP BY + writes = "
        f"{floor:.2f}s = {floor / group_by:.2f}x the GROUP BY; billing pass / that floor = "
        f"{billing / floor:.2f}x"
    )
    return {
        "events": events,
        "group_by": group_by,
        "billing": billing,
        "ratio": ratio,
        "floor": floor,
        "rss": rss,
        "invoiced": outcome["invoiced"],
        "failed": outcome["failed"],
    }


def _billing_reset() -> None:
    """Takes back what a pass wrote for the bench customers (invoices and their rows, windows,
    watermarks), so the next pass bills the same windows again."""
    customers = Customer.objects.filter(external_id__startswith=PREFIX)
    invoices = Invoice.objects.filter(customer__in=customers)
    with transaction.atomic():
        CreditEntry.objects.filter(customer__in=customers).delete()
        ProviderSync.objects.filter(invoice__in=invoices).delete()
        InvoiceLine.objects.filter(invoice__in=invoices).delete()
        invoices.update(supersedes=None)
        invoices.delete()
        BillingWindow.objects.filter(subscription__customer__in=customers).delete()
        InvoicedWatermark.objects.filter(customer__in=customers).delete()
    server_settle(Invoice._meta.db_table, InvoiceLine._meta.db_table, BillingWindow._meta.db_table)


def _fanout_pass(*, as_of: datetime, workers: int, batch_size: int) -> tuple[float, int, int]:
    """A fanned-out pass: the scan's shards (one per worker), each billed by its own forked
    process calling the shard service, the body of the ``billing.shard`` task (no broker in
    between, so only billing is measured). Returns (seconds, windows invoiced, failed)."""
    cutoff = services.billing_cutoff(as_of=as_of)
    services.windows_generate(through=cutoff)
    run = BillingRun.objects.create(trigger="command", holder=f"{PREFIX}fanout", as_of=as_of)
    shards = billing_shards.shards_create(run=run, cutoff=cutoff, shards=workers, enqueue=False)
    connections.close_all()
    clock = time.perf_counter()
    pids = []
    for shard in shards:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                billing_shards.shard_bill(shard_id=shard.pk, batch_size=batch_size)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                connections.close_all()
                os._exit(code)
        pids.append(pid)
    failed_processes = sum(1 for pid in pids if os.waitpid(pid, 0)[1] != 0)
    elapsed = time.perf_counter() - clock
    run.refresh_from_db()
    return elapsed, run.invoiced, run.failed + failed_processes


def _curve(command: BaseCommand, *, workers: list[int], batch_size: int, floor: float) -> bool:
    out = command.stdout
    as_of = PERIOD_END + timedelta(seconds=settings.NERUBA["NERUBA_BILLING_GRACE"] + 1)
    rates: dict[int, float] = {}
    ok = True
    for count in workers:
        _billing_reset()
        seconds, invoiced, failed = _fanout_pass(as_of=as_of, workers=count, batch_size=batch_size)
        rates[count] = invoiced / seconds if seconds else 0.0
        ok = ok and failed == 0
        extra = f"; / (GROUP BY + floor) = {seconds / floor:.2f}x" if count == 1 else ""
        out.write(
            f"  fanned out, {count} worker(s): {seconds:.2f}s for {invoiced:,} windows = "
            f"{rates[count]:,.0f} windows/s (failed {failed}){extra}"
        )
    if 1 in rates and len(rates) > 1:
        for count, rate in rates.items():
            if count > 1:
                speedup = rate / rates[1] if rates[1] else 0.0
                met = speedup >= TARGET_SPEEDUP
                ok = ok and met
                out.write(
                    f"  {count} workers / 1 worker = {speedup:.2f}x the windows/s "
                    f"(target >= {TARGET_SPEEDUP}x): {'ok' if met else 'MISSED'}"
                )
    return ok


def run(command: BaseCommand, **options: Any) -> bool:
    if connection.vendor != "postgresql":
        command.stderr.write("benchmark billing needs PostgreSQL (set DATABASE_URL).")
        return False
    settings.DEBUG = False  # no query log growing with the work
    subscriptions = options["subscriptions"]
    big = options["events"]
    small = options["small_events"] or max(1, big // 4)
    results = []
    try:
        for events in (small, big):
            command.stdout.write(f"size: {subscriptions:,} subscriptions, {events:,} events")
            results.append(
                _one_size(
                    command,
                    subscriptions=subscriptions,
                    events=events,
                    batch_size=options["batch_size"],
                )
            )
        curve_ok = True
        if options["workers"]:
            try:
                workers = [int(w) for w in options["workers"].split(",") if w.strip()]
            except ValueError:
                command.stderr.write("--workers takes comma-separated numbers, e.g. 1,2")
                return False
            command.stdout.write(f"fan-out curve at {big:,} events: workers {workers}")
            curve_ok = _curve(
                command,
                workers=workers,
                batch_size=options["batch_size"],
                floor=results[-1]["floor"],
            )
    finally:
        if not options["keep"]:
            _cleanup()
    first, second = results
    growth = second["rss"] - first["rss"]
    ok_ratio = second["ratio"] <= TARGET_RATIO
    ok_memory = growth <= max(32.0, first["rss"] * 0.1)
    ok_billed = all(r["invoiced"] == subscriptions and r["failed"] == 0 for r in results)
    command.stdout.write(
        f"billing pass / raw GROUP BY: {first['ratio']:.2f}x at {first['events']:,} events, "
        f"{second['ratio']:.2f}x at {second['events']:,} events (target <= {TARGET_RATIO}x): "
        f"{'ok' if ok_ratio else 'MISSED'}"
    )
    command.stdout.write(
        f"floor (raw GROUP BY + raw SQL writes of the rows billing must write): "
        f"{second['floor'] / second['group_by']:.2f}x the GROUP BY at {second['events']:,} "
        f"events; the billing pass is {second['billing'] / second['floor']:.2f}x that floor"
    )
    command.stdout.write(
        f"peak RSS: {first['rss']:.0f} MB -> {second['rss']:.0f} MB with "
        f"{second['events'] / first['events']:.0f}x the events "
        f"(growth {growth:+.0f} MB): {'flat' if ok_memory else 'GROWS'}"
    )
    return ok_ratio and ok_memory and ok_billed and curve_ok
