"""Closing the console's loops: refusals that say what is missing, a reason on every create
and change, API key hashes never on screen or in exports, the console's own 404 for runbooks."""

from __future__ import annotations

from typing import Any

import pytest

from neruba import services as kernel_services
from neruba.models import AuditEntry, Customer
from tests.operations.console import client_for

pytestmark = pytest.mark.django_db


def test_a_refused_action_shows_the_console_with_the_missing_permission_and_the_role_that_has_it(
    catalog: dict[str, Any], console_user: Any
) -> None:
    client = client_for(console_user, "Support")
    response = client.get(f"/admin/neruba/customer/{catalog['customer'].pk}/action/issue_credit/")
    assert response.status_code == 403
    html = response.content.decode()
    assert 'id="console-search"' in html  # the console's header, not a bare page
    assert '<code id="refusal-permission">billing.issue_credit</code>' in html
    assert '<td id="refusal-roles">Finance</td>' in html
    assert "Support" in html  # the user's own role


def test_a_refused_admin_page_names_the_model_permission(console_user: Any) -> None:
    client = client_for(console_user, "Finance")
    response = client.get("/admin/neruba/customer/add/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "neruba.add_customer" in html and "Support" in html


def test_api_refusals_keep_the_json_envelope() -> None:
    from django.test import Client

    response = Client().get("/api/v1/customers")
    assert response.status_code in (401, 403)
    assert response.json()["error"]["code"]


def test_creating_a_customer_asks_for_a_reason_next_to_the_field_and_audits_it(
    console_user: Any,
) -> None:
    client = client_for(console_user, "Support")
    data = {"external_id": "hooli", "name": "Hooli", "email": "", "currency": "EUR"}
    refused = client.post("/admin/neruba/customer/add/", data)
    assert refused.status_code == 200
    html = refused.content.decode()
    row = html[html.index('class="form-row errors field-change_reason"') :][:600]
    assert "This field is required." in row
    assert not Customer.objects.filter(external_id="hooli").exists()
    done = client.post(
        "/admin/neruba/customer/add/", {**data, "change_reason": "signed up by phone"}
    )
    assert done.status_code == 302
    entry = AuditEntry.objects.get(action="customer.create")
    assert entry.reason == "signed up by phone"


def test_api_key_hashes_are_never_shown_in_the_audit_log_or_its_export(console_user: Any) -> None:
    api_key, _ = kernel_services.api_key_create(name="svc", scopes=["read"], actor=None)
    # An entry written before keys were named by prefix holds the full id (prefix.hash).
    AuditEntry.objects.create(
        actor_label="system",
        action="api_key.revoke",
        target_type="neruba.apikey",
        target_id=str(api_key.pk),
        target_repr="svc",
    )
    assert api_key.hashed_key in str(api_key.pk)
    for role in ("Support", "Finance"):
        html = client_for(console_user, role).get("/admin/neruba/auditentry/").content.decode()
        assert api_key.hashed_key not in html, role
        assert f"prefix:{api_key.prefix}" in html
    for entry in AuditEntry.objects.filter(target_type="neruba.apikey"):
        page = client_for(console_user, "Support").get(
            f"/admin/neruba/auditentry/{entry.pk}/change/"
        )
        assert api_key.hashed_key not in page.content.decode()
    export = client_for(console_user, "Finance").get("/admin/neruba/auditentry/export.csv")
    body = b"".join(export.streaming_content).decode()
    assert api_key.hashed_key not in body and f"prefix:{api_key.prefix}" in body


def test_an_unknown_runbook_is_the_consoles_own_404_with_the_list(console_user: Any) -> None:
    response = client_for(console_user, "Support").get("/console/runbooks/no-such-book")
    assert response.status_code == 404
    html = response.content.decode()
    assert 'id="runbook-missing"' in html and "/console/runbooks/webhooks" in html
