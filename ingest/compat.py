"""The OpenMeter- and Lago-compatible ingest surfaces: their request envelopes in, their answers
out. Everything between is the one ingest service (``events_ingest`` with ``surface=``), so the
outcomes, limits, rejections and replay are the native API's; only the shapes differ.

What each surface answers, item by item (the README's migration guide says the same):

- OpenMeter: 204 when every item was stored or was a duplicate. Otherwise a problem document
  (``application/problem+json``), 400 — 409 when every item left over is a conflict — listing
  each item that was not stored; the other items of the batch *were* stored, so resending the
  whole batch is safe (they come back as duplicates).
- Lago: 200 with the events (``{"event": …}`` or ``{"events": […]}``) when every item was stored
  or was a duplicate. Otherwise 422 ``validation_errors`` with ``error_details`` per field (per
  item index in a batch), as Lago's API answers; again the other items were stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ingest.exceptions import MalformedEnvelope, TooManyEvents
from ingest.models import Outcome
from ingest.services import IngestResult
from ingest.validation import lago_customer_ref

STORED = frozenset({Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.REPLAY})
PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


def _check_size(events: list[Any], max_items: int) -> None:
    if not events:
        raise MalformedEnvelope("The batch has no events.")
    if len(events) > max_items:
        raise TooManyEvents(
            f"The batch has {len(events)} events; at most {max_items} are allowed.",
            details={"size": len(events), "max": max_items},
        )


def _unstored(result: IngestResult) -> list[dict[str, Any]]:
    return [r for r in result.results if r["outcome"] not in STORED]


def _summary(result: IngestResult, unstored: list[dict[str, Any]]) -> str:
    first = unstored[0]
    why = f"{first['error']['code']} — {first['error']['message']}"
    if len(result.results) == 1:
        return f"The event ({first['idempotency_key']!r}) was not stored: {why}"
    stored = len(result.results) - len(unstored)
    return (
        f"{len(unstored)} of {len(result.results)} events were not stored ({stored} were). "
        f"First: event {first['index']} ({first['idempotency_key']!r}): {why}"
    )


# --- OpenMeter ---------------------------------------------------------------------------------


def openmeter_payloads(document: Any, media: str, *, max_items: int) -> list[Any]:
    """OpenMeter's envelope: one CloudEvent (``application/cloudevents+json``), an array of them
    (``application/cloudevents-batch+json``), or either as ``application/json``."""
    if media == "application/cloudevents+json" and not isinstance(document, dict):
        raise MalformedEnvelope("A structured CloudEvent must be a JSON object.")
    if media == "application/cloudevents-batch+json" and not isinstance(document, list):
        raise MalformedEnvelope("A CloudEvents batch must be a JSON array.")
    if isinstance(document, dict):
        return [document]
    if not isinstance(document, list):
        raise MalformedEnvelope("Send one CloudEvent object or an array of them.")
    _check_size(document, max_items)
    return document


def problem(
    status: int, detail: str, *, instance: str, code: str, extensions: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem document as OpenMeter's API writes it; ``extensions.code`` carries
    Neruba's stable error code."""
    return {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": instance,
        "extensions": {"code": code, **(extensions or {})},
    }


def openmeter_answer(result: IngestResult, *, instance: str) -> tuple[int, dict[str, Any] | None]:
    """204 and no body when every item was stored or a duplicate; else a problem naming each
    item that was not (the others were stored)."""
    unstored = _unstored(result)
    if not unstored:
        return 204, None
    status = 409 if all(r["outcome"] == Outcome.CONFLICT for r in unstored) else 400
    detail = _summary(result, unstored)
    errors = [
        {
            "index": r["index"],
            "id": r["idempotency_key"],
            "outcome": r["outcome"],
            "event_id": r["event_id"],
            "code": r["error"]["code"],
            "message": r["error"]["message"],
            "details": r["error"]["details"],
        }
        for r in unstored
    ]
    extensions = {"batch_id": result.batch_id, "counts": result.counts, "errors": errors}
    return status, problem(
        status,
        detail,
        instance=instance,
        code="conflict" if status == 409 else "events_not_stored",
        extensions=extensions,
    )


# --- Lago --------------------------------------------------------------------------------------


def lago_payloads(document: Any, *, batch: bool, max_items: int) -> list[Any]:
    """``{"event": {...}}`` or, for the batch endpoint, ``{"events": [...]}``."""
    if not isinstance(document, dict):
        raise MalformedEnvelope("The body must be a JSON object.")
    if not batch:
        event = document.get("event")
        if not isinstance(event, dict):
            raise MalformedEnvelope('Send {"event": {...}}.', details={"field": "event"})
        return [event]
    events = document.get("events")
    if not isinstance(events, list):
        raise MalformedEnvelope('Send {"events": [...]}.', details={"field": "events"})
    _check_size(events, max_items)
    return events


def lago_error(
    status: int, code: str, message: str, error_details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Lago's error body (``status``, ``error``, ``code``, ``error_details``); ``message`` is
    Neruba's explanation, which Lago's clients ignore and people read."""
    body: dict[str, Any] = {"status": status, "error": _TITLES.get(status, "Error"), "code": code}
    if error_details is not None:
        body["error_details"] = error_details
    body["message"] = message
    return body


# Neruba's item error → the Lago field it is about and, where Lago has one, Lago's code for it.
_LAGO_FIELD = {
    "conflict": "transaction_id",
    "unknown_customer": "external_subscription_id",
    "unknown_metric": "code",
    "invalid_timestamp": "timestamp",
    "timestamp_too_old": "timestamp",
    "timestamp_in_future": "timestamp",
    "invalid_value": "properties",
    "properties_too_large": "properties",
}
_LAGO_CODE = {
    "conflict": "value_already_exist",
    "missing_field": "value_is_mandatory",
    "invalid_timestamp": "invalid_format",
    "unknown_customer": "subscription_not_found",
}


def _lago_field_errors(error: dict[str, Any]) -> dict[str, list[str]]:
    code = error["code"]
    field = _LAGO_FIELD.get(code) or error["details"].get("field") or "base"
    return {field: [_LAGO_CODE.get(code, code)]}


def _lago_timestamp(stamp: Any, received: datetime | None) -> str | None:
    """The event's timestamp as Lago's API writes it (ISO 8601, UTC, ``Z``)."""
    moment: datetime | None = None
    if stamp is None or stamp == "":
        moment = received
    elif type(stamp) is int:
        # The common case, and the cheap one: whole Unix seconds.
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    elif isinstance(stamp, float):
        moment = datetime.fromtimestamp(stamp, UTC)
    elif isinstance(stamp, str):
        try:
            moment = datetime.fromtimestamp(float(stamp), UTC)
        except ValueError:
            try:
                moment = datetime.fromisoformat(stamp)
            except ValueError:
                return stamp
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _lago_event(
    raw: dict[str, Any], result: dict[str, Any], created: str | None, stamp: str | None
) -> dict[str, Any]:
    return {
        "lago_id": str(result["event_id"]),
        "transaction_id": raw.get("transaction_id"),
        "lago_customer_id": None,
        "lago_subscription_id": None,
        "external_subscription_id": lago_customer_ref(raw),
        "code": raw.get("code"),
        "timestamp": stamp,
        "precise_total_amount_cents": None,
        "properties": raw.get("properties") or {},
        "created_at": created,
    }


def lago_answer(
    result: IngestResult, payloads: Sequence[Any], *, batch: bool
) -> tuple[int, dict[str, Any]]:
    """200 with the stored events (duplicates name the original) when every item was stored or a
    duplicate; else 422 ``validation_errors`` like Lago's, with Neruba's per-item outcomes."""
    unstored = _unstored(result)
    if not unstored:
        received = result.received_at
        created = None if received is None else received.isoformat().replace("+00:00", "Z")
        events = []
        for r in result.results:
            raw = payloads[r["index"]]
            events.append(
                _lago_event(raw, r, created, _lago_timestamp(raw.get("timestamp"), received))
            )
        return 200, ({"events": events} if batch else {"event": events[0]})
    if batch:
        details: dict[str, Any] = {
            str(r["index"]): _lago_field_errors(r["error"]) for r in unstored
        }
    else:
        details = _lago_field_errors(unstored[0]["error"])
    message = _summary(result, unstored)
    body = lago_error(422, "validation_errors", message, details)
    body["neruba"] = {
        "batch_id": result.batch_id,
        "counts": result.counts,
        "results": unstored,
    }
    return 422, body


def dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), default=str)
