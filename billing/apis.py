from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing import selectors, services
from billing.models import Plan, Price, Subscription
from neruba import selectors as kernel_selectors
from neruba.api import ErrorSerializer, ScopedApi


class PriceOutput(serializers.ModelSerializer):
    metric = serializers.SlugRelatedField(slug_field="code", read_only=True)
    unit_amount = serializers.DecimalField(
        max_digits=20, decimal_places=10, coerce_to_string=True, normalize_output=True
    )

    class Meta:
        model = Price
        fields = ["metric", "model", "unit_amount", "tiers"]


class PlanOutput(serializers.ModelSerializer):
    prices = PriceOutput(many=True, read_only=True)

    class Meta:
        model = Plan
        fields = ["code", "name", "currency", "interval", "base_amount", "prices"]


class SubscriptionOutput(serializers.ModelSerializer):
    customer = serializers.SlugRelatedField(slug_field="external_id", read_only=True)
    plan = serializers.SlugRelatedField(slug_field="code", read_only=True)

    class Meta:
        model = Subscription
        fields = ["id", "customer", "plan", "started_at", "ended_at"]


class PlanListApi(ScopedApi):
    required_scopes = {"GET": "read"}

    @extend_schema(operation_id="plans_list", responses={200: PlanOutput(many=True)})
    def get(self, request: Request) -> Response:
        return self.paginated(request, selectors.plan_list(), PlanOutput)


class SubscriptionListApi(ScopedApi):
    required_scopes = {"GET": "read", "POST": "write"}

    class Input(serializers.Serializer):
        customer = serializers.CharField(max_length=200)
        plan = serializers.CharField(max_length=100)
        started_at = serializers.DateTimeField()
        ended_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

        def validate(self, attrs: dict) -> dict:
            if attrs.get("ended_at") and attrs["ended_at"] <= attrs["started_at"]:
                raise serializers.ValidationError({"ended_at": "must be after started_at"})
            return attrs

    @extend_schema(
        operation_id="subscriptions_list",
        parameters=[OpenApiParameter("customer", str, description="Customer external id")],
        responses={200: SubscriptionOutput(many=True)},
    )
    def get(self, request: Request) -> Response:
        qs = selectors.subscription_list(customer_external_id=request.query_params.get("customer"))
        return self.paginated(request, qs, SubscriptionOutput)

    @extend_schema(
        operation_id="subscriptions_create",
        request=Input,
        responses={
            201: SubscriptionOutput,
            400: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
        },
    )
    def post(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        subscription = services.subscription_create(
            customer=kernel_selectors.customer_get(external_id=values["customer"]),
            plan=selectors.plan_get(code=values["plan"]),
            started_at=values["started_at"],
            ended_at=values["ended_at"],
            actor=request.auth,
        )
        return Response(SubscriptionOutput(subscription).data, status=status.HTTP_201_CREATED)
