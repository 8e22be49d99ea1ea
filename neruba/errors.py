"""One error type and one envelope: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from neruba import context

logger = logging.getLogger(__name__)


class NerubaError(Exception):
    """Base of every domain error. Apps subclass it in their ``exceptions.py``."""

    code = "error"
    http_status = 400
    message = "The request could not be completed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        http_status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.http_status = http_status or self.http_status
        self.details = details or {}
        super().__init__(self.message)


class NotFound(NerubaError):
    code = "not_found"
    http_status = 404
    message = "Not found."


class ValidationFailed(NerubaError):
    code = "validation_error"
    http_status = 400
    message = "The request is not valid."


class Conflict(NerubaError):
    code = "conflict"
    http_status = 409


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


_DRF_CODES: list[tuple[type[Exception], str]] = [
    (drf.NotAuthenticated, "not_authenticated"),
    (drf.AuthenticationFailed, "authentication_failed"),
    (drf.PermissionDenied, "permission_denied"),
    (drf.NotFound, "not_found"),
    (drf.MethodNotAllowed, "method_not_allowed"),
    (drf.NotAcceptable, "not_acceptable"),
    (drf.UnsupportedMediaType, "unsupported_media_type"),
    (drf.Throttled, "throttled"),
    (drf.ParseError, "malformed_request"),
    (drf.ValidationError, "validation_error"),
]


def _drf_code(exc: drf.APIException) -> str:
    explicit = getattr(exc, "neruba_code", None)
    if explicit:
        return explicit
    for cls, code in _DRF_CODES:
        if isinstance(exc, cls):
            return code
    return "error"


def _message(detail: Any) -> str:
    if isinstance(detail, list) and detail:
        return _message(detail[0])
    if isinstance(detail, dict):
        return "The request is not valid."
    return str(detail)


def exception_handler(exc: Exception, ctx: dict[str, Any]) -> Response:
    """DRF exception handler: every error, known or not, leaves in the same envelope."""
    if isinstance(exc, NerubaError):
        return Response(envelope(exc.code, exc.message, exc.details), status=exc.http_status)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    if isinstance(exc, drf.APIException):
        headers: dict[str, str] = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
        if isinstance(exc, drf.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
        details: dict[str, Any] = {}
        if isinstance(exc, drf.ValidationError):
            details = (
                {"fields": exc.detail} if isinstance(exc.detail, dict) else {"errors": exc.detail}
            )
        if isinstance(exc, drf.Throttled) and exc.wait is not None:
            details["retry_after_seconds"] = int(exc.wait + 0.999)
        body = envelope(_drf_code(exc), _message(exc.detail), details)
        return Response(body, status=exc.status_code, headers=headers)
    logger.exception("unhandled error in API view")
    return Response(
        envelope(
            "internal_error",
            "An unexpected error occurred; it has been logged.",
            {"request_id": context.request_id.get()},
        ),
        status=500,
    )


def json_error(request: HttpRequest, code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse(envelope(code, message), status=status)


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if request.path.startswith(("/api/", "/webhooks/", "/compat/")):
        return json_error(request, "not_found", "Not found.", 404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())  # type: ignore[return-value]


def handler500(request: HttpRequest) -> JsonResponse:
    if request.path.startswith(("/api/", "/webhooks/", "/compat/")):
        return JsonResponse(
            envelope(
                "internal_error",
                "An unexpected error occurred; it has been logged.",
                {"request_id": context.request_id.get()},
            ),
            status=500,
        )
    from django.views.defaults import server_error

    return server_error(request)  # type: ignore[return-value]


def api_not_found(request: HttpRequest) -> JsonResponse:
    """Unknown API paths answer the error envelope even with DEBUG on (Django's technical 404
    page would be HTML)."""
    return json_error(request, "not_found", "No such API endpoint.", 404)
