"""The request envelope of ``POST /api/v1/events``: one event, ``{"events": [...]}``, or
CloudEvents in structured (one) or batch (a JSON array) mode. Parsed with the stdlib straight
from the body: whole-request errors are only a malformed envelope, too many items or too many
bytes; everything about one item is that item's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest.exceptions import MalformedEnvelope, TooManyEvents, UnsupportedMediaType
from neruba.jsonparse import loads_strict

CLOUDEVENT = "application/cloudevents+json"
CLOUDEVENT_BATCH = "application/cloudevents-batch+json"


@dataclass
class Envelope:
    payloads: list[Any]
    single: bool
    cloudevents: bool


def _mode(content_type: str) -> str:
    """``ce`` (one structured CloudEvent), ``ce-batch`` or ``json``, from the media type."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == CLOUDEVENT:
        return "ce"
    if media == CLOUDEVENT_BATCH:
        return "ce-batch"
    if media in ("", "application/json") or media.endswith("+json"):
        return "json"
    raise UnsupportedMediaType(details={"content_type": media})


def parse_envelope(body: bytes, content_type: str, *, max_items: int) -> Envelope:
    mode = _mode(content_type)
    # Strict: duplicate keys, NaN/Infinity, out-of-range numbers and deep nesting are 400s
    # with their own codes (``neruba.jsonparse``) before any item is looked at.
    document = loads_strict(body)

    if mode == "ce":
        if not isinstance(document, dict):
            raise MalformedEnvelope("A structured CloudEvent must be a JSON object.")
        return Envelope([document], single=True, cloudevents=True)
    if mode == "ce-batch":
        if not isinstance(document, list):
            raise MalformedEnvelope("A CloudEvents batch must be a JSON array.")
        events, cloudevents = document, True
    elif isinstance(document, dict) and "events" in document:
        events, cloudevents = document["events"], False
        if not isinstance(events, list):
            raise MalformedEnvelope("`events` must be a list of events.")
    elif isinstance(document, dict):
        return Envelope([document], single=True, cloudevents=False)
    else:
        raise MalformedEnvelope('Send one event object or {"events": [...]}.')
    if not events:
        raise MalformedEnvelope("The batch has no events.")
    if len(events) > max_items:
        raise TooManyEvents(
            f"The batch has {len(events)} events; at most {max_items} are allowed.",
            details={"size": len(events), "max": max_items},
        )
    return Envelope(events, single=False, cloudevents=cloudevents)
