"""``manage.py benchmark outbound``: outbound webhook deliveries per second through the real
worker to a loopback receiver, and what the outbox adds to a billing pass.

1. Deliveries: a loopback HTTP receiver (keep-alive, answers 200) and an endpoint subscribed to
   ``neruba.smoke``; a real Celery worker (``--concurrency`` processes, on its own queue of the
   configured broker); ``--messages`` messages published in one transaction. The clock runs
   from that commit to the last delivery the receiver gets: fan-out, claims, signing, HTTP and
   the attempt rows are all inside it. Target: ``TARGET_DELIVERIES_PER_SECOND``.
2. Billing pass: the billing benchmark's generated subscriptions and events, billed with no
   endpoint subscribed to ``invoice.finalized`` (nothing recorded) and with one (the batch's
   outbox row, written in each billing batch's transaction), alternately ``--rounds`` times,
   the written rows undone and the server settled between passes. Target: the fastest pass
   with an endpoint <= ``TARGET_BILLING_RATIO`` x the fastest without. The expansion of those
   rows into one rendered message per invoice happens after commit on the worker, off the
   billing path; it is timed separately and reported beside the ratio.

PostgreSQL and Redis (``REDIS_URL``) are needed; use a database of its own. Everything the run
creates is removed afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.db.models import Count

from billing import benchmark as billing_bench
from billing import messages as billing_messages
from billing import services
from billing.models import (
    BillingRun,
    BillingWindow,
    Invoice,
    InvoiceLine,
    Plan,
    ProviderSync,
    Subscription,
)
from ingest.models import InvoicedWatermark, UsageEvent
from neruba import outbox
from neruba.benchmarking import server_settle
from neruba.models import Customer, OutboxBatch, OutboxMessage
from webhooks import outbound
from webhooks.models import DeliveryAttempt, OutboundDelivery, WebhookEndpoint

TARGET_DELIVERIES_PER_SECOND = 500
TARGET_BILLING_RATIO = 1.05
BENCH_DESCRIPTION = "benchmark outbound (temporary)"


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--messages", type=int, default=5000, help="Messages to deliver.")
    parser.add_argument("--concurrency", type=int, default=2, help="Worker processes.")
    parser.add_argument("--subscriptions", type=int, default=5000)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=5, help="Billing passes of each kind.")
    parser.add_argument("--skip-billing", action="store_true", help="Only measure deliveries.")
    parser.add_argument("--skip-deliveries", action="store_true", help="Only the billing pass.")


class _Receiver:
    """Counts POSTs and answers 200 on HTTP/1.1 keep-alive, in threads of this process."""

    def __init__(self) -> None:
        self.count = 0
        self.ids: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Answer without waiting for delayed ACKs (headers and body are two writes).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.count += 1
                    receiver.ids.add(self.headers.get("webhook-id", ""))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/bench"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _worker(queue: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NERUBA_BENCH_OUTBOUND_QUEUE": queue}
    celery = Path(sys.executable).with_name("celery")
    return subprocess.Popen(  # noqa: S603 - our own executable and fixed arguments
        [
            str(celery),
            "-A",
            "webhooks.bench_worker",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--queues",
            queue,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ],
        cwd=settings.BASE_DIR,
        env=env,
    )


def _purge(queue: str) -> None:
    from neruba.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def _bench_endpoints_remove() -> None:
    endpoints = WebhookEndpoint.objects.filter(description=BENCH_DESCRIPTION)
    with transaction.atomic():
        deliveries = OutboundDelivery.objects.filter(endpoint__in=endpoints)
        messages = list(deliveries.values_list("message_id", flat=True).distinct())
        DeliveryAttempt.objects.filter(delivery__in=deliveries).delete()
        deliveries.delete()
        OutboxMessage.objects.filter(pk__in=messages).delete()
        endpoints.delete()


def _endpoint(url: str, types: list[str]) -> WebhookEndpoint:
    endpoint, _ = outbound.endpoint_create(
        url=url, event_types=types, description=BENCH_DESCRIPTION, actor=None
    )
    return endpoint


def _deliveries(command: BaseCommand, *, messages: int, concurrency: int) -> bool:
    out = command.stdout
    from neruba.celery import app

    queue = f"bench-outbound-{uuid.uuid4().hex[:8]}"
    app.conf.task_routes = {"webhooks.outbound_*": {"queue": queue}}
    receiver = _Receiver()
    worker = _worker(queue, concurrency)
    try:
        _endpoint(receiver.url, [outbound.SMOKE_TYPE])
        # Warm-up: the worker's processes start, connect and deliver a first message.
        with transaction.atomic():
            outbox.publish(type=outbound.SMOKE_TYPE, data={"warmup": True})
        deadline = time.monotonic() + 120
        while receiver.count < 1:
            if time.monotonic() > deadline or worker.poll() is not None:
                command.stderr.write("the worker did not deliver the warm-up message")
                return False
            time.sleep(0.05)
        base = receiver.count
        with transaction.atomic():
            for n in range(messages):
                outbox.publish(type=outbound.SMOKE_TYPE, data={"n": n})
            started = [0.0]
            transaction.on_commit(lambda: started.__setitem__(0, time.perf_counter()))
        deadline = time.monotonic() + max(120, messages / 50)
        delivered = OutboundDelivery.objects.filter(
            endpoint__description=BENCH_DESCRIPTION, status="delivered"
        )
        # Done when every attempt is recorded, not merely when the receiver has the requests.
        while receiver.count - base < messages or delivered.count() < messages + 1:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - started[0]
        got = receiver.count - base
        rate = got / elapsed if elapsed else 0.0
        statuses = dict(
            OutboundDelivery.objects.filter(endpoint__description=BENCH_DESCRIPTION)
            .values_list("status")
            .annotate(n=Count("id"))
        )
        ok = got == messages and rate >= TARGET_DELIVERIES_PER_SECOND
        out.write(
            f"deliveries: {got:,} of {messages:,} in {elapsed:.2f}s = {rate:,.0f}/s through "
            f"{concurrency} worker process(es), commit to last delivery (fan-out, claim, sign, "
            f"POST, attempt rows); distinct webhook-ids {len(receiver.ids) - 1:,}; "
            f"delivery states {statuses}; target >= {TARGET_DELIVERIES_PER_SECOND}/s: "
            f"{'ok' if ok else 'MISSED'}"
        )
        return ok
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        receiver.stop()
        _purge(queue)
        _bench_endpoints_remove()


def _undo_pass() -> None:
    """Removes what a billing pass wrote for the bench plan, so the next pass bills the same
    windows again from the same state."""
    plan = Plan.objects.get(code=f"{billing_bench.PREFIX}plan")
    invoices = Invoice.objects.filter(subscription__plan=plan)
    with transaction.atomic():
        ProviderSync.objects.filter(invoice__in=invoices).delete()
        InvoiceLine.objects.filter(invoice__in=invoices)._raw_delete(InvoiceLine.objects.db)
        invoices.update(supersedes=None)
        invoices._raw_delete(Invoice.objects.db)
        BillingWindow.objects.filter(subscription__plan=plan)._raw_delete(BillingWindow.objects.db)
        InvoicedWatermark.objects.filter(
            customer__external_id__startswith=billing_bench.PREFIX
        ).delete()
        # The bench's own rows: no worker consumes this phase's queue, and the messages the
        # timed expansion created are never fanned out.
        OutboxBatch.objects.filter(type="invoice.finalized").delete()
        OutboxMessage.objects.filter(
            type="invoice.finalized", fanned_out_at__isnull=True
        )._raw_delete(OutboxMessage.objects.db)
        BillingRun.objects.filter(holder__startswith=billing_bench.PREFIX).delete()
    server_settle(
        Invoice._meta.db_table,
        InvoiceLine._meta.db_table,
        BillingWindow._meta.db_table,
        ProviderSync._meta.db_table,
        OutboxBatch._meta.db_table,
        InvoicedWatermark._meta.db_table,
    )


def _billing(command: BaseCommand, *, subscriptions: int, events: int, rounds: int) -> bool:
    out = command.stdout
    from neruba.celery import app

    queue = f"bench-outbound-{uuid.uuid4().hex[:8]}"
    # The passes' after-commit fan-out kicks go to a queue nobody consumes, purged at the end.
    app.conf.task_routes = {"webhooks.outbound_*": {"queue": queue}}
    receiver = _Receiver()
    outbox_publish_many, outbox_after_commit = outbox.publish_many, outbox._after_commit
    billing_bench._cleanup()
    try:
        out.write(f"  generating {subscriptions:,} subscriptions and {events:,} events ...")
        billing_bench._generate(subscriptions=subscriptions, events=events, tag="outbound")
        server_settle(
            UsageEvent._meta.db_table, Customer._meta.db_table, Subscription._meta.db_table
        )
        as_of = billing_bench.PERIOD_END + timedelta(
            seconds=settings.NERUBA["NERUBA_BILLING_GRACE"] + 1
        )
        times: dict[str, list[float]] = {"without": [], "with": []}
        rows: dict[str, int] = {}
        expand_times: list[tuple[float, int]] = []
        # The outbox's own calls inside a pass, timed directly (robust to a noisy machine): the
        # publish in each batch's transaction, and the after-commit kick to the broker.
        spent = [0.0]

        def timed(func: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                clock = time.perf_counter()
                try:
                    return func(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - clock

            return wrapper

        billing_messages.outbox.publish_many = timed(outbox.publish_many)  # type: ignore[attr-defined]
        outbox._after_commit = timed(outbox._after_commit)
        inside: list[float] = []
        for round_ in range(rounds + 1):  # round 0 warms both paths up and is not counted
            for kind in ("without", "with"):
                if kind == "with":
                    endpoint = _endpoint(receiver.url, ["invoice.finalized"])
                # In this process (the billing benchmark forks to measure memory; a fresh fork
                # also pays its first broker connection, which is not the outbox's cost).
                spent[0] = 0.0
                clock = time.perf_counter()
                run = services.billing_scan(trigger="command", as_of=as_of, batch_size=1000)
                seconds = time.perf_counter() - clock
                if kind == "with" and round_:
                    inside.append(spent[0] / seconds)
                BillingRun.objects.filter(pk=run.pk).update(holder=billing_bench.PREFIX)
                outcome = {"invoiced": run.invoiced, "failed": run.failed, "status": run.status}
                rows[kind] = sum(
                    len(json.loads(refs))
                    for refs in OutboxBatch.objects.filter(type="invoice.finalized").values_list(
                        "refs", flat=True
                    )
                )
                if outcome["invoiced"] != subscriptions or outcome["failed"]:
                    command.stderr.write(f"billing pass {kind}: {outcome}")
                    return False
                if round_:
                    times[kind].append(seconds)
                out.write(
                    f"  {'warm-up ' if not round_ else ''}billing pass {kind} a subscribed "
                    f"endpoint: {seconds:.2f}s for "
                    f"{outcome['invoiced']:,} invoices, {rows[kind]:,} invoice.finalized recorded"
                )
                if kind == "with":
                    WebhookEndpoint.objects.filter(pk=endpoint.pk).delete()
                    clock = time.perf_counter()
                    expanded = outbox.batches_expand(limit=1000)
                    expand_times.append((time.perf_counter() - clock, expanded))
                _undo_pass()
        best = {kind: min(values) for kind, values in times.items()}
        ratio = best["with"] / best["without"]
        median = (
            sorted(times["with"])[len(times["with"]) // 2]
            / sorted(times["without"])[len(times["without"]) // 2]
        )
        ok = (
            ratio <= TARGET_BILLING_RATIO and rows["without"] == 0 and rows["with"] == subscriptions
        )
        out.write(
            f"billing pass with one subscribed endpoint / without: {ratio:.3f}x (fastest of "
            f"{rounds} each; medians {median:.3f}x); target <= {TARGET_BILLING_RATIO}x: "
            f"{'ok' if ok else 'MISSED'}"
        )
        out.write(
            f"time inside the passes spent in the outbox's own calls (publish, after-commit "
            f"kick): {min(inside):.2%} to {max(inside):.2%} of each pass with an endpoint"
        )
        seconds, expanded = min(expand_times)
        out.write(
            f"expansion after commit, on the worker (render each invoice's API shape, insert "
            f"its message): {seconds:.2f}s for {expanded:,} messages "
            f"({seconds / max(expanded, 1) * 1e6:.0f} us each, {seconds / best['without']:.0%} "
            f"of a pass, not inside it)"
        )
        return ok
    finally:
        billing_messages.outbox.publish_many = outbox_publish_many  # type: ignore[attr-defined]
        outbox._after_commit = outbox_after_commit
        receiver.stop()
        _purge(queue)
        _bench_endpoints_remove()
        billing_bench._cleanup()


def run(command: BaseCommand, **options: Any) -> bool:
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        command.stderr.write(
            "benchmark outbound needs PostgreSQL (DATABASE_URL) and Redis (REDIS_URL): it runs a "
            "real worker on the broker."
        )
        return False
    settings.DEBUG = False
    ok = True
    if not options["skip_deliveries"]:
        ok = (
            _deliveries(command, messages=options["messages"], concurrency=options["concurrency"])
            and ok
        )
    if not options["skip_billing"]:
        ok = (
            _billing(
                command,
                subscriptions=options["subscriptions"],
                events=options["events"],
                rounds=options["rounds"],
            )
            and ok
        )
    return ok
