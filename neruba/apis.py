from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from neruba import selectors, services
from neruba.api import PAGE, ErrorSerializer, ScopedApi, StrictInput, page_of
from neruba.models import Customer


class CustomerOutput(serializers.ModelSerializer):
    class Meta:
        model = Customer
        fields = ["external_id", "name", "email", "currency", "stripe_customer_id"]


class CustomerListApi(ScopedApi):
    required_scopes = {"GET": "read", "POST": "write"}
    allowed_query = {"GET": PAGE}

    class Input(StrictInput):
        external_id = serializers.RegexField(r"^[A-Za-z0-9._:@-]{1,200}$")
        name = serializers.CharField(max_length=200)
        email = serializers.EmailField(required=False, allow_blank=True, default="")
        currency = serializers.RegexField(r"^[A-Za-z]{3}$", required=False, default="USD")
        stripe_customer_id = serializers.CharField(
            max_length=100, required=False, allow_blank=True, default=""
        )

    @extend_schema(operation_id="customers_list", responses={200: page_of(CustomerOutput)})
    def get(self, request: Request) -> Response:
        return self.paginated(request, selectors.customer_list(), CustomerOutput)

    @extend_schema(
        operation_id="customers_create",
        request=Input,
        responses={201: CustomerOutput, 400: ErrorSerializer, 409: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        customer = services.customer_create(**data.validated_data, actor=request.auth)
        return Response(CustomerOutput(customer).data, status=status.HTTP_201_CREATED)


class CustomerDetailApi(ScopedApi):
    required_scopes = {"GET": "read", "PATCH": "write"}

    class Input(StrictInput):
        name = serializers.CharField(max_length=200, required=False)
        email = serializers.EmailField(required=False, allow_blank=True)
        currency = serializers.RegexField(r"^[A-Za-z]{3}$", required=False)
        stripe_customer_id = serializers.CharField(max_length=100, required=False, allow_blank=True)

    @extend_schema(
        operation_id="customers_retrieve", responses={200: CustomerOutput, 404: ErrorSerializer}
    )
    def get(self, request: Request, external_id: str) -> Response:
        return Response(CustomerOutput(selectors.customer_get(external_id=external_id)).data)

    @extend_schema(
        operation_id="customers_update",
        request=Input,
        responses={200: CustomerOutput, 400: ErrorSerializer, 404: ErrorSerializer},
    )
    def patch(self, request: Request, external_id: str) -> Response:
        customer = selectors.customer_get(external_id=external_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        customer = services.customer_update(
            customer=customer, changes=data.validated_data, actor=request.auth
        )
        return Response(CustomerOutput(customer).data)
