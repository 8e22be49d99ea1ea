from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from ingest import services
from ingest.models import EventDuplicates, IngestBatch, IngestRejection, UsageEvent
from tests.ingest.conftest import NOW, event

URL = "/api/v1/events"


def post(client: APIClient, body: Any, content_type: str = "application/json") -> Any:
    return client.post(URL, json.dumps(body), content_type=content_type)


def only_result(response: Any) -> dict[str, Any]:
    return response.json()["results"][0]


# --- outcomes --------------------------------------------------------------------------------


def test_a_new_event_is_accepted_with_201_and_stored(ingest_client: APIClient) -> None:
    response = post(ingest_client, event("k-1"))
    assert response.status_code == 201
    body = response.json()
    stored = UsageEvent.objects.get(idempotency_key="k-1")
    assert body == {
        "index": 0,
        "idempotency_key": "k-1",
        "outcome": "accepted",
        "event_id": stored.pk,
    }
    assert stored.customer.external_id == "acme" and stored.metric.code == "api_calls"
    assert stored.timestamp == datetime(2026, 3, 10, 11, tzinfo=UTC)
    assert stored.properties == {"endpoint": "/v1/search"} and stored.value == 1
    assert stored.source == "api" and not stored.late and len(stored.payload_hash) == 64


def test_duplicate_key_with_same_payload_is_reported_as_duplicate(
    ingest_client: APIClient,
) -> None:
    first = post(ingest_client, event("k-1")).json()
    response = post(ingest_client, event("k-1"))
    assert response.status_code == 200
    assert response.json()["outcome"] == "duplicate"
    assert response.json()["event_id"] == first["event_id"]
    assert UsageEvent.objects.count() == 1
    counter = EventDuplicates.objects.get(event=UsageEvent.objects.get())
    assert counter.count == 1 and counter.last_at == NOW


def test_the_canonical_payload_ignores_key_order_and_the_utc_offset(
    ingest_client: APIClient,
) -> None:
    post(ingest_client, event("k-1", properties={"a": 1, "b": {"y": 2, "x": 1}}))
    same = event(
        "k-1", timestamp="2026-03-10T12:00:00+01:00", properties={"b": {"x": 1, "y": 2}, "a": 1}
    )
    assert post(ingest_client, same).json()["outcome"] == "duplicate"


def test_same_key_with_a_different_payload_is_a_conflict_naming_the_original_and_fields(
    ingest_client: APIClient,
) -> None:
    original = post(ingest_client, event("k-1")).json()["event_id"]
    changed = event("k-1", customer="globex", properties={"endpoint": "/v2"})
    response = post(ingest_client, changed)
    assert response.status_code == 409
    body = response.json()
    assert body["outcome"] == "conflict" and body["event_id"] == original
    assert body["error"]["code"] == "conflict"
    assert body["error"]["details"] == {
        "original_event_id": original,
        "differing_fields": ["customer", "properties"],
    }
    rejection = IngestRejection.objects.get()
    assert rejection.outcome == "conflict" and rejection.original_event_id == original
    assert rejection.raw_payload == changed
    assert UsageEvent.objects.get().customer.external_id == "acme"


def test_a_timestamp_change_is_a_conflict_on_timestamp(ingest_client: APIClient) -> None:
    post(ingest_client, event("k-1"))
    response = post(ingest_client, event("k-1", timestamp="2026-03-10T11:00:01Z"))
    assert response.json()["error"]["details"]["differing_fields"] == ["timestamp"]


def test_a_failed_event_answers_422_and_is_recorded_with_its_raw_payload(
    ingest_client: APIClient,
) -> None:
    bad = event("k-1", customer="nobody")
    response = post(ingest_client, bad)
    assert response.status_code == 422
    body = response.json()
    assert body["outcome"] == "failed" and body["event_id"] is None
    assert body["error"]["code"] == "unknown_customer"
    rejection = IngestRejection.objects.get()
    assert rejection.raw_payload == bad and rejection.error_code == "unknown_customer"
    assert rejection.customer_ref == "nobody" and rejection.metric_ref == "api_calls"
    assert rejection.status == "open" and rejection.api_key_prefix
    assert not UsageEvent.objects.exists()


def test_a_retried_event_that_is_now_outside_the_window_is_still_a_duplicate(
    ingest_client: APIClient, frozen: Any
) -> None:
    post(ingest_client, event("k-1"))
    frozen.shift(timedelta(days=60))
    assert post(ingest_client, event("k-1")).json()["outcome"] == "duplicate"


# --- error codes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"customer": "nobody"}, "unknown_customer"),
        ({"metric": "nothing"}, "unknown_metric"),
        ({"metric": "compute_seconds", "properties": {"seconds": "lots"}}, "invalid_value"),
        ({"metric": "compute_seconds", "properties": {}}, "invalid_value"),
        ({"metric": "compute_seconds", "properties": {"seconds": True}}, "invalid_value"),
        ({"metric": "storage_gb", "properties": {"gb": "NaN"}}, "invalid_value"),
        ({"metric": "storage_gb", "properties": {"gb": 1e30}}, "invalid_value"),
        ({"metric": "active_users", "properties": {"user_id": 1.5}}, "invalid_value"),
        ({"metric": "active_users", "properties": {}}, "invalid_value"),
        ({"timestamp": "yesterday"}, "invalid_timestamp"),
        ({"timestamp": "2026-03-10T11:00:00"}, "invalid_timestamp"),
        ({"timestamp": "2026-01-01T00:00:00Z"}, "timestamp_too_old"),
        ({"timestamp": "2026-03-10T12:06:00Z"}, "timestamp_in_future"),
        ({"properties": {"blob": "x" * 9000}}, "properties_too_large"),
        ({"properties": ["not", "an", "object"]}, "invalid_field"),
        ({"properties": {"text": "nul\u0000byte"}}, "invalid_field"),
        ({"customer": 42}, "invalid_field"),
        ({"idempotency_key": "k" * 256}, "invalid_field"),
        ({"idempotency_key": ""}, "missing_field"),
        ({"customer": None}, "missing_field"),
        ({"metric": ""}, "missing_field"),
    ],
)
def test_each_invalid_event_fails_with_its_stable_error_code(
    ingest_client: APIClient, overrides: dict[str, Any], code: str
) -> None:
    response = post(ingest_client, event("k-bad", **overrides))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code
    assert IngestRejection.objects.get().error_code == code
    assert not UsageEvent.objects.exists()


def test_a_missing_field_names_the_field(ingest_client: APIClient) -> None:
    payload = event("k-1")
    del payload["timestamp"]
    error = post(ingest_client, payload).json()["error"]
    assert error["code"] == "missing_field" and error["details"] == {"field": "timestamp"}


def test_an_item_that_is_not_an_object_fails_as_invalid_event(ingest_client: APIClient) -> None:
    results = post(ingest_client, {"events": [event("k-1"), "oops", None, []]}).json()["results"]
    assert [r["outcome"] for r in results] == ["accepted", "failed", "failed", "failed"]
    assert {r["error"]["code"] for r in results[1:]} == {"invalid_event"}
    assert results[1]["idempotency_key"] is None
    raw = sorted(IngestRejection.objects.values_list("raw_payload", flat=True), key=repr)
    assert raw == sorted(["oops", None, []], key=repr)


def test_the_timestamp_window_follows_the_settings(ingest_client: APIClient, settings: Any) -> None:
    settings.NERUBA = {**settings.NERUBA, "NERUBA_INGEST_MAX_AGE": 3600}
    old = event("k-old", timestamp="2026-03-10T10:59:00Z")
    assert post(ingest_client, old).json()["error"]["code"] == "timestamp_too_old"
    settings.NERUBA = {**settings.NERUBA, "NERUBA_INGEST_MAX_SKEW": 0}
    ahead = event("k-ahead", timestamp="2026-03-10T12:00:01Z")
    assert post(ingest_client, ahead).json()["error"]["code"] == "timestamp_in_future"


# --- metric field extraction -----------------------------------------------------------------


def test_the_metric_field_is_extracted_into_value_and_distinct_value(
    ingest_client: APIClient,
) -> None:
    post(
        ingest_client,
        {
            "events": [
                event("c", metric="api_calls", properties={}),
                event("s", metric="compute_seconds", properties={"seconds": 12.75}),
                event("s2", metric="compute_seconds", properties={"seconds": "0.5"}),
                event("m", metric="storage_gb", properties={"gb": 120}),
                event("u", metric="active_users", properties={"user_id": "user-7"}),
                event("u2", metric="active_users", properties={"user_id": 99}),
            ]
        },
    )
    rows = {e.idempotency_key: e for e in UsageEvent.objects.all()}
    assert rows["c"].value == 1
    assert rows["s"].value == Decimal("12.75") and rows["s2"].value == Decimal("0.5")
    assert rows["m"].value == 120
    assert rows["u"].distinct_value == "user-7" and rows["u"].value is None
    assert rows["u2"].distinct_value == "99"


def test_an_event_older_than_the_invoiced_watermark_is_stored_late(
    ingest_client: APIClient, meters: dict[str, Any]
) -> None:
    services.invoiced_watermark_advance(
        customer_id=meters["customer"].pk, through=datetime(2026, 3, 1, tzinfo=UTC)
    )
    post(
        ingest_client,
        {
            "events": [
                event("before", timestamp="2026-02-28T23:59:59Z"),
                event("after", timestamp="2026-03-01T00:00:00Z"),
                event("other", customer="globex", timestamp="2026-02-20T00:00:00Z"),
            ]
        },
    )
    late = dict(UsageEvent.objects.values_list("idempotency_key", "late"))
    assert late == {"before": True, "after": False, "other": False}


# --- batches ---------------------------------------------------------------------------------


def test_a_batch_answers_every_item_and_is_never_rejected_for_one_bad_item(
    ingest_client: APIClient,
) -> None:
    post(ingest_client, event("existing"))
    post(ingest_client, event("clash"))
    response = post(
        ingest_client,
        {
            "events": [
                event("new-1"),
                event("existing"),
                event("clash", properties={"endpoint": "/other"}),
                event("bad", metric="nothing"),
                event("new-2", metric="storage_gb", properties={"gb": 3}),
                event("new-1"),
            ]
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["counts"] == {
        "accepted": 2,
        "duplicate": 2,
        "conflict": 1,
        "failed": 1,
        "replay": 0,
    }
    outcomes = [(r["index"], r["idempotency_key"], r["outcome"]) for r in body["results"]]
    assert outcomes == [
        (0, "new-1", "accepted"),
        (1, "existing", "duplicate"),
        (2, "clash", "conflict"),
        (3, "bad", "failed"),
        (4, "new-2", "accepted"),
        (5, "new-1", "duplicate"),
    ]
    assert body["results"][5]["event_id"] == body["results"][0]["event_id"]
    assert body["results"][3]["error"]["code"] == "unknown_metric"
    batch = IngestBatch.objects.get(pk=body["batch_id"])
    assert (batch.size, batch.accepted, batch.duplicate, batch.conflict, batch.failed) == (
        6,
        2,
        2,
        1,
        1,
    )
    assert batch.api_key_prefix and batch.bytes > 0 and batch.duration_ms > 0
    assert UsageEvent.objects.get(idempotency_key="new-1").batch_id == batch.pk
    assert IngestRejection.objects.filter(batch=batch).count() == 2


def test_the_same_key_twice_in_one_batch_with_different_payloads_is_a_conflict(
    ingest_client: APIClient,
) -> None:
    body = post(
        ingest_client, {"events": [event("k"), event("k", properties={"endpoint": "/x"})]}
    ).json()
    assert [r["outcome"] for r in body["results"]] == ["accepted", "conflict"]


def test_an_invalid_first_copy_does_not_block_a_valid_second_copy_of_a_key(
    ingest_client: APIClient,
) -> None:
    body = post(ingest_client, {"events": [event("k", metric="nothing"), event("k")]}).json()
    assert [r["outcome"] for r in body["results"]] == ["conflict", "accepted"]


# --- whole-request errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'"event"', b'{"events": {}}', b'{"events": []}', b"\xff\xfe"],
)
def test_a_malformed_envelope_is_a_400_in_the_error_envelope(
    ingest_client: APIClient, body: bytes
) -> None:
    response = ingest_client.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_request"
    assert not IngestBatch.objects.exists()


def test_too_many_items_is_a_400(ingest_client: APIClient, settings: Any) -> None:
    settings.NERUBA = {**settings.NERUBA, "NERUBA_INGEST_MAX_BATCH": 3}
    response = post(ingest_client, {"events": [event(f"k{i}") for i in range(4)]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_many_events" and error["details"] == {"size": 4, "max": 3}
    assert post(ingest_client, {"events": [event(f"k{i}") for i in range(3)]}).status_code == 200


def test_too_many_bytes_is_a_413(ingest_client: APIClient, settings: Any) -> None:
    settings.NERUBA = {**settings.NERUBA, "NERUBA_INGEST_MAX_BYTES": 2000}
    response = post(ingest_client, {"events": [event(f"k{i}") for i in range(30)]})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not UsageEvent.objects.exists() and not IngestBatch.objects.exists()


def test_an_unsupported_media_type_is_a_415(ingest_client: APIClient) -> None:
    response = ingest_client.post(URL, "a=b", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


# --- auth and scopes -------------------------------------------------------------------------


def test_a_read_only_key_cannot_ingest(api: Callable[..., APIClient], meters: Any) -> None:
    response = post(api("read"), event("k-1"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "missing_scope"
    assert not UsageEvent.objects.exists()


def test_ingest_without_a_key_is_401(api: Callable[..., APIClient], meters: Any) -> None:
    response = post(api(None), event("k-1"))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_an_ingest_only_key_cannot_read_events(
    api: Callable[..., APIClient], meters: Any, frozen: Any
) -> None:
    client = api("ingest")
    post(client, event("k-1"))
    response = client.get(f"{URL}/k-1")
    assert response.status_code == 403 and response.json()["error"]["code"] == "missing_scope"


# --- GET /api/v1/events/{key} ----------------------------------------------------------------


def test_the_event_page_shows_the_event_and_its_outcome_history(
    ingest_client: APIClient,
) -> None:
    first = post(ingest_client, event("k/1")).json()
    post(ingest_client, event("k/1"))
    post(ingest_client, event("k/1", metric="storage_gb", properties={"gb": 2}))
    response = ingest_client.get(f"{URL}/k/1")
    assert response.status_code == 200
    body = response.json()
    assert body["idempotency_key"] == "k/1"
    assert body["event"]["event_id"] == first["event_id"]
    assert body["event"]["customer"] == "acme" and body["event"]["metric"] == "api_calls"
    assert body["event"]["value"] == "1.0000000000" and body["event"]["late"] is False
    assert body["duplicate_count"] == 1 and body["last_duplicate_at"] == "2026-03-10T12:00:00Z"
    assert [h["outcome"] for h in body["history"]] == ["accepted", "conflict"]
    conflict = body["history"][1]
    assert conflict["error"]["details"]["differing_fields"] == ["metric", "properties"]
    assert conflict["status"] == "open"


def test_a_key_that_only_failed_shows_its_failures(ingest_client: APIClient) -> None:
    post(ingest_client, event("k-1", customer="nobody"))
    body = ingest_client.get(f"{URL}/k-1").json()
    assert body["event"] is None and body["duplicate_count"] == 0
    assert [(h["outcome"], h["error"]["code"]) for h in body["history"]] == [
        ("failed", "unknown_customer")
    ]


def test_an_unknown_key_is_404(ingest_client: APIClient) -> None:
    response = ingest_client.get(f"{URL}/never-seen")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
