"""The partitioned event store (PostgreSQL) and its key registry (both engines)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
import time_machine
from django.db import connection

from ingest import partitions
from ingest.models import EventKey, UsageEvent
from ingest.services import events_ingest
from ingest.sweeps import partitions_sweep
from tests import processes
from tests.factories import CustomerFactory, MetricFactory
from tests.ingest.conftest import event


def _rows_in(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


def _exists(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        return bool(cursor.fetchone()[0])


def test_every_stored_key_is_in_the_registry_with_its_event_and_payload_hash(
    meters: dict[str, Any], frozen: Any
) -> None:
    result = events_ingest(payloads=[event("r-1"), event("r-2"), event("r-1")], api_key=None)
    assert [r["outcome"] for r in result.results] == ["accepted", "accepted", "duplicate"]
    stored = {e.idempotency_key: e for e in UsageEvent.objects.all()}
    registry = {k.idempotency_key: k for k in EventKey.objects.all()}
    assert set(registry) == set(stored) == {"r-1", "r-2"}
    for key, row in registry.items():
        assert row.event_id == stored[key].pk
        assert row.timestamp == stored[key].timestamp
        assert row.payload_hash == stored[key].payload_hash


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_same_key_in_two_months_is_a_conflict_and_never_two_rows(
    meters: dict[str, Any], frozen: Any
) -> None:
    """A unique index on the partitioned table could only keep a key unique within its month;
    the registry keeps it unique across them."""
    february = event("edge", timestamp="2026-02-28T23:59:59Z")
    march = event("edge", timestamp="2026-03-01T00:00:00Z")
    first = events_ingest(payloads=[february], api_key=None)
    second = events_ingest(payloads=[march], api_key=None)
    again = events_ingest(payloads=[february, march], api_key=None)
    assert first.results[0]["outcome"] == "accepted"
    assert second.results[0]["outcome"] == "conflict"
    assert second.results[0]["error"]["details"]["differing_fields"] == ["timestamp"]
    assert [r["outcome"] for r in again.results] == ["duplicate", "conflict"]
    assert UsageEvent.objects.filter(idempotency_key="edge").count() == 1
    assert _rows_in("ingest_usageevent_y2026m02") == 1
    assert _rows_in("ingest_usageevent_y2026m03") == 0
    assert EventKey.objects.get().event_id == first.results[0]["event_id"]


def _send_months(keys: list[str], stamp: str) -> list[str]:
    result = events_ingest(payloads=[event(k, timestamp=stamp) for k in keys], api_key=None)
    return [r["outcome"] for r in result.results]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_of_one_key_in_two_months_store_it_once(
    meters: dict[str, Any],
) -> None:
    """Four processes at once send the same 200 keys, two dated February and two March, so the
    rows would land in different partitions: each key is stored once, every other copy is a
    duplicate (same month) or a conflict (the other month)."""
    keys = [f"race-{i}" for i in range(200)]
    with time_machine.travel(datetime(2026, 3, 10, 12, tzinfo=UTC), tick=False):
        outcomes = processes.run_all(
            _send_months,
            [
                (keys, "2026-02-27T10:00:00Z"),
                (list(reversed(keys)), "2026-03-02T10:00:00Z"),
                (keys, "2026-03-02T10:00:00Z"),
                (list(reversed(keys)), "2026-02-27T10:00:00Z"),
            ],
        )
    assert UsageEvent.objects.count() == 200 and EventKey.objects.count() == 200
    stored = dict(UsageEvent.objects.values_list("idempotency_key", "timestamp"))
    assert set(stored) == set(keys)
    by_key: dict[str, list[str]] = {k: [] for k in keys}
    for position, answer in enumerate(outcomes):
        order = keys if position % 2 == 0 else list(reversed(keys))
        for key, outcome in zip(order, answer, strict=True):
            by_key[key].append(outcome)
    for key, seen in by_key.items():
        assert seen.count("accepted") == 1, (key, seen)
        # The copy dated like the stored row is a duplicate; the two of the other month conflict.
        assert sorted(seen) == ["accepted", "conflict", "conflict", "duplicate"], (key, seen)
    assert _rows_in("ingest_usageevent_default") == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_event_for_a_month_without_a_partition_gets_one_and_is_stored() -> None:
    partitions.known_months_forget()
    assert not _exists("ingest_usageevent_y2031m06")
    CustomerFactory(external_id="acme")
    MetricFactory(code="api_calls", aggregation="count")
    with time_machine.travel(datetime(2031, 6, 15, 12, tzinfo=UTC), tick=False):
        result = events_ingest(
            payloads=[event("far-1", timestamp="2031-06-01T00:00:00Z")], api_key=None
        )
    assert result.results[0]["outcome"] == "accepted"
    assert _exists("ingest_usageevent_y2031m06")
    assert _rows_in("ingest_usageevent_y2031m06") == 1
    assert _rows_in("ingest_usageevent_default") == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_rows_that_reached_the_default_partition_move_into_their_month_when_it_is_created() -> None:
    """Nothing is refused for want of a partition: a row written past ingest (an ORM insert
    here) for a month with none lands in the default partition, and moves when the month's
    partition is created."""
    customer = CustomerFactory(external_id="acme")
    metric = MetricFactory(code="api_calls", aggregation="count")
    stamp = datetime(2032, 1, 20, 8, tzinfo=UTC)
    UsageEvent.objects.create(
        idempotency_key="stray", customer=customer, metric=metric, timestamp=stamp, payload_hash="x"
    )
    assert _rows_in("ingest_usageevent_default") == 1
    partitions.known_months_forget()
    assert partitions.partitions_ensure(months=[date(2032, 1, 1)]) == [date(2032, 1, 1)]
    assert _rows_in("ingest_usageevent_default") == 0
    assert _rows_in("ingest_usageevent_y2032m01") == 1
    assert UsageEvent.objects.get().idempotency_key == "stray"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_partitions_sweep_creates_this_month_and_the_next_three_and_is_repeatable() -> None:
    partitions.known_months_forget()
    now = datetime(2033, 11, 5, tzinfo=UTC)
    months = ["y2033m11", "y2033m12", "y2034m01", "y2034m02"]
    assert not any(_exists(f"ingest_usageevent_{m}") for m in months)
    assert partitions_sweep(lease=None, now=now, dry_run=True)["created"] == 4
    assert not _exists("ingest_usageevent_y2033m11")
    assert partitions_sweep(lease=None, now=now)["created"] == 4
    assert all(_exists(f"ingest_usageevent_{m}") for m in months)
    assert partitions_sweep(lease=None, now=now)["created"] == 0


def test_on_sqlite_the_partitions_sweep_has_nothing_to_do(db: None) -> None:
    if connection.vendor == "postgresql":
        pytest.skip("SQLite only: on PostgreSQL the sweep creates partitions (tested above)")
    assert partitions_sweep(lease=None, now=datetime(2033, 11, 5, tzinfo=UTC)) == {
        "created": 0,
        "moved_months": 0,
        "findings": 0,
    }
