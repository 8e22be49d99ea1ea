"""Many real clients at once on PostgreSQL: forked processes, each with several threads, each
thread its own client and database connection, all submitting overlapping batches."""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connections
from django.test import Client

from ingest.models import EventDuplicates, IngestBatch, IngestRejection, UsageEvent
from neruba import services as kernel_services
from tests import processes
from tests.factories import CustomerFactory, MetricFactory

PROCESSES = 10
CLIENTS_PER_PROCESS = 5  # 50 concurrent clients
BATCHES_PER_CLIENT = 6
BATCH_SIZE = 40
KEYS = 240
CONFLICTING = {f"shared-{i}" for i in range(0, KEYS, 24)}


def payload(key: str, client: int, stamp: str) -> dict[str, Any]:
    properties: dict[str, Any] = {"seconds": 1.5, "k": key}
    if key in CONFLICTING:
        properties["client"] = client  # these keys differ per client: one wins, others conflict
    return {
        "idempotency_key": key,
        "customer": f"conc-{int(key.split('-')[1]) % 3}",
        "metric": "conc_seconds",
        "timestamp": stamp,
        "properties": properties,
    }


def _one_client(raw_key: str, client: int, stamp: str, out: list[Any]) -> None:
    try:
        http = Client(HTTP_AUTHORIZATION=f"Api-Key {raw_key}")
        rng = random.Random(client)
        for n in range(BATCHES_PER_CLIENT):
            keys = rng.sample(range(KEYS), BATCH_SIZE - 1)
            events = [payload(f"shared-{k}", client, stamp) for k in keys]
            # Every other batch carries a failing item, so it is settled in a transaction while
            # the all-valid ones take the one-statement path: both at once, on the same keys.
            if n % 2 == 0:
                events.append({**payload("shared-0", client, stamp), "customer": "nobody"})
            response = http.post(
                "/api/v1/events", json.dumps({"events": events}), content_type="application/json"
            )
            body = response.json()
            out.append((response.status_code, len(events), body))
    except Exception:  # reported to the parent as a failed client, never swallowed
        import traceback

        out.append((0, 0, traceback.format_exc()))
    finally:
        connections.close_all()


def _process(raw_key: str, first_client: int, stamp: str) -> list[Any]:
    results: list[Any] = []
    # Middleware set-up (django-prometheus registers its metrics once) is not thread-safe: do
    # it once per process before the clients start.
    Client().get("/healthz")
    threads = [
        threading.Thread(target=_one_client, args=(raw_key, first_client + i, stamp, results))
        for i in range(CLIENTS_PER_PROCESS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_clients_with_overlapping_batches_store_each_key_exactly_once() -> None:
    for i in range(3):
        CustomerFactory(external_id=f"conc-{i}")
    MetricFactory(code="conc_seconds", aggregation="sum", field="seconds")
    _, raw_key = kernel_services.api_key_create(name="concurrency", scopes=["ingest"], actor=None)
    stamp = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    per_process = processes.run_all(
        _process,
        [(raw_key, p * CLIENTS_PER_PROCESS, stamp) for p in range(PROCESSES)],
        timeout=300,
    )
    responses = [r for chunk in per_process for r in chunk]

    errors = [body for status, _, body in responses if status == 0]
    assert not errors, errors[0]
    assert len(responses) == PROCESSES * CLIENTS_PER_PROCESS * BATCHES_PER_CLIENT
    bad = [body for status, _, body in responses if status != 200]
    assert not bad, f"no 500s, no whole-batch failures: {bad[:2]}"
    accepted: dict[str, int] = {}
    for _, size, body in responses:
        assert sum(body["counts"].values()) == size == len(body["results"])
        for result in body["results"]:
            if result["outcome"] == "accepted":
                accepted[result["idempotency_key"]] = accepted.get(result["idempotency_key"], 0) + 1
    # Every key some response called accepted, duplicate or conflict is stored, and only those.
    submitted = {
        r["idempotency_key"]
        for _, _, body in responses
        for r in body["results"]
        if r["outcome"] in ("accepted", "duplicate", "conflict")
    }
    stored = list(UsageEvent.objects.values_list("idempotency_key", flat=True))
    assert len(stored) == len(set(stored)), "a key was stored twice"
    assert set(stored) == submitted
    assert all(n == 1 for n in accepted.values()), "a key was accepted twice"
    assert set(accepted) == set(stored)

    # Every answer matches what was stored: duplicates and conflicts point at the one row.
    ids = dict(UsageEvent.objects.values_list("idempotency_key", "id"))
    for _, _, body in responses:
        for result in body["results"]:
            if result["outcome"] in ("accepted", "duplicate", "conflict"):
                assert result["event_id"] == ids[result["idempotency_key"]]
            if result["outcome"] == "conflict":
                assert result["idempotency_key"] in CONFLICTING
    total = {o: sum(b["counts"][o] for _, _, b in responses) for o in responses[0][2]["counts"]}
    batches = IngestBatch.objects.all()
    assert len(batches) == len(responses)
    assert sum(b.accepted for b in batches) == total["accepted"] == len(stored)
    assert sum(b.duplicate for b in batches) == total["duplicate"]
    assert IngestRejection.objects.count() == total["failed"] + total["conflict"]
    duplicates = sum(EventDuplicates.objects.values_list("count", flat=True))
    assert duplicates == total["duplicate"]
