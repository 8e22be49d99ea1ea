"""OpenAPI generation: names for nested Input/Output serializers and the API-key scheme."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class NerubaAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer: serializers.Serializer, direction: Any) -> str:
        # Views nest serializers as `Input`/`Output`; the outer class keeps component names unique.
        qualname = serializer.__class__.__qualname__
        return qualname.replace(".", "") if "." in qualname else serializer.__class__.__name__


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "neruba.auth.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <prefix>.<secret>`; scopes: ingest, read, write.",
        }
