"""The one error envelope: domain errors, DRF errors, unknown exceptions and plain 404s."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from django.test import override_settings
from django.urls import include, path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient

from neruba.api import ScopedApi
from neruba.errors import NerubaError
from tests.neruba.routes import assert_error


class Boom(ScopedApi):
    required_scopes = {"GET": "read", "POST": "read"}

    def get(self, request: Request) -> Response:
        raise RuntimeError("secret internals")

    def post(self, request: Request) -> Response:
        raise NerubaError("Too late.", code="window_closed", http_status=422, details={"window": 3})


# This module is the URLconf of the tests below: the real API plus two failing endpoints.
urlpatterns = [
    path("api/v1/boom", Boom.as_view()),
    path("", include("neruba.urls")),
]
handler404 = "neruba.errors.handler404"
handler500 = "neruba.errors.handler500"

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


def test_an_unexpected_error_answers_500_in_the_envelope_with_the_request_id(
    api: Callable[..., APIClient], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="neruba.errors"):
        response = api("read").get("/api/v1/boom", HTTP_X_REQUEST_ID="req-123")
    error = assert_error(response, 500, "internal_error")
    assert error["details"] == {"request_id": "req-123"}
    assert "secret internals" not in response.content.decode()
    assert response["X-Request-ID"] == "req-123"
    assert any("unhandled error" in r.getMessage() for r in caplog.records)


def test_a_domain_error_keeps_its_code_status_and_details(api: Callable[..., APIClient]) -> None:
    error = assert_error(api("read").post("/api/v1/boom", {}, format="json"), 422, "window_closed")
    assert error == {"code": "window_closed", "message": "Too late.", "details": {"window": 3}}


def test_an_unknown_api_url_answers_404_in_the_envelope() -> None:
    assert_error(APIClient().get("/api/v1/nothing/here"), 404, "not_found")


@override_settings(DEBUG=False)
def test_an_unknown_console_url_is_an_html_404_not_json() -> None:
    response = APIClient().get("/not-an-api/page")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_a_malformed_request_id_header_is_replaced(api: Callable[..., APIClient]) -> None:
    response = api("read").get("/api/v1/customers", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert response.status_code == 200
    assert response["X-Request-ID"] != "bad id\nwith newline"
    assert len(response["X-Request-ID"]) == 32


@pytest.mark.django_db
@override_settings(DEBUG=True)
def test_an_unknown_api_path_answers_the_json_envelope_even_with_debug_on(client) -> None:
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
