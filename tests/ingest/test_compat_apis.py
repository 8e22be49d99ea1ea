"""The compatible surfaces' envelopes, answers and errors, in-process (the published clients
drive them end to end in test_compat_clients.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient

from ingest.models import IngestBatch, IngestRejection, UsageEvent
from neruba.models import ApiKey
from tests.factories import PlanFactory, SubscriptionFactory
from tests.ingest.conftest import NOW

OPENMETER = "/compat/openmeter/api/v1/events"
LAGO = "/compat/lago/api/v1/events"
LAGO_BATCH = "/compat/lago/api/v1/events/batch"
CE = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"


@pytest.fixture
def bearer(
    make_api_key: Callable[..., tuple[ApiKey, str]], meters: dict[str, Any], frozen: Any
) -> APIClient:
    _, raw = make_api_key("ingest")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def ce(event_id: str, **overrides: Any) -> dict[str, Any]:
    data = {
        "specversion": "1.0",
        "id": event_id,
        "source": "gateway",
        "type": "api_calls",
        "subject": "acme",
        "time": "2026-03-10T11:00:00Z",
        "data": {"endpoint": "/v1/search"},
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def lago(key: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "transaction_id": key,
        "external_subscription_id": "acme",
        "code": "compute_seconds",
        "timestamp": int(NOW.timestamp()) - 3600,
        "precise_total_amount_cents": None,
        "properties": {"seconds": 2},
    }
    data.update(overrides)
    return data


def post(client: APIClient, url: str, body: Any, content_type: str = "application/json") -> Any:
    return client.post(url, json.dumps(body), content_type=content_type)


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status and body["extensions"]["code"] == code
    return body


# --- OpenMeter ---------------------------------------------------------------------------------


def test_an_openmeter_batch_sent_as_plain_json_is_stored_and_answers_204(
    bearer: APIClient,
) -> None:
    response = post(bearer, OPENMETER, [ce("om-1"), ce("om-2", subject="globex")])
    assert response.status_code == 204 and response.content == b""
    assert set(UsageEvent.objects.values_list("idempotency_key", "source")) == {
        ("om-1", "openmeter"),
        ("om-2", "openmeter"),
    }


def test_a_cloudevent_missing_its_source_is_a_failed_item_named_in_a_400_problem(
    bearer: APIClient,
) -> None:
    response = post(bearer, OPENMETER, [ce("om-1"), ce("om-2", source=None)], CE_BATCH)
    body = problem(response, 400, "events_not_stored")
    (error,) = body["extensions"]["errors"]
    assert (error["index"], error["code"], error["details"]) == (
        1,
        "missing_field",
        {"field": "source"},
    )
    assert list(UsageEvent.objects.values_list("idempotency_key", flat=True)) == ["om-1"]
    assert IngestRejection.objects.get().surface == "openmeter"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ("{not json", CE, 400, "malformed_request"),
        ("[]", CE_BATCH, 400, "malformed_request"),
        ('{"id": "x"}', CE_BATCH, 400, "malformed_request"),
        ("[1]", CE, 400, "malformed_request"),
        ("<xml/>", "application/xml", 415, "unsupported_media_type"),
    ],
)
def test_a_malformed_openmeter_request_is_a_problem_document_and_stores_nothing(
    bearer: APIClient, body: str, content_type: str, status: int, code: str
) -> None:
    problem(bearer.post(OPENMETER, body, content_type=content_type), status, code)
    assert not IngestBatch.objects.exists() and not UsageEvent.objects.exists()


def test_openmeter_auth_and_scope_errors_are_problem_documents(
    make_api_key: Callable[..., tuple[ApiKey, str]], meters: dict[str, Any]
) -> None:
    anonymous = APIClient()
    problem(post(anonymous, OPENMETER, ce("om-1"), CE), 401, "not_authenticated")
    _, read_only = make_api_key("read")
    reader = APIClient()
    reader.credentials(HTTP_AUTHORIZATION=f"Bearer {read_only}")
    problem(post(reader, OPENMETER, ce("om-1"), CE), 403, "missing_scope")
    assert not UsageEvent.objects.exists()


def test_too_many_or_too_big_openmeter_batches_are_refused_whole(bearer: APIClient) -> None:
    with override_settings(NERUBA={**settings.NERUBA, "NERUBA_INGEST_MAX_BATCH": 2}):
        three = [ce("a"), ce("b"), ce("c")]
        problem(post(bearer, OPENMETER, three, CE_BATCH), 400, "too_many_events")
    with override_settings(NERUBA={**settings.NERUBA, "NERUBA_INGEST_MAX_BYTES": 400}):
        big = ce("big", data={"blob": "x" * 500})
        problem(post(bearer, OPENMETER, big, CE), 413, "payload_too_large")
    assert not UsageEvent.objects.exists()


# --- Lago --------------------------------------------------------------------------------------


def test_a_lago_event_answers_lago_s_event_shape(bearer: APIClient) -> None:
    response = post(bearer, LAGO, {"event": lago("lg-1")})
    assert response.status_code == 200, response.content
    event = response.json()["event"]
    stored = UsageEvent.objects.get(idempotency_key="lg-1")
    assert event["lago_id"] == str(stored.pk)
    assert event["timestamp"] == "2026-03-10T11:00:00Z"
    assert (event["transaction_id"], event["external_subscription_id"], event["code"]) == (
        "lg-1",
        "acme",
        "compute_seconds",
    )
    assert stored.timestamp == datetime(2026, 3, 10, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        (1773140400, datetime(2026, 3, 10, 11, 0, tzinfo=UTC)),
        (1773140400.25, datetime(2026, 3, 10, 11, 0, 0, 250000, tzinfo=UTC)),
        ("1773140400", datetime(2026, 3, 10, 11, 0, tzinfo=UTC)),
        ("2026-03-10T12:00:00+01:00", datetime(2026, 3, 10, 11, 0, tzinfo=UTC)),
        (None, NOW),
    ],
)
def test_a_lago_timestamp_may_be_unix_seconds_or_iso_8601_or_absent(
    bearer: APIClient, stamp: Any, expected: datetime
) -> None:
    assert post(bearer, LAGO, {"event": lago("lg-t", timestamp=stamp)}).status_code == 200
    assert UsageEvent.objects.get(idempotency_key="lg-t").timestamp == expected


@pytest.mark.parametrize(
    ("overrides", "details"),
    [
        ({"timestamp": "2026-03-10T11:00:00"}, {"timestamp": ["invalid_format"]}),
        ({"timestamp": True}, {"timestamp": ["invalid_format"]}),
        ({"transaction_id": None}, {"transaction_id": ["value_is_mandatory"]}),
        ({"code": "nope"}, {"code": ["unknown_metric"]}),
        ({"precise_total_amount_cents": "12.5"}, {"precise_total_amount_cents": ["invalid_field"]}),
        ({"properties": {"seconds": "lots"}}, {"properties": ["invalid_value"]}),
    ],
)
def test_a_bad_lago_event_is_a_422_validation_error_and_a_rejection(
    bearer: APIClient, overrides: dict[str, Any], details: dict[str, Any]
) -> None:
    response = post(bearer, LAGO, {"event": lago("lg-bad", **overrides)})
    assert response.status_code == 422, response.content
    body = response.json()
    assert (body["status"], body["error"], body["code"]) == (
        422,
        "Unprocessable Entity",
        "validation_errors",
    )
    assert body["error_details"] == details
    assert not UsageEvent.objects.exists()
    rejection = IngestRejection.objects.get()
    assert rejection.surface == "lago"
    assert rejection.idempotency_key == ("" if "transaction_id" in overrides else "lg-bad")


def test_a_lago_event_naming_a_subscription_goes_to_its_customer(
    bearer: APIClient, meters: dict[str, Any]
) -> None:
    SubscriptionFactory(customer=meters["other"], plan=PlanFactory(), external_id="sub_1")
    response = post(bearer, LAGO, {"event": lago("lg-s", external_subscription_id="sub_1")})
    assert response.status_code == 200
    assert response.json()["event"]["external_subscription_id"] == "sub_1"
    stored = UsageEvent.objects.get(idempotency_key="lg-s")
    assert stored.customer == meters["other"]


def test_a_lago_subscription_reference_with_a_nul_fails_that_item_not_the_request(
    bearer: APIClient,
) -> None:
    # PostgreSQL cannot compare text with NUL: the subscription lookup must not see it.
    events = [lago("lg-ok"), lago("lg-nul", external_subscription_id="sub\x00x")]
    response = post(bearer, LAGO_BATCH, {"events": events})
    assert response.status_code == 422, response.content
    assert response.json()["error_details"] == {
        "1": {"external_subscription_id": ["invalid_field"]}
    }
    assert list(UsageEvent.objects.values_list("idempotency_key", flat=True)) == ["lg-ok"]


def test_a_lago_event_may_name_the_customer_as_older_clients_did(bearer: APIClient) -> None:
    event = lago("lg-c", external_subscription_id=None, external_customer_id="globex")
    assert post(bearer, LAGO, {"event": event}).status_code == 200
    assert UsageEvent.objects.get(idempotency_key="lg-c").customer.external_id == "globex"


@pytest.mark.parametrize(
    ("url", "body", "status", "code"),
    [
        (LAGO, {"events": [lago("x")]}, 400, "malformed_request"),
        (LAGO, [lago("x")], 400, "malformed_request"),
        (LAGO_BATCH, {"event": lago("x")}, 400, "malformed_request"),
        (LAGO_BATCH, {"events": []}, 400, "malformed_request"),
    ],
)
def test_a_malformed_lago_request_answers_lago_s_error_shape(
    bearer: APIClient, url: str, body: Any, status: int, code: str
) -> None:
    response = post(bearer, url, body)
    assert response.status_code == status
    answer = response.json()
    assert (answer["status"], answer["code"]) == (status, code) and answer["message"]
    assert not IngestBatch.objects.exists()


def test_a_lago_batch_over_the_limit_is_a_validation_error_on_events(bearer: APIClient) -> None:
    with override_settings(NERUBA={**settings.NERUBA, "NERUBA_INGEST_MAX_BATCH": 2}):
        response = post(bearer, LAGO_BATCH, {"events": [lago("a"), lago("b"), lago("c")]})
    assert response.status_code == 422
    assert response.json()["error_details"] == {"events": ["too_many_events"]}


def test_lago_auth_and_scope_errors_answer_lago_s_error_shape(
    make_api_key: Callable[..., tuple[ApiKey, str]], meters: dict[str, Any]
) -> None:
    response = post(APIClient(), LAGO, {"event": lago("lg-1")})
    assert response.status_code == 401
    assert response.json()["error"] == "Unauthorized"
    assert response.json()["code"] == "not_authenticated"
    _, read_only = make_api_key("read")
    reader = APIClient()
    reader.credentials(HTTP_AUTHORIZATION=f"Bearer {read_only}")
    response = post(reader, LAGO_BATCH, {"events": [lago("lg-1")]})
    assert response.status_code == 403
    assert (response.json()["error"], response.json()["code"]) == ("Forbidden", "missing_scope")
    assert not UsageEvent.objects.exists()


def test_a_throttled_lago_client_is_told_when_to_retry(
    bearer: APIClient,
) -> None:
    rest = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api_key": "1/min"}}
    with override_settings(REST_FRAMEWORK=rest):
        assert post(bearer, LAGO, {"event": lago("lg-1")}).status_code == 200
        response = post(bearer, LAGO, {"event": lago("lg-2")})
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert int(response["x-ratelimit-reset"]) == int(response["Retry-After"]) >= 1
    assert not UsageEvent.objects.filter(idempotency_key="lg-2").exists()


# --- Bearer on the native API, and the schema ----------------------------------------------------


def test_the_native_api_takes_the_key_as_bearer_too(
    make_api_key: Callable[..., tuple[ApiKey, str]],
) -> None:
    _, raw = make_api_key("read")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"bearer {raw}")
    assert client.get("/api/v1/customers").status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    response = client.get("/api/v1/customers")
    assert response.status_code == 401
    message = response.json()["error"]["message"]
    assert "Api-Key <key>" in message and "Bearer <key>" in message


@pytest.mark.django_db
def test_the_schema_documents_bearer_keys_and_the_compatible_surfaces() -> None:
    schema = APIClient().get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["ApiKeyAuth"]
    assert (scheme["in"], scheme["name"]) == ("header", "Authorization")
    assert "`Api-Key <prefix>.<secret>`" in scheme["description"]
    assert "`Bearer <prefix>.<secret>`" in scheme["description"]
    assert "Bearer <key>" in schema["info"]["description"]
    openmeter = schema["paths"][OPENMETER]["post"]
    assert set(openmeter["requestBody"]["content"]) == {CE, CE_BATCH, "application/json"}
    assert "204" in openmeter["responses"]
    for status in ("400", "401", "403", "409", "413", "415", "429"):
        assert set(openmeter["responses"][status]["content"]) == {"application/problem+json"}
    for path in (LAGO, LAGO_BATCH):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "403", "413", "422", "429"} <= set(responses)
