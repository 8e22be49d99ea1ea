"""Query parameters: each view accepts exactly what the OpenAPI schema documents; anything
else is a 400, never silently ignored."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator

from neruba.api import ScopedApi


def _scoped_views() -> dict[str, type[ScopedApi]]:
    views: dict[str, type[ScopedApi]] = {}

    def walk(patterns, prefix: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                cls = getattr(p.callback, "view_class", None)
                if cls is not None and issubclass(cls, ScopedApi):
                    views["/" + prefix + str(p.pattern)] = cls

    walk(get_resolver().url_patterns, "")
    return views


def test_every_view_accepts_exactly_the_query_parameters_its_schema_documents() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    views = _scoped_views()
    checked = 0
    for route, cls in views.items():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        operations = schema["paths"].get(path)
        assert operations is not None, f"{route} is missing from the schema"
        for method, operation in operations.items():
            documented = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            allowed = set(cls.allowed_query.get(method.upper(), frozenset()))
            assert documented == allowed, f"{method.upper()} {path}: {documented} != {allowed}"
            checked += 1
    assert checked >= 10


@pytest.mark.django_db
def test_an_unknown_query_parameter_is_refused(api) -> None:
    response = api("read").get("/api/v1/customers", {"sort": "name"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_query_parameter"
    assert error["details"] == {"unknown": ["sort"], "allowed": ["cursor", "limit"]}


@pytest.mark.django_db
def test_a_repeated_query_parameter_is_refused(api) -> None:
    response = api("read").get("/api/v1/invoices?status=paid&status=void")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "repeated_query_parameter"


@pytest.mark.django_db
@pytest.mark.parametrize("limit", ["0", "501", "ten", "-1", "2.5"])
def test_a_limit_outside_one_to_five_hundred_is_refused(api, limit: str) -> None:
    response = api("read").get("/api/v1/customers", {"limit": limit})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_limit"


@pytest.mark.django_db
def test_a_made_up_cursor_is_a_400_not_a_404(api) -> None:
    response = api("read").get("/api/v1/customers", {"cursor": "not-a-cursor"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"


@pytest.mark.django_db
def test_query_parameters_are_checked_only_after_authentication(api) -> None:
    response = api(None).get("/api/v1/customers", {"sort": "name"})
    assert response.status_code == 401


@pytest.mark.django_db
def test_an_unknown_invoice_status_filter_is_refused(api) -> None:
    response = api("read").get("/api/v1/invoices", {"status": "pending"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_filter"
    assert api("read").get("/api/v1/invoices", {"status": "paid"}).status_code == 200


@pytest.mark.django_db
def test_a_number_where_the_api_expects_text_is_refused_not_coerced(api) -> None:
    response = api("write").post(
        "/api/v1/customers", {"external_id": -565, "name": "Numbers"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["fields"]["external_id"] == ["Must be a string."]
