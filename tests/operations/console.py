"""Console test helpers: a January invoice for the catalog customer, ingest through the real
service, logged-in clients per role."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.test import Client

from billing import services
from billing.models import Invoice
from ingest.services import events_ingest

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB_BILLED = datetime(2026, 2, 1, 2, tzinfo=UTC)
FEB_LATER = datetime(2026, 2, 3, tzinfo=UTC)


def ingest(*items: dict[str, Any]) -> list[dict[str, Any]]:
    """Items through the real ingest service (no API key: a trusted caller)."""
    return events_ingest(payloads=list(items), api_key=None).results


def call(key: str, *, customer: str = "acme", at: datetime = JAN + timedelta(days=3)) -> dict:
    return {
        "idempotency_key": key,
        "customer": customer,
        "metric": "api_calls",
        "timestamp": at.isoformat(),
        "properties": {},
    }


def bill_january() -> Invoice:
    services.billing_scan(trigger="command", as_of=FEB_BILLED)
    return Invoice.objects.get(period_start=JAN)


def client_for(console_user: Callable[[str], User], role: str) -> Client:
    """A client logged in as the role's user (made on first use)."""
    user = User.objects.filter(username=f"{role.lower()}-user").first() or console_user(role)
    client = Client()
    client.force_login(user)
    return client
