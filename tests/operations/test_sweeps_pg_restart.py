"""PostgreSQL restarted under an ingest load: clients that retry the same keys on connection
errors end with every key stored exactly once.

It restarts the whole database server (``pg_ctlcluster``), which drops every other session on
it, so it only runs when asked: ``NERUBA_TEST_PG_RESTART=1`` on a machine of its own (CI)."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from ingest.models import UsageEvent
from ingest.services import events_ingest
from tests import processes

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not os.environ.get("NERUBA_TEST_PG_RESTART"),
        reason="restarts the PostgreSQL server: set NERUBA_TEST_PG_RESTART=1 to run it",
    ),
]

KEYS = 20000
BATCH = 50
CLIENTS = 4
RESTART = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"]


def _client(number: int, at: str, started: str) -> dict[str, int]:
    """Sends every key in batches (each client in its own order) and retries a batch on a
    connection error until the database is back, as a real client retries a failed request."""
    keys = [f"restart-{n}" for n in range(KEYS)]
    if number % 2:
        keys.reverse()
    totals = {"accepted": 0, "duplicate": 0, "conflict": 0, "failed": 0, "retries": 0}
    for start in range(0, KEYS, BATCH):
        payloads = [
            {"idempotency_key": k, "customer": "acme", "metric": "api_calls", "timestamp": at}
            for k in keys[start : start + BATCH]
        ]
        deadline = time.monotonic() + 60
        while True:
            try:
                result = events_ingest(payloads=payloads, api_key=None)
                break
            # ingest's customer lookup runs on the raw psycopg cursor, so psycopg's own
            # connection errors arrive unwrapped next to Django's.
            except (
                OperationalError,
                InterfaceError,
                psycopg.OperationalError,
                psycopg.InterfaceError,
            ):
                totals["retries"] += 1
                assert time.monotonic() < deadline, "the database did not come back"
                try:
                    connection.close()
                except Exception:  # the connection is already gone
                    pass
                time.sleep(0.05)  # a client's retry pause, not test timing
        for outcome in ("accepted", "duplicate", "conflict", "failed"):
            totals[outcome] += result.counts.get(outcome, 0)
        Path(started).touch()
    return totals


def test_a_postgres_restart_during_ingest_leaves_every_key_stored_exactly_once(
    catalog: dict[str, Any], tmp_path: Path
) -> None:
    at = (timezone.now() - timedelta(hours=1)).isoformat()
    started = tmp_path / "started"
    clients = [processes.start(_client, n, at, str(started)) for n in range(CLIENTS)]
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, "no client got going"
        time.sleep(0.01)
    subprocess.run(RESTART, check=True, timeout=120)

    results = []
    for proc, queue in clients:
        status, value = queue.get(timeout=180)
        proc.join(timeout=30)
        assert status == "ok", value
        results.append(value)
    connection.close()  # ours died with the restart; the next query reconnects

    keys = list(
        UsageEvent.objects.filter(idempotency_key__startswith="restart-").values_list(
            "idempotency_key", flat=True
        )
    )
    assert len(keys) == len(set(keys)) == KEYS
    assert sum(r["retries"] for r in results) > 0, "the restart happened during the load"
    assert all(r["conflict"] == r["failed"] == 0 for r in results)
    assert all(r["accepted"] + r["duplicate"] == KEYS for r in results)
    # A batch that committed just before its connection died is reported duplicate on retry.
    assert sum(r["accepted"] for r in results) <= KEYS
