from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from billing import services
from billing.exceptions import InvalidTiers
from billing.models import Plan, Price, Subscription
from billing.pricing import tiers_validate
from neruba.models import AuditEntry
from tests.factories import CustomerFactory, MetricFactory, PlanFactory, PriceFactory
from tests.neruba.routes import assert_error

pytestmark = pytest.mark.django_db


def test_the_plan_list_has_the_public_shape_with_decimal_strings(
    api: Callable[..., APIClient], catalog: dict[str, Any]
) -> None:
    body = api("read").get("/api/v1/plans").json()
    assert set(body) == {"next", "previous", "results"}
    (plan,) = body["results"]
    assert plan == {
        "code": "pro",
        "name": "Pro",
        "currency": "USD",
        "interval": "month",
        "base_amount": 1000,
        "prices": [
            {"metric": "api_calls", "model": "per_unit", "unit_amount": "0.5", "tiers": []},
            {
                "metric": "compute_seconds",
                "model": "graduated",
                "unit_amount": "0",
                "tiers": [
                    {"up_to": "100", "unit_amount": "1", "flat_amount": 0},
                    {"up_to": None, "unit_amount": "0.5", "flat_amount": 0},
                ],
            },
        ],
    }


@pytest.mark.parametrize(
    ("stored", "shown"),
    [("100", "100"), ("0.0001", "0.0001"), ("12.5000", "12.5"), ("0.0000000001", "0.0000000001")],
)
def test_unit_amounts_are_plain_decimal_strings_never_exponents(
    api: Callable[..., APIClient], stored: str, shown: str
) -> None:
    PriceFactory(
        plan=PlanFactory(code="p"), metric=MetricFactory(code="m"), unit_amount=Decimal(stored)
    )
    (plan,) = api("read").get("/api/v1/plans").json()["results"]
    assert plan["prices"][0]["unit_amount"] == shown


def test_plans_made_through_the_service_list_their_validated_tiers(
    api: Callable[..., APIClient],
) -> None:
    metric = MetricFactory(code="api_calls")
    services.plan_create(
        code="growth",
        name="Growth",
        currency="usd",
        interval="day",
        base_amount=9900,
        prices=[
            {
                "metric": metric,
                "model": "graduated",
                "tiers": [
                    {"up_to": 1000, "unit_amount": "0.04"},
                    {"up_to": None, "unit_amount": 0.02},
                ],
            }
        ],
    )
    (plan,) = api("read").get("/api/v1/plans").json()["results"]
    assert plan["currency"] == "USD" and plan["interval"] == "day"
    assert plan["prices"][0]["tiers"] == [
        {"up_to": "1000", "unit_amount": "0.04", "flat_amount": 0},
        {"up_to": None, "unit_amount": "0.02", "flat_amount": 0},
    ]
    assert AuditEntry.objects.filter(action="plan.create", target_id=str(Plan.objects.get().pk))


def test_the_metric_list_has_the_public_shape(api: Callable[..., APIClient]) -> None:
    MetricFactory(
        code="compute_seconds", name="Compute seconds", aggregation="sum", field="seconds"
    )
    body = api("read").get("/api/v1/metrics").json()
    assert set(body) == {"next", "previous", "results"}
    assert body["results"] == [
        {
            "code": "compute_seconds",
            "name": "Compute seconds",
            "aggregation": "sum",
            "field": "seconds",
        }
    ]


def test_plan_and_metric_lists_are_cursor_paginated(api: Callable[..., APIClient]) -> None:
    for n in range(3):
        PlanFactory(code=f"plan-{n}")
        MetricFactory(code=f"metric_{n}")
    client = api("read")
    for url in ("/api/v1/plans", "/api/v1/metrics"):
        first = client.get(url, {"limit": 2}).json()
        assert len(first["results"]) == 2 and first["next"]
        second = client.get(first["next"]).json()
        assert len(second["results"]) == 1 and second["next"] is None
        codes = {p["code"] for p in first["results"] + second["results"]}
        assert len(codes) == 3


def test_creating_a_subscription_with_customer_plan_and_start(
    api: Callable[..., APIClient],
) -> None:
    CustomerFactory(external_id="umbrella", currency="USD")
    PlanFactory(code="starter", currency="USD")
    response = api("write").post(
        "/api/v1/subscriptions",
        {"customer": "umbrella", "plan": "starter", "started_at": "2026-11-01T00:00:00Z"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["customer"] == "umbrella" and body["plan"] == "starter"
    assert body["started_at"] == "2026-11-01T00:00:00Z" and body["ended_at"] is None
    subscription = Subscription.objects.get()
    assert subscription.started_at == datetime(2026, 11, 1, tzinfo=UTC)
    entry = AuditEntry.objects.get(action="subscription.create")
    assert entry.customer == subscription.customer and entry.actor_label.startswith("api_key:")


def test_a_subscription_may_carry_a_unique_external_id(api: Callable[..., APIClient]) -> None:
    CustomerFactory(external_id="umbrella", currency="USD")
    CustomerFactory(external_id="initech", currency="USD")
    PlanFactory(code="starter", currency="USD")
    PlanFactory(code="pro", currency="USD")
    client = api("write", "read")
    payload = {
        "customer": "umbrella",
        "plan": "starter",
        "started_at": "2026-11-01T00:00:00Z",
        "external_id": "sub_umbrella_starter",
    }
    response = client.post("/api/v1/subscriptions", payload, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["external_id"] == "sub_umbrella_starter"
    taken = {**payload, "customer": "initech", "plan": "pro"}
    error = assert_error(
        client.post("/api/v1/subscriptions", taken, format="json"),
        409,
        "subscription_external_id_taken",
    )
    assert error["details"] == {"external_id": "sub_umbrella_starter"}
    assert Subscription.objects.count() == 1
    # Without one (or with none), any number of subscriptions have no external id.
    for customer in ("umbrella", "initech"):
        untagged = {"customer": customer, "plan": "pro", "started_at": "2026-11-01T00:00:00Z"}
        assert client.post("/api/v1/subscriptions", untagged, format="json").status_code == 201
    listed = client.get("/api/v1/subscriptions", {"customer": "umbrella"}).json()["results"]
    assert sorted(str(s["external_id"]) for s in listed) == ["None", "sub_umbrella_starter"]
    audit = AuditEntry.objects.filter(action="subscription.create").order_by("id").first()
    assert audit.after["external_id"] == "sub_umbrella_starter"


def test_the_subscription_list_filters_by_customer(
    api: Callable[..., APIClient], catalog: dict[str, Any]
) -> None:
    client = api("read")
    body = client.get("/api/v1/subscriptions", {"customer": "acme"}).json()
    assert [(s["customer"], s["plan"]) for s in body["results"]] == [("acme", "pro")]
    assert client.get("/api/v1/subscriptions", {"customer": "nobody"}).json()["results"] == []


@pytest.mark.parametrize(
    ("started_at", "ended_at", "overlaps"),
    [
        ("2026-02-01T00:00:00Z", None, True),  # inside the open-ended existing one
        ("2025-01-01T00:00:00Z", "2026-01-02T00:00:00Z", True),  # ends after it started
        ("2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z", False),  # ends exactly at its start
    ],
)
def test_an_overlapping_subscription_to_the_same_plan_answers_409(
    api: Callable[..., APIClient],
    catalog: dict[str, Any],
    started_at: str,
    ended_at: str | None,
    overlaps: bool,
) -> None:
    payload = {"customer": "acme", "plan": "pro", "started_at": started_at, "ended_at": ended_at}
    response = api("write").post("/api/v1/subscriptions", payload, format="json")
    if overlaps:
        error = assert_error(response, 409, "subscription_overlap")
        assert error["details"] == {"customer": "acme", "plan": "pro"}
        assert Subscription.objects.count() == 1
    else:
        assert response.status_code == 201, response.content
        assert Subscription.objects.count() == 2


def test_a_subscription_in_another_currency_answers_400(api: Callable[..., APIClient]) -> None:
    CustomerFactory(external_id="initech", currency="EUR")
    PlanFactory(code="starter", currency="USD")
    response = api("write").post(
        "/api/v1/subscriptions",
        {"customer": "initech", "plan": "starter", "started_at": "2026-11-01T00:00:00Z"},
        format="json",
    )
    error = assert_error(response, 400, "currency_mismatch")
    assert error["details"] == {"customer": "EUR", "plan": "USD"}
    assert not Subscription.objects.exists()


def test_an_unknown_plan_or_customer_answers_404(
    api: Callable[..., APIClient], catalog: dict[str, Any]
) -> None:
    client = api("write")
    start = "2027-01-01T00:00:00Z"
    response = client.post(
        "/api/v1/subscriptions",
        {"customer": "acme", "plan": "nope", "started_at": start},
        format="json",
    )
    assert assert_error(response, 404, "plan_not_found")["details"] == {"plan": "nope"}
    response = client.post(
        "/api/v1/subscriptions",
        {"customer": "nobody", "plan": "pro", "started_at": start},
        format="json",
    )
    assert assert_error(response, 404, "customer_not_found")["details"] == {"external_id": "nobody"}
    assert Subscription.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, {"customer", "plan", "started_at"}),
        ({"customer": "acme", "plan": "pro", "started_at": "yesterday"}, {"started_at"}),
        (
            {
                "customer": "acme",
                "plan": "pro",
                "started_at": "2027-01-02T00:00:00Z",
                "ended_at": "2027-01-01T00:00:00Z",
            },
            {"ended_at"},
        ),
    ],
)
def test_invalid_subscription_input_answers_400_with_field_details(
    api: Callable[..., APIClient],
    catalog: dict[str, Any],
    payload: dict[str, Any],
    fields: set[str],
) -> None:
    response = api("write").post("/api/v1/subscriptions", payload, format="json")
    assert set(assert_error(response, 400, "validation_error")["details"]["fields"]) == fields


def test_valid_tiers_are_normalised() -> None:
    assert tiers_validate(
        [
            {"up_to": 10, "unit_amount": 1, "flat_amount": 500},
            {"up_to": "100.5", "unit_amount": "0.50"},
            {"up_to": None, "unit_amount": "0.1"},
        ]
    ) == [
        {"up_to": "10", "unit_amount": "1", "flat_amount": 500},
        {"up_to": "100.5", "unit_amount": "0.50", "flat_amount": 0},
        {"up_to": None, "unit_amount": "0.1", "flat_amount": 0},
    ]


@pytest.mark.parametrize(
    ("tiers", "problem"),
    [
        ([], None),
        ([{"up_to": 10, "unit_amount": "1"}], "the last tier must be open"),
        (
            [{"up_to": None, "unit_amount": "1"}, {"up_to": None, "unit_amount": "1"}],
            "only the last tier is open",
        ),
        (
            [
                {"up_to": 100, "unit_amount": "1"},
                {"up_to": 50, "unit_amount": "1"},
                {"up_to": None, "unit_amount": "1"},
            ],
            "up_to must ascend",
        ),
        (
            [{"up_to": 0, "unit_amount": "1"}, {"up_to": None, "unit_amount": "1"}],
            "up_to must ascend",
        ),
        ([{"up_to": None, "unit_amount": "-1"}], "negative amount"),
        ([{"up_to": None, "unit_amount": "1", "flat_amount": -5}], "negative amount"),
        ([{"up_to": None, "unit_amount": "lots"}], "bad amount"),
        ([{"up_to": "ten", "unit_amount": "1"}, {"up_to": None}], "bad up_to"),
    ],
)
def test_bad_tiers_are_rejected(tiers: list[dict[str, Any]], problem: str | None) -> None:
    with pytest.raises(InvalidTiers) as caught:
        tiers_validate(tiers)
    if problem:
        assert caught.value.details["problem"] == problem


def test_a_plan_with_bad_tiers_is_not_created_at_all() -> None:
    metric = MetricFactory(code="api_calls")
    with pytest.raises(InvalidTiers):
        services.plan_create(
            code="broken",
            name="Broken",
            currency="USD",
            interval="month",
            base_amount=0,
            prices=[{"metric": metric, "model": "graduated", "tiers": [{"up_to": 5}]}],
        )
    assert not Plan.objects.exists() and not Price.objects.exists()
    assert not AuditEntry.objects.filter(action="plan.create").exists()
