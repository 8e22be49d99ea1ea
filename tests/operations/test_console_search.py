"""The header's global search and the lists' prefix search: customers, invoices by number or
digits, idempotency keys by prefix, Stripe ids; each group only for roles that may see it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from tests.operations.console import FEB_LATER, JAN, bill_january, call, client_for, ingest
from webhooks.models import StripeEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def records(catalog: dict[str, Any]) -> dict[str, Any]:
    with time_machine.travel(JAN + timedelta(days=4), tick=False):
        ingest(call("evt-0001"), call("evt-0002"), call("other-1"))
        ingest(call("evt-9999", customer="nobody"))
    with time_machine.travel(FEB_LATER, tick=False):
        invoice = bill_january()
    StripeEvent.objects.create(
        stripe_id="evt_search_1",
        type="invoice.paid",
        created=timezone.now(),
        raw_body=b"{}",
        payload={},
        object_id="in_search_1",
        status="processed",
    )
    return {"invoice": invoice, "customer": catalog["customer"]}


def _search(client: Any, q: str) -> str:
    response = client.get("/console/search/", {"q": q, "list": "1"})
    assert response.status_code == 200
    return response.content.decode()


def test_search_finds_keys_by_prefix_stored_and_rejected(
    records: dict[str, Any], console_user: Any
) -> None:
    html = _search(client_for(console_user, "Support"), "evt-")
    assert "evt-0001" in html and "evt-0002" in html and "evt-9999" in html
    assert "other-1" not in html
    assert "Why wasn&#x27;t evt-0001 billed?" in html or "Why wasn't evt-0001 billed?" in html


def test_search_finds_invoices_by_digits_and_customers_by_name_or_external_id(
    records: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Finance")
    number = records["invoice"].number
    digits = number.rsplit("-", 1)[1]
    assert number in _search(client, digits)
    assert number in _search(client, str(int(digits)))
    assert number in _search(client, number[:8])
    assert "acme" in _search(client, "Acm")  # name, anywhere
    # One match opens its page at once.
    response = client.get("/console/search/", {"q": number})
    assert response.status_code == 302
    assert response["Location"] == f"/admin/billing/invoice/{records['invoice'].pk}/change/"


def test_search_finds_stripe_events_by_event_and_object_id(
    records: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Operations")
    assert "evt_search_1" in _search(client, "evt_search_1")
    assert "evt_search_1" in _search(client, "in_search_1")


def test_search_shows_only_what_the_role_may_see(
    records: dict[str, Any], console_user: Any
) -> None:

    bare = User.objects.create_user("bare", password="x-Password-1", is_staff=True)

    client = Client()
    client.force_login(bare)
    html = _search(client, "evt-")
    assert "evt-0001" not in html and 'id="search-empty"' in html


def test_the_lists_match_keys_by_prefix_and_invoices_by_digits(
    records: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Support")
    events = client.get("/admin/ingest/usageevent/", {"q": "evt-000"}).content.decode()
    assert ">evt-0001<" in events and ">evt-0002<" in events and ">other-1<" not in events
    by_customer = client.get("/admin/ingest/usageevent/", {"customer": "acme"}).content.decode()
    assert ">other-1<" in by_customer
    digits = records["invoice"].number.rsplit("-", 1)[1]
    invoices = client.get("/admin/billing/invoice/", {"q": digits}).content.decode()
    assert records["invoice"].number in invoices
