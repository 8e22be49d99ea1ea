from __future__ import annotations

import pytest
from django.test import Client

from billing.models import Subscription
from neruba.models import AuditEntry
from tests.factories import CustomerFactory, PlanFactory


def _finance(console_user) -> Client:
    client = Client()
    client.force_login(console_user("Finance"))
    return client


def _add(client: Client, customer, plan, start: str, end: str = ""):
    return client.post(
        "/admin/billing/subscription/add/",
        {
            "customer": customer.external_id,
            "plan": plan.pk,
            "started_at_0": start,
            "started_at_1": "00:00:00",
            "ended_at_0": end,
            "ended_at_1": "00:00:00" if end else "",
            "change_reason": "signed the order form",
        },
    )


@pytest.mark.django_db
def test_finance_creates_a_subscription_in_the_console_through_the_service(console_user) -> None:
    customer, plan = CustomerFactory(currency="USD"), PlanFactory(currency="USD")
    response = _add(_finance(console_user), customer, plan, "2026-01-01")
    assert response.status_code == 302
    subscription = Subscription.objects.get(customer=customer, plan=plan)
    entry = AuditEntry.objects.get(action="subscription.create", target_id=str(subscription.pk))
    assert entry.actor_label == "finance-user"


@pytest.mark.django_db
def test_an_overlapping_or_wrong_currency_subscription_is_refused_with_a_form_error(
    console_user,
) -> None:
    client = _finance(console_user)
    customer, plan = CustomerFactory(currency="USD"), PlanFactory(currency="USD")
    assert _add(client, customer, plan, "2026-01-01").status_code == 302
    overlap = _add(client, customer, plan, "2026-02-01")
    assert overlap.status_code == 200 and "already has a subscription" in overlap.content.decode()
    euro = PlanFactory(currency="EUR")
    mismatch = _add(client, customer, euro, "2026-01-01")
    assert mismatch.status_code == 200 and "currency" in mismatch.content.decode()
    assert Subscription.objects.filter(customer=customer).count() == 1


@pytest.mark.django_db
def test_only_the_end_of_a_subscription_can_change_and_the_change_is_audited(console_user) -> None:
    client = _finance(console_user)
    customer, plan = CustomerFactory(currency="USD"), PlanFactory(currency="USD")
    _add(client, customer, plan, "2026-01-01")
    subscription = Subscription.objects.get(customer=customer)
    other = PlanFactory(currency="USD")
    response = client.post(
        f"/admin/billing/subscription/{subscription.pk}/change/",
        {
            "plan": other.pk,
            "ended_at_0": "2026-06-01",
            "ended_at_1": "00:00:00",
            "change_reason": "contract ends in June",
        },
    )
    assert response.status_code == 302
    subscription.refresh_from_db()
    assert subscription.plan == plan and subscription.ended_at.month == 6
    assert AuditEntry.objects.filter(
        action="subscription.end", reason="contract ends in June"
    ).exists()
    assert (
        client.post(
            f"/admin/billing/subscription/{subscription.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )


def test_the_subscription_form_takes_the_customers_external_id_and_explains_an_unknown_one(
    console_user,
) -> None:
    client = _finance(console_user)
    plan = PlanFactory(code="eu-daily", currency="EUR", interval="day")
    CustomerFactory(external_id="hooli", currency="EUR")
    page = client.get("/admin/billing/subscription/add/").content.decode()
    assert 'list="id_customer_options"' in page and "/console/customers/autocomplete/" in page
    assert "eu-daily — " in page and "(EUR, per day, base fee" in page
    assert "UTC" in page
    missing = client.post(
        "/admin/billing/subscription/add/",
        {
            "customer": "hoolli",
            "plan": plan.pk,
            "started_at_0": "2026-11-24",
            "started_at_1": "00:00:00",
            "change_reason": "typo",
        },
    ).content.decode()
    row = missing[missing.index("field-customer") :][:800]
    assert "No customer with this external id" in row
    done = client.post(
        "/admin/billing/subscription/add/",
        {
            "customer": "hooli",
            "plan": plan.pk,
            "started_at_0": "2026-11-24",
            "started_at_1": "00:00:00",
            "change_reason": "signed the order form",
        },
    )
    assert done.status_code == 302
    assert Subscription.objects.get().customer.external_id == "hooli"


def test_the_customer_autocomplete_suggests_by_external_id_prefix_and_name(console_user) -> None:
    CustomerFactory(external_id="hooli", name="Hooli XYZ")
    CustomerFactory(external_id="acme", name="Acme Hooligans")
    client = _finance(console_user)
    found = client.get("/console/customers/autocomplete/?q=hoo").json()["results"]
    assert [c["external_id"] for c in found] == ["hooli", "acme"]
    assert client.get("/console/customers/autocomplete/?q=").json()["results"] == []
