"""Throttling before authentication: requests without a valid key are limited per client
address and refused before any key is looked up; methods an endpoint lacks are 405 before its
query string is judged."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.test import override_settings
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from neruba.models import ApiKey
from tests.neruba.routes import assert_error

NOW = datetime(2026, 3, 2, 10, 0, 15, tzinfo=UTC)


def address_rate(rate: str = "3/min") -> Any:
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "address": rate}
    return override_settings(
        REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    )


def throttled_count() -> float:
    return REGISTRY.get_sample_value("neruba_api_throttled_total", {"scope": "address"}) or 0


def client(header: str | None = None, address: str = "203.0.113.7") -> APIClient:
    c = APIClient(REMOTE_ADDR=address)
    if header is not None:
        c.credentials(HTTP_AUTHORIZATION=header)
    return c


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    [None, "Api-Key nope.wrong", "Bearer something", "Api-Key "],
    ids=["no key", "unknown key", "other scheme", "empty key"],
)
def test_requests_without_a_valid_key_are_limited_per_address_before_the_key_is_looked_up(
    header: str | None, django_assert_num_queries: Any
) -> None:
    before = throttled_count()
    with address_rate(), time_machine.travel(NOW, tick=False):
        anonymous = client(header)
        assert [anonymous.get("/api/v1/customers").status_code for _ in range(3)] == [401] * 3
        with django_assert_num_queries(0):  # refused on a cache read: no key verified
            response = anonymous.get("/api/v1/customers")
        error = assert_error(response, 429, "throttled")
        assert response["Retry-After"] == "45"
        assert error["details"]["retry_after_seconds"] == 45
        # Another address has its own budget.
        assert client(header, address="198.51.100.9").get("/api/v1/customers").status_code == 401
    assert throttled_count() == before + 1


@pytest.mark.django_db
def test_valid_keys_do_not_spend_the_address_budget_but_an_address_over_it_waits_whole(
    make_api_key: Callable[..., tuple[ApiKey, str]],
) -> None:
    """Only failed requests count; once an address is over, it waits out the window whatever it
    sends: telling a valid key apart would mean verifying it, the cost this limit avoids."""
    _, raw = make_api_key("read")
    with address_rate("2/min"), time_machine.travel(NOW, tick=False):
        good = client(f"Api-Key {raw}")
        assert [good.get("/api/v1/customers").status_code for _ in range(5)] == [200] * 5
        bad = client("Api-Key nope.wrong")
        assert [bad.get("/api/v1/customers").status_code for _ in range(3)] == [401, 401, 429]
        assert good.get("/api/v1/customers").status_code == 429


@pytest.mark.django_db
def test_the_address_limit_resets_with_its_window() -> None:
    with address_rate("1/min"):
        with time_machine.travel(NOW, tick=False):
            assert client().get("/api/v1/metrics").status_code == 401
            response = client().get("/api/v1/metrics")
            assert response.status_code == 429
            wait = int(response["Retry-After"])
        with time_machine.travel(NOW + timedelta(seconds=wait), tick=False):
            assert client().get("/api/v1/metrics").status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["TRACE", "FROBNICATE", "PUT"])
def test_a_method_the_endpoint_lacks_is_405_before_its_query_is_validated(
    method: str, make_api_key: Callable[..., tuple[ApiKey, str]]
) -> None:
    _, raw = make_api_key("read", "write", "ingest")
    response = client(f"Api-Key {raw}").generic(method, "/api/v1/customers?bogus=1&bogus=2")
    assert_error(response, 405, "method_not_allowed")
    assert method not in response["Allow"] and "GET" in response["Allow"]


@pytest.mark.django_db
def test_a_forged_forwarded_for_header_does_not_buy_a_new_address() -> None:
    with address_rate("1/min"), time_machine.travel(NOW, tick=False):
        assert client().get("/api/v1/metrics", HTTP_X_FORWARDED_FOR="10.0.0.1").status_code == 401
        response = client().get("/api/v1/metrics", HTTP_X_FORWARDED_FOR="10.0.0.2")
        assert response.status_code == 429


@pytest.mark.django_db
def test_a_key_this_worker_verified_moments_ago_skips_the_address_check(
    make_api_key: Callable[..., tuple[ApiKey, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from neruba import auth

    monkeypatch.setattr(auth, "API_KEY_CACHE_SECONDS", 5.0)
    monkeypatch.setattr(auth, "_verified", {})
    _, raw = make_api_key("read")
    with address_rate("1/min"), time_machine.travel(NOW, tick=False):
        good = client(f"Api-Key {raw}")
        assert good.get("/api/v1/customers").status_code == 200  # verified, now remembered
        bad = client("Api-Key nope.wrong")
        assert [bad.get("/api/v1/customers").status_code for _ in range(2)] == [401, 429]
        assert good.get("/api/v1/customers").status_code == 200
        assert client(f"Api-Key {raw}x").get("/api/v1/customers").status_code == 429
