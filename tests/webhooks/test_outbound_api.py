"""The webhook endpoint API: write scope, the secret shown once, audited changes, errors in the
one envelope."""

from __future__ import annotations

from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from neruba.models import AuditEntry
from webhooks.models import WebhookEndpoint

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9/hooks"


def test_an_endpoint_is_created_with_a_secret_shown_once_and_listed_without_it(api: Any) -> None:
    client = api("write")
    created = client.post(
        "/api/v1/webhook-endpoints",
        {"url": URL, "event_types": ["invoice.paid", "invoice.finalized"], "description": "ERP"},
        format="json",
    )
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {
        "id",
        "url",
        "description",
        "event_types",
        "enabled",
        "disabled_reason",
        "created_at",
        "secret",
    }
    assert body["secret"].startswith("whsec_") and body["enabled"] is True
    assert body["event_types"] == ["invoice.finalized", "invoice.paid"]
    Webhook(body["secret"])  # valid Standard Webhooks secret (base64 after the prefix)
    listed = client.get("/api/v1/webhook-endpoints").json()["results"]
    assert [e["id"] for e in listed] == [body["id"]] and "secret" not in listed[0]
    one = client.get(f"/api/v1/webhook-endpoints/{body['id']}").json()
    assert "secret" not in one and one["url"] == URL
    entry = AuditEntry.objects.get(action="webhook_endpoint.create")
    assert body["secret"] not in str(entry.after) and entry.actor_label.startswith("api_key:")


def test_patch_changes_url_types_and_enabled_and_each_change_is_audited(api: Any) -> None:
    client = api("write")
    pk = client.post(
        "/api/v1/webhook-endpoints", {"url": URL, "event_types": ["invoice.paid"]}, format="json"
    ).json()["id"]
    answer = client.patch(
        f"/api/v1/webhook-endpoints/{pk}",
        {"enabled": False, "event_types": ["credit.granted"], "url": "http://127.0.0.1:10/x"},
        format="json",
    )
    assert answer.status_code == 200
    assert (answer.json()["enabled"], answer.json()["event_types"]) == (False, ["credit.granted"])
    assert answer.json()["disabled_reason"].startswith("Disabled by api_key:")
    entry = AuditEntry.objects.get(action="webhook_endpoint.update")
    assert entry.before["enabled"] is True and entry.after["enabled"] is False


def test_rotate_secret_returns_a_new_secret_and_keeps_the_old_for_the_grace(api: Any) -> None:
    client = api("write")
    created = client.post(
        "/api/v1/webhook-endpoints", {"url": URL, "event_types": ["invoice.paid"]}, format="json"
    ).json()
    rotated = client.post(f"/api/v1/webhook-endpoints/{created['id']}/rotate-secret")
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != created["secret"]
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.previous_secret == created["secret"]
    assert endpoint.previous_secret_expires_at is not None
    assert AuditEntry.objects.filter(action="webhook_endpoint.rotate_secret").count() == 1


def test_a_read_or_ingest_key_cannot_see_or_manage_endpoints(api: Any) -> None:
    for scope in ("read", "ingest"):
        client = api(scope)
        assert client.get("/api/v1/webhook-endpoints").status_code == 403
        denied = client.post(
            "/api/v1/webhook-endpoints",
            {"url": URL, "event_types": ["invoice.paid"]},
            format="json",
        )
        assert denied.status_code == 403 and "error" in denied.json()
    assert WebhookEndpoint.objects.count() == 0


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"url": URL, "event_types": ["invoice.nope"]}, 400, "validation_error"),
        ({"url": URL, "event_types": []}, 400, "validation_error"),
        (
            {"url": "ftp://127.0.0.1/x", "event_types": ["invoice.paid"]},
            422,
            "endpoint_url_not_allowed",
        ),
        (
            {"url": "http://no-such-host.invalid/x", "event_types": ["invoice.paid"]},
            422,
            "endpoint_url_not_allowed",
        ),
    ],
)
def test_bad_input_is_a_clear_error_in_the_envelope(
    api: Any, payload: dict[str, Any], status: int, code: str
) -> None:
    answer = api("write").post("/api/v1/webhook-endpoints", payload, format="json")
    assert answer.status_code == status, answer.json()
    assert answer.json()["error"]["code"] == code
    assert WebhookEndpoint.objects.count() == 0


def test_an_unknown_endpoint_is_a_404_in_the_envelope(api: Any) -> None:
    answer = api("write").get("/api/v1/webhook-endpoints/999")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


def test_production_refuses_a_loopback_endpoint_over_the_api(api: Any, settings: Any) -> None:
    settings.NERUBA_ENV = "production"
    settings.NERUBA = {**settings.NERUBA, "NERUBA_OUTBOUND_ALLOW_PRIVATE": False}
    answer = api("write").post(
        "/api/v1/webhook-endpoints",
        {"url": "https://127.0.0.1/hooks", "event_types": ["invoice.paid"]},
        format="json",
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "endpoint_url_not_allowed"
    assert "loopback" in answer.json()["error"]["message"]
