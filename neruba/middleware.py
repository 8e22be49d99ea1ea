from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from neruba import context

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Gives every request an id (or keeps a well-formed X-Request-ID from the proxy), puts it in
    the log context and echoes it in the response. It never touches the body."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = rid  # type: ignore[attr-defined]
        # Set (not reset) per request: Django logs 4xx/5xx responses after the middleware chain
        # returns, and those lines must still carry this request's id. The per-request fields
        # start empty so a thread never reuses the previous request's key or event id.
        context.request_id.set(rid)
        context.api_key_prefix.set("")
        context.idempotency_key.set("")
        context.stripe_event_id.set("")
        response = self.get_response(request)
        response["X-Request-ID"] = rid
        return response


def client_ip(request: HttpRequest) -> str:
    """The client address: REMOTE_ADDR, or the address our own proxy appended to
    X-Forwarded-For when NERUBA_TRUST_PROXY_HEADERS is on (earlier entries are client-controlled
    and never trusted)."""
    from django.conf import settings

    if settings.NERUBA.get("NERUBA_TRUST_PROXY_HEADERS"):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[-1].strip()
    return request.META.get("REMOTE_ADDR", "") or "unknown"
