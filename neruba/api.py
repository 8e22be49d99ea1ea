"""Shared pieces of the DRF API: the scoped base view and list pagination."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from neruba.auth import HasScope
from neruba.errors import NerubaError
from neruba.pagination import NerubaCursorPagination


class ScopedApi(APIView):
    """Base of every API view: API-key auth and the scope per method in ``required_scopes``."""

    permission_classes = [HasScope]
    required_scopes: dict[str, str] = {}

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
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

    def paginated(
        self,
        request: Request,
        queryset: QuerySet[Any],
        serializer: type[serializers.Serializer[Any]],
        ordering: str = "-id",
    ) -> Response:
        paginator = NerubaCursorPagination()
        paginator.ordering = ordering
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(serializer(page, many=True).data)


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


class ErrorSerializer(serializers.Serializer):
    """The error envelope, for the schema."""

    class Body(serializers.Serializer):
        code = serializers.CharField()
        message = serializers.CharField()
        details = serializers.DictField()

    error = Body()
