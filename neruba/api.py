"""Shared pieces of the DRF API: the scoped base view and list pagination."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from neruba.auth import HasScope
from neruba.pagination import NerubaCursorPagination


class ScopedApi(APIView):
    """Base of every API view: API-key auth and the scope per method in ``required_scopes``."""

    permission_classes = [HasScope]
    required_scopes: dict[str, str] = {}

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


class ErrorSerializer(serializers.Serializer):
    """The error envelope, for the schema."""

    class Body(serializers.Serializer):
        code = serializers.CharField()
        message = serializers.CharField()
        details = serializers.DictField()

    error = Body()
