from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from neruba import services
from neruba.models import SCOPES, ApiKey
from tests.neruba.routes import api_operations, api_routes, assert_error

OPERATIONS = api_operations()
IDS = [f"{method} /{route.route}" for route, method, _ in OPERATIONS]


def call(client: APIClient, method: str, url: str) -> Any:
    return getattr(client, method.lower())(url, {}, format="json")


def client_with(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    return client


def test_the_route_enumeration_finds_the_known_endpoints() -> None:
    routes = {route.route for route in api_routes()}
    assert {
        "api/v1/customers",
        "api/v1/customers/<str:external_id>",
        "api/v1/plans",
        "api/v1/metrics",
        "api/v1/subscriptions",
    } <= routes


@pytest.mark.parametrize("route", api_routes(), ids=lambda r: r.route)
def test_every_api_method_names_its_scope(route: Any) -> None:
    scopes = getattr(route.view_class, "required_scopes", {})
    assert route.methods, route.route
    for method in route.methods:
        assert scopes.get(method, scopes.get("*")) in SCOPES, f"{method} /{route.route}"


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "scope"), OPERATIONS, ids=IDS)
def test_every_endpoint_answers_401_without_a_key(route: Any, method: str, scope: str) -> None:
    response = call(APIClient(), method, route.url)
    error = assert_error(response, 401, "not_authenticated")
    assert "Api-Key" in error["message"]
    assert response["WWW-Authenticate"] == "Api-Key"


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "scope"), OPERATIONS, ids=IDS)
def test_every_endpoint_answers_403_to_a_key_without_the_scope(
    route: Any, method: str, scope: str, make_api_key: Callable[..., tuple[ApiKey, str]]
) -> None:
    _, raw = make_api_key(*[s for s in SCOPES if s != scope])
    error = assert_error(call(client_with(raw), method, route.url), 403, "missing_scope")
    assert f"`{scope}`" in error["message"]


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "scope"), OPERATIONS, ids=IDS)
def test_a_key_with_only_the_needed_scope_gets_past_auth(
    route: Any, method: str, scope: str, make_api_key: Callable[..., tuple[ApiKey, str]]
) -> None:
    _, raw = make_api_key(scope)
    assert call(client_with(raw), method, route.url).status_code not in (401, 403)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    ["Api-Key not-a-real-key", "Api-Key abcdefgh.wrongsecretwrongsecret", "Bearer abc", "Api-Key "],
)
def test_an_invalid_key_is_refused_with_authentication_failed(header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_error(client.get("/api/v1/customers"), 401, "authentication_failed")


@pytest.mark.django_db
def test_a_key_with_a_wrong_secret_but_a_real_prefix_is_refused(
    make_api_key: Callable[..., tuple[ApiKey, str]],
) -> None:
    api_key, raw = make_api_key("read")
    forged = f"{api_key.prefix}.{'x' * (len(raw) - len(api_key.prefix) - 1)}"
    assert forged != raw
    assert_error(client_with(forged).get("/api/v1/customers"), 401, "authentication_failed")


@pytest.mark.django_db
def test_a_revoked_key_is_refused(make_api_key: Callable[..., tuple[ApiKey, str]]) -> None:
    api_key, raw = make_api_key("read")
    assert client_with(raw).get("/api/v1/customers").status_code == 200
    services.api_key_revoke(api_key=api_key, actor=None, reason="leaked")
    assert_error(client_with(raw).get("/api/v1/customers"), 401, "authentication_failed")


@pytest.mark.django_db
def test_an_expired_key_is_refused() -> None:
    _, raw = services.api_key_create(
        name="short-lived",
        scopes=["read"],
        actor=None,
        expiry_date=timezone.now() + timedelta(hours=1),
    )
    assert client_with(raw).get("/api/v1/customers").status_code == 200
    with time_machine.travel(timezone.now() + timedelta(hours=2)):
        error = assert_error(
            client_with(raw).get("/api/v1/customers"), 401, "authentication_failed"
        )
    assert "expired" in error["message"]


def low_rate(rate: str = "3/min") -> Any:
    return override_settings(
        REST_FRAMEWORK={
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"api_key": rate},
        }
    )


@pytest.mark.django_db
def test_the_fourth_request_in_a_window_is_throttled_with_retry_after(
    make_api_key: Callable[..., tuple[ApiKey, str]],
) -> None:
    _, raw = make_api_key("read")
    client = client_with(raw)
    with low_rate(), time_machine.travel(datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC), tick=False):
        assert [client.get("/api/v1/customers").status_code for _ in range(3)] == [200] * 3
        response = client.get("/api/v1/customers")
        error = assert_error(response, 429, "throttled")
        assert response["Retry-After"] == "30"
        assert error["details"]["retry_after_seconds"] == 30


@pytest.mark.django_db
def test_the_throttle_window_resets_after_retry_after(
    make_api_key: Callable[..., tuple[ApiKey, str]],
) -> None:
    _, raw = make_api_key("read")
    client = client_with(raw)
    start = datetime(2026, 3, 2, 10, 0, 50, tzinfo=UTC)
    with low_rate():
        with time_machine.travel(start, tick=False):
            for _ in range(3):
                client.get("/api/v1/customers")
            response = client.get("/api/v1/customers")
            assert response.status_code == 429
            wait = int(response["Retry-After"])
        with time_machine.travel(start + timedelta(seconds=wait), tick=False):
            assert client.get("/api/v1/customers").status_code == 200


@pytest.mark.django_db
def test_keys_are_throttled_independently(
    make_api_key: Callable[..., tuple[ApiKey, str]],
) -> None:
    _, first_raw = make_api_key("read", name="first")
    _, second_raw = make_api_key("read", name="second")
    first, second = client_with(first_raw), client_with(second_raw)
    with low_rate(), time_machine.travel(datetime(2026, 3, 2, 10, 0, 5, tzinfo=UTC), tick=False):
        for _ in range(3):
            assert first.get("/api/v1/customers").status_code == 200
        assert first.get("/api/v1/customers").status_code == 429
        assert [second.get("/api/v1/customers").status_code for _ in range(3)] == [200] * 3
        assert second.get("/api/v1/customers").status_code == 429


@pytest.mark.django_db
@pytest.mark.parametrize("route", api_routes(), ids=lambda r: r.route)
def test_a_method_the_endpoint_lacks_answers_405_not_a_scope_error(
    route: Any, make_api_key: Callable[..., tuple[ApiKey, str]]
) -> None:
    _, raw = make_api_key(*SCOPES)
    absent = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if m not in route.methods]
    for method in absent:
        response = call(client_with(raw), method, route.url)
        assert_error(response, 405, "method_not_allowed")
        assert method not in response["Allow"]
    assert_error(call(APIClient(), "DELETE", route.url), 401, "not_authenticated")


@pytest.mark.django_db
def test_head_needs_the_same_scope_as_get(make_api_key: Callable[..., tuple[ApiKey, str]]) -> None:
    _, read = make_api_key("read")
    _, write = make_api_key("write")
    assert client_with(read).head("/api/v1/customers").status_code == 200
    assert client_with(write).head("/api/v1/customers").status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "method", "scope"), OPERATIONS, ids=IDS)
def test_a_nul_character_in_the_url_is_a_client_error_not_a_server_error(
    route: Any, method: str, scope: str, make_api_key: Callable[..., tuple[ApiKey, str]]
) -> None:
    # PostgreSQL text cannot hold NUL: used in a lookup it fails inside the driver.
    _, raw = make_api_key(*SCOPES)
    client = client_with(raw)
    targets = [f"{route.url}?customer=a%00b&status=a%00b&cursor=a%00b"]
    if "no-such-thing" in route.url:
        targets.append(route.url.replace("no-such-thing", "a%00b"))
    for target in targets:
        response = call(client, method, target)
        assert 400 <= response.status_code < 500, (target, response.content)
        assert set(response.json()) == {"error"}


@pytest.mark.django_db
def test_the_api_key_scheme_name_is_case_insensitive(make_api_key) -> None:
    _, raw = make_api_key("read")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"api-key {raw}")
    assert client.get("/api/v1/customers").status_code == 200
