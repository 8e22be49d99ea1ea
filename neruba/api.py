"""Shared pieces of the DRF API: the scoped base view and list pagination."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from neruba.auth import AddressThrottle, HasScope, verified_recently
from neruba.errors import NerubaError, ValidationFailed
from neruba.metrics import API_THROTTLED
from neruba.pagination import NerubaCursorPagination

MAX_LIMIT = 500
_address_throttle = AddressThrottle()
PAGE = frozenset({"cursor", "limit"})


class ScopedApi(APIView):
    """Base of every API view: API-key auth and the scope per method in ``required_scopes``."""

    permission_classes = [HasScope]
    required_scopes: dict[str, str] = {}
    # Query parameters each method accepts; anything else is refused (nothing a client sends is
    # silently ignored). Kept equal to the OpenAPI schema by tests/neruba/test_api_query.py.
    allowed_query: dict[str, frozenset[str]] = {}

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # An address over its limit of keyless / bad-key requests is refused before its key is
        # looked at (DRF would authenticate first and never reach an address throttle).
        wait = None if verified_recently(request) else _address_throttle.over_limit(request)
        if wait is not None:
            API_THROTTLED.labels(scope="address").inc()
            raise exceptions.Throttled(wait=wait)
        try:
            super().initial(request, *args, **kwargs)  # authentication, scope, key throttle
        except (exceptions.NotAuthenticated, exceptions.AuthenticationFailed):
            _address_throttle.count(request)
            raise
        # A method this endpoint lacks (TRACE included) is 405 before its query is judged.
        method = (request.method or "").lower()
        if method not in self.http_method_names or not hasattr(self, method):
            raise exceptions.MethodNotAllowed(request.method or "")
        # PostgreSQL text cannot hold NUL: a lookup with one fails inside the driver (a 500),
        # and SQLite would answer differently. Refuse it up front, after auth, on every endpoint.
        values = [
            *map(str, kwargs.values()),
            *(v for _, vs in request.query_params.lists() for v in vs),
        ]
        if any("\x00" in value for value in values):
            raise NerubaError(
                "The URL contains a NUL character.", code="malformed_request", http_status=400
            )
        method = "GET" if request.method == "HEAD" else (request.method or "")
        allowed = self.allowed_query.get(method, frozenset())
        unknown = sorted(k for k in request.query_params if k not in allowed)
        if unknown:
            raise ValidationFailed(
                "Unknown query parameter(s).",
                code="unknown_query_parameter",
                details={"unknown": unknown[:10], "allowed": sorted(allowed)},
            )
        repeated = sorted(k for k, vs in request.query_params.lists() if len(vs) > 1)
        if repeated:
            raise ValidationFailed(
                "A query parameter was given more than once.",
                code="repeated_query_parameter",
                details={"repeated": repeated[:10]},
            )

    def paginated(
        self,
        request: Request,
        queryset: QuerySet[Any],
        serializer: type[serializers.Serializer[Any]],
        ordering: str = "-id",
    ) -> Response:
        paginator = NerubaCursorPagination()
        paginator.ordering = ordering
        paginator.page_size = query_limit(request, default=paginator.page_size)
        paginator.page_size_query_param = None  # validated above
        try:
            page = paginator.paginate_queryset(queryset, request, view=self)
        except exceptions.NotFound:
            raise ValidationFailed(
                "The cursor is not valid; use the next/previous links as given.",
                code="invalid_cursor",
            ) from None
        return paginator.get_paginated_response(serializer(page, many=True).data)


def query_limit(request: Request, *, default: int, maximum: int = MAX_LIMIT) -> int:
    """``?limit=``: one whole number from 1 to ``maximum``, or the default when absent. Anything
    else is a 400, never silently replaced."""
    values = request.query_params.getlist("limit")
    if not values:
        return default
    if len(values) == 1 and values[0].isdigit() and 1 <= int(values[0]) <= maximum:
        return int(values[0])
    raise ValidationFailed(
        f"limit must be one whole number from 1 to {maximum}.",
        code="invalid_limit",
        details={"limit": values[:3]},
    )


_PAGES: dict[type[serializers.Serializer[Any]], type[serializers.Serializer[Any]]] = {}


def page_of(serializer: type[serializers.Serializer[Any]]) -> type[serializers.Serializer[Any]]:
    """The schema of a cursor page of ``serializer`` rows, for ``extend_schema(responses=...)``
    on list endpoints (one class per row serializer, so component names stay unique)."""
    if serializer not in _PAGES:
        name = serializer.__qualname__.replace(".", "")
        _PAGES[serializer] = type(
            f"{name}Page",
            (serializers.Serializer,),
            {
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
                "results": serializer(many=True),
                "__module__": serializer.__module__,
            },
        )
    return _PAGES[serializer]


class StrictInput(serializers.Serializer):
    """Base of API input serializers: a text field given a number or a boolean is a 400, not
    quietly turned into text (DRF's CharField would coerce ``-565`` to ``"-565"``)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            errors = {
                name: ["Must be a string."]
                for name, field in self.fields.items()
                if isinstance(field, serializers.CharField)
                and data.get(name) is not None
                and not isinstance(data[name], str)
            }
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class ErrorSerializer(serializers.Serializer):
    """The error envelope, for the schema."""

    class Body(serializers.Serializer):
        code = serializers.CharField()
        message = serializers.CharField()
        details = serializers.DictField()

    error = Body()
