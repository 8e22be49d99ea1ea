from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing import selectors, services
from billing.models import GRANTABLE, CreditEntry, Invoice, InvoiceLine, Plan, Price, Subscription
from neruba import selectors as kernel_selectors
from neruba.api import PAGE, ErrorSerializer, ScopedApi, StrictInput, page_of, query_limit
from neruba.errors import ValidationFailed


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
        fields = ["id", "external_id", "customer", "plan", "started_at", "ended_at"]


class PlanListApi(ScopedApi):
    required_scopes = {"GET": "read"}
    allowed_query = {"GET": PAGE}

    @extend_schema(operation_id="plans_list", responses={200: page_of(PlanOutput)})
    def get(self, request: Request) -> Response:
        return self.paginated(request, selectors.plan_list(), PlanOutput)


class SubscriptionListApi(ScopedApi):
    required_scopes = {"GET": "read", "POST": "write"}
    allowed_query = {"GET": PAGE | {"customer"}}

    class Input(StrictInput):
        customer = serializers.CharField(max_length=200)
        plan = serializers.CharField(max_length=100)
        started_at = serializers.DateTimeField()
        ended_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
        external_id = serializers.CharField(
            max_length=255,
            required=False,
            allow_null=True,
            default=None,
            help_text="Your own id for the subscription, unique (Lago's external_subscription_id).",
        )

        def validate(self, attrs: dict) -> dict:
            if attrs.get("ended_at") and attrs["ended_at"] <= attrs["started_at"]:
                raise serializers.ValidationError({"ended_at": "must be after started_at"})
            return attrs

    @extend_schema(
        operation_id="subscriptions_list",
        parameters=[OpenApiParameter("customer", str, description="Customer external id")],
        responses={200: page_of(SubscriptionOutput)},
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
            external_id=values["external_id"],
            actor=request.auth,
        )
        return Response(SubscriptionOutput(subscription).data, status=status.HTTP_201_CREATED)


# --- invoices, credits, usage ----------------------------------------------------------------


class InvoiceLineOutput(serializers.Serializer):
    metric = serializers.SerializerMethodField()
    description = serializers.CharField()
    quantity = serializers.DecimalField(
        max_digits=30, decimal_places=10, coerce_to_string=True, normalize_output=True
    )
    unit_amount = serializers.DecimalField(
        max_digits=20, decimal_places=10, coerce_to_string=True, normalize_output=True
    )
    amount = serializers.IntegerField()

    def get_metric(self, line: InvoiceLine) -> str | None:
        return line.metric.code if line.metric_id else None


class InvoiceOutput(serializers.ModelSerializer):
    customer = serializers.SlugRelatedField(slug_field="external_id", read_only=True)
    lines = InvoiceLineOutput(many=True, read_only=True)

    class Meta:
        model = Invoice
        fields = [
            "number",
            "customer",
            "status",
            "period_start",
            "period_end",
            "currency",
            "subtotal",
            "credits_applied",
            "total",
            "amount_paid",
            "amount_refunded",
            "amount_disputed",
            "amount_collected",
            "lines",
        ]


class InvoiceListApi(ScopedApi):
    required_scopes = {"GET": "read"}
    allowed_query = {"GET": PAGE | {"customer", "status"}}

    @extend_schema(
        operation_id="invoices_list",
        parameters=[
            OpenApiParameter("customer", str, description="Customer external id"),
            OpenApiParameter(
                "status", str, description="Invoice status", enum=list(Invoice.Status.values)
            ),
        ],
        responses={200: page_of(InvoiceOutput)},
    )
    def get(self, request: Request) -> Response:
        status_filter = request.query_params.get("status")
        if status_filter is not None and status_filter not in Invoice.Status.values:
            raise ValidationFailed(
                "Unknown invoice status.",
                code="invalid_filter",
                details={"status": status_filter, "allowed": list(Invoice.Status.values)},
            )
        qs = selectors.invoice_list(
            customer_external_id=request.query_params.get("customer"), status=status_filter
        )
        return self.paginated(request, qs, InvoiceOutput)


class InvoiceDetailApi(ScopedApi):
    required_scopes = {"GET": "read"}

    @extend_schema(
        operation_id="invoices_retrieve", responses={200: InvoiceOutput, 404: ErrorSerializer}
    )
    def get(self, request: Request, number: str) -> Response:
        return Response(InvoiceOutput(selectors.invoice_get(number=number)).data)


class CreditEntryOutput(serializers.ModelSerializer):
    invoice = serializers.SlugRelatedField(slug_field="number", read_only=True, allow_null=True)

    class Meta:
        model = CreditEntry
        fields = [
            "id",
            "currency",
            "amount",
            "kind",
            "reason_code",
            "invoice",
            "note",
            "created_at",
        ]


class CreditsOutput(serializers.Serializer):
    class Balance(serializers.Serializer):
        currency = serializers.CharField()
        balance = serializers.IntegerField()

    customer = serializers.CharField()
    balances = Balance(many=True)
    entries = CreditEntryOutput(many=True)


class CustomerCreditsApi(ScopedApi):
    required_scopes = {"GET": "read", "POST": "write"}
    allowed_query = {"GET": frozenset({"limit"})}

    class Input(StrictInput):
        amount = serializers.IntegerField(min_value=1, help_text="Minor units.")
        currency = serializers.RegexField(
            r"^[A-Za-z]{3}$",
            required=False,
            help_text="Must be the customer's currency (the default).",
        )
        reason_code = serializers.ChoiceField(choices=[str(c) for c in GRANTABLE])
        reason = serializers.CharField(max_length=2000)

    @extend_schema(
        operation_id="customers_credits",
        parameters=[OpenApiParameter("limit", int, description="Entries to return (max 500)")],
        responses={200: CreditsOutput, 404: ErrorSerializer},
    )
    def get(self, request: Request, external_id: str) -> Response:
        customer = kernel_selectors.customer_get(external_id=external_id)
        limit = query_limit(request, default=100)
        balances = selectors.credit_balances(customer=customer)
        body = {
            "customer": customer.external_id,
            "balances": [{"currency": c, "balance": b} for c, b in balances.items()],
            "entries": selectors.credit_entries(customer=customer)[:limit],
        }
        return Response(CreditsOutput(body).data)

    @extend_schema(
        operation_id="customers_credits_grant",
        request=Input,
        responses={201: CreditEntryOutput, 400: ErrorSerializer, 404: ErrorSerializer},
        description="Grants spendable credit (goodwill, correction, or refund as credit when "
        "finance chose credit instead of a cash refund) in the customer's currency; any other "
        "currency is refused with `credit_currency_mismatch`. Stripe refunds and lost disputes "
        "are never credit: they are cash, shown on the invoice.",
    )
    def post(self, request: Request, external_id: str) -> Response:
        customer = kernel_selectors.customer_get(external_id=external_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        entry = services.credit_issue(
            customer=customer,
            amount=values["amount"],
            currency=values.get("currency"),
            reason_code=values["reason_code"],
            actor=request.auth,
            reason=values["reason"],
        )
        return Response(CreditEntryOutput(entry).data, status=status.HTTP_201_CREATED)


class UsageOutput(serializers.Serializer):
    class Window(serializers.Serializer):
        subscription = serializers.IntegerField(source="subscription.pk")
        plan = serializers.CharField(source="subscription.plan.code")
        currency = serializers.CharField(source="subscription.plan.currency")
        period_start = serializers.DateTimeField()
        period_end = serializers.DateTimeField()
        lines = serializers.SerializerMethodField()
        amount = serializers.IntegerField(source="subtotal")

        @extend_schema_field(InvoiceLineOutput(many=True))
        def get_lines(self, obj: Any) -> list[dict[str, Any]]:
            return obj.lines

    customer = serializers.CharField()
    windows = Window(many=True)


class CustomerUsageApi(ScopedApi):
    required_scopes = {"GET": "read"}

    @extend_schema(
        operation_id="customers_usage", responses={200: UsageOutput, 404: ErrorSerializer}
    )
    def get(self, request: Request, external_id: str) -> Response:
        customer = kernel_selectors.customer_get(external_id=external_id)
        body = {
            "customer": customer.external_id,
            "windows": selectors.usage_current(customer=customer),
        }
        return Response(UsageOutput(body).data)
