"""Corrections at the worst moment, on PostgreSQL with real processes: a backfill closed while
batches are in flight, and voids and amends of the same keys racing each other."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connections
from django.db.models import Count, Q
from django.test import Client

from ingest.backfills import backfill_close, backfill_create
from ingest.corrections import event_amend, event_for_key, event_void
from ingest.exceptions import EventAlreadyVoided
from ingest.models import Backfill, EventCorrection, IngestBatch, UsageEvent
from ingest.services import events_ingest
from neruba import services as kernel_services
from tests import processes
from tests.factories import CustomerFactory, MetricFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

START = datetime(2025, 1, 1, tzinfo=UTC)


def _loader(raw_key: str, backfill_id: int, client: int) -> list[tuple[int, int, Any]]:
    http = Client(HTTP_AUTHORIZATION=f"Api-Key {raw_key}")
    answers = []
    try:
        for n in range(30):
            events = [
                {
                    "idempotency_key": f"bf-{client}-{n}-{i}",
                    "customer": "old-co",
                    "metric": "old_calls",
                    "timestamp": (START + timedelta(minutes=n * 50 + i)).isoformat(),
                    "properties": {},
                }
                for i in range(50)
            ]
            response = http.post(
                f"/api/v1/events?backfill={backfill_id}",
                json.dumps({"events": events}),
                content_type="application/json",
            )
            answers.append((response.status_code, len(events), response.json()))
    finally:
        connections.close_all()
    return answers


def _closer(backfill_id: int) -> str:
    # Close once the load is under way (a few batches in), while the rest are in flight.
    deadline = time.monotonic() + 120
    while IngestBatch.objects.filter(backfill_id=backfill_id).count() < 4:
        assert time.monotonic() < deadline, "the load never started"
        time.sleep(0.01)
    try:
        return backfill_close(backfill=Backfill.objects.get(pk=backfill_id), actor=None).status
    finally:
        connections.close_all()


def test_a_backfill_closed_mid_load_counts_exactly_the_batches_it_took() -> None:
    CustomerFactory(external_id="old-co")
    MetricFactory(code="old_calls", aggregation="count")
    _, raw_key = kernel_services.api_key_create(name="bf", scopes=["ingest"], actor=None)
    backfill = backfill_create(
        reason="history", starts_at=START, ends_at=START + timedelta(days=30), actor=None
    )

    results = processes.run_all(
        lambda kind, *args: _closer(*args) if kind == "close" else _loader(*args),
        [("load", raw_key, backfill.pk, c) for c in range(4)] + [("close", backfill.pk)],
        timeout=300,
    )

    assert results[-1] == "closed"
    answers = [a for chunk in results[:-1] for a in chunk]
    taken = [body for status, _, body in answers if status == 200]
    refused = [body for status, _, body in answers if status != 200]
    assert all(b["error"]["code"] == "backfill_closed" for b in refused), refused[:1]
    assert taken and refused, "the close landed while batches were in flight"
    backfill.refresh_from_db()
    accepted = sum(b["counts"]["accepted"] for b in taken)
    assert backfill.accepted == accepted == 50 * len(taken)
    assert UsageEvent.objects.filter(source="backfill").count() == accepted
    assert IngestBatch.objects.filter(backfill=backfill).count() == len(taken)


def _corrector(keys: list[str], worker: int) -> list[str]:
    outcomes = []
    try:
        for n, key in enumerate(keys):
            try:
                event = event_for_key(idempotency_key=key)
                if (n + worker) % 3 == 0:
                    event_void(event=event, actor=None, reason=f"w{worker}")
                else:
                    event_amend(
                        event=event,
                        actor=None,
                        reason=f"w{worker}",
                        properties={"gb": worker * 10 + n},
                    )
                outcomes.append("done")
            except EventAlreadyVoided:
                outcomes.append("voided")
    finally:
        connections.close_all()
    return outcomes


def test_racing_voids_and_amends_leave_at_most_one_counted_row_per_key() -> None:
    CustomerFactory(external_id="race-co")
    MetricFactory(code="race_gb", aggregation="max", field="gb")
    keys = [f"race-{i}" for i in range(20)]
    now = datetime.now(UTC) - timedelta(hours=1)
    events_ingest(
        payloads=[
            {
                "idempotency_key": k,
                "customer": "race-co",
                "metric": "race_gb",
                "timestamp": now.isoformat(),
                "properties": {"gb": 1},
            }
            for k in keys
        ],
        api_key=None,
    )

    results = processes.run_all(_corrector, [(keys, w) for w in range(6)], timeout=300)

    assert all(o in ("done", "voided") for chunk in results for o in chunk)
    done = sum(o == "done" for chunk in results for o in chunk)
    assert EventCorrection.objects.count() == done
    for key in keys:
        original = UsageEvent.objects.get(idempotency_key=key)
        rows = UsageEvent.objects.filter(Q(pk=original.pk) | Q(amends=original))
        assert rows.filter(voided_at__isnull=True).count() <= 1
        # Each correction stopped a row that was counting, in turn: a chain, no forks.
        excluded = EventCorrection.objects.filter(event=original).values("excluded")
        assert excluded.annotate(n=Count("id")).filter(n__gt=1).count() == 0, (
            f"{key}: a row was corrected twice"
        )
        assert original.properties == {"gb": 1}
