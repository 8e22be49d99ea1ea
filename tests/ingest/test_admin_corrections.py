"""Corrections in the console: Support voids and amends events and voids a customer's usage in
a range (dry-run count first); Finance and Operations cannot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.test import Client

from ingest.models import EventCorrection, UsageEvent
from ingest.services import events_ingest
from neruba.models import AuditEntry

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
EVENTS = "/admin/ingest/usageevent/"


@pytest.fixture
def events(catalog: dict[str, Any]) -> list[UsageEvent]:
    with time_machine.travel(NOW, tick=False):
        events_ingest(
            payloads=[
                {
                    "idempotency_key": f"c-{i}",
                    "customer": "acme",
                    "metric": "compute_seconds",
                    "timestamp": (NOW - timedelta(hours=i + 1)).isoformat(),
                    "properties": {"seconds": 10},
                }
                for i in range(6)
            ],
            api_key=None,
        )
    return list(UsageEvent.objects.order_by("idempotency_key"))


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_support_voids_selected_events_after_a_preview_with_a_reason(
    events: list[UsageEvent], console_user: Any
) -> None:
    client = logged_in(console_user("Support"))
    chosen = [events[0].pk, events[1].pk]
    preview = client.post(EVENTS, {"action": "void_events", "_selected_action": chosen})
    assert preview.status_code == 200 and b"stops counting" in preview.content
    assert not EventCorrection.objects.exists()

    done = client.post(
        EVENTS,
        {
            "action": "void_events",
            "_selected_action": chosen,
            "confirm": "yes",
            "reason": "sent twice by the client",
        },
        follow=True,
    )
    assert b"Void events: 2 done" in done.content
    assert UsageEvent.objects.filter(voided_at__isnull=False).count() == 2
    entry = AuditEntry.objects.filter(action="usage_event.void").first()
    assert entry is not None and entry.reason == "sent twice by the client"
    page = client.get(f"{EVENTS}{events[0].pk}/change/")
    assert b"sent twice by the client" in page.content and b"not counted" in page.content


def test_support_amends_an_event_with_its_new_properties(
    events: list[UsageEvent], console_user: Any
) -> None:
    client = logged_in(console_user("Support"))
    url = f"{EVENTS}{events[2].pk}/action/amend_event/"
    bad = client.post(url, {"confirm": "yes", "reason": "ms not s", "properties": "[1]"})
    assert bad.status_code == 200 and not EventCorrection.objects.exists()
    client.post(url, {"confirm": "yes", "reason": "ms not s", "properties": '{"seconds": 0.01}'})
    correction = EventCorrection.objects.get()
    assert correction.kind == "amend" and correction.actor.username.startswith("support")
    assert correction.replacement.value == Decimal("0.01")
    assert correction.before["value"].startswith("10")
    page = client.get(f"{EVENTS}{correction.replacement_id}/change/")
    assert page.status_code == 200
    assert b"key=c-2" in page.content, "the amendment's page explains the event it amends"


def test_void_usage_in_a_range_counts_first_then_voids(
    events: list[UsageEvent], catalog: dict[str, Any], console_user: Any
) -> None:
    client = logged_in(console_user("Support"))
    url = f"/admin/neruba/customer/{catalog['customer'].pk}/action/void_usage_range/"
    form = {
        "confirm": "yes",
        "reason": "test tenant",
        "metric": "compute_seconds",
        "starts_at": (NOW - timedelta(hours=4, minutes=30)).strftime("%Y-%m-%d %H:%M:%S"),
        "ends_at": NOW.strftime("%Y-%m-%d %H:%M:%S"),
    }
    dry = client.post(url, form, follow=True)
    assert b"dry run: 4 event(s) of acme / compute_seconds would be voided" in dry.content
    assert not UsageEvent.objects.filter(voided_at__isnull=False).exists()

    client.post(url, {**form, "apply": "on"}, follow=True)
    assert UsageEvent.objects.filter(voided_at__isnull=False).count() == 4
    assert AuditEntry.objects.filter(action="usage_event.void_bulk").count() == 1


@pytest.mark.parametrize("role", ["Finance", "Operations"])
def test_finance_and_operations_cannot_correct_events(
    events: list[UsageEvent], catalog: dict[str, Any], console_user: Any, role: str
) -> None:
    client = logged_in(console_user(role))
    refused = client.post(
        EVENTS,
        {
            "action": "void_events",
            "_selected_action": [events[0].pk],
            "confirm": "yes",
            "reason": "x",
        },
    )
    assert refused.status_code == 403
    amend = client.get(f"{EVENTS}{events[0].pk}/action/amend_event/")
    assert amend.status_code == 403
    bulk = client.get(f"/admin/neruba/customer/{catalog['customer'].pk}/action/void_usage_range/")
    assert bulk.status_code == 403
    assert not EventCorrection.objects.exists()
