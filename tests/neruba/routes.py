"""Every API route, read from the URL resolver, so endpoints added later are covered by the
auth and schema tests without anyone listing them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver

API_PREFIX = "api/v1/"
_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


@dataclass(frozen=True)
class Route:
    route: str  # "api/v1/customers/<str:external_id>"
    view_class: Any

    @property
    def url(self) -> str:
        """A concrete URL for the route (parameters filled with a placeholder)."""
        return "/" + _PARAM.sub("no-such-thing", self.route)

    @property
    def openapi_path(self) -> str:
        return "/" + _PARAM.sub(r"{\1}", self.route)

    @property
    def methods(self) -> list[str]:
        return sorted(
            m.upper()
            for m in self.view_class.http_method_names
            if m != "options" and hasattr(self.view_class, m)
        )


def _walk(patterns: list[Any], prefix: str) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += _walk(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            found.append((route, pattern.callback))
    return found


def api_routes() -> list[Route]:
    routes = [
        Route(route=route, view_class=callback.view_class)
        for route, callback in _walk(get_resolver().url_patterns, "")
        if route.startswith(API_PREFIX) and hasattr(callback, "view_class")
    ]
    assert routes, "no API routes found under /api/v1/"
    return sorted(routes, key=lambda r: r.route)


def api_operations() -> list[tuple[Route, str, str]]:
    """(route, method, scope) for every method each view names in ``required_scopes``."""
    return [
        (route, method, scope)
        for route in api_routes()
        for method, scope in sorted(getattr(route.view_class, "required_scopes", {}).items())
    ]


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """Asserts the envelope ``{"error": {"code", "message", "details"}}``; returns its body."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]
