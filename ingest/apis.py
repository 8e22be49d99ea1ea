from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from django.http.request import RawPostDataException
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ingest import backfills, corrections, selectors, services
from ingest.envelope import CLOUDEVENT, CLOUDEVENT_BATCH, parse_envelope
from ingest.exceptions import PayloadTooLarge
from ingest.models import Metric, UsageEvent
from neruba.api import PAGE, ErrorSerializer, ScopedApi, StrictInput, page_of
from neruba.auth import api_key_from_request
from neruba.errors import NotFound
from neruba.models import Customer


class MetricOutput(serializers.ModelSerializer):
    class Meta:
        model = Metric
        fields = ["code", "name", "aggregation", "field"]


class MetricListApi(ScopedApi):
    required_scopes = {"GET": "read"}
    allowed_query = {"GET": PAGE}

    @extend_schema(operation_id="metrics_list", responses={200: page_of(MetricOutput)})
    def get(self, request: Request) -> Response:
        return self.paginated(request, Metric.objects.all(), MetricOutput)


# --- ingest ----------------------------------------------------------------------------------
# The serializers below document the contract for the schema only: the hot path parses the
# body with the stdlib and validates in ingest.validation (a per-item serializer would cost
# more than the INSERT itself).


class IngestItemError(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField()


class IngestResultOutput(serializers.Serializer):
    index = serializers.IntegerField()
    idempotency_key = serializers.CharField(allow_null=True)
    outcome = serializers.ChoiceField(
        choices=["accepted", "duplicate", "conflict", "failed", "replay"]
    )
    event_id = serializers.IntegerField(allow_null=True)
    error = IngestItemError(required=False)


class IngestBatchOutput(serializers.Serializer):
    batch_id = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField())
    results = IngestResultOutput(many=True)


_STRING = {"type": "string", "minLength": 1}
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["idempotency_key", "customer", "metric", "timestamp"],
    "properties": {
        "idempotency_key": {**_STRING, "maxLength": 255},
        "customer": {**_STRING, "description": "The customer's external_id."},
        "metric": {**_STRING, "description": "The metric's code."},
        "timestamp": {"type": "string", "format": "date-time"},
        "properties": {"type": "object", "additionalProperties": True},
    },
}
_CLOUDEVENT_SCHEMA = {
    "type": "object",
    "required": ["specversion", "id", "source", "type", "subject", "time"],
    "properties": {
        "specversion": _STRING,
        "id": {**_STRING, "description": "Becomes the idempotency key."},
        "source": _STRING,
        "type": {**_STRING, "description": "The metric's code."},
        "subject": {**_STRING, "description": "The customer's external_id."},
        "time": {"type": "string", "format": "date-time"},
        "data": {"type": "object", "additionalProperties": True},
    },
}
# In a batch each item is judged on its own (a bad item is that item's `failed` outcome, never
# a rejected batch), so the items are any JSON value as far as the request schema goes.
_ITEMS = {"type": "array", "minItems": 1, "maxItems": 1000, "items": {}}
_BATCH_SCHEMA = {"type": "object", "required": ["events"], "properties": {"events": _ITEMS}}


class EventIngestApi(ScopedApi):
    required_scopes = {"POST": "ingest"}
    allowed_query = {"POST": frozenset({"backfill"})}
    parser_classes: list[Any] = []  # the body is read raw; see post()

    @extend_schema(
        operation_id="events_ingest",
        summary="Ingest one usage event or a batch",
        description=(
            'One event, `{"events": [...]}` (at most NERUBA_INGEST_MAX_BATCH), or CloudEvents '
            "(`application/cloudevents+json`, `application/cloudevents-batch+json`: id, "
            "subject, type, time, data). Each item gets an outcome: accepted, duplicate, "
            "conflict, failed or replay. A batch answers 200 with the counts and one result "
            "per item; a single event answers 201 accepted, 200 duplicate, 409 conflict or "
            "422 failed with its result object. With `?backfill=<id>` the items load history "
            "into that open backfill: its time window replaces the ingest window (an item "
            "outside it fails with `outside_backfill_window`); a closed backfill answers 409 "
            "`backfill_closed`."
        ),
        parameters=[
            OpenApiParameter(
                "backfill",
                int,
                description="An open backfill's id: load history inside its window.",
            )
        ],
        request={
            "application/json": {"anyOf": [_EVENT_SCHEMA, _BATCH_SCHEMA]},
            CLOUDEVENT: _CLOUDEVENT_SCHEMA,
            CLOUDEVENT_BATCH: _ITEMS,
        },
        responses={
            200: OpenApiResponse(
                PolymorphicProxySerializer(
                    component_name="IngestAnswer",
                    serializers=[IngestBatchOutput, IngestResultOutput],
                    resource_type_field_name=None,
                ),
                description="A batch, or a duplicate single event.",
            ),
            201: OpenApiResponse(IngestResultOutput, description="A single event was accepted."),
            400: OpenApiResponse(ErrorSerializer, description="Malformed or too many items."),
            404: OpenApiResponse(ErrorSerializer, description="No backfill has that id."),
            409: OpenApiResponse(IngestResultOutput, description="Conflicting single event."),
            413: OpenApiResponse(ErrorSerializer, description="The body is too large."),
            415: OpenApiResponse(ErrorSerializer, description="Not a JSON media type."),
            422: OpenApiResponse(IngestResultOutput, description="A single event failed."),
        },
        examples=[
            OpenApiExample(
                "One event",
                request_only=True,
                value={
                    "idempotency_key": "req-8f14e45f",
                    "customer": "acme",
                    "metric": "api_calls",
                    "timestamp": "2026-01-31T12:00:00Z",
                    "properties": {"endpoint": "/v1/search"},
                },
            )
        ],
    )
    def post(self, request: Request) -> HttpResponse:
        conf = settings.NERUBA
        max_bytes = conf["NERUBA_INGEST_MAX_BYTES"]
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
        envelope = parse_envelope(
            body,
            request.META.get("CONTENT_TYPE", ""),
            max_items=conf["NERUBA_INGEST_MAX_BATCH"],
        )
        backfill_id = request.query_params.get("backfill")
        if backfill_id is not None:
            result = backfills.backfill_ingest(
                backfill_id=backfill_id,
                payloads=envelope.payloads,
                api_key=api_key_from_request(request),
                cloudevents=envelope.cloudevents,
                body_bytes=len(body),
                request_id=getattr(request._request, "request_id", ""),
            )
        else:
            result = services.events_ingest(
                payloads=envelope.payloads,
                api_key=api_key_from_request(request),
                cloudevents=envelope.cloudevents,
                body_bytes=len(body),
                request_id=getattr(request._request, "request_id", ""),
            )
        if envelope.single:
            answer = result.results[0]
            status = services.STATUS_BY_OUTCOME[answer["outcome"]]
            return HttpResponse(json.dumps(answer), status=status, content_type="application/json")
        return HttpResponse(
            json.dumps(result.as_dict()), status=200, content_type="application/json"
        )


class StoredEventOutput(serializers.ModelSerializer):
    event_id = serializers.IntegerField(source="pk")
    customer = serializers.CharField(source="customer.external_id")
    metric = serializers.CharField(source="metric.code")
    batch_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = UsageEvent
        fields = [
            "event_id",
            "idempotency_key",
            "customer",
            "metric",
            "timestamp",
            "properties",
            "value",
            "distinct_value",
            "payload_hash",
            "received_at",
            "batch_id",
            "source",
            "late",
            "voided_at",
        ]


class EventCorrectionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=["void", "amend"])
    at = serializers.DateTimeField()
    actor = serializers.CharField()
    reason = serializers.CharField()
    before = serializers.DictField()
    after = serializers.DictField()
    excluded_event_id = serializers.IntegerField()
    replacement_event_id = serializers.IntegerField(allow_null=True)
    invoiced_period = serializers.BooleanField()
    bulk_id = serializers.CharField(allow_blank=True)


class CountedOutput(serializers.Serializer):
    event_id = serializers.IntegerField(source="pk")
    value = serializers.DecimalField(max_digits=30, decimal_places=10, allow_null=True)
    distinct_value = serializers.CharField(allow_blank=True)
    properties = serializers.DictField()


class EventHistoryOutput(serializers.Serializer):
    outcome = serializers.CharField()
    at = serializers.DateTimeField()
    batch_id = serializers.IntegerField(allow_null=True)
    event_id = serializers.IntegerField(allow_null=True)
    rejection_id = serializers.IntegerField(allow_null=True)
    status = serializers.CharField(allow_null=True)
    error = serializers.DictField(allow_null=True)


class ArchivedEventOutput(serializers.Serializer):
    event_id = serializers.IntegerField()
    timestamp = serializers.DateTimeField()
    month = serializers.CharField(help_text="The archived month, YYYY-MM.")
    archived_at = serializers.DateTimeField()


class EventDetailApi(ScopedApi):
    required_scopes = {"GET": "read"}

    class Output(serializers.Serializer):
        idempotency_key = serializers.CharField()
        event = StoredEventOutput(allow_null=True)
        archived = ArchivedEventOutput(
            allow_null=True,
            help_text="Set when the event's month was archived: the event left the live store, "
            "its key is still refused.",
        )
        duplicate_count = serializers.IntegerField()
        last_duplicate_at = serializers.DateTimeField(allow_null=True)
        history = EventHistoryOutput(many=True)
        counted = serializers.BooleanField(help_text="False once voided.")
        counted_event = CountedOutput(
            allow_null=True,
            help_text="The row counted for this key now (an amendment's, once "
            "amended); null once voided.",
        )
        corrections = EventCorrectionOutput(many=True)

    @extend_schema(
        operation_id="events_retrieve",
        summary="An event by its idempotency key, with its outcome history",
        responses={200: Output, 404: ErrorSerializer},
    )
    def get(self, request: Request, idempotency_key: str) -> Response:
        found = selectors.event_history(idempotency_key=idempotency_key)
        if found is None:
            raise NotFound("No event or rejection has that idempotency key.")
        return Response(self.Output(found).data)


# --- corrections -----------------------------------------------------------------------------


def _valid(serializer: type[serializers.Serializer[Any]], request: Request) -> dict[str, Any]:
    data = serializer(data=request.data)
    data.is_valid(raise_exception=True)
    return dict(data.validated_data)


class _KeyedPostApi(ScopedApi):
    """``events/<key>/void`` and ``…/amend``. Keys may contain slashes, so a GET of a key that
    happens to end in ``/void`` or ``/amend`` is the event detail of that whole key."""

    suffix = ""
    required_scopes = {"GET": "read", "POST": "write"}

    @extend_schema(
        summary="An event whose key itself ends in /void or /amend (keys may hold slashes)",
        responses={200: EventDetailApi.Output, 404: ErrorSerializer},
    )
    def get(self, request: Request, idempotency_key: str) -> Response:
        return EventDetailApi().get(request, f"{idempotency_key}/{self.suffix}")


class CorrectionOutput(serializers.Serializer):
    correction = EventCorrectionOutput()
    event = EventDetailApi.Output()


def _correction_answer(correction: Any, key: str) -> Response:
    found = selectors.event_history(idempotency_key=key)
    answer = next(c for c in found["corrections"] if c["id"] == correction.pk)  # type: ignore[index]
    data = CorrectionOutput({"correction": answer, "event": found}).data
    return Response(data, status=201)


class EventVoidApi(_KeyedPostApi):
    suffix = "void"

    class Input(StrictInput):
        reason = serializers.CharField()

    @extend_schema(
        operation_id="events_void",
        summary="Void an event: no aggregation counts it from now on",
        description=(
            "The stored event is never deleted or edited: the correction (actor, reason, before "
            "and after) is recorded and the key stays taken forever. An event of a window "
            "already invoiced becomes a drift finding at the next sweep."
        ),
        request=Input,
        responses={201: CorrectionOutput, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request, idempotency_key: str) -> Response:
        data = _valid(self.Input, request)
        event = corrections.event_for_key(idempotency_key=idempotency_key)
        correction = corrections.event_void(
            event=event, actor=api_key_from_request(request), reason=data["reason"]
        )
        return _correction_answer(correction, idempotency_key)


class EventAmendApi(_KeyedPostApi):
    suffix = "amend"

    class Input(StrictInput):
        reason = serializers.CharField()
        properties = serializers.DictField()

    @extend_schema(
        operation_id="events_amend",
        summary="Amend an event's properties: it counts with the new value from now on",
        description=(
            "The stored event stops counting and a row with the amended properties counts in its "
            "place (customer, metric and timestamp stay). Recorded with actor, reason, before and "
            "after; a window already invoiced becomes a drift finding at the next sweep."
        ),
        request=Input,
        responses={201: CorrectionOutput, 400: ErrorSerializer, 404: ErrorSerializer},
    )
    def post(self, request: Request, idempotency_key: str) -> Response:
        data = _valid(self.Input, request)
        event = corrections.event_for_key(idempotency_key=idempotency_key)
        correction = corrections.event_amend(
            event=event,
            actor=api_key_from_request(request),
            reason=data["reason"],
            properties=data["properties"],
        )
        return _correction_answer(correction, idempotency_key)


class EventVoidRangeApi(ScopedApi):
    required_scopes = {"POST": "write"}

    class Input(StrictInput):
        customer = serializers.CharField()
        metric = serializers.CharField()
        starts_at = serializers.DateTimeField()
        ends_at = serializers.DateTimeField()
        reason = serializers.CharField(required=False, allow_blank=True, default="")
        dry_run = serializers.BooleanField(required=False, default=True)

    class Output(serializers.Serializer):
        customer = serializers.CharField()
        metric = serializers.CharField()
        starts_at = serializers.DateTimeField()
        ends_at = serializers.DateTimeField()
        matched = serializers.IntegerField()
        voided = serializers.IntegerField()
        invoiced_period = serializers.IntegerField()
        dry_run = serializers.BooleanField()
        bulk_id = serializers.CharField(allow_blank=True)

    @extend_schema(
        operation_id="events_void_range",
        summary="Void every event of a customer and metric in a time range (dry run by default)",
        description=(
            "`dry_run` (default true) only counts what would be voided. With `dry_run: false` "
            "and a reason, every counted event with starts_at <= timestamp < ends_at is voided; "
            "no invoice changes (invoiced windows become drift findings at the next sweep)."
        ),
        request=Input,
        responses={200: Output, 400: ErrorSerializer, 404: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        data = _valid(self.Input, request)
        customer = Customer.objects.filter(external_id=data["customer"]).first()
        metric = Metric.objects.filter(code=data["metric"]).first()
        if customer is None or metric is None:
            raise NotFound(
                "No such customer or metric.",
                details={"customer": data["customer"], "metric": data["metric"]},
            )
        result = corrections.events_void_bulk(
            customer=customer,
            metric=metric,
            starts_at=data["starts_at"],
            ends_at=data["ends_at"],
            actor=api_key_from_request(request),
            reason=data["reason"],
            dry_run=data["dry_run"],
        )
        return Response(self.Output(result.as_dict()).data)


# --- backfills -------------------------------------------------------------------------------


class BackfillOutput(serializers.Serializer):
    id = serializers.IntegerField()
    reason = serializers.CharField()
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()
    source = serializers.CharField()
    status = serializers.ChoiceField(choices=["open", "closed"])
    created_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)
    counts = serializers.DictField(child=serializers.IntegerField())
    late = serializers.IntegerField(help_text="Events stored into periods already invoiced.")
    invoiced_windows = serializers.IntegerField()
    drift_findings = serializers.IntegerField()


class BackfillCreateApi(ScopedApi):
    required_scopes = {"POST": "ingest"}

    class Input(StrictInput):
        reason = serializers.CharField()
        starts_at = serializers.DateTimeField()
        ends_at = serializers.DateTimeField()

    @extend_schema(
        operation_id="backfills_create",
        summary="Open a backfill: load history older than the ingest window",
        description=(
            "Then post events with `POST /api/v1/events?backfill=<id>` (same outcomes; only "
            "timestamps with starts_at <= timestamp < ends_at) and close it."
        ),
        request=Input,
        responses={201: BackfillOutput, 400: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        data = _valid(self.Input, request)
        backfill = backfills.backfill_create(
            reason=data["reason"],
            starts_at=data["starts_at"],
            ends_at=data["ends_at"],
            actor=api_key_from_request(request),
        )
        return Response(BackfillOutput(backfills.backfill_dict(backfill)).data, status=201)


class BackfillDetailApi(ScopedApi):
    required_scopes = {"GET": "read"}

    @extend_schema(
        operation_id="backfills_retrieve",
        summary="A backfill and its counts",
        responses={200: BackfillOutput, 404: ErrorSerializer},
    )
    def get(self, request: Request, backfill_id: str) -> Response:
        backfill = backfills.backfill_get(backfill_id=backfill_id)
        return Response(BackfillOutput(backfills.backfill_dict(backfill)).data)


class BackfillCloseApi(ScopedApi):
    required_scopes = {"POST": "ingest"}

    @extend_schema(
        operation_id="backfills_close",
        summary="Close a backfill",
        description=(
            "Freezes its counts; each invoiced window it touched gets a drift finding per metric "
            "(resolved by rerun, correction credit or supplementary invoice), so money never "
            "changes silently. A closed backfill takes no more events."
        ),
        request=None,
        responses={200: BackfillOutput, 404: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request, backfill_id: str) -> Response:
        backfill = backfills.backfill_get(backfill_id=backfill_id)
        closed = backfills.backfill_close(backfill=backfill, actor=api_key_from_request(request))
        return Response(BackfillOutput(backfills.backfill_dict(closed)).data)
