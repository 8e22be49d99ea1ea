"""Drop-in ingest endpoints for clients written against OpenMeter's or Lago's API: point the
client's endpoint at ``/compat/openmeter`` or ``/compat/lago/`` and keep its key header
(``Authorization: Bearer <key>``). Thin views: the surface's envelope in (ingest.compat), the
one ingest service, the surface's answer out. Errors, the whole-request ones included
(authentication, scope, throttling, size), leave in the surface's own error shape."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from django.http.request import RawPostDataException
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.settings import api_settings

from ingest import compat, services
from ingest.exceptions import PayloadTooLarge
from ingest.validation import SURFACE_LAGO, SURFACE_OPENMETER
from neruba.api import ScopedApi
from neruba.auth import api_key_from_request
from neruba.errors import exception_handler as neruba_exception_handler

CLOUDEVENT = "application/cloudevents+json"
CLOUDEVENT_BATCH = "application/cloudevents-batch+json"


def _project_json_parser() -> type[BaseParser]:
    """The project's default JSON parser (whatever REST_FRAMEWORK names), so these endpoints
    parse JSON exactly like every other endpoint does."""
    for parser in api_settings.DEFAULT_PARSER_CLASSES:
        if parser.media_type == "application/json":
            return parser
    raise RuntimeError("REST_FRAMEWORK has no application/json parser")


def _parser_for(media_type: str) -> type[BaseParser]:
    base = _project_json_parser()
    name = "".join(part.title() for part in media_type.split("/")[1].replace("+", "-").split("-"))
    return type(f"{name}Parser", (base,), {"media_type": media_type})


class _AnyAccept(DefaultContentNegotiation):
    """These clients send no Accept header, or one naming their own error type
    (application/problem+json): the answer's shape is the surface's, whatever they ask."""

    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: Any = None
    ) -> tuple[Any, str]:
        return renderers[0], renderers[0].media_type


class _CompatIngestApi(ScopedApi):
    required_scopes = {"POST": "ingest"}
    content_negotiation_class = _AnyAccept
    surface = ""

    def get_exception_handler(self) -> Any:
        return self._error

    def _error(self, exc: Exception, ctx: dict[str, Any]) -> HttpResponse:
        # The native handler decides status, code, message and headers (Retry-After,
        # WWW-Authenticate); only the body's shape is the surface's.
        native = neruba_exception_handler(exc, ctx)
        error = native.data["error"]
        response = self.error_response(
            native.status_code, error["code"], error["message"], error["details"]
        )
        for header in ("WWW-Authenticate", "Retry-After"):
            if native.has_header(header):
                response[header] = native[header]
        return response

    def error_response(
        self, status: int, code: str, message: str, details: dict[str, Any]
    ) -> HttpResponse:
        raise NotImplementedError

    def read_document(self, request: Request) -> tuple[Any, int]:
        """The parsed body and its size, refusing more than NERUBA_INGEST_MAX_BYTES before it is
        parsed (413), as the native endpoint does."""
        max_bytes = settings.NERUBA["NERUBA_INGEST_MAX_BYTES"]
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > max_bytes:
            raise PayloadTooLarge(details={"bytes": declared, "max": max_bytes})
        try:
            body = request.body
        except (RequestDataTooBig, RawPostDataException):
            raise PayloadTooLarge(details={"max": max_bytes}) from None
        if len(body) > max_bytes:
            raise PayloadTooLarge(details={"bytes": len(body), "max": max_bytes})
        return request.data, len(body)

    def ingest(self, request: Request, payloads: list[Any], size: int) -> services.IngestResult:
        return services.events_ingest(
            payloads=payloads,
            api_key=api_key_from_request(request),
            surface=self.surface,
            body_bytes=size,
            request_id=getattr(request._request, "request_id", ""),
        )


# --- OpenMeter ---------------------------------------------------------------------------------

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "extensions": {
            "type": "object",
            "additionalProperties": True,
            "description": "`code` (Neruba's error code); for items not stored: `batch_id`, "
            "`counts` and `errors` (index, id, outcome, code, message, details per item).",
        },
    },
}
_OPENMETER_EVENT = {
    "type": "object",
    "required": ["specversion", "id", "source", "type", "subject"],
    "properties": {
        "specversion": {"type": "string", "minLength": 1},
        "id": {"type": "string", "minLength": 1, "description": "Becomes the idempotency key."},
        "source": {"type": "string", "minLength": 1},
        "type": {"type": "string", "minLength": 1, "description": "The metric's code (meter)."},
        "subject": {"type": "string", "minLength": 1, "description": "The customer."},
        "time": {"type": "string", "format": "date-time", "description": "Default: receipt."},
        "data": {"type": "object", "additionalProperties": True},
    },
}
_ANY_ITEMS = {"type": "array", "minItems": 1, "maxItems": 1000, "items": {}}


def _problems(*statuses: tuple[int, str]) -> dict[Any, OpenApiResponse]:
    return {
        (status, compat.PROBLEM_JSON): OpenApiResponse(_PROBLEM, description=description)
        for status, description in statuses
    }


class OpenMeterEventsApi(_CompatIngestApi):
    surface = SURFACE_OPENMETER
    parser_classes = [
        *api_settings.DEFAULT_PARSER_CLASSES,
        _parser_for(CLOUDEVENT),
        _parser_for(CLOUDEVENT_BATCH),
    ]

    def error_response(
        self, status: int, code: str, message: str, details: dict[str, Any]
    ) -> HttpResponse:
        body = compat.problem(
            status,
            message,
            instance=self.request.path,
            code=code,
            extensions={"details": details} if details else None,
        )
        return HttpResponse(compat.dumps(body), status=status, content_type=compat.PROBLEM_JSON)

    @extend_schema(
        operation_id="compat_openmeter_events_ingest",
        tags=["compat"],
        summary="OpenMeter-compatible ingest (CloudEvents, single or batch)",
        description=(
            "For OpenMeter clients: `endpoint=https://<host>/compat/openmeter`, the key as "
            "`Authorization: Bearer <key>` (ingest scope). id → idempotency key, subject → "
            "customer, type → metric, time → timestamp (the receipt when absent), data → "
            "properties. 204 when every event was stored or was a duplicate. Otherwise a "
            "problem document listing the events not stored (409 when all of them are "
            "conflicts, else 400); the batch's other events were stored, so a resend is safe."
        ),
        request={
            CLOUDEVENT: _OPENMETER_EVENT,
            CLOUDEVENT_BATCH: _ANY_ITEMS,
            "application/json": {"anyOf": [_OPENMETER_EVENT, _ANY_ITEMS]},
        },
        responses={
            204: OpenApiResponse(description="Every event was stored or was a duplicate."),
            **_problems(
                (400, "Events not stored (listed), or a malformed request."),
                (401, "No API key, or the key is invalid, revoked or expired."),
                (403, "The API key lacks the ingest scope."),
                (409, "Every event not stored conflicts with a stored one (listed)."),
                (413, "The body is too large."),
                (415, "Not a JSON or CloudEvents media type."),
                (429, "Too many requests for this key; see Retry-After."),
            ),
        },
        examples=[
            OpenApiExample(
                "One CloudEvent",
                request_only=True,
                media_type=CLOUDEVENT,
                value={
                    "specversion": "1.0",
                    "id": "5c10fade-1c9e-4d6c-8275-c52c36731d3c",
                    "source": "api-gateway",
                    "type": "api_calls",
                    "subject": "acme",
                    "time": "2026-01-31T12:00:00Z",
                    "data": {"endpoint": "/v1/search"},
                },
            )
        ],
    )
    def post(self, request: Request) -> HttpResponse:
        document, size = self.read_document(request)
        media = (request.content_type or "").split(";", 1)[0].strip().lower()
        payloads = compat.openmeter_payloads(
            document, media, max_items=settings.NERUBA["NERUBA_INGEST_MAX_BATCH"]
        )
        result = self.ingest(request, payloads, size)
        status, body = compat.openmeter_answer(result, instance=request.path)
        if body is None:
            return HttpResponse(status=204)
        return HttpResponse(compat.dumps(body), status=status, content_type=compat.PROBLEM_JSON)


# --- Lago --------------------------------------------------------------------------------------

_LAGO_ERROR = {
    "type": "object",
    "required": ["status", "error", "code"],
    "properties": {
        "status": {"type": "integer"},
        "error": {"type": "string"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "error_details": {"type": "object", "additionalProperties": True},
        "neruba": {
            "type": "object",
            "additionalProperties": True,
            "description": "batch_id, counts, and the result of each item not stored.",
        },
    },
}
_LAGO_EVENT_IN = {
    "type": "object",
    "required": ["transaction_id", "external_subscription_id", "code"],
    "properties": {
        "transaction_id": {
            "type": "string",
            "minLength": 1,
            "description": "Becomes the idempotency key.",
        },
        "external_subscription_id": {
            "type": "string",
            "minLength": 1,
            "description": "A subscription's external_id, else a customer's external_id.",
        },
        "code": {"type": "string", "minLength": 1, "description": "The metric's code."},
        "timestamp": {
            "description": "Unix seconds or ISO 8601 with an offset; the receipt when absent.",
            "anyOf": [{"type": "number"}, {"type": "string"}],
            "nullable": True,
        },
        "properties": {"type": "object", "nullable": True, "additionalProperties": True},
        "precise_total_amount_cents": {
            "type": "string",
            "nullable": True,
            "description": "Not supported: null or absent (a value is refused as invalid_field).",
        },
    },
}
_LAGO_EVENT_OUT = {
    "type": "object",
    "required": ["lago_id", "transaction_id", "external_subscription_id", "code", "timestamp"],
    "properties": {
        "lago_id": {"type": "string", "description": "The stored event's id."},
        "transaction_id": {"type": "string"},
        "lago_customer_id": {"type": "string", "nullable": True},
        "lago_subscription_id": {"type": "string", "nullable": True},
        "external_subscription_id": {"type": "string"},
        "code": {"type": "string"},
        "timestamp": {"type": "string"},
        "precise_total_amount_cents": {"type": "string", "nullable": True},
        "properties": {"type": "object", "additionalProperties": True},
        "created_at": {"type": "string", "nullable": True},
    },
}


def _lago_errors(*statuses: tuple[int, str]) -> dict[Any, OpenApiResponse]:
    return {
        (status, "application/json"): OpenApiResponse(_LAGO_ERROR, description=description)
        for status, description in statuses
    }


_LAGO_COMMON_ERRORS = (
    (400, "A malformed request."),
    (401, "No API key, or the key is invalid, revoked or expired."),
    (403, "The API key lacks the ingest scope."),
    (413, "The body is too large."),
    (415, "Not JSON."),
    (429, "Too many requests for this key; see Retry-After and x-ratelimit-reset."),
)


class _LagoApi(_CompatIngestApi):
    surface = SURFACE_LAGO
    batch = False

    def error_response(
        self, status: int, code: str, message: str, details: dict[str, Any]
    ) -> HttpResponse:
        if code == "too_many_events":
            # Lago answers an oversized batch as a validation error on `events`.
            status, code, details = 422, "validation_errors", {"events": ["too_many_events"]}
        body = compat.lago_error(status, code, message, details or None)
        response = HttpResponse(compat.dumps(body), status=status, content_type="application/json")
        if status == 429 and "retry_after_seconds" in details:
            # Lago's client waits this many seconds before it retries a 429.
            response["x-ratelimit-reset"] = str(details["retry_after_seconds"])
        return response

    def post(self, request: Request) -> HttpResponse:
        document, size = self.read_document(request)
        payloads = compat.lago_payloads(
            document, batch=self.batch, max_items=settings.NERUBA["NERUBA_INGEST_MAX_BATCH"]
        )
        result = self.ingest(request, payloads, size)
        status, body = compat.lago_answer(result, payloads, batch=self.batch)
        return HttpResponse(compat.dumps(body), status=status, content_type="application/json")


_LAGO_DESCRIPTION = (
    "For Lago clients: `api_url=https://<host>/compat/lago/` (the trailing slash matters), the "
    "key as `Authorization: Bearer <key>` (ingest scope). transaction_id → idempotency key, "
    "external_subscription_id → the subscription with that external_id (else the customer "
    "with that external_id), code → metric, timestamp (Unix seconds or ISO 8601; the receipt "
    "when absent) → timestamp, properties → properties. 200 with the events when every event "
    "was stored or was a duplicate (a duplicate answers the original). Otherwise 422 "
    "`validation_errors` with `error_details` per field{per_item}; the other events were "
    "stored, so a resend is safe."
)


class LagoEventApi(_LagoApi):
    batch = False

    @extend_schema(
        operation_id="compat_lago_event_create",
        tags=["compat"],
        summary="Lago-compatible ingest: one event",
        description=_LAGO_DESCRIPTION.format(per_item=""),
        request={
            "application/json": {
                "type": "object",
                "required": ["event"],
                "properties": {"event": _LAGO_EVENT_IN},
            }
        },
        responses={
            (200, "application/json"): OpenApiResponse(
                {
                    "type": "object",
                    "required": ["event"],
                    "properties": {"event": _LAGO_EVENT_OUT},
                },
                description="Stored, or a duplicate of the stored event.",
            ),
            **_lago_errors(
                *_LAGO_COMMON_ERRORS, (422, "The event was not stored (error_details say why).")
            ),
        },
    )
    def post(self, request: Request) -> HttpResponse:
        return super().post(request)


class LagoEventBatchApi(_LagoApi):
    batch = True

    @extend_schema(
        operation_id="compat_lago_events_batch",
        tags=["compat"],
        summary="Lago-compatible ingest: a batch",
        description=_LAGO_DESCRIPTION.format(per_item=" keyed by the item's index"),
        request={
            "application/json": {
                "type": "object",
                "required": ["events"],
                "properties": {"events": _ANY_ITEMS},
            }
        },
        responses={
            (200, "application/json"): OpenApiResponse(
                {
                    "type": "object",
                    "required": ["events"],
                    "properties": {"events": {"type": "array", "items": _LAGO_EVENT_OUT}},
                },
                description="Every event was stored or was a duplicate.",
            ),
            **_lago_errors(
                *_LAGO_COMMON_ERRORS,
                (422, "Events not stored (error_details by index), or an empty or too big batch."),
            ),
        },
    )
    def post(self, request: Request) -> HttpResponse:
        return super().post(request)
