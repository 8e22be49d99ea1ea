"""``manage.py benchmark corrections``: loading history and voiding wrong events at scale.

Steps: (1) benchmark customers on a monthly plan that started four months ago, an API key;
(2) a real gunicorn on a free loopback port, warmed up; (3) batch ingest of ``--events`` recent
events over HTTP (the reference: phase (b) of ``benchmark ingest``); (4) the same number of
events loaded through a backfill (``POST /api/v1/events?backfill=<id>``) into the month three
months back, the backfill closed; target: at least 0.6 x the batch-ingest rate of (3); (5) the
billing scan invoices the closed months; (6) one command-sized bulk void of ``--void`` events of
one customer and metric in an invoiced month, with progress; target: no invoice changed;
(7) the incremental drift sweep afterwards re-checks only the touched window (and opens its
finding) where a full pass re-checks every invoiced window; (8) everything is deleted.

Needs PostgreSQL, in a database of its own: the billing scan bills whatever else is due there."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, connections, transaction
from django.utils import timezone

from billing import services
from billing.drift import usage_drift_sweep
from billing.models import (
    BillingRun,
    BillingWindow,
    CreditEntry,
    DriftFinding,
    Invoice,
    InvoiceLine,
    Plan,
    Price,
    ProviderSync,
    Subscription,
)
from ingest.backfills import backfill_close, backfill_create
from ingest.corrections import events_void_bulk
from ingest.models import (
    Backfill,
    EventCorrection,
    EventKey,
    IngestBatch,
    IngestRejection,
    InvoicedWatermark,
    Metric,
    UsageEvent,
)
from neruba import services as kernel_services
from neruba.benchmarking import percentile, psycopg_dsn, run_clients, server_settle, split
from neruba.models import ApiKey, AuditEntry, Customer
from neruba.servers import free_port, gunicorn_start, gunicorn_stop

PREFIX = "benchcorr-"
TARGET_BACKFILL_RATIO = 0.6


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--events", type=int, default=1_000_000, help="Events per ingest phase.")
    parser.add_argument("--void", type=int, default=100_000, help="Events voided in bulk.")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=2, help="Client processes for batches.")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes.")
    parser.add_argument("--threads", type=int, default=4, help="Threads per gunicorn worker.")
    parser.add_argument("--customers", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=5000, help="Bulk void chunk.")


def _month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _months_back(at: datetime, n: int) -> datetime:
    start = _month_start(at)
    for _ in range(n):
        start = _month_start(start - timedelta(days=1))
    return start


def _client(share: tuple[int, str, str, list[bytes]], go: Any, queue: Any) -> None:
    port, auth, path, bodies = share
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    statuses: dict[int, int] = {}
    conn.connect()
    go.wait()
    for body in bodies:
        t0 = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        latencies.append(time.perf_counter() - t0)
        statuses[response.status] = statuses.get(response.status, 0) + 1
        if response.status == 200:
            for outcome, n in json.loads(data)["counts"].items():
                outcomes[outcome] = outcomes.get(outcome, 0) + n
    conn.close()
    queue.put((latencies, outcomes, statuses))


def _phase(
    port: int, auth: str, path: str, bodies: list[bytes], clients: int
) -> tuple[float, list[float], dict[str, int], dict[int, int]]:
    shares = [(port, auth, path, part) for part in split(bodies, clients)]
    elapsed, results = run_clients(_client, shares)
    outcomes: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for _, out, st in results:
        for k, v in out.items():
            outcomes[k] = outcomes.get(k, 0) + v
        for k, v in st.items():
            statuses[k] = statuses.get(k, 0) + v
    return elapsed, [x for r in results for x in r[0]], outcomes, statuses


def _bodies(
    *,
    tag: str,
    n: int,
    size: int,
    customers: list[Customer],
    metrics: list[Metric],
    start: datetime,
    seconds: int,
    first_customer_share: int = 0,
    in_order: bool = False,
) -> list[bytes]:
    """Batch bodies, built batch by batch (a million event dicts at once would not fit well).
    The first ``first_customer_share`` events all go to the first customer and metric (the
    ones the bulk void takes back)."""

    def _offset(i: int, n: int, seconds: int) -> float:
        # History comes in time order (an export of the old system); live traffic interleaves.
        return i * seconds / n if in_order else (i * 7919) % seconds

    bodies = []
    for offset in range(0, n, size):
        batch = []
        for i in range(offset, min(n, offset + size)):
            if i < first_customer_share:
                customer, metric = customers[0], metrics[0]
            elif first_customer_share:
                # The rest go to the other customers: the void takes exactly its share back.
                others = customers[1:] or customers
                customer, metric = others[i % len(others)], metrics[i % len(metrics)]
            else:
                customer, metric = customers[i % len(customers)], metrics[i % len(metrics)]
            batch.append(
                {
                    "idempotency_key": f"{PREFIX}{tag}-{i}",
                    "customer": customer.external_id,
                    "metric": metric.code,
                    "timestamp": (start + timedelta(seconds=_offset(i, n, seconds))).isoformat(),
                    "properties": {"seconds": (i % 97) + 0.5, "region": "eu-west-1"},
                }
            )
        bodies.append(json.dumps({"events": batch}).encode())
    return bodies


def _database_url() -> str:
    """The database this process uses (a test run's is not the one DATABASE_URL names)."""
    dsn = psycopg_dsn()
    auth = dsn.get("user", "")
    if dsn.get("password"):
        auth += f":{quote(dsn['password'], safe='')}"
    host = dsn.get("host", "127.0.0.1")
    port = dsn.get("port", 5432)
    return f"postgres://{auth}{'@' if auth else ''}{host}:{port}/{dsn['dbname']}"


def _invoices_digest(customers: list[Customer]) -> tuple[int, str]:
    rows = list(
        Invoice.objects.filter(customer__in=customers)
        .order_by("pk")
        .values_list("pk", "status", "subtotal", "total", "status_changed_at")
    )
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def _cleanup() -> int:
    connections.close_all()
    customers = Customer.objects.filter(external_id__startswith=PREFIX)
    invoices = Invoice.objects.filter(customer__in=customers)
    events = UsageEvent.objects.filter(customer__in=customers)
    with transaction.atomic():
        EventCorrection.objects.filter(event__customer__in=customers).delete()
        DriftFinding.objects.filter(window__subscription__customer__in=customers).delete()
        CreditEntry.objects.filter(customer__in=customers).delete()
        ProviderSync.objects.filter(invoice__in=invoices).delete()
        InvoiceLine.objects.filter(invoice__in=invoices).delete()
        invoices.update(supersedes=None)
        invoices.delete()
        BillingWindow.objects.filter(subscription__customer__in=customers).delete()
        Subscription.objects.filter(customer__in=customers).delete()
        # The key registry outlives events by design: the run's keys go with its events, or a
        # second run would find them taken and store nothing.
        EventKey.objects.filter(event_id__in=events.values("id")).delete()
        # Raw deletes: the ORM's collector would load every event into memory first.
        events.filter(amends__isnull=False)._raw_delete(UsageEvent.objects.db)
        deleted = events._raw_delete(UsageEvent.objects.db)
        InvoicedWatermark.objects.filter(customer__in=customers).delete()
        keys = ApiKey.objects.filter(name__startswith=PREFIX)
        IngestRejection.objects.filter(batch__api_key__in=keys).delete()
        IngestBatch.objects.filter(api_key__in=keys).delete()
        backfills = Backfill.objects.filter(reason__startswith=PREFIX)
        IngestBatch.objects.filter(backfill__in=backfills).delete()
        backfills.delete()
        # The audit log is append-only and names the customer of the bulk void: that customer
        # row stays (without events, subscriptions or invoices).
        customers.exclude(
            pk__in=AuditEntry.objects.filter(customer__in=customers).values("customer_id")
        ).delete()
        keys.delete()
        Price.objects.filter(plan__code__startswith=PREFIX).delete()
        Plan.objects.filter(code__startswith=PREFIX).delete()
        Metric.objects.filter(code__startswith=PREFIX).delete()
    return deleted


def run(command: BaseCommand, **options: Any) -> bool:
    out = command.stdout
    if connection.vendor != "postgresql":
        out.write("benchmark corrections needs PostgreSQL: set DATABASE_URL=postgres://…")
        return False
    n, size, clients = options["events"], options["batch_size"], options["clients"]
    n_void = min(options["void"], n)
    now = timezone.now()
    history = _months_back(now, 3)  # loaded by the backfill, invoiced afterwards
    history_end = _months_back(now, 2)
    recent = now - timedelta(hours=1)
    _cleanup()
    run_id = uuid.uuid4().hex[:6]
    server = None
    scan = None
    try:
        # 1. Customers, plan, key.
        out.write(f"1. {options['customers']} customers on a monthly plan, an ingest key …")
        calls = Metric.objects.create(
            code=f"{PREFIX}calls", name="Bench calls", aggregation="count"
        )
        secs = Metric.objects.create(
            code=f"{PREFIX}seconds", name="Bench seconds", aggregation="sum", field="seconds"
        )
        plan = Plan.objects.create(code=f"{PREFIX}plan", name="Bench corrections", base_amount=0)
        Price.objects.create(plan=plan, metric=calls, unit_amount=Decimal("0.01"))
        Price.objects.create(plan=plan, metric=secs, unit_amount=Decimal("0.001"))
        customers = Customer.objects.bulk_create(
            [
                Customer(external_id=f"{PREFIX}{run_id}-{i}", name=f"Bench {i}")
                for i in range(options["customers"])
            ]
        )
        Subscription.objects.bulk_create(
            [Subscription(customer=c, plan=plan, started_at=history) for c in customers]
        )
        _key, raw_key = kernel_services.api_key_create(
            name=f"{PREFIX}key", scopes=["ingest"], actor=None
        )
        auth = f"Api-Key {raw_key}"
        metrics = [calls, secs]
        out.write(f"2. building 2 x {n} events …")
        recent_bodies = _bodies(
            tag="r",
            n=n,
            size=size,
            customers=customers,
            metrics=metrics,
            start=recent - timedelta(minutes=50),
            seconds=3000,
        )
        history_bodies = _bodies(
            tag="h",
            n=n,
            size=size,
            customers=customers,
            metrics=metrics,
            start=history,
            seconds=int((history_end - history).total_seconds()),
            first_customer_share=n_void,
            in_order=True,
        )
        port = free_port()
        server = gunicorn_start(
            port=port,
            workers=options["workers"],
            threads=options["threads"],
            env={"DATABASE_URL": _database_url()},
        )
        warm = _bodies(
            tag="w",
            n=size * options["workers"] * 2,
            size=size,
            customers=customers,
            metrics=metrics,
            start=recent - timedelta(minutes=50),
            seconds=3000,
        )
        _phase(port, auth, "/api/v1/events", warm, clients)

        # 3. The reference: batch ingest.
        table = UsageEvent._meta.db_table
        server_settle(table)
        out.write(f"3. (b) batch ingest of {n} events over HTTP, {clients} clients …")
        batch_s, batch_lat, batch_out, batch_st = _phase(
            port, auth, "/api/v1/events", recent_bodies, clients
        )
        batch_rate = n / batch_s

        # 4. The backfill.
        backfill = backfill_create(
            reason=f"{PREFIX}history", starts_at=history, ends_at=history_end, actor=None
        )
        server_settle(table)
        out.write(f"4. backfill of {n} events into {history:%Y-%m} over HTTP …")
        fill_s, fill_lat, fill_out, fill_st = _phase(
            port, auth, f"/api/v1/events?backfill={backfill.pk}", history_bodies, clients
        )
        fill_rate = n / fill_s
        closed = backfill_close(backfill=backfill, actor=None)
        gunicorn_stop(server)
        server = None

        # 5. Invoice the closed months.
        out.write("5. billing the closed months …")
        clock = time.perf_counter()
        scan = services.billing_scan(trigger="command")
        out.write(f"   {scan.invoiced} invoices in {time.perf_counter() - clock:.1f} s")
        before = _invoices_digest(customers)

        # 6. Bulk void.
        server_settle(table)
        out.write(f"6. bulk void of {n_void} events of {customers[0].external_id} / {calls.code} …")
        mark = timezone.now()
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            out.write(f"   voided {done}/{total} ({rate:,.0f} events/s)")

        voided = events_void_bulk(
            customer=customers[0],
            metric=calls,
            starts_at=history,
            ends_at=history_end,
            actor=None,
            reason="benchmark: a client sent wrong events",
            dry_run=False,
            chunk_size=options["chunk_size"],
            on_progress=progress,
        )
        void_s = time.perf_counter() - started
        after = _invoices_digest(customers)

        # 7. The drift sweep afterwards.
        clock = time.perf_counter()
        incremental = usage_drift_sweep(lease=None, since=mark)
        incremental_s = time.perf_counter() - clock
        clock = time.perf_counter()
        full = usage_drift_sweep(lease=None, since=None)
        full_s = time.perf_counter() - clock
        invoiced_windows = Invoice.objects.filter(customer__in=customers).count()
    finally:
        if server is not None:
            gunicorn_stop(server)
        deleted = _cleanup()
        if scan is not None:
            BillingRun.objects.filter(pk=scan.pk).delete()

    ratio = fill_rate / batch_rate
    fill_ok = (
        ratio >= TARGET_BACKFILL_RATIO
        and fill_st == {200: len(history_bodies)}
        and fill_out.get("accepted", 0) == n
        and closed.accepted == n
    )
    batch_ok = batch_st == {200: len(recent_bodies)} and batch_out.get("accepted", 0) == n
    void_ok = voided.voided == voided.matched == n_void and before == after
    sweep_ok = incremental["windows"] == 1 and incremental["findings"] == 1

    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1000:7.1f}"

    lines = [
        "",
        f"corrections benchmark: {n} events per phase, batches of {size}, {clients} clients, "
        f"gunicorn {options['workers']}x{options['threads']} gthread, {os.cpu_count()} cores",
        f"{'phase':<34}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}",
        f"{'(b) batch ingest over HTTP':<34}{batch_rate:>10.0f}{ms(batch_lat, 0.5):>9}"
        f"{ms(batch_lat, 0.99):>9}   {batch_out}",
        f"{'backfill over HTTP':<34}{fill_rate:>10.0f}{ms(fill_lat, 0.5):>9}"
        f"{ms(fill_lat, 0.99):>9}   {fill_out}",
        f"{'bulk void (one command)':<34}{voided.voided / max(void_s, 1e-9):>10.0f}"
        f"{'':>18}   {voided.voided} voided in {void_s:.1f} s, chunks of {options['chunk_size']}",
        "",
        f"backfill / batch ingest = {ratio:.2f}  (target >= {TARGET_BACKFILL_RATIO})  "
        f"{'MET' if fill_ok and batch_ok else 'MISSED'}",
        f"bulk void: invoices before/after {before[0]} {before[1]} / {after[0]} {after[1]}  "
        f"{'MET (no invoice touched)' if void_ok else 'MISSED'}",
        f"drift sweep after the void: incremental re-checked {incremental['windows']} window(s) "
        f"in {incremental_s * 1000:.0f} ms ({incremental['findings']} finding); a full pass "
        f"re-checks {full['windows']} ({invoiced_windows} invoiced here) in {full_s * 1000:.0f} "
        f"ms  {'MET (only the touched window)' if sweep_ok else 'MISSED'}",
        f"cleaned up {deleted} stored events, the backfill, invoices, customers, plan and key",
    ]
    out.write("\n".join(lines))
    return fill_ok and batch_ok and void_ok and sweep_ok
