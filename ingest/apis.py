from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from django.http.request import RawPostDataException
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ingest import selectors, services
from ingest.envelope import CLOUDEVENT, CLOUDEVENT_BATCH, parse_envelope
from ingest.exceptions import PayloadTooLarge
from ingest.models import Metric, UsageEvent
from neruba.api import PAGE, ErrorSerializer, ScopedApi, page_of
from neruba.auth import api_key_from_request
from neruba.errors import NotFound


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
            "422 failed with its result object."
        ),
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
        ]


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
