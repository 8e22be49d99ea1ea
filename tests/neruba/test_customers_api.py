from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from neruba.models import AuditEntry, Customer
from tests.factories import CustomerFactory
from tests.neruba.routes import assert_error

pytestmark = pytest.mark.django_db

SHAPE = {"external_id", "name", "email", "currency", "stripe_customer_id"}


def test_creating_a_customer_answers_201_with_exactly_the_public_shape(
    api: Callable[..., APIClient],
) -> None:
    response = api("write").post(
        "/api/v1/customers",
        {
            "external_id": "umbrella",
            "name": "Umbrella",
            "email": "ap@umbrella.example",
            "currency": "eur",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json() == {
        "external_id": "umbrella",
        "name": "Umbrella",
        "email": "ap@umbrella.example",
        "currency": "EUR",
        "stripe_customer_id": "",
    }
    assert Customer.objects.get(external_id="umbrella").currency == "EUR"


def test_creating_a_customer_is_audited_with_the_api_key_as_actor(
    make_api_key: Callable[..., Any],
) -> None:
    api_key, raw = make_api_key("write")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    client.post("/api/v1/customers", {"external_id": "c1", "name": "C1"}, format="json")
    entry = AuditEntry.objects.get(action="customer.create")
    assert entry.actor is None
    assert entry.actor_label == f"api_key:{api_key.prefix}"
    assert entry.after["external_id"] == "c1"
    assert entry.customer == Customer.objects.get(external_id="c1")


def test_a_duplicate_external_id_answers_409_customer_exists(
    api: Callable[..., APIClient],
) -> None:
    client = api("write")
    payload = {"external_id": "umbrella", "name": "Umbrella"}
    assert client.post("/api/v1/customers", payload, format="json").status_code == 201
    response = client.post("/api/v1/customers", {**payload, "name": "Other"}, format="json")
    error = assert_error(response, 409, "customer_exists")
    assert error["details"] == {"external_id": "umbrella"}
    assert Customer.objects.get().name == "Umbrella"
    assert AuditEntry.objects.filter(action="customer.create").count() == 1


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, {"external_id", "name"}),
        ({"external_id": "has space", "name": "X"}, {"external_id"}),
        ({"external_id": "ok", "name": "X", "email": "not-an-email"}, {"email"}),
        ({"external_id": "ok", "name": "X", "currency": "EURO"}, {"currency"}),
        ({"external_id": "ok", "name": "x" * 201}, {"name"}),
    ],
)
def test_invalid_input_answers_400_with_field_details(
    api: Callable[..., APIClient], payload: dict[str, Any], fields: set[str]
) -> None:
    response = api("write").post("/api/v1/customers", payload, format="json")
    error = assert_error(response, 400, "validation_error")
    assert set(error["details"]["fields"]) == fields
    assert all(isinstance(m, list) and m for m in error["details"]["fields"].values())
    assert not Customer.objects.exists()


def test_a_body_that_is_not_json_answers_400_malformed_request(
    api: Callable[..., APIClient],
) -> None:
    response = api("write").post("/api/v1/customers", "{not json", content_type="application/json")
    assert_error(response, 400, "malformed_request")


def test_getting_a_customer_by_external_id(api: Callable[..., APIClient]) -> None:
    CustomerFactory(
        external_id="acme",
        name="Acme",
        email="a@acme.example",
        currency="USD",
        stripe_customer_id="cus_123",
    )
    response = api("read").get("/api/v1/customers/acme")
    assert response.status_code == 200
    assert response.json() == {
        "external_id": "acme",
        "name": "Acme",
        "email": "a@acme.example",
        "currency": "USD",
        "stripe_customer_id": "cus_123",
    }


def test_an_unknown_customer_answers_404_in_the_envelope(api: Callable[..., APIClient]) -> None:
    error = assert_error(api("read").get("/api/v1/customers/nobody"), 404, "customer_not_found")
    assert error["details"] == {"external_id": "nobody"}
    assert_error(
        api("write").patch("/api/v1/customers/nobody", {"name": "X"}, format="json"),
        404,
        "customer_not_found",
    )


def test_an_unknown_api_path_answers_404_in_the_envelope(api: Callable[..., APIClient]) -> None:
    assert_error(api("read").get("/api/v1/no-such-endpoint"), 404, "not_found")


def test_patching_a_customer_changes_only_the_given_fields_and_audits_before_and_after(
    make_api_key: Callable[..., Any],
) -> None:
    CustomerFactory(external_id="acme", name="Acme", email="old@acme.example", currency="USD")
    api_key, raw = make_api_key("write")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    response = client.patch(
        "/api/v1/customers/acme", {"email": "new@acme.example", "currency": "eur"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json() == {
        "external_id": "acme",
        "name": "Acme",
        "email": "new@acme.example",
        "currency": "EUR",
        "stripe_customer_id": "",
    }
    entry = AuditEntry.objects.get(action="customer.update")
    assert entry.actor_label == f"api_key:{api_key.prefix}"
    assert entry.before["email"] == "old@acme.example" and entry.before["currency"] == "USD"
    assert entry.after["email"] == "new@acme.example" and entry.after["currency"] == "EUR"
    assert entry.after["name"] == entry.before["name"] == "Acme"
    assert entry.target_id == str(Customer.objects.get(external_id="acme").pk)


def test_patching_cannot_change_the_external_id(api: Callable[..., APIClient]) -> None:
    CustomerFactory(external_id="acme")
    response = api("write").patch(
        "/api/v1/customers/acme", {"external_id": "renamed"}, format="json"
    )
    assert response.status_code == 200
    assert Customer.objects.filter(external_id="acme").exists()
    assert not Customer.objects.filter(external_id="renamed").exists()


def test_patching_with_invalid_values_answers_400_and_changes_nothing(
    api: Callable[..., APIClient],
) -> None:
    CustomerFactory(external_id="acme", email="a@acme.example")
    response = api("write").patch("/api/v1/customers/acme", {"email": "nope"}, format="json")
    assert set(assert_error(response, 400, "validation_error")["details"]["fields"]) == {"email"}
    assert Customer.objects.get().email == "a@acme.example"
    assert not AuditEntry.objects.filter(action="customer.update").exists()


def test_the_customer_list_is_cursor_paginated(api: Callable[..., APIClient]) -> None:
    for n in range(5):
        CustomerFactory(external_id=f"c{n}")
    client = api("read")
    first = client.get("/api/v1/customers", {"limit": 2}).json()
    assert set(first) == {"next", "previous", "results"}
    assert first["previous"] is None and first["next"]
    assert all(set(item) == SHAPE for item in first["results"])
    seen = [c["external_id"] for c in first["results"]]
    page = first
    while page["next"]:
        page = client.get(page["next"]).json()
        assert len(page["results"]) <= 2
        seen += [c["external_id"] for c in page["results"]]
    assert sorted(seen) == [f"c{n}" for n in range(5)]
    assert len(seen) == len(set(seen)) == 5
    assert page["previous"]
    back = client.get(page["previous"]).json()
    assert back["results"] and back["results"][0]["external_id"] in seen


def test_a_limit_above_the_maximum_is_refused_not_capped(api: Callable[..., APIClient]) -> None:
    for n in range(3):
        CustomerFactory(external_id=f"c{n}")
    assert_error(api("read").get("/api/v1/customers", {"limit": 10_000}), 400, "invalid_limit")
    body = api("read").get("/api/v1/customers", {"limit": 500}).json()
    assert len(body["results"]) == 3 and body["next"] is None


def test_a_bad_cursor_answers_400_in_the_envelope(api: Callable[..., APIClient]) -> None:
    response = api("read").get("/api/v1/customers", {"cursor": "garbage"})
    assert_error(response, 400, "invalid_cursor")
