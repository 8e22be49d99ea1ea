"""Every state change made from the console is audited with actor and reason; records of fact
and the audit log itself cannot be changed there."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.test import RequestFactory

from neruba.admin_site import console
from neruba.models import AuditEntry
from tests.operations.console import client_for

pytestmark = pytest.mark.django_db


def test_every_console_page_that_can_write_does_so_through_an_audited_path() -> None:
    request = RequestFactory().get("/admin/")
    request.user = User(username="root", is_superuser=True, is_staff=True, is_active=True)
    for model, model_admin in console._registry.items():
        kind = type(model_admin)
        if model_admin.has_add_permission(request) or model_admin.has_change_permission(request):
            assert kind.save_model is not admin.ModelAdmin.save_model, model
        if model_admin.has_delete_permission(request):
            assert kind.delete_model is not admin.ModelAdmin.delete_model, model
            assert kind.delete_queryset is not admin.ModelAdmin.delete_queryset, model


def test_a_superuser_moving_a_user_between_roles_is_audited_without_the_password_hash(
    console_user: Any,
) -> None:
    client = client_for(console_user, "superuser")
    user = console_user("Support", username="alice")
    finance = Group.objects.get(name="Finance")
    response = client.post(
        f"/admin/auth/user/{user.pk}/change/",
        {
            "username": "alice",
            "is_active": "on",
            "is_staff": "on",
            "groups": [finance.pk],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
            "change_reason": "moved to finance",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = AuditEntry.objects.get(action="user.update")
    assert entry.actor_label == "superuser-user" and entry.reason == "moved to finance"
    assert entry.before["groups"] == ["Support"] and entry.after["groups"] == ["Finance"]
    assert "password" not in entry.after and "pbkdf2" not in str(entry.after)


def test_a_superuser_changing_a_roles_permissions_is_audited(console_user: Any) -> None:
    client = client_for(console_user, "superuser")
    group = Group.objects.create(name="Auditors")
    client.post(
        f"/admin/auth/group/{group.pk}/change/",
        {"name": "Readers", "permissions": [], "change_reason": "renamed"},
    )
    entry = AuditEntry.objects.get(action="group.update")
    assert (entry.before["name"], entry.after["name"]) == ("Auditors", "Readers")


def test_customers_cannot_be_deleted_from_the_console(
    catalog: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "superuser")
    url = f"/admin/neruba/customer/{catalog['customer'].pk}/delete/"
    assert client.post(url, {"post": "yes"}).status_code == 403
