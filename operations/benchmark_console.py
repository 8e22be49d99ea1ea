"""``manage.py benchmark console``: server-side render time of the console's big-table pages
(usage events, ingest rejections, Stripe events, a customer's hub page and its usage-so-far
panel) over millions of rows on
PostgreSQL, through Django's test client as a superuser.

Steps: (1) the data, set-based (``INSERT … SELECT generate_series``): customers on a priced
plan, ``--events`` usage events, ``--rejections`` ingest rejections and ``--webhooks`` Stripe
events, a tenth of each on one "heavy" customer so its hub page has long lists behind it; rows
already there from a ``--keep`` run are reused; (2) ANALYZE; (3) each page rendered once to
warm up, then ``--repeat`` times: median and worst, queries per page, pass/fail against
``--target-ms``; (4) everything the run created is deleted unless ``--keep``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings

from billing.models import Plan, Price, Subscription
from ingest.models import IngestRejection, Metric, UsageEvent
from neruba.models import Customer
from webhooks.models import StripeEvent

PREFIX = "bench-console"
ADMIN = "bench-console-admin"


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--events", type=int, default=2_000_000, help="Usage events.")
    parser.add_argument("--webhooks", type=int, default=200_000, help="Stripe events.")
    parser.add_argument("--rejections", type=int, default=200_000, help="Ingest rejections.")
    parser.add_argument("--customers", type=int, default=1000, help="Customers.")
    parser.add_argument("--repeat", type=int, default=7, help="Timed renders per page.")
    parser.add_argument("--target-ms", type=float, default=500.0, help="Median budget per page.")
    parser.add_argument(
        "--search-target-ms",
        type=float,
        default=300.0,
        help="Median budget of the header's global search.",
    )
    parser.add_argument(
        "--keep", action="store_true", help="Keep the data for the next run (reused then)."
    )


# --- (1) data ----------------------------------------------------------------------------------


def _insert(table: str, columns: dict[str, str]) -> str:
    """``INSERT INTO table (…) SELECT <expr per column> FROM generate_series(0, count-1) g``;
    the expressions may use ``g``, ``%(c0)s`` (first customer id), ``%(nc)s`` (customers),
    ``%(metric)s`` and ``%(prefix)s``."""
    names = ", ".join(f'"{c}"' for c in columns)
    exprs = ", ".join(columns.values())
    return f"INSERT INTO {table} ({names}) SELECT {exprs} FROM generate_series(0, %(n)s - 1) g"  # noqa: S608 - our own identifiers


def _customer_of(g: str = "g") -> str:
    # Every tenth row belongs to the heavy customer (the first one); the rest spread evenly.
    return f"CASE WHEN {g} %% 10 = 0 THEN %(c0)s ELSE %(c0)s + ({g} %% %(nc)s) END"


def _check_columns(model: Any, columns: dict[str, str]) -> None:
    wanted = {f.column for f in model._meta.concrete_fields if not f.primary_key}
    missing = wanted - set(columns)
    if missing:  # a new column: the benchmark must say what it holds
        raise RuntimeError(f"{model._meta.label}: no benchmark value for {sorted(missing)}")


EVENT_COLUMNS = {
    "idempotency_key": "%(prefix)s || '-e-' || g",
    "customer_id": _customer_of(),
    "metric_id": "%(metric)s",
    "timestamp": "now() - (g %% 2592000) * interval '1 second'",
    "value": "1",
    "distinct_value": "''",
    "properties": "'{}'::jsonb",
    "payload_hash": "md5(g::text) || md5(g::text)",
    "received_at": "now() - (g %% 2592000) * interval '1 second'",
    "batch_id": "NULL",
    "source": "'api'",
    "late": "g %% 997 = 0",
    "rejection_id": "NULL",
    # A few voided events (corrections); amendments are rows of their own, none here.
    "voided_at": "CASE WHEN g %% 1009 = 0 THEN now() END",
    "amends_id": "NULL",
}

REJECTION_COLUMNS = {
    "batch_id": "NULL",
    "created_at": "now() - (g %% 2592000) * interval '1 second'",
    "outcome": "CASE WHEN g %% 5 = 0 THEN 'conflict' ELSE 'failed' END",
    "status": "CASE WHEN g %% 3 = 0 THEN 'replayed' ELSE 'open' END",
    "idempotency_key": "%(prefix)s || '-r-' || g",
    "customer_ref": "%(prefix)s || '-' || lpad((CASE WHEN g %% 10 = 0 THEN 0 "
    "ELSE g %% %(nc)s END)::text, 5, '0')",
    "metric_ref": "'bench_console_calls'",
    "api_key_prefix": "'bc' || (g %% 7)",
    "error_code": "(ARRAY['unknown_customer','unknown_metric','invalid_value',"
    "'timestamp_too_old'])[1 + g %% 4]",
    "error_message": "'benchmark rejection ' || g",
    "surface": "'api'",
    "raw_payload": "jsonb_build_object('idempotency_key', %(prefix)s || '-r-' || g)",
    "original_event_id": "NULL",
    "differing_fields": "'[]'::jsonb",
    "replay_attempts": "0",
    "last_replayed_at": "NULL",
}

WEBHOOK_COLUMNS = {
    "stripe_id": "'evt_' || %(prefix)s || '-' || g",
    "type": "(ARRAY['invoice.paid','invoice.payment_failed','charge.refunded',"
    "'customer.updated'])[1 + g %% 4]",
    "api_version": "'2024-06-20'",
    "livemode": "false",
    "created": "now() - (g %% 2592000) * interval '1 second'",
    "raw_body": "convert_to(repeat('{\"bench\": true} ', 60), 'UTF8')",
    "payload": "jsonb_build_object('id', 'evt_' || g, 'data', jsonb_build_object('object', "
    "jsonb_build_object('id', 'in_' || g, 'lines', repeat('x', 1500))))",
    "headers": "'{}'::jsonb",
    "secret_hint": "'0:…abcd'",
    "object_id": "'in_' || g",
    "customer_id": _customer_of(),
    "invoice_id": "NULL",
    "received_at": "now() - (g %% 2592000) * interval '1 second'",
    "status": "(ARRAY['processed','processed','processed','processed','processed','processed',"
    "'ignored','failed','dead','processed'])[1 + g %% 10]",
    "attempts": "1",
    "last_error": "CASE WHEN g %% 10 IN (7, 8) THEN 'benchmark failure' ELSE '' END",
    "next_attempt_at": "NULL",
    "processed_at": "now() - (g %% 2592000) * interval '1 second'",
}


def _seed(out: Any, options: dict[str, Any]) -> Customer:
    n_customers = options["customers"]
    heavy = Customer.objects.filter(external_id=f"{PREFIX}-00000").first()
    if heavy is not None:
        out.write("1. data: reusing the rows of an earlier --keep run")
        return heavy
    started = time.perf_counter()
    metric, _ = Metric.objects.get_or_create(
        code="bench_console_calls", defaults={"name": "Bench calls", "aggregation": "count"}
    )
    plan, _ = Plan.objects.get_or_create(
        code=PREFIX, defaults={"name": "Bench", "currency": "USD", "base_amount": 1000}
    )
    Price.objects.get_or_create(plan=plan, metric=metric, defaults={"unit_amount": "0.5"})
    with connection.cursor() as cursor, transaction.atomic():
        cursor.execute(
            "INSERT INTO neruba_customer (external_id, name, email, currency, "
            "stripe_customer_id, created_at) SELECT %(prefix)s || '-' || lpad(g::text, 5, '0'), "
            "'Bench ' || g, '', 'USD', '', now() FROM generate_series(0, %(n)s - 1) g",
            {"prefix": PREFIX, "n": n_customers},
        )
        first = Customer.objects.filter(external_id__startswith=f"{PREFIX}-").order_by("pk")
        c0 = first.values_list("pk", flat=True)[0]
        cursor.execute(
            "INSERT INTO billing_subscription (customer_id, plan_id, started_at, ended_at, "
            "created_at) SELECT id, %(plan)s, date_trunc('month', now()) - interval '2 months', "
            "NULL, now() FROM neruba_customer WHERE external_id LIKE %(like)s",
            {"plan": plan.pk, "like": f"{PREFIX}-%"},
        )
        params = {"prefix": PREFIX, "c0": c0, "nc": n_customers, "metric": metric.pk}
        for model, columns, count in (
            (UsageEvent, EVENT_COLUMNS, options["events"]),
            (IngestRejection, REJECTION_COLUMNS, options["rejections"]),
            (StripeEvent, WEBHOOK_COLUMNS, options["webhooks"]),
        ):
            _check_columns(model, columns)
            step = time.perf_counter()
            cursor.execute(_insert(model._meta.db_table, columns), {**params, "n": count})
            out.write(
                f"1. {model._meta.db_table}: {count:,} rows in {time.perf_counter() - step:.1f} s"
            )
        # Ingest registers every stored key (the lookup by key reads the registry first).
        cursor.execute(
            "INSERT INTO ingest_eventkey (idempotency_key, event_id, timestamp, payload_hash) "
            "SELECT idempotency_key, id, timestamp, payload_hash FROM ingest_usageevent "
            "WHERE idempotency_key LIKE %s",
            [f"{PREFIX}-%"],
        )
    with connection.cursor() as cursor:
        for model in (Customer, UsageEvent, IngestRejection, StripeEvent, Subscription):
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")
    out.write(f"1-2. data and VACUUM ANALYZE in {time.perf_counter() - started:.1f} s")
    return Customer.objects.get(pk=c0)


def _cleanup(out: Any) -> None:
    started = time.perf_counter()
    like = f"{PREFIX}-%"
    with connection.cursor() as cursor, transaction.atomic():
        cursor.execute("DELETE FROM ingest_usageevent WHERE idempotency_key LIKE %s", [like])
        cursor.execute("DELETE FROM ingest_eventkey WHERE idempotency_key LIKE %s", [like])
        cursor.execute("DELETE FROM ingest_ingestrejection WHERE idempotency_key LIKE %s", [like])
        cursor.execute("DELETE FROM webhooks_stripeevent WHERE stripe_id LIKE %s", [f"evt_{like}"])
        cursor.execute(
            "DELETE FROM billing_subscription WHERE customer_id IN "
            "(SELECT id FROM neruba_customer WHERE external_id LIKE %s)",
            [like],
        )
        cursor.execute("DELETE FROM neruba_customer WHERE external_id LIKE %s", [like])
    Price.objects.filter(plan__code=PREFIX).delete()
    Plan.objects.filter(code=PREFIX).delete()
    Metric.objects.filter(code="bench_console_calls").delete()
    User.objects.filter(username=ADMIN).delete()
    out.write(f"4. benchmark rows deleted in {time.perf_counter() - started:.1f} s")


# --- (3) timing --------------------------------------------------------------------------------


def _pages(heavy: Customer, events: int) -> list[tuple[str, str]]:
    deep = max(2, min(50, events // 200))  # a page well inside the list, as far as 50
    return [
        ("usage events", "/admin/ingest/usageevent/"),
        ("usage events, late only", "/admin/ingest/usageevent/?late__exact=1"),
        (f"usage events, page {deep}", f"/admin/ingest/usageevent/?p={deep}"),
        ("usage event by key", f"/admin/ingest/usageevent/?q={PREFIX}-e-123457"),
        ("ingest rejections", "/admin/ingest/ingestrejection/"),
        ("ingest rejections, open", "/admin/ingest/ingestrejection/?status__exact=open"),
        ("stripe events", "/admin/webhooks/stripeevent/"),
        ("stripe events, dead", "/admin/webhooks/stripeevent/?status__exact=dead"),
        ("customer hub page (heavy)", f"/admin/neruba/customer/{heavy.pk}/change/"),
        ("customer usage panel (heavy)", f"/console/customers/{heavy.pk}/usage/"),
        ("customers", "/admin/neruba/customer/"),
        ("console home (work queue)", "/admin/"),
    ]


# The header's global search: each kind of identifier people paste, against the same data.
def _searches(heavy: Customer) -> list[tuple[str, str]]:
    return [
        ("search: idempotency key prefix", f"/console/search/?q={PREFIX}-e-12345&list=1"),
        ("search: exact idempotency key", f"/console/search/?q={PREFIX}-e-123457&list=1"),
        ("search: customer external id", f"/console/search/?q={heavy.external_id}&list=1"),
        ("search: customer name", "/console/search/?q=Bench%20999&list=1"),
        ("search: invoice digits", "/console/search/?q=000096&list=1"),
        ("search: stripe event id", f"/console/search/?q=evt_{PREFIX}-4242&list=1"),
        ("search: stripe object id", "/console/search/?q=in_4242&list=1"),
        ("search: nothing matches", "/console/search/?q=zz-no-such-thing&list=1"),
    ]


def run(command: BaseCommand, **options: Any) -> bool:
    out = command.stdout
    if connection.vendor != "postgresql":
        out.write("benchmark console needs PostgreSQL: set DATABASE_URL=postgres://…")
        return False
    heavy = _seed(out, options)
    admin = User.objects.filter(username=ADMIN).first() or User.objects.create_superuser(
        ADMIN, f"{ADMIN}@example.invalid", None
    )
    client = Client(HTTP_HOST=settings.ALLOWED_HOSTS[0] if settings.ALLOWED_HOSTS else "localhost")
    # force_login has no client address; the login-attempt tracker must not record it.
    with override_settings(AXES_ENABLED=False):
        client.force_login(admin)
    secure = bool(settings.SECURE_SSL_REDIRECT)
    target = options["target_ms"]
    ok = True
    out.write(f"3. server-side render, median of {options['repeat']} (target {target:.0f} ms):")
    try:
        pages = [(label, url, target) for label, url in _pages(heavy, options["events"])]
        search_budget = options["search_target_ms"]
        pages += [(label, url, search_budget) for label, url in _searches(heavy)]
        for label, url, budget in pages:
            response = client.get(url, secure=secure)  # warm-up
            if response.status_code != 200:
                out.write(f"   {label}: HTTP {response.status_code} FAIL")
                ok = False
                continue
            times = []
            for _ in range(options["repeat"]):
                with CaptureQueriesContext(connection) as queries:
                    started = time.perf_counter()
                    client.get(url, secure=secure)
                    times.append((time.perf_counter() - started) * 1000)
            median = statistics.median(times)
            passed = median < budget
            ok = ok and passed
            slowest = max(queries.captured_queries, key=lambda q: float(q["time"]))
            out.write(
                f"   {label:<32} {median:7.1f} ms (worst {max(times):7.1f})  "
                f"{len(queries.captured_queries):3d} queries, slowest "
                f"{float(slowest['time']) * 1000:6.1f} ms  {'pass' if passed else 'FAIL'}"
                f" (< {budget:.0f})"
            )
    finally:
        if not options["keep"]:
            _cleanup(out)
    out.write(f"console benchmark: {'all pages within target' if ok else 'a page missed'}")
    return ok
