from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from ingest.exceptions import RejectionNotReplayable
from ingest.models import EventDuplicates, IngestBatch, IngestRejection, UsageEvent
from ingest.services import events_ingest, ingest_prune, rejection_replay
from ingest.tasks import prune
from neruba.errors import ValidationFailed
from neruba.models import AuditEntry
from tests.factories import CustomerFactory, MetricFactory
from tests.ingest.conftest import NOW, event


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- a write that fails mid-transaction leaves nothing behind ------------------------------


@pytest.fixture
def failing_rejection_insert(db: None) -> Iterator[None]:
    """A real database error on the rejection insert, after the events' INSERT ran in the same
    transaction (a trigger: no mock of our own code)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION ingest_test_fail() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER ingest_test_fail BEFORE INSERT ON ingest_ingestrejection "
                "FOR EACH ROW EXECUTE FUNCTION ingest_test_fail()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER ingest_test_fail BEFORE INSERT ON ingest_ingestrejection "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP TRIGGER IF EXISTS ingest_test_fail ON ingest_ingestrejection")
            cursor.execute("DROP FUNCTION IF EXISTS ingest_test_fail()")
        else:
            cursor.execute("DROP TRIGGER IF EXISTS ingest_test_fail")


@pytest.mark.django_db(transaction=True)
def test_a_write_that_fails_mid_transaction_leaves_no_key_and_the_retry_is_accepted(
    ingest_client: APIClient, failing_rejection_insert: None
) -> None:
    body = json.dumps({"events": [event("k-1"), event("k-bad", customer="nobody")]})
    failed = ingest_client.post("/api/v1/events", body, content_type="application/json")
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "internal_error"
    assert not UsageEvent.objects.exists() and not IngestBatch.objects.exists()

    with connection.cursor() as cursor:  # the disk has space again
        if connection.vendor == "postgresql":
            cursor.execute("DROP TRIGGER ingest_test_fail ON ingest_ingestrejection")
        else:
            cursor.execute("DROP TRIGGER ingest_test_fail")
    retried = ingest_client.post("/api/v1/events", body, content_type="application/json")
    assert retried.status_code == 200
    assert [r["outcome"] for r in retried.json()["results"]] == ["accepted", "failed"]


def test_a_caller_transaction_that_rolls_back_takes_the_claimed_keys_with_it(
    meters: dict[str, Any], frozen: Any
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        events_ingest(payloads=[event("k-1")], api_key=None)
        raise RuntimeError("lost the connection before commit")
    result = events_ingest(payloads=[event("k-1")], api_key=None)
    assert result.results[0]["outcome"] == "accepted"


# --- counters --------------------------------------------------------------------------------


def test_prometheus_counters_count_items_per_outcome_and_rejections_per_code(
    meters: dict[str, Any], frozen: Any
) -> None:
    api = {"surface": "api"}
    accepted = sample("neruba_ingest_items_total", outcome="accepted", **api)
    failed = sample("neruba_ingest_items_total", outcome="failed", **api)
    unknown = sample("neruba_ingest_rejections_total", code="unknown_customer", **api)
    batches = sample("neruba_ingest_batch_size_count", **api)
    lago = sample("neruba_ingest_items_total", outcome="accepted", surface="lago")
    events_ingest(payloads=[event("a"), event("b"), event("c", customer="nobody")], api_key=None)
    assert sample("neruba_ingest_items_total", outcome="accepted", **api) == accepted + 2
    assert sample("neruba_ingest_items_total", outcome="failed", **api) == failed + 1
    assert sample("neruba_ingest_rejections_total", code="unknown_customer", **api) == unknown + 1
    assert sample("neruba_ingest_batch_size_count", **api) == batches + 1
    assert sample("neruba_ingest_items_total", outcome="accepted", surface="lago") == lago


def test_ingest_counters_are_labelled_by_the_surface_the_items_came_through(
    meters: dict[str, Any], frozen: Any
) -> None:
    lago = {"outcome": "accepted", "surface": "lago"}
    openmeter = {"outcome": "accepted", "surface": "openmeter"}
    before = (
        sample("neruba_ingest_items_total", **lago),
        sample("neruba_ingest_items_total", **openmeter),
    )
    lago_item = {
        "transaction_id": "lg-m",
        "external_subscription_id": "acme",
        "code": "api_calls",
        "timestamp": int(NOW.timestamp()) - 60,
    }
    events_ingest(payloads=[lago_item], api_key=None, surface="lago")
    om_item = {
        "specversion": "1.0",
        "id": "om-m",
        "source": "svc",
        "type": "api_calls",
        "subject": "acme",
    }
    events_ingest(payloads=[om_item, {**om_item, "id": "om-n"}], api_key=None, surface="openmeter")
    after = (
        sample("neruba_ingest_items_total", **lago),
        sample("neruba_ingest_items_total", **openmeter),
    )
    assert after == (before[0] + 1, before[1] + 2)
    assert list(IngestBatch.objects.order_by("id").values_list("source", flat=True)) == [
        "lago",
        "openmeter",
    ]


# --- replay ----------------------------------------------------------------------------------


def failed_rejection(**overrides: Any) -> IngestRejection:
    result = events_ingest(payloads=[event("k-1", **overrides)], api_key=None)
    assert result.results[0]["outcome"] == "failed"
    return IngestRejection.objects.get()


def test_replay_after_the_cause_is_fixed_stores_the_event_linked_to_its_rejection(
    meters: dict[str, Any], frozen: Any, console_user: Any
) -> None:
    rejection = failed_rejection(customer="initech")
    CustomerFactory(external_id="initech")
    support = console_user("Support")
    replays = sample("neruba_replays_total", kind="ingest", outcome="replay")

    result = rejection_replay(rejection=rejection, actor=support, reason="customer created")

    assert result.outcome == "replay" and result.event_id is not None
    stored = UsageEvent.objects.get(idempotency_key="k-1")
    assert stored.pk == result.event_id and stored.rejection == rejection
    assert stored.source == "replay" and stored.customer.external_id == "initech"
    rejection.refresh_from_db()
    assert rejection.status == "replayed" and rejection.replay_attempts == 1
    assert rejection.last_replayed_at == NOW
    entry = AuditEntry.objects.get(action="ingest_rejection.replay")
    assert entry.actor == support and entry.reason == "customer created"
    assert entry.before["status"] == "open" and entry.after["event_id"] == stored.pk
    assert entry.customer == stored.customer
    assert sample("neruba_replays_total", kind="ingest", outcome="replay") == replays + 1
    batch = IngestBatch.objects.get(pk=stored.batch_id)
    assert batch.source == "replay" and batch.replay == 1


def test_a_replay_that_still_fails_stays_open_with_its_new_error(
    meters: dict[str, Any], frozen: Any
) -> None:
    rejection = failed_rejection(customer="initech", metric="gpu_hours")
    assert rejection.error_code == "unknown_customer"
    CustomerFactory(external_id="initech")

    result = rejection_replay(rejection=rejection, actor=None, reason="customer created")

    assert result.outcome == "failed" and result.error["code"] == "unknown_metric"
    rejection.refresh_from_db()
    assert rejection.status == "open" and rejection.error_code == "unknown_metric"
    assert rejection.replay_attempts == 1
    assert IngestRejection.objects.count() == 1 and not UsageEvent.objects.exists()
    assert AuditEntry.objects.get(action="ingest_rejection.replay").after["outcome"] == "failed"

    MetricFactory(code="gpu_hours")
    assert rejection_replay(rejection=rejection, actor=None, reason="metric added").outcome == (
        "replay"
    )
    rejection.refresh_from_db()
    assert rejection.replay_attempts == 2 and rejection.status == "replayed"


def test_a_dry_run_replay_tells_what_would_happen_and_writes_nothing(
    meters: dict[str, Any], frozen: Any
) -> None:
    rejection = failed_rejection(customer="initech")
    before = rejection_replay(rejection=rejection, actor=None, reason="", dry_run=True)
    assert before.outcome == "failed" and before.error["code"] == "unknown_customer"
    CustomerFactory(external_id="initech")
    after = rejection_replay(rejection=rejection, actor=None, reason="", dry_run=True)
    assert after.outcome == "replay" and after.describe() == "would be stored"
    rejection.refresh_from_db()
    assert rejection.status == "open" and rejection.replay_attempts == 0
    assert (
        not UsageEvent.objects.exists()
        and not AuditEntry.objects.filter(action="ingest_rejection.replay").exists()
    )


def test_replay_measures_the_window_from_the_original_receipt(
    meters: dict[str, Any], frozen: Any
) -> None:
    rejection = failed_rejection(customer="initech")
    CustomerFactory(external_id="initech")
    frozen.shift(timedelta(days=40))  # the event is now older than the 35-day window
    result = rejection_replay(rejection=rejection, actor=None, reason="late fix")
    assert result.outcome == "replay"


def test_a_rejection_whose_event_arrived_meanwhile_closes_as_duplicate(
    meters: dict[str, Any], frozen: Any
) -> None:
    rejection = failed_rejection(customer="initech")
    CustomerFactory(external_id="initech")
    events_ingest(payloads=[event("k-1", customer="initech")], api_key=None)  # client retried
    result = rejection_replay(rejection=rejection, actor=None, reason="cleanup")
    assert result.outcome == "duplicate"
    rejection.refresh_from_db()
    assert rejection.status == "replayed" and UsageEvent.objects.count() == 1


def test_a_replayed_rejection_cannot_be_replayed_again(meters: dict[str, Any], frozen: Any) -> None:
    rejection = failed_rejection(customer="initech")
    CustomerFactory(external_id="initech")
    rejection_replay(rejection=rejection, actor=None, reason="fixed")
    with pytest.raises(RejectionNotReplayable):
        rejection_replay(rejection=rejection, actor=None, reason="again")


def test_replay_needs_a_reason(meters: dict[str, Any], frozen: Any) -> None:
    rejection = failed_rejection(customer="initech")
    with pytest.raises(ValidationFailed):
        rejection_replay(rejection=rejection, actor=None, reason="  ")


def test_the_event_history_shows_the_failure_and_the_replay(
    ingest_client: APIClient, frozen: Any
) -> None:
    ingest_client.post(
        "/api/v1/events",
        json.dumps(event("k-1", customer="initech")),
        content_type="application/json",
    )
    CustomerFactory(external_id="initech")
    frozen.shift(timedelta(minutes=5))
    rejection_replay(rejection=IngestRejection.objects.get(), actor=None, reason="fixed")
    body = ingest_client.get("/api/v1/events/k-1").json()
    assert [(h["outcome"], h["status"]) for h in body["history"]] == [
        ("failed", "replayed"),
        ("replay", None),
    ]
    assert body["event"]["source"] == "replay"


# --- retention -------------------------------------------------------------------------------


def test_prune_deletes_batches_and_rejections_past_retention_and_keeps_events(
    meters: dict[str, Any], frozen: Any, settings: Any
) -> None:
    settings.NERUBA = {**settings.NERUBA, "NERUBA_INGEST_RETENTION": 30 * 86400}
    events_ingest(payloads=[event("old"), event("old-bad", customer="nobody")], api_key=None)
    frozen.shift(timedelta(days=29))
    events_ingest(payloads=[event("new-bad", customer="nobody")], api_key=None)
    frozen.shift(timedelta(days=2))

    assert prune.delay().get() == {"batches": 1, "rejections": 1}

    assert list(IngestRejection.objects.values_list("idempotency_key", flat=True)) == ["new-bad"]
    assert IngestBatch.objects.count() == 1
    assert UsageEvent.objects.filter(idempotency_key="old").exists()
    assert ingest_prune(now=NOW + timedelta(days=31)) == {"batches": 0, "rejections": 0}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_one_statement_path_answers_like_the_transactional_one(
    ingest_client: APIClient,
) -> None:
    """Outside a transaction on PostgreSQL, all-new batches are one autocommitted statement;
    a taken key falls back to settling in a transaction. The answers are the same."""
    url = "/api/v1/events"
    single = ingest_client.post(url, json.dumps(event("k-1")), content_type="application/json")
    assert single.status_code == 201
    again = ingest_client.post(url, json.dumps(event("k-1")), content_type="application/json")
    assert again.status_code == 200 and again.json()["event_id"] == single.json()["event_id"]
    clash = event("k-1", metric="storage_gb", properties={"gb": 1})
    conflict = ingest_client.post(url, json.dumps(clash), content_type="application/json")
    assert conflict.status_code == 409
    batch = {"events": [event("k-2"), event("k-3"), event("k-1")]}
    body = ingest_client.post(url, json.dumps(batch), content_type="application/json").json()
    assert [r["outcome"] for r in body["results"]] == ["accepted", "accepted", "duplicate"]
    counts = list(
        IngestBatch.objects.order_by("id").values_list("accepted", "duplicate", "conflict")
    )
    assert counts == [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 1, 0)]
    assert EventDuplicates.objects.get(event__idempotency_key="k-1").count == 2
    assert IngestRejection.objects.get().outcome == "conflict"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_duplicates_counted_in_the_insert_keep_batch_and_event_counts_exact(
    meters: dict[str, Any], frozen: Any
) -> None:
    """On PostgreSQL a duplicate's counter is bumped by the INSERT itself (ON CONFLICT … DO
    UPDATE when the payload matches). A batch mixing new keys, duplicates, a repeat within the
    batch and a conflict still answers, counts and stores every item exactly once."""
    events_ingest(payloads=[event("d-1"), event("d-2"), event("d-3")], api_key=None)
    every = events_ingest(payloads=[event("d-1"), event("d-2"), event("d-3")], api_key=None)
    assert every.counts["duplicate"] == 3 and every.counts["accepted"] == 0
    clash = event("d-3", metric="storage_gb", properties={"gb": 1})
    mixed = events_ingest(
        payloads=[event("d-1"), event("d-4"), event("d-1"), clash, event("d-5")], api_key=None
    )
    assert [r["outcome"] for r in mixed.results] == [
        "duplicate",
        "accepted",
        "duplicate",
        "conflict",
        "accepted",
    ]
    rows = dict(IngestBatch.objects.values_list("pk", "duplicate"))
    assert rows[every.batch_id] == 3 and rows[mixed.batch_id] == 2
    stored = IngestBatch.objects.get(pk=mixed.batch_id)
    assert (stored.accepted, stored.duplicate, stored.conflict, stored.failed) == (2, 2, 1, 0)
    counters = dict(EventDuplicates.objects.values_list("event__idempotency_key", "count"))
    assert counters == {"d-1": 3, "d-2": 1, "d-3": 1}
    assert UsageEvent.objects.filter(idempotency_key__in=["d-4", "d-5"]).count() == 2
    assert IngestRejection.objects.get().idempotency_key == "d-3"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_one_statement_batch_stores_every_column_exactly(
    meters: dict[str, Any], frozen: Any
) -> None:
    """The autocommitted batch statement sends its rows as one JSON parameter: values, times
    to the microsecond, distinct values and Unicode properties arrive unchanged."""
    seconds = "12345678901234567890.0123456789"
    items = [
        event(
            "exact-1",
            metric="compute_seconds",
            timestamp="2026-03-10T11:00:00.123456+02:00",
            properties={"seconds": seconds, "city": "Zürich ✓", "nested": {"a": [1, None]}},
        ),
        event("exact-2", metric="active_users", properties={"user_id": "ü-42"}),
        event("exact-3"),
    ]
    result = events_ingest(payloads=items, api_key=None)
    assert result.counts["accepted"] == 3
    rows = {e.idempotency_key: e for e in UsageEvent.objects.all()}
    first = rows["exact-1"]
    assert str(first.value) == seconds
    assert first.timestamp.isoformat() == "2026-03-10T09:00:00.123456+00:00"
    assert first.properties == {
        "seconds": seconds,
        "city": "Zürich ✓",
        "nested": {"a": [1, None]},
    }
    assert rows["exact-2"].distinct_value == "ü-42" and rows["exact-2"].value is None
    assert rows["exact-3"].value == 1 and rows["exact-3"].batch_id == result.batch_id
    assert [r["event_id"] for r in result.results] == [
        rows[k].pk for k in ("exact-1", "exact-2", "exact-3")
    ]
