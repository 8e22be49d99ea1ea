"""Each console role can do what the README says and nothing more."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission, User
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from billing.models import Plan
from ingest.models import Metric
from neruba import audit
from neruba.admin_actions import ReadOnlyAdminMixin
from neruba.admin_site import console
from neruba.models import ApiKey, AuditEntry, Customer, SchedulerLock
from operations.roles import ROLES, markdown_table
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
ROLE_NAMES = list(ROLES)
admin.autodiscover()  # every app's console pages, whichever test module was collected first
MODELS = sorted(console._registry, key=lambda m: m._meta.label)


def login(console_user: Callable[[str], User], role: str) -> Client:
    client = Client()
    client.force_login(console_user(role))
    return client


def admin_url(model: Any, view: str, *args: Any) -> str:
    base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
    return base + "".join(f"{a}/" for a in args) + ("" if view == "changelist" else f"{view}/")


def granted(role: str) -> set[str]:
    return set(ROLES[role]["permissions"])


def test_each_group_has_exactly_the_declared_permissions() -> None:
    assert set(Group.objects.values_list("name", flat=True)) >= set(ROLES)
    for name, role in ROLES.items():
        perms = {
            f"{p.content_type.app_label}.{p.codename}"
            for p in Group.objects.get(name=name).permissions.select_related("content_type")
        }
        assert perms == set(role["permissions"]), name


def test_every_declared_permission_exists() -> None:
    existing = {
        f"{p.content_type.app_label}.{p.codename}"
        for p in Permission.objects.select_related("content_type")
    }
    for role in ROLES.values():
        assert set(role["permissions"]) <= existing


def test_no_role_may_change_or_delete_audit_entries_or_manage_users() -> None:
    for name, role in ROLES.items():
        perms = set(role["permissions"])
        assert not {"neruba.change_auditentry", "neruba.delete_auditentry"} & perms, name
        assert not any(p.startswith("auth.") for p in perms), name
        assert not any(p.split(".")[1].startswith("delete_") for p in perms), name


def test_the_readme_role_table_is_generated_from_the_roles() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- role-table:start -->\n(.*?)\n<!-- role-table:end -->", readme, re.DOTALL
    )
    assert match, "README has no role table markers"
    assert match.group(1) == markdown_table()


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_a_role_sees_exactly_the_console_lists_its_permissions_allow(
    console_user: Callable[[str], User], role: str
) -> None:
    client = login(console_user, role)
    perms = granted(role)
    for model in MODELS:
        label = f"{model._meta.app_label}.%s_{model._meta.model_name}"
        allowed = bool({label % "view", label % "change"} & perms)
        status = client.get(admin_url(model, "changelist")).status_code
        assert status == (200 if allowed else 403), f"{role} {model._meta.label}: {status}"
        model_admin = console._registry[model]
        # An admin that gates its add page on a permission of its own (issuing a credit) is
        # covered by the explicit tests below.
        owner = next(c for c in type(model_admin).__mro__ if "has_add_permission" in c.__dict__)
        custom_gate = owner not in (admin.ModelAdmin, ReadOnlyAdminMixin)
        if label % "add" not in perms and not custom_gate:
            add_status = client.get(admin_url(model, "add")).status_code
            assert add_status == 403, f"{role} may add {model._meta.label}"


def test_the_console_pages_of_every_app_are_checked() -> None:
    labels = {model._meta.label for model in MODELS}
    assert {"neruba.Customer", "billing.Plan", "ingest.Metric", "auth.User"} <= labels


@pytest.mark.parametrize(
    ("role", "allowed"), [("Finance", True), ("Support", False), ("Operations", False)]
)
def test_only_finance_may_issue_credits(
    console_user: Callable[[str], User], role: str, allowed: bool
) -> None:
    from billing.models import CreditEntry

    status = login(console_user, role).get(admin_url(CreditEntry, "add")).status_code
    assert status == (200 if allowed else 403)


def test_the_superuser_sees_every_console_page(console_user: Callable[[str], User]) -> None:
    client = login(console_user, "superuser")
    for model in MODELS:
        assert client.get(admin_url(model, "changelist")).status_code == 200, model
    assert client.get("/admin/auth/user/").status_code == 200
    assert client.get("/admin/auth/group/").status_code == 200
    assert client.get("/admin/auth/user/add/").status_code == 200
    assert client.get("/admin/").status_code == 200


# --- Support ---------------------------------------------------------------------------------


def test_support_can_add_a_customer_through_the_console(
    console_user: Callable[[str], User],
) -> None:
    client = login(console_user, "Support")
    response = client.post(
        "/admin/neruba/customer/add/",
        {
            "external_id": "hooli",
            "name": "Hooli",
            "email": "",
            "currency": "USD",
            "stripe_customer_id": "",
            "change_reason": "customer asked by email",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    customer = Customer.objects.get(external_id="hooli")
    entry = AuditEntry.objects.get(action="customer.create")
    assert entry.target_id == str(customer.pk) and entry.actor_label == "support-user"


def test_support_can_fix_a_customer_and_the_change_is_audited(
    console_user: Callable[[str], User],
) -> None:
    customer = CustomerFactory(external_id="hooli", name="Holi", currency="USD")
    client = login(console_user, "Support")
    response = client.post(
        f"/admin/neruba/customer/{customer.pk}/change/",
        {
            "external_id": "hooli",
            "name": "Hooli",
            "email": customer.email,
            "currency": "USD",
            "stripe_customer_id": "",
            "change_reason": "customer asked by email",
        },
    )
    assert response.status_code == 302
    entry = AuditEntry.objects.get(action="customer.update")
    assert (entry.before["name"], entry.after["name"]) == ("Holi", "Hooli")


def test_the_console_does_not_offer_to_rename_a_customers_external_id(
    console_user: Callable[[str], User],
) -> None:
    # Clients address customers by external id; a console edit must not silently drop a rename.
    customer = CustomerFactory(external_id="hooli", name="Hooli", currency="USD")
    client = login(console_user, "Support")
    page = client.get(f"/admin/neruba/customer/{customer.pk}/change/").content.decode()
    assert 'name="external_id"' not in page
    response = client.post(
        f"/admin/neruba/customer/{customer.pk}/change/",
        {
            "external_id": "renamed",
            "name": "Hooli 2",
            "email": "",
            "currency": "USD",
            "stripe_customer_id": "",
            "change_reason": "customer asked by email",
        },
    )
    assert response.status_code == 302
    customer.refresh_from_db()
    assert (customer.external_id, customer.name) == ("hooli", "Hooli 2")
    assert AuditEntry.objects.get(action="customer.update").after["external_id"] == "hooli"


def test_support_cannot_open_api_keys_or_release_locks_or_add_plans(
    console_user: Callable[[str], User],
) -> None:
    now = timezone.now()
    lock = SchedulerLock.objects.create(
        name="scan", holder="dead", token=1, expires_at=now - timedelta(hours=1)
    )
    client = login(console_user, "Support")
    assert client.get("/admin/neruba/apikey/").status_code == 403
    assert client.get("/admin/neruba/apikey/add/").status_code == 403
    assert client.get("/admin/neruba/schedulerlock/").status_code == 403
    url = f"/admin/neruba/schedulerlock/{lock.pk}/action/release_locks/"
    assert client.post(url, {"confirm": "yes", "reason": "x"}).status_code == 403
    assert client.get("/admin/billing/plan/add/").status_code == 403
    lock.refresh_from_db()
    assert lock.holder == "dead"


# --- Finance ---------------------------------------------------------------------------------


def test_finance_can_add_a_plan_through_the_console(console_user: Callable[[str], User]) -> None:
    client = login(console_user, "Finance")
    response = client.post(
        "/admin/billing/plan/add/",
        {
            "code": "scale",
            "name": "Scale",
            "currency": "USD",
            "interval": "month",
            "base_amount": "499.00",
            "prices-TOTAL_FORMS": "0",
            "prices-INITIAL_FORMS": "0",
            "prices-MIN_NUM_FORMS": "0",
            "prices-MAX_NUM_FORMS": "1000",
            "change_reason": "new plan for Q3",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    plan = Plan.objects.get(code="scale")
    assert plan.base_amount == 49900  # typed as 499.00
    entry = AuditEntry.objects.get(action="plan.create", target_id=str(plan.pk))
    assert entry.actor_label == "finance-user"


def test_finance_cannot_add_or_change_customers_or_touch_keys_or_metrics(
    console_user: Callable[[str], User],
) -> None:
    customer = CustomerFactory(external_id="acme", name="Acme")
    client = login(console_user, "Finance")
    assert client.get("/admin/neruba/customer/add/").status_code == 403
    response = client.post(
        "/admin/neruba/customer/add/",
        {"external_id": "sneaky", "name": "Sneaky", "currency": "USD"},
    )
    assert response.status_code == 403
    assert not Customer.objects.filter(external_id="sneaky").exists()
    change = client.post(
        f"/admin/neruba/customer/{customer.pk}/change/",
        {"external_id": "acme", "name": "Renamed", "currency": "USD"},
    )
    assert change.status_code == 403
    customer.refresh_from_db()
    assert customer.name == "Acme"
    assert client.get("/admin/neruba/apikey/").status_code == 403
    assert client.get("/admin/ingest/metric/add/").status_code == 403


# --- Operations ------------------------------------------------------------------------------


def test_operations_can_create_an_api_key_and_sees_it_once(
    console_user: Callable[[str], User],
) -> None:
    client = login(console_user, "Operations")
    response = client.post(
        "/admin/neruba/apikey/add/",
        {
            "name": "billing-svc",
            "scopes": ["ingest"],
            "expiry_date_0": "",
            "expiry_date_1": "",
            "change_reason": "billing service",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    api_key = ApiKey.objects.get(name="billing-svc")
    assert api_key.scopes == ["ingest"]
    (shown,) = [str(m) for m in get_messages(response.wsgi_request) if "shown once" in str(m)]
    raw = re.search(r"The API key is (\S+) ", shown).group(1)  # type: ignore[union-attr]
    assert ApiKey.objects.get_from_key(raw) == api_key
    entry = AuditEntry.objects.get(action="api_key.create")
    assert entry.actor_label == "operations-user"


def test_operations_can_add_a_metric(console_user: Callable[[str], User]) -> None:
    client = login(console_user, "Operations")
    response = client.post(
        "/admin/ingest/metric/add/",
        {
            "code": "gpu_seconds",
            "name": "GPU seconds",
            "aggregation": "sum",
            "field": "seconds",
            "change_reason": "GPU product",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Metric.objects.filter(code="gpu_seconds").exists()


def test_operations_cannot_add_plans_or_customers(console_user: Callable[[str], User]) -> None:
    client = login(console_user, "Operations")
    assert client.get("/admin/billing/plan/add/").status_code == 403
    assert client.post("/admin/billing/plan/add/", {"code": "x", "name": "X"}).status_code == 403
    assert client.get("/admin/neruba/customer/add/").status_code == 403
    assert client.get("/admin/billing/subscription/add/").status_code == 403
    assert not Plan.objects.filter(code="x").exists()


# --- Everyone --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [*ROLE_NAMES, "superuser"])
def test_no_role_can_change_or_delete_an_audit_entry(
    console_user: Callable[[str], User], role: str
) -> None:
    entry = audit.record(actor=None, action="test.event", target_type="x", target_id="1")
    client = login(console_user, role)
    base = f"/admin/neruba/auditentry/{entry.pk}/"
    assert client.post(f"{base}change/", {"reason": "edited"}).status_code == 403
    assert client.post(f"{base}delete/", {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.get(pk=entry.pk).reason == ""


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_no_role_can_manage_console_users(console_user: Callable[[str], User], role: str) -> None:
    client = login(console_user, role)
    assert client.get("/admin/auth/user/").status_code == 403
    assert client.get("/admin/auth/user/add/").status_code == 403
    assert client.get("/admin/auth/group/").status_code == 403
