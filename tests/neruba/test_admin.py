"""Console pages of the kernel models (guarded actions have their own tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from neruba.models import ApiKey, AuditEntry

pytestmark = pytest.mark.django_db


def operations_client(console_user: Callable[[str], Any]) -> Client:
    client = Client()
    client.force_login(console_user("Operations"))
    return client


def add_key(client: Client, **data: Any) -> Any:
    return client.post(
        "/admin/neruba/apikey/add/",
        {
            "name": "svc",
            "expiry_date_0": "",
            "expiry_date_1": "",
            "change_reason": "new svc",
            **data,
        },
    )


def test_the_api_key_form_offers_exactly_the_three_scopes(
    console_user: Callable[[str], Any],
) -> None:
    html = operations_client(console_user).get("/admin/neruba/apikey/add/").content.decode()
    for scope in ("ingest", "read", "write"):
        assert f'value="{scope}"' in html


@pytest.mark.parametrize("scopes", [["admin"], [], ["read", "everything"]])
def test_an_api_key_with_unknown_or_no_scopes_is_refused_by_the_form(
    console_user: Callable[[str], Any], scopes: list[str]
) -> None:
    response = add_key(operations_client(console_user), scopes=scopes)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors.get("scopes")
    assert not ApiKey.objects.exists()
    assert not AuditEntry.objects.exists()


def test_an_api_key_made_in_the_console_has_the_chosen_scopes(
    console_user: Callable[[str], Any],
) -> None:
    response = add_key(operations_client(console_user), scopes=["write", "read"])
    assert response.status_code == 302
    api_key = ApiKey.objects.get()
    assert api_key.scopes == ["read", "write"]
    assert AuditEntry.objects.get(action="api_key.create").target_id == f"prefix:{api_key.prefix}"
    assert api_key.hashed_key not in AuditEntry.objects.get(action="api_key.create").target_id


def test_an_api_key_change_page_is_read_only_and_saves_nothing(
    console_user: Callable[[str], Any],
) -> None:
    client = operations_client(console_user)
    add_key(client, scopes=["read"])
    api_key = ApiKey.objects.get()
    page = client.get(f"/admin/neruba/apikey/{api_key.pk}/change/")
    assert page.status_code == 200
    assert 'name="scopes"' not in page.content.decode()
    client.post(f"/admin/neruba/apikey/{api_key.pk}/change/", {"scopes": ["write"], "_save": "1"})
    api_key.refresh_from_db()
    assert api_key.scopes == ["read"]


def test_no_api_key_page_link_or_form_field_shows_the_stored_hash(
    console_user: Callable[[str], Any],
) -> None:
    client = operations_client(console_user)
    created = add_key(client, scopes=["read"])
    assert created.status_code == 302
    api_key = ApiKey.objects.get(name="svc")
    pages = [client.get("/admin/neruba/apikey/", follow=True)]
    listing = pages[0].content.decode()
    assert f'href="/admin/neruba/apikey/{api_key.prefix}/change/"' in listing
    assert f'value="{api_key.prefix}"' in listing
    pages.append(client.get(f"/admin/neruba/apikey/{api_key.prefix}/change/"))
    assert pages[-1].status_code == 200
    selection = {"action": "revoke_keys", "_selected_action": [api_key.prefix]}
    pages.append(client.post("/admin/neruba/apikey/", selection))
    assert pages[-1].status_code == 200  # the confirmation page
    done = client.post(
        "/admin/neruba/apikey/", {**selection, "confirm": "yes", "reason": "rotated"}, follow=True
    )
    pages.append(done)
    assert b"Revoke API keys: 1 done" in done.content
    api_key.refresh_from_db()
    assert api_key.revoked
    for page in pages:
        assert api_key.hashed_key not in page.content.decode()
