"""Big-table console lists: no full-table DISTINCT for filters, capped counts, exact search on
indexed columns; and the console benchmark on PostgreSQL."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ingest.models import UsageEvent
from tests.operations.console import JAN, client_for
from webhooks.models import StripeEvent

LISTS = [
    "/admin/ingest/usageevent/",
    "/admin/ingest/ingestrejection/",
    "/admin/webhooks/stripeevent/",
    "/admin/ingest/usageevent/?late__exact=1&source=api",
    "/admin/ingest/ingestrejection/?status__exact=open&customer_ref=acme&error_code=x",
    "/admin/webhooks/stripeevent/?status__exact=dead&type=invoice.paid",
]


@pytest.mark.django_db
@pytest.mark.parametrize("url", LISTS)
def test_big_table_lists_never_scan_for_distinct_values_or_count_every_row(
    catalog: dict[str, Any], console_user: Any, url: str
) -> None:
    client = client_for(console_user, "superuser")
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    for query in queries.captured_queries:
        sql = query["sql"].upper()
        assert "SELECT DISTINCT" not in sql, sql
        if "COUNT(" in sql and ("USAGEEVENT" in sql or "STRIPEEVENT" in sql or "REJECTION" in sql):
            assert "LIMIT" in sql, sql  # capped, never a full COUNT(*)


@pytest.mark.django_db
def test_searching_by_key_is_an_exact_case_sensitive_match(
    catalog: dict[str, Any], console_user: Any
) -> None:
    for key in ("Key-A", "key-a"):
        UsageEvent.objects.create(
            idempotency_key=key,
            customer=catalog["customer"],
            metric=catalog["metrics"]["api_calls"],
            timestamp=JAN,
            payload_hash="x" * 64,
        )
    StripeEvent.objects.create(
        stripe_id="evt_A", type="invoice.paid", created=timezone.now(), raw_body=b"{}", payload={}
    )
    client = client_for(console_user, "Support")
    html = client.get("/admin/ingest/usageevent/?q=Key-A").content.decode()
    assert ">Key-A<" in html and ">key-a<" not in html
    assert "evt_A" in client.get("/admin/webhooks/stripeevent/?q=evt_A").content.decode()
    assert "evt_A" not in client.get("/admin/webhooks/stripeevent/?q=evt_a").content.decode()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_console_benchmark_renders_every_page_and_cleans_up_after_itself() -> None:
    out = StringIO()
    try:
        call_command(
            "benchmark",
            "console",
            "--events=3000",
            "--webhooks=300",
            "--rejections=300",
            "--customers=20",
            "--repeat=1",
            "--target-ms=5000",
            "--search-target-ms=5000",
            stdout=out,
        )
    finally:
        print(out.getvalue())  # the per-page report, shown when the test fails
    text = out.getvalue()
    assert "customer hub page (heavy)" in text and "stripe events" in text
    assert "search: idempotency key prefix" in text and "console home (work queue)" in text
    assert "all pages within target" in text
    assert not UsageEvent.objects.exists() and not StripeEvent.objects.exists()
