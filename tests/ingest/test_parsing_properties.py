"""Property tests for the ingest parsers: whatever bytes or JSON a client sends, the parsers
answer with an envelope, a whole-request error or a per-item outcome — never an unexpected
exception — and the canonical hash ignores key order and timestamp offsets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.envelope import CLOUDEVENT, CLOUDEVENT_BATCH, parse_envelope
from ingest.exceptions import MalformedEnvelope, TooManyEvents, UnsupportedMediaType
from ingest.validation import extract_value, parse_item
from neruba.jsonparse import JsonRejected

ITEM_CODES = {"invalid_event", "missing_field", "invalid_field", "invalid_timestamp"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
# Text a client could send and PostgreSQL can store: no NUL, no lone surrogates.
clean = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
well_formed = st.fixed_dictionaries(
    {
        "idempotency_key": st.text(clean, min_size=1, max_size=40),
        "customer": st.text(clean, min_size=1, max_size=20),
        "metric": st.text(clean, min_size=1, max_size=20),
        "timestamp": timestamps.map(lambda t: t.isoformat()),
        "properties": st.dictionaries(
            st.text(clean, max_size=8), st.integers() | st.text(clean, max_size=8), max_size=5
        ),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    content_type=st.sampled_from(
        ["application/json", CLOUDEVENT, CLOUDEVENT_BATCH, "text/plain", ""]
    ),
)
def test_any_body_is_an_envelope_or_a_whole_request_error(body: bytes, content_type: str) -> None:
    try:
        envelope = parse_envelope(body, content_type, max_items=5)
    except (MalformedEnvelope, TooManyEvents, UnsupportedMediaType, JsonRejected) as exc:
        assert exc.http_status in {400, 413, 415}
        return
    assert envelope.payloads and len(envelope.payloads) <= 5
    assert envelope.single == (len(envelope.payloads) == 1 and envelope.single)


@settings(max_examples=400, deadline=None)
@given(raw=json_values, cloudevent=st.booleans())
def test_any_item_parses_or_fails_with_a_stable_code(raw: object, cloudevent: bool) -> None:
    item = parse_item(0, raw, cloudevent=cloudevent)
    if item.error is not None:
        assert item.error[0] in ITEM_CODES
    else:
        assert item.key and item.timestamp is not None and item.timestamp.tzinfo is not None
        assert len(item.payload_hash) == 64


@settings(max_examples=200, deadline=None)
@given(event=well_formed, offset_hours=st.integers(min_value=-12, max_value=14))
def test_the_canonical_hash_ignores_key_order_and_the_timestamp_offset(
    event: dict, offset_hours: int
) -> None:
    first = parse_item(0, event)
    assert first.error is None
    stamp = datetime.fromisoformat(event["timestamp"]).astimezone(
        timezone(timedelta(hours=offset_hours))
    )
    reordered = {
        "properties": dict(reversed(list(event["properties"].items()))),
        "timestamp": stamp.isoformat(),
        **{k: event[k] for k in ("metric", "customer", "idempotency_key")},
    }
    again = parse_item(1, reordered)
    assert again.payload_hash == first.payload_hash
    changed = parse_item(2, {**event, "properties": {**event["properties"], "_x": 1}})
    assert changed.payload_hash != first.payload_hash


@settings(max_examples=300, deadline=None)
@given(raw=json_values, aggregation=st.sampled_from(["count", "sum", "max", "unique_count"]))
def test_value_extraction_gives_a_bounded_value_or_an_invalid_value_message(
    raw: object, aggregation: str
) -> None:
    try:
        value, distinct = extract_value(aggregation, "v", {"v": raw})
    except ValueError as exc:
        assert str(exc)
        return
    if aggregation == "count":
        assert value == 1
    elif aggregation == "unique_count":
        assert value is None and 0 < len(distinct) <= 255
    else:
        assert isinstance(value, Decimal) and value.is_finite() and abs(value) < Decimal(10) ** 20


def test_a_literal_backslash_u0000_in_properties_is_not_mistaken_for_a_nul() -> None:
    base = {
        "idempotency_key": "k",
        "customer": "acme",
        "metric": "api_calls",
        "timestamp": "2026-03-10T11:00:00Z",
    }
    assert parse_item(0, {**base, "properties": {"path": "C:\\u0000"}}).error is None
    nul = parse_item(0, {**base, "properties": {"path": "a\x00b"}}).error
    assert nul is not None and nul[0] == "invalid_field"
