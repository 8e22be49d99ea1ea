"""The strict JSON reader (``neruba.jsonparse``): property tests against the stdlib, and every
JSON endpoint (API, ingest, CloudEvents) refusing hostile bodies with a 400 and storing nothing."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from ingest.models import IngestBatch, IngestRejection, UsageEvent
from neruba.jsonparse import MAX_DEPTH, MAX_INT, JsonRejected, loads_strict
from neruba.models import Customer
from tests.ingest.conftest import event, frozen, ingest_client, meters  # noqa: F401 (fixtures)

CODES = {
    "malformed_request",
    "json_too_deep",
    "json_duplicate_key",
    "json_non_finite_number",
    "json_number_out_of_range",
}

finite = st.floats(allow_nan=False, allow_infinity=False)
in_range = st.integers(min_value=-MAX_INT - 1, max_value=MAX_INT)
safe_json = st.recursive(
    st.none() | st.booleans() | finite | in_range | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(document=safe_json)
def test_every_safe_document_reads_exactly_as_the_stdlib_reads_it(document: Any) -> None:
    body = json.dumps(document).encode()
    assert _depth(document) <= MAX_DEPTH
    assert loads_strict(body) == json.loads(body)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_body_is_a_document_or_a_400_with_a_stable_code(body: bytes) -> None:
    try:
        loads_strict(body)
    except JsonRejected as exc:
        assert exc.http_status == 400 and exc.code in CODES


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.text(max_size=5), safe_json), min_size=1, max_size=5),
    extra=safe_json,
)
def test_an_object_with_a_repeated_key_is_refused_wherever_it_is_nested(
    pairs: list[tuple[str, Any]], extra: Any
) -> None:
    key = pairs[0][0]
    members = [*(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs), f"{json.dumps(key)}: 1"]
    obj = "{" + ", ".join(members) + "}"
    body = json.dumps({"outer": [json.dumps(extra)]})[:-2] + ", " + obj + "]}"
    with pytest.raises(JsonRejected) as caught:
        loads_strict(body)
    assert caught.value.code == "json_duplicate_key"


@settings(max_examples=100, deadline=None)
@given(depth=st.integers(min_value=MAX_DEPTH + 1, max_value=20_000), brackets=st.sampled_from("[{"))
def test_nesting_past_the_limit_is_refused_at_any_depth(depth: int, brackets: str) -> None:
    if brackets == "[":
        body = "[" * depth + "]" * depth
    else:
        body = '{"a":' * depth + "1" + "}" * depth
    with pytest.raises(JsonRejected) as caught:
        loads_strict(body)
    assert caught.value.code == "json_too_deep"


@settings(max_examples=200, deadline=None)
@given(
    number=st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
    | st.integers(min_value=MAX_INT + 1).map(str)
    | st.integers(max_value=-MAX_INT - 2).map(str)
)
def test_non_finite_and_out_of_range_numbers_are_refused(number: str) -> None:
    with pytest.raises(JsonRejected) as caught:
        loads_strict('{"value": ' + number + "}")
    assert caught.value.code in {"json_non_finite_number", "json_number_out_of_range"}
    if number in ("NaN", "Infinity", "-Infinity"):
        assert caught.value.code == "json_non_finite_number"


def test_finite_edges_still_read() -> None:
    assert loads_strict(f"[{MAX_INT}, {-MAX_INT - 1}, 1.7976931348623157e308]") == [
        MAX_INT,
        -MAX_INT - 1,
        1.7976931348623157e308,
    ]
    assert not math.isinf(loads_strict("1e308"))


# --- the endpoints ---------------------------------------------------------------------------

HOSTILE = {
    "json_too_deep": "[" * 10_000 + "]" * 10_000,
    "json_number_out_of_range": json.dumps(event("k-range"))[:-1] + ', "value": 1e400}',
    "json_duplicate_key": json.dumps(event("k-dup"))[:-1] + ', "customer": "globex"}',
    "json_non_finite_number": '{"events": [' + json.dumps(event("k-nan"))[:-1] + ', "x": NaN}]}',
}


def _assert_error(response: Any, code: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.mark.parametrize("code", sorted(HOSTILE))
@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/cloudevents+json", "application/cloudevents-batch+json"],
)
def test_ingest_refuses_hostile_json_with_a_400_and_stores_nothing(
    ingest_client: APIClient,  # noqa: F811 (the fixture imported above)
    code: str,
    content_type: str,
) -> None:
    response = ingest_client.post("/api/v1/events", HOSTILE[code], content_type=content_type)
    _assert_error(response, code)
    assert not UsageEvent.objects.exists()
    assert not IngestBatch.objects.exists() and not IngestRejection.objects.exists()


@pytest.mark.parametrize(
    ("code", "body"),
    [
        ("json_too_deep", '{"external_id": "deep", "name": ' + "[" * 10_000 + "]" * 10_000 + "}"),
        ("json_number_out_of_range", '{"external_id": "big", "name": "Big", "x": 1e400}'),
        (
            "json_duplicate_key",
            '{"external_id": "acme2", "name": "A", "external_id": "globex2"}',
        ),
        ("json_non_finite_number", '{"external_id": "nan", "name": "N", "x": -Infinity}'),
        ("malformed_request", '{"external_id": '),
    ],
)
def test_the_api_refuses_hostile_json_with_a_400_and_creates_nothing(
    api: Callable[..., APIClient], code: str, body: str
) -> None:
    before = Customer.objects.count()
    response = api("write", "read").post("/api/v1/customers", body, content_type="application/json")
    _assert_error(response, code)
    assert Customer.objects.count() == before


def test_a_duplicate_key_in_a_signed_stripe_event_is_refused() -> None:
    with pytest.raises(JsonRejected) as caught:
        loads_strict('{"id": "evt_1", "object": "event", "id": "evt_2"}')
    assert caught.value.code == "json_duplicate_key"
