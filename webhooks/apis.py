"""Outbound webhook endpoints over the API (``write`` scope for every method: an endpoint's
configuration says where Neruba's money facts go)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from neruba.api import PAGE, ErrorSerializer, ScopedApi, StrictInput, page_of
from neruba.errors import NotFound
from webhooks import outbound
from webhooks.models import WebhookEndpoint


class EndpointOutput(serializers.ModelSerializer):
    event_types = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "description",
            "event_types",
            "enabled",
            "disabled_reason",
            "created_at",
        ]


class EndpointWithSecretOutput(EndpointOutput):
    secret = serializers.CharField(help_text="Shown once: store it to verify signatures.")

    class Meta(EndpointOutput.Meta):
        fields = [*EndpointOutput.Meta.fields, "secret"]


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> dict:
    return {**EndpointOutput(endpoint).data, "secret": secret}


def _endpoint_get(endpoint_id: str) -> WebhookEndpoint:
    endpoint = (
        WebhookEndpoint.objects.filter(pk=int(endpoint_id)).first()
        if endpoint_id.isdigit() and len(endpoint_id) < 19
        else None
    )
    if endpoint is None:
        raise NotFound("No such webhook endpoint.", details={"id": endpoint_id})
    return endpoint


class EndpointListApi(ScopedApi):
    required_scopes = {"GET": "write", "POST": "write"}
    allowed_query = {"GET": PAGE}

    class Input(StrictInput):
        url = serializers.URLField(max_length=2000)
        event_types = serializers.ListField(
            child=serializers.ChoiceField(choices=list(outbound.EVENT_TYPES)), allow_empty=False
        )
        description = serializers.CharField(
            max_length=300, required=False, allow_blank=True, default=""
        )

    @extend_schema(operation_id="webhook_endpoints_list", responses={200: page_of(EndpointOutput)})
    def get(self, request: Request) -> Response:
        return self.paginated(request, WebhookEndpoint.objects.all(), EndpointOutput)

    @extend_schema(
        operation_id="webhook_endpoints_create",
        request=Input,
        responses={201: EndpointWithSecretOutput, 400: ErrorSerializer, 422: ErrorSerializer},
        description="Subscribes a URL to message types. The answer carries the signing secret "
        "(`whsec_…`, Standard Webhooks) once; it is never shown again.",
    )
    def post(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint, secret = outbound.endpoint_create(**data.validated_data, actor=request.auth)
        return Response(_with_secret(endpoint, secret), status=status.HTTP_201_CREATED)


class EndpointDetailApi(ScopedApi):
    required_scopes = {"GET": "write", "PATCH": "write"}

    class Input(StrictInput):
        url = serializers.URLField(max_length=2000, required=False)
        event_types = serializers.ListField(
            child=serializers.ChoiceField(choices=list(outbound.EVENT_TYPES)),
            allow_empty=False,
            required=False,
        )
        enabled = serializers.BooleanField(required=False)
        description = serializers.CharField(max_length=300, required=False, allow_blank=True)

    @extend_schema(
        operation_id="webhook_endpoints_retrieve",
        responses={200: EndpointOutput, 404: ErrorSerializer},
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        return Response(EndpointOutput(_endpoint_get(endpoint_id)).data)

    @extend_schema(
        operation_id="webhook_endpoints_update",
        request=Input,
        responses={
            200: EndpointOutput,
            400: ErrorSerializer,
            404: ErrorSerializer,
            422: ErrorSerializer,
        },
    )
    def patch(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint_get(endpoint_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = outbound.endpoint_update(
            endpoint=endpoint, actor=request.auth, reason="API", **data.validated_data
        )
        return Response(EndpointOutput(endpoint).data)


class EndpointRotateSecretApi(ScopedApi):
    required_scopes = {"POST": "write"}

    @extend_schema(
        operation_id="webhook_endpoints_rotate_secret",
        request=None,
        responses={200: EndpointWithSecretOutput, 404: ErrorSerializer},
        description="A new secret signs from now on; the previous one also signs (a second "
        "`v1,` signature) for `NERUBA_OUTBOUND_ROTATION_GRACE`.",
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint_get(endpoint_id)
        secret = outbound.endpoint_rotate_secret(endpoint=endpoint, actor=request.auth)
        endpoint.refresh_from_db()
        return Response(_with_secret(endpoint, secret))
