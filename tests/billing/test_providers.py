"""The Stripe provider through the real stripe SDK, with only its HTTP client replaced."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import stripe

from billing import services
from billing.models import Invoice, ProviderSync
from billing.providers import LocalProvider, StripeProvider, provider_get
from tests.billing.helpers import add_events

pytestmark = pytest.mark.django_db


class RecordingHTTPClient(stripe.HTTPClient):
    """Answers like Stripe would and records every request the SDK sends."""

    name = "recording"

    def __init__(self, fail_paths: set[str] | None = None) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.fail_paths = fail_paths or set()
        self._items = 0

    def request(
        self,
        method: str,
        url: str,
        headers: Any,
        post_data: Any = None,
        *,
        _usage: Any = None,
    ) -> tuple[str, int, dict[str, str]]:
        path = urlsplit(url).path
        params = dict(parse_qsl(post_data or "", keep_blank_values=True))
        self.requests.append(
            {
                "method": method,
                "path": path,
                "params": params,
                "idempotency_key": dict(headers).get("Idempotency-Key"),
            }
        )
        if path in self.fail_paths:
            body = {"error": {"type": "api_error", "message": "boom"}}
            return json.dumps(body), 500, {}
        if path == "/v1/customers":
            body = {"id": "cus_test1", "object": "customer"}
        elif path == "/v1/invoices":
            body = {"id": "in_test1", "object": "invoice", "status": "draft"}
        elif path == "/v1/invoiceitems":
            self._items += 1
            body = {"id": f"ii_{self._items}", "object": "invoiceitem"}
        elif path.endswith("/finalize"):
            body = {"id": "in_test1", "object": "invoice", "status": "open"}
        elif path.endswith("/void"):
            body = {"id": "in_test1", "object": "invoice", "status": "void"}
        else:
            body = {"id": "in_test1", "object": "invoice", "status": "paid"}
        return json.dumps(body), 200, {}

    def close(self) -> None:
        return None


def _stripe(http: RecordingHTTPClient) -> StripeProvider:
    return StripeProvider(
        stripe.StripeClient("sk_test_123", http_client=http, max_network_retries=0)
    )


@pytest.fixture
def invoice(catalog: dict[str, Any]) -> Invoice:
    from billing.ledger import credit_grant

    credit_grant(
        customer=catalog["customer"], amount=100, reason_code="goodwill", actor=None, reason="x"
    )
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[datetime(2026, 1, 2, tzinfo=UTC)] * 20,
    )
    services.billing_scan(trigger="command", as_of=datetime(2026, 2, 1, 2, tzinfo=UTC))
    return Invoice.objects.get()


def test_the_stripe_provider_pushes_customer_invoice_and_items_with_idempotency_keys(
    invoice: Invoice,
) -> None:
    http = RecordingHTTPClient()
    sync = ProviderSync.objects.get(invoice=invoice, action="push")
    assert services.provider_sync_send(sync=sync, provider=_stripe(http))
    number = invoice.number
    paths = [(r["method"], r["path"]) for r in http.requests]
    assert paths == [
        ("post", "/v1/customers"),
        ("post", "/v1/invoices"),
        ("post", "/v1/invoiceitems"),
        ("post", "/v1/invoiceitems"),
        ("post", "/v1/invoiceitems"),
        ("post", "/v1/invoices/in_test1/finalize"),
    ]
    customer, created, base, calls, credits, finalize = http.requests
    assert customer["idempotency_key"] == "customer:acme"
    assert created["idempotency_key"] == f"{number}:invoice"
    assert created["params"]["customer"] == "cus_test1"
    assert created["params"]["currency"] == "usd"
    assert created["params"]["metadata[neruba_invoice_number]"] == number
    lines = {line.description: line for line in invoice.lines.all()}
    assert base["idempotency_key"] == f"{number}:item:{lines['Pro base fee'].pk}"
    assert (base["params"]["amount"], base["params"]["invoice"]) == ("1000", "in_test1")
    assert calls["params"]["amount"] == "10"
    assert (credits["idempotency_key"], credits["params"]["amount"]) == (
        f"{number}:credits",
        "-100",
    )
    assert finalize["idempotency_key"] == f"{number}:finalize"
    invoice.refresh_from_db()
    assert (invoice.provider, invoice.provider_invoice_id) == ("stripe", "in_test1")
    assert invoice.customer.stripe_customer_id == "cus_test1"
    sync.refresh_from_db()
    assert sync.status == "sent" and sync.attempts == 1
    # Sent once: a second send makes no request.
    assert services.provider_sync_send(sync=sync, provider=_stripe(http))
    assert len(http.requests) == 6


def test_a_failed_push_is_recorded_with_backoff_and_retried_with_the_same_keys(
    invoice: Invoice,
) -> None:
    sync = ProviderSync.objects.get(invoice=invoice, action="push")
    failing = RecordingHTTPClient(fail_paths={"/v1/invoices/in_test1/finalize"})
    with pytest.raises(stripe.APIError):
        services.provider_sync_send(sync=sync, provider=_stripe(failing))
    sync.refresh_from_db()
    assert (sync.status, sync.attempts) == ("pending", 1)
    assert "boom" in sync.last_error and sync.next_attempt_at > sync.created_at
    retry = RecordingHTTPClient()
    services.provider_sync_send(sync=sync, provider=_stripe(retry))
    # The customer id was stored by the first attempt; the rest repeat their idempotency keys.
    assert [r["idempotency_key"] for r in retry.requests] == [
        r["idempotency_key"] for r in failing.requests[1:]
    ]


def test_fetch_invoice_status_reads_the_stripe_invoice(invoice: Invoice) -> None:
    http = RecordingHTTPClient()
    Invoice.objects.filter(pk=invoice.pk).update(provider_invoice_id="in_test1")
    invoice.refresh_from_db()
    assert _stripe(http).fetch_invoice_status(invoice) == "paid"
    assert http.requests[-1]["path"] == "/v1/invoices/in_test1"


def test_without_stripe_keys_the_local_provider_keeps_invoices_open(
    invoice: Invoice, settings: Any
) -> None:
    assert isinstance(provider_get(), LocalProvider)
    sync = ProviderSync.objects.get(invoice=invoice, action="push")
    assert services.provider_sync_send(sync=sync)
    invoice.refresh_from_db()
    assert invoice.status == "finalized" and invoice.provider == "local"
    paid = services.invoice_mark_paid(invoice=invoice, actor=None, reason="bank transfer")
    assert paid.status == "paid" and paid.paid_at is not None


def test_the_outbox_row_commits_with_the_invoice_and_is_sent_after_commit(
    catalog: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.billing_scan(trigger="command", as_of=datetime(2026, 2, 1, 2, tzinfo=UTC))
    assert callbacks, "the send is queued on commit"
    sync = ProviderSync.objects.get()
    assert sync.status == "sent" and sync.sent_at is not None
    assert sync.invoice.provider_synced_at is not None
    assert sync.next_attempt_at <= sync.invoice.issued_at + timedelta(seconds=1)
