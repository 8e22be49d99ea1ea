"""``manage.py benchmark webhooks``: signed Stripe events per second through the real endpoint
(a gunicorn server on loopback: signature check on the raw body, link lookups, insert, the
after-commit enqueue) against a raw psycopg INSERT of the same rows, in one run on the
configured PostgreSQL database. Processing is not part of it: it runs later on the worker.

Steps: (1) a benchmark customer and a signing secret for the server; (2) the events, real Stripe
shapes (invoice, charge, customer) with unique ids; (3) raw baseline: one INSERT and commit per
event (each delivery is its own request) into a scratch copy of the table, from ``--clients``
connections; (4) gunicorn with ``--workers`` x ``--threads``; (5) ``--clients`` keep-alive
clients, each signing every body just before sending it; (6) the same deliveries again, all
duplicates; (7) stop the server and delete everything the run created.

Steps 5 and 6 alternate over ``--rounds`` slices of the events (first deliveries of a slice,
then its redeliveries), each after ``server_settle`` so neither pays for the other's vacuum
or checkpoint and both see the same load: a redelivery must cost less than a first delivery
(Stripe retries in bursts after an outage), and the run says whether it did.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, connections

# Client processes and percentiles are shared with the ingest benchmark so both measure the
# same way; the loopback gunicorn is the kernel's.
from neruba.benchmarking import (
    database_url,
    percentile,
    psycopg_dsn,
    run_clients,
    server_settle,
    split,
)
from neruba.models import Customer
from neruba.servers import free_port, gunicorn_start, gunicorn_stop
from webhooks.models import StripeEvent
from webhooks.samples import event_body, sign, stripe_event, stripe_object

SCRATCH = "webhooks_bench_scratch"
TARGET_EVENTS_PER_SECOND = 500
KINDS = (
    ("invoice", "invoice.paid"),
    ("charge", "charge.refunded"),
    ("customer", "customer.updated"),
    ("invoice", "invoice.payment_failed"),
)


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--events", type=int, default=6000, help="Deliveries per phase.")
    parser.add_argument("--clients", type=int, default=12, help="Keep-alive client processes.")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes.")
    parser.add_argument("--threads", type=int, default=4, help="Threads per gunicorn worker.")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="Stop a phase after this long (bound)."
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Slices of the events; each is delivered, then redelivered.",
    )


def _bodies(prefix: str, stripe_customer: str, n: int) -> list[tuple[str, bytes]]:
    created = int(time.time())
    templates = {
        name: stripe_object(name)
        if name == "customer"
        else stripe_object(name, customer=stripe_customer)
        for name, _ in KINDS
    }
    out = []
    for i in range(n):
        name, type_ = KINDS[i % len(KINDS)]
        obj = dict(templates[name], id=f"{name[:2]}_{prefix}_{i}")
        if name == "customer":
            obj["id"] = stripe_customer
        event = stripe_event(obj, type=type_, id=f"evt_{prefix}_{i}", created=created)
        out.append((event["id"], event_body(event)))
    return out


# --- (a) raw insert --------------------------------------------------------------------------

_COLUMNS = (
    "stripe_id",
    "type",
    "api_version",
    "livemode",
    "created",
    "raw_body",
    "payload",
    "headers",
    "secret_hint",
    "object_id",
    "customer_id",
    "received_at",
    "status",
    "attempts",
    "last_error",
    "next_attempt_at",
)


def _raw_client(rows: list[tuple[Any, ...]], go: Any, queue: Any) -> None:
    import psycopg

    placeholders = ",".join("%s::jsonb" if c in ("payload", "headers") else "%s" for c in _COLUMNS)
    sql = f"INSERT INTO {SCRATCH} ({','.join(_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
    latencies = []
    with psycopg.connect(**psycopg_dsn()) as conn:
        go.wait()
        for row in rows:
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(sql, row)  # type: ignore[arg-type]
            conn.commit()
            latencies.append(time.perf_counter() - t0)
    queue.put(latencies)


def _raw_phase(
    bodies: list[tuple[str, bytes]], customer: Customer, clients: int
) -> tuple[float, list[float]]:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
        # Same columns, indexes and defaults: only the HTTP stack and verification differ.
        cursor.execute(f"CREATE TABLE {SCRATCH} (LIKE {StripeEvent._meta.db_table} INCLUDING ALL)")
    now = datetime.now(UTC)
    rows = []
    for stripe_id, body in bodies:
        payload = json.loads(body)
        obj = payload["data"]["object"]
        rows.append(
            (
                stripe_id,
                payload["type"],
                payload["api_version"],
                False,
                datetime.fromtimestamp(payload["created"], tz=UTC),
                body,
                body.decode(),
                json.dumps({"Content-Type": "application/json"}),
                "secret#1 …0000",
                obj["id"],
                customer.pk,
                now,
                "received",
                0,
                "",
                now,
            )
        )
    elapsed, results = run_clients(_raw_client, split(rows, clients))
    return elapsed, [x for r in results for x in r]


# --- (b) deliveries over HTTP ----------------------------------------------------------------


def _http_client(
    share: tuple[int, str, float, list[tuple[str, bytes]]], go: Any, queue: Any
) -> None:
    port, secret, seconds, bodies = share
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    latencies: list[float] = []
    results: dict[str, int] = {}
    go.wait()
    deadline = time.perf_counter() + seconds
    for _, body in bodies:
        if time.perf_counter() > deadline:
            break
        # Signed now, as Stripe signs at send time, so no delivery is near the tolerance.
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)}
        t0 = time.perf_counter()
        conn.request("POST", "/webhooks/stripe", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        latencies.append(time.perf_counter() - t0)
        key = json.loads(data).get("status") if response.status == 200 else str(response.status)
        results[key] = results.get(key, 0) + 1
    conn.close()
    queue.put((latencies, results))


def _healthz_client(share: tuple[int, float, int], go: Any, queue: Any) -> None:
    port, seconds, count = share
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    latencies: list[float] = []
    go.wait()
    deadline = time.perf_counter() + seconds
    for _ in range(count):
        if time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        latencies.append(time.perf_counter() - t0)
    conn.close()
    queue.put(latencies)


def _http_phase(
    port: int, secret: str, seconds: float, bodies: list[tuple[str, bytes]], clients: int
) -> tuple[float, list[float], dict[str, int]]:
    shares = [(port, secret, seconds, part) for part in split(bodies, clients)]
    elapsed, results = run_clients(_http_client, shares)
    merged: dict[str, int] = {}
    for _, counts in results:
        for key, n in counts.items():
            merged[key] = merged.get(key, 0) + n
    return elapsed, [x for r in results for x in r[0]], merged


# --- the run ---------------------------------------------------------------------------------


def run(command: BaseCommand, **options: Any) -> bool:
    out = command.stdout
    if connection.vendor != "postgresql":
        out.write("benchmark webhooks needs PostgreSQL: set DATABASE_URL=postgres://…")
        return False
    n, clients, seconds = options["events"], options["clients"], options["seconds"]
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench{run_id}"
    secret = f"whsec_bench_{uuid.uuid4().hex}"

    # 1. Customer and secret (given to the server as STRIPE_WEBHOOK_SECRETS).
    customer = Customer.objects.create(
        external_id=f"{prefix}-customer", name="Webhook bench", stripe_customer_id=f"cus_{prefix}"
    )
    server = None
    try:
        # 2. Events.
        bodies = _bodies(prefix, customer.stripe_customer_id, n)
        size = sum(len(b) for _, b in bodies) // max(n, 1)

        # 3. Raw baseline.
        out.write(f"(a) raw psycopg INSERT, one per event, {clients} connections …")
        raw_s, raw_lat = _raw_phase(bodies, customer, clients)
        raw_rate = n / raw_s

        # 4. Server, warmed up (imports, connections) with deliveries that are then deleted.
        port = free_port()
        server = gunicorn_start(
            port=port,
            workers=options["workers"],
            threads=options["threads"],
            env={"STRIPE_WEBHOOK_SECRETS": secret, "DATABASE_URL": database_url()},
        )
        warm = _bodies(f"{prefix}w", customer.stripe_customer_id, 20 * options["workers"])
        _http_phase(port, secret, seconds, warm, clients)

        # The same stack answering GET /healthz: the ceiling this machine gives any request.
        ceiling_s, ceiling = run_clients(_healthz_client, [(port, seconds, n // clients)] * clients)
        ceiling_lat = [x for r in ceiling for x in r]
        ceiling_rate = len(ceiling_lat) / ceiling_s

        # 5 and 6. Signed deliveries, then the same again (all duplicates), slice by slice.
        out.write(
            f"(b) signed deliveries through POST /webhooks/stripe, {clients} clients, and "
            f"(c) the same again (all duplicates), in {options['rounds']} rounds …"
        )
        table = StripeEvent._meta.db_table
        http_s = dup_s = 0.0
        http_lat: list[float] = []
        dup_lat: list[float] = []
        http_out: dict[str, int] = {}
        dup_out: dict[str, int] = {}
        for part in split(bodies, max(1, options["rounds"])):
            server_settle(table)
            took, lat, counts = _http_phase(port, secret, seconds, part, clients)
            http_s, http_lat = http_s + took, http_lat + lat
            for key, value in counts.items():
                http_out[key] = http_out.get(key, 0) + value
            server_settle(table)
            took, lat, counts = _http_phase(
                port, secret, seconds, part[: sum(counts.values())], clients
            )
            dup_s, dup_lat = dup_s + took, dup_lat + lat
            for key, value in counts.items():
                dup_out[key] = dup_out.get(key, 0) + value
        sent = sum(http_out.values())
        http_rate = sent / http_s
        dup_rate = sum(dup_out.values()) / dup_s
        stored = StripeEvent.objects.filter(stripe_id__startswith=f"evt_{prefix}_").count()
    finally:
        # 7. Clean up.
        if server is not None:
            gunicorn_stop(server)
        removed = _cleanup(prefix, customer)

    redelivery = dup_rate / http_rate
    ok = (
        http_rate >= TARGET_EVENTS_PER_SECOND
        and redelivery >= 1.0
        and http_out == {"stored": sent}
        and stored == sent
        and dup_out == {"duplicate": sent}
    )

    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1000:7.1f}"

    lines = [
        "",
        f"webhooks benchmark: {n} events (~{size} bytes each), {clients} keep-alive clients, "
        f"gunicorn {options['workers']}x{options['threads']} gthread, {os.cpu_count()} cores",
        f"{'phase':<36}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}",
        f"{'(a) raw INSERT (one per event)':<36}{raw_rate:>10.0f}{ms(raw_lat, 0.5):>9}"
        f"{ms(raw_lat, 0.99):>9}",
        f"{'(0) GET /healthz (stack ceiling)':<36}{ceiling_rate:>10.0f}{ms(ceiling_lat, 0.5):>9}"
        f"{ms(ceiling_lat, 0.99):>9}",
        f"{'(b) verify + store over HTTP':<36}{http_rate:>10.0f}{ms(http_lat, 0.5):>9}"
        f"{ms(http_lat, 0.99):>9}   {http_out}, {stored} rows",
        f"{'(c) redeliveries (duplicates)':<36}{dup_rate:>10.0f}{ms(dup_lat, 0.5):>9}"
        f"{ms(dup_lat, 0.99):>9}   {dup_out}",
        "",
        f"verify + store: {http_rate:.0f} events/s = {http_rate / raw_rate:.2f} x raw INSERT  "
        f"(target >= {TARGET_EVENTS_PER_SECOND} events/s)  "
        f"{'MET' if http_rate >= TARGET_EVENTS_PER_SECOND else 'MISSED'}",
        f"redelivery: {dup_rate:.0f} events/s = {redelivery:.2f} x a first delivery  "
        f"(target >= 1.00)  {'MET' if redelivery >= 1.0 else 'MISSED'}",
        f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(other processes on these cores lower every figure)",
        f"cleaned up {removed} stored events, the scratch table and the customer",
    ]
    out.write("\n".join(lines))
    return ok


def _cleanup(prefix: str, customer: Customer) -> int:
    connections.close_all()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
    removed, _ = StripeEvent.objects.filter(stripe_id__startswith=f"evt_{prefix}").delete()
    Customer.objects.filter(pk=customer.pk).delete()
    return removed
