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
    """One key, sent either way in the Authorization header: ``Api-Key <key>``, or
    ``Bearer <key>`` as Stripe-, OpenMeter- and Lago-style clients do. One apiKey scheme on the
    header describes both (a second, alternative http-bearer scheme leaves schemathesis no
    negative case for operations whose only other input is a path parameter)."""

    target_class = "neruba.auth.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": (
                "`Api-Key <prefix>.<secret>` or `Bearer <prefix>.<secret>` (the same key; "
                "Bearer is what Stripe-, OpenMeter- and Lago-style clients send); scopes: "
                "ingest, read, write."
            ),
        }


_ERROR_ENVELOPE = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object", "additionalProperties": True},
            },
        }
    },
}
_COMMON_ERRORS = {
    "401": "No API key, or the key is invalid, revoked or expired.",
    "403": "The API key lacks the scope this operation needs.",
    "429": "Too many requests for this key; see Retry-After.",
}


_PAGE_PARAMETERS = [
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "Opaque cursor from a previous page's next/previous link.",
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
        "description": "Rows per page (default 50).",
    },
]


def add_error_responses(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every API operation can answer the error envelope
    with 401/403/429, 400 when it takes a body or query, and 404 when its path has a
    parameter; the schema says so, so clients (and schemathesis) can rely on it."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorEnvelope", _ERROR_ENVELOPE)
    ref = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            statuses = dict(_COMMON_ERRORS)
            if "requestBody" in operation or operation.get("parameters"):
                statuses["400"] = "The request is not valid; details name the fields."
            if "{" in path:
                statuses["404"] = "No such object."
            if method in {"post", "patch", "put"}:
                statuses["415"] = "The body is not JSON."
            ok = operation["responses"].get("200", {}).get("content", {})
            ok_ref = ok.get("application/json", {}).get("schema", {}).get("$ref", "")
            if ok_ref.endswith("Page"):
                names = {p.get("name") for p in operation.setdefault("parameters", [])}
                operation["parameters"] += [p for p in _PAGE_PARAMETERS if p["name"] not in names]
                statuses["400"] = "The request is not valid (limit, cursor or a filter)."
            for status, description in statuses.items():
                operation["responses"].setdefault(
                    status,
                    {"description": description, "content": {"application/json": {"schema": ref}}},
                )
    return result
