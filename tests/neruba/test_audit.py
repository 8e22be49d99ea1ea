from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test import Client

from neruba import audit
from neruba.models import ApiKey, AuditEntry
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db
ROLES = ["Support", "Finance", "Operations", "superuser"]


@pytest.fixture
def entry() -> AuditEntry:
    customer = CustomerFactory(external_id="acme")
    return audit.record(
        actor=None,
        action="customer.update",
        target=customer,
        customer=customer,
        reason="typo",
        before={"name": "Acme"},
        after={"name": "ACME"},
    )


def test_record_writes_actor_target_reason_and_before_after(entry: AuditEntry) -> None:
    stored = AuditEntry.objects.get(pk=entry.pk)
    assert stored.actor is None and stored.actor_label == "system"
    assert stored.target_type == "neruba.customer"
    assert stored.target_id == str(stored.customer.pk)
    assert (stored.reason, stored.before, stored.after) == (
        "typo",
        {"name": "Acme"},
        {"name": "ACME"},
    )


def test_an_audit_entry_cannot_be_saved_again(entry: AuditEntry) -> None:
    entry.reason = "rewritten history"
    with pytest.raises(RuntimeError, match="append-only"):
        entry.save()
    assert AuditEntry.objects.get(pk=entry.pk).reason == "typo"


def test_an_audit_entry_cannot_be_deleted(entry: AuditEntry) -> None:
    with pytest.raises(RuntimeError, match="append-only"):
        entry.delete()
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_audit_entries_cannot_be_bulk_updated_or_deleted_through_a_queryset(
    entry: AuditEntry,
) -> None:
    with pytest.raises(RuntimeError, match="append-only"):
        AuditEntry.objects.filter(pk=entry.pk).update(reason="rewritten")
    with pytest.raises(RuntimeError, match="append-only"):
        AuditEntry.objects.filter(pk=entry.pk).delete()
    entry.reason = "rewritten"
    with pytest.raises(RuntimeError, match="append-only"):
        AuditEntry.objects.bulk_update([entry], ["reason"])
    stored = AuditEntry.objects.get(pk=entry.pk)
    assert stored.reason == "typo"


@pytest.mark.postgres
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE neruba_auditentry SET reason = 'rewritten' WHERE id = %s",
        "DELETE FROM neruba_auditentry WHERE id = %s",
    ],
)
def test_postgresql_refuses_raw_update_and_delete_of_audit_rows(
    entry: AuditEntry, sql: str
) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql, [entry.pk])
    stored = AuditEntry.objects.get(pk=entry.pk)
    assert stored.reason == "typo"


@pytest.mark.postgres
def test_postgresql_still_accepts_new_audit_rows(entry: AuditEntry) -> None:
    audit.record(actor=None, action="customer.update", target=entry.customer, reason="again")
    assert AuditEntry.objects.count() == 2


def logged_in(console_user: Callable[[str], Any], role: str) -> Client:
    client = Client()
    client.force_login(console_user(role))
    return client


@pytest.mark.parametrize("role", ROLES)
def test_the_console_shows_audit_entries_read_only_to_every_role(
    entry: AuditEntry, console_user: Callable[[str], Any], role: str
) -> None:
    client = logged_in(console_user, role)
    assert client.get("/admin/neruba/auditentry/").status_code == 200
    page = client.get(f"/admin/neruba/auditentry/{entry.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert "/delete/" not in html


@pytest.mark.parametrize("role", ROLES)
def test_the_console_refuses_to_change_or_delete_an_audit_entry_for_every_role(
    entry: AuditEntry, console_user: Callable[[str], Any], role: str
) -> None:
    client = logged_in(console_user, role)
    change = client.post(
        f"/admin/neruba/auditentry/{entry.pk}/change/",
        {"reason": "rewritten", "action": "x", "actor_label": "someone", "_save": "Save"},
    )
    assert change.status_code == 403
    assert client.get(f"/admin/neruba/auditentry/{entry.pk}/delete/").status_code == 403
    assert (
        client.post(f"/admin/neruba/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    bulk = client.post(
        "/admin/neruba/auditentry/",
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302, 403)
    assert client.get("/admin/neruba/auditentry/add/").status_code == 403
    stored = AuditEntry.objects.get(pk=entry.pk)
    assert stored.reason == "typo"


def test_create_api_key_prints_the_key_once_and_stores_only_its_hash() -> None:
    out, err = StringIO(), StringIO()
    call_command(
        "create_api_key",
        "--name",
        "billing-svc",
        "--scopes",
        "ingest, read",
        stdout=out,
        stderr=err,
    )
    raw = out.getvalue().strip()
    assert out.getvalue() == raw + "\n"  # only the key on stdout, so it can be captured
    api_key = ApiKey.objects.get()
    assert raw.startswith(api_key.prefix + ".")
    assert raw not in err.getvalue()
    assert f"prefix {api_key.prefix}" in err.getvalue()
    assert api_key.hashed_key and api_key.hashed_key != raw
    secret = raw.split(".", 1)[1]
    stored = [str(v) for v in ApiKey.objects.values().get().values()]
    assert not any(secret in value for value in stored)
    assert ApiKey.objects.get_from_key(raw) == api_key
    assert api_key.scopes == ["ingest", "read"] and api_key.name == "billing-svc"
    entry = AuditEntry.objects.get(action="api_key.create")
    assert entry.actor_label == "system" and entry.target_id == f"prefix:{api_key.prefix}"
    assert entry.after == {
        "name": "billing-svc",
        "prefix": api_key.prefix,
        "scopes": ["ingest", "read"],
    }
    assert secret not in str(entry.after)


@pytest.mark.parametrize("scopes", ["admin", "read,everything", ",", ""])
def test_create_api_key_with_invalid_scopes_exits_non_zero_and_creates_nothing(
    scopes: str,
) -> None:
    with pytest.raises(CommandError) as caught:
        call_command(
            "create_api_key",
            "--name",
            "x",
            "--scopes",
            scopes,
            stdout=StringIO(),
            stderr=StringIO(),
        )
    assert caught.value.returncode != 0
    assert not ApiKey.objects.exists()
    assert not AuditEntry.objects.exists()
