"""CloudEvents built with the SDK, as a real client would send them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.bindings.http import to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from rest_framework.test import APIClient

from ingest.models import IngestRejection, UsageEvent

URL = "/api/v1/events"


def cloud_event(event_id: str, **overrides: Any) -> CloudEvent:
    attributes: dict[str, Any] = {
        "id": event_id,
        "source": "https://api.example.com/gateway",
        "type": "compute_seconds",
        "subject": "acme",
        "time": datetime(2026, 3, 10, 11, 30, tzinfo=UTC),
        "datacontenttype": "application/json",
    }
    data = overrides.pop("data", {"seconds": 4.5, "region": "eu"})
    attributes.update(overrides)
    return CloudEvent(attributes=attributes, data=data)


def test_a_structured_cloudevent_is_ingested_with_its_mapped_fields(
    ingest_client: APIClient,
) -> None:
    message = to_structured(cloud_event("ce-1"), JSONFormat())
    response = ingest_client.post(URL, message.body, content_type=message.headers["content-type"])
    assert message.headers["content-type"].startswith("application/cloudevents+json")
    assert response.status_code == 201, response.content
    assert response.json()["outcome"] == "accepted"
    stored = UsageEvent.objects.get(idempotency_key="ce-1")
    assert stored.customer.external_id == "acme" and stored.metric.code == "compute_seconds"
    assert stored.timestamp == datetime(2026, 3, 10, 11, 30, tzinfo=UTC)
    assert stored.properties == {"seconds": 4.5, "region": "eu"} and float(stored.value) == 4.5


def test_a_repeated_cloudevent_is_a_duplicate(ingest_client: APIClient) -> None:
    message = to_structured(cloud_event("ce-1"), JSONFormat())
    ingest_client.post(URL, message.body, content_type=message.headers["content-type"])
    again = ingest_client.post(URL, message.body, content_type=message.headers["content-type"])
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"


def test_a_cloudevents_batch_gets_one_result_per_event(ingest_client: APIClient) -> None:
    fmt = JSONFormat()
    events = [
        cloud_event("ce-1"),
        cloud_event("ce-2", type="api_calls", data={"endpoint": "/x"}),
        cloud_event("ce-3", subject="nobody"),
        cloud_event("ce-4", data={"seconds": "plenty"}),
    ]
    # The batch format is a JSON array of structured events.
    body = "[" + ",".join(fmt.write(e).decode() for e in events) + "]"
    response = ingest_client.post(URL, body, content_type="application/cloudevents-batch+json")
    assert response.status_code == 200
    result = response.json()
    assert result["counts"]["accepted"] == 2 and result["counts"]["failed"] == 2
    assert [r["idempotency_key"] for r in result["results"]] == ["ce-1", "ce-2", "ce-3", "ce-4"]
    errors = [r.get("error", {}).get("code") for r in result["results"]]
    assert errors == [None, None, "unknown_customer", "invalid_value"]
    rejection = IngestRejection.objects.get(idempotency_key="ce-3")
    assert rejection.raw_payload["subject"] == "nobody" and rejection.customer_ref == "nobody"
    assert rejection.raw_payload["specversion"] == "1.0"


def test_a_cloudevent_without_a_subject_fails_naming_the_cloudevents_attribute(
    ingest_client: APIClient,
) -> None:
    raw = json.loads(JSONFormat().write(cloud_event("ce-1")))
    del raw["subject"]
    response = ingest_client.post(URL, json.dumps(raw), content_type="application/cloudevents+json")
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "missing_field",
        "message": "`subject` is required.",
        "details": {"field": "subject"},
    }


def test_a_cloudevents_batch_that_is_not_an_array_is_a_400(ingest_client: APIClient) -> None:
    body = JSONFormat().write(cloud_event("ce-1"))
    response = ingest_client.post(URL, body, content_type="application/cloudevents-batch+json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_request"
