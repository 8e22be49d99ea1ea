"""Demo usage for ``seed_demo``: a realistic stream through the same service the API uses,
with duplicates, a conflict and some failures so every console screen has something to show.
Idempotent: the keys are fixed and a seeded database is left alone."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.utils import timezone

from ingest.models import EventKey
from ingest.services import events_ingest

FIRST_KEY = "demo-evt-0000"
CUSTOMERS = ("acme", "globex", "initech")


def _event(key: str, customer: str, metric: str, at: Any, **properties: Any) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "customer": customer,
        "metric": metric,
        "timestamp": at.isoformat(),
        "properties": properties,
    }


def seed_events(events: int = 400) -> dict[str, int]:
    """Ingests ``events`` usage events over the last three weeks for the demo customers, then
    re-sends some (duplicates), one with a changed payload (a conflict) and a few bad items
    (unknown customer and metric, a non-numeric value, a timestamp too old). Returns the
    outcome counts (``events_<outcome>``); all zero when the demo stream is already there."""
    if EventKey.objects.filter(idempotency_key=FIRST_KEY).exists():
        return dict.fromkeys(
            ("events_accepted", "events_duplicate", "events_conflict", "events_failed"), 0
        )
    rng = random.Random(42)  # the same stream every time
    now = timezone.now().replace(microsecond=0)
    stream = []
    for i in range(events):
        customer = CUSTOMERS[i % len(CUSTOMERS)]
        at = now - timedelta(minutes=rng.randint(10, 21 * 24 * 60))
        key = f"demo-evt-{i:04d}"
        kind = rng.random()
        if kind < 0.55:
            stream.append(
                _event(
                    key, customer, "api_calls", at, endpoint=rng.choice(["/search", "/v1/items"])
                )
            )
        elif kind < 0.8:
            stream.append(
                _event(key, customer, "compute_seconds", at, seconds=round(rng.uniform(1, 90), 2))
            )
        elif kind < 0.9:
            stream.append(_event(key, customer, "storage_gb", at, gb=rng.randint(5, 250)))
        else:
            stream.append(
                _event(key, customer, "active_users", at, user_id=f"user-{rng.randint(1, 40)}")
            )

    totals: dict[str, int] = {}

    def send(payloads: list[dict[str, Any]]) -> None:
        for start in range(0, len(payloads), 200):
            result = events_ingest(
                payloads=payloads[start : start + 200], api_key=None, source="demo"
            )
            for outcome, n in result.counts.items():
                if outcome != "replay":
                    totals[f"events_{outcome}"] = totals.get(f"events_{outcome}", 0) + n

    send(stream)
    # A client retrying after a timeout: the same payloads again are duplicates.
    retried = stream[:12]
    # The same key with a different payload is a conflict, never an overwrite.
    changed = dict(stream[12], properties={**stream[12]["properties"], "retried": True})
    bad = [
        _event("demo-bad-customer", "umbrella", "api_calls", now - timedelta(hours=2)),
        _event("demo-bad-metric", "acme", "gpu_hours", now - timedelta(hours=3), hours=2),
        _event("demo-bad-value", "globex", "compute_seconds", now, seconds="a lot"),
        _event("demo-too-old", "initech", "api_calls", now - timedelta(days=90)),
        {"customer": "acme", "metric": "api_calls", "timestamp": now.isoformat()},
    ]
    send([*retried, changed, *bad])
    return totals
