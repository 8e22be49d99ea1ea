"""The outbound webhook console: every role inspects, Operations replays (preview, reason,
audit), creates endpoints (the secret shown once) and rotates secrets; others cannot."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from billing import services
from neruba.models import AuditEntry
from tests import factories
from tests.webhooks.receivers import Receiver
from webhooks import outbound
from webhooks.models import OutboundDelivery, OutboundMessage, WebhookEndpoint

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _roles() -> None:
    # A transactional test database is flushed between tests, groups included: made again
    # from the same declaration (as the browser tests do).
    from django.contrib.auth.models import Group, Permission

    from operations.roles import ROLES

    for name, role in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        perms = []
        for dotted in role["permissions"]:
            app_label, codename = dotted.split(".", 1)
            perms.append(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        group.permissions.set(perms)


def logged_in(role: str) -> Client:
    client = Client()
    client.force_login(factories.console_user(role))
    return client


def _dead_delivery(catalog: dict[str, Any], receiver: Receiver) -> OutboundDelivery:
    outbound.endpoint_create(url=receiver.url, event_types=["credit.granted"], actor=None)
    services.credit_issue(
        customer=catalog["customer"], amount=250, reason_code="goodwill", actor=None, reason="r"
    )
    delivery = OutboundDelivery.objects.get()
    assert delivery.status == "dead"
    return delivery


@pytest.mark.parametrize("role", ["Support", "Finance", "Operations", "superuser"])
def test_every_role_sees_the_endpoint_page_and_the_message_page(
    catalog: dict[str, Any], role: str
) -> None:
    with Receiver(behave=lambda r, i: (400, {}, b"nope")) as receiver:
        delivery = _dead_delivery(catalog, receiver)
    client = logged_in(role)
    page = client.get(
        reverse("admin:webhooks_webhookendpoint_change", args=[delivery.endpoint_id])
    ).content.decode()
    assert "success rate (24 h)" in page.lower() and "0.0%: 0 of 1 attempts delivered" in page
    assert 'class="neruba-chart"' in page and delivery.message.msg_id in page
    assert delivery.endpoint.secret not in page  # only its last characters
    message_page = client.get(
        reverse("admin:webhooks_outboundmessage_change", args=[delivery.message_id])
    ).content.decode()
    assert "credit.granted" in message_page and "HTTP 400" in message_page
    assert "&quot;amount&quot;: 250" in message_page  # the payload, pretty-printed
    home = client.get(reverse("admin:index")).content.decode()
    # The home page is a work queue: the dead-delivery row is for those who can replay it.
    assert ("Dead outbound webhooks" in home) == (role in ("Operations", "superuser"))


def test_operations_replays_a_message_with_a_preview_a_reason_and_an_audit_entry(
    catalog: dict[str, Any],
) -> None:
    with Receiver(behave=lambda r, i: (400, {}, b"") if i == 0 else (200, {}, b"")) as receiver:
        delivery = _dead_delivery(catalog, receiver)
        client = logged_in("Operations")
        url = reverse(
            "admin:webhooks_outboundmessage_object_action",
            args=[delivery.message_id, "replay_messages"],
        )
        preview = client.get(url).content.decode()
        assert "would queue 1 deliveries" in preview and len(receiver.requests) == 1
        refused = client.post(url, {"confirm": "yes", "reason": ""}).content.decode()
        assert len(receiver.requests) == 1 and "reason" in refused.lower()
        client.post(url, {"confirm": "yes", "reason": "ERP lost it"}, follow=True)
        receiver.wait_for(2)
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert receiver.requests[0].msg_id == receiver.requests[1].msg_id
    entry = AuditEntry.objects.get(action="webhook_delivery.replay")
    assert entry.reason == "ERP lost it" and entry.actor_label != "system"


@pytest.mark.parametrize("role", ["Support", "Finance"])
def test_support_and_finance_cannot_replay_or_create_endpoints(
    catalog: dict[str, Any], role: str
) -> None:
    with Receiver(behave=lambda r, i: (400, {}, b"")) as receiver:
        delivery = _dead_delivery(catalog, receiver)
        client = logged_in(role)
        url = reverse(
            "admin:webhooks_outboundmessage_object_action",
            args=[delivery.message_id, "replay_messages"],
        )
        assert client.post(url, {"confirm": "yes", "reason": "x"}).status_code == 403
        add = client.get(reverse("admin:webhooks_webhookendpoint_add"))
        assert add.status_code == 403
        assert len(receiver.requests) == 1
    assert not AuditEntry.objects.filter(action="webhook_delivery.replay").exists()


def test_operations_creates_an_endpoint_in_the_console_and_sees_the_secret_once() -> None:
    client = logged_in("Operations")
    answer = client.post(
        reverse("admin:webhooks_webhookendpoint_add"),
        {"url": "http://127.0.0.1:9/in", "description": "ERP", "event_types": ["invoice.paid"]},
        follow=True,
    )
    endpoint = WebhookEndpoint.objects.get()
    page = answer.content.decode()
    assert f"Signing secret (shown once, store it now): {endpoint.secret}" in page
    later = client.get(reverse("admin:webhooks_webhookendpoint_change", args=[endpoint.pk]))
    assert endpoint.secret not in later.content.decode()
    assert AuditEntry.objects.get(action="webhook_endpoint.create").actor_label == "operations" or (
        AuditEntry.objects.get(action="webhook_endpoint.create").actor is not None
    )


def test_rotating_in_the_console_shows_the_new_secret_once_and_audits() -> None:
    endpoint, old = outbound.endpoint_create(
        url="http://127.0.0.1:9/in", event_types=["invoice.paid"], actor=None
    )
    client = logged_in("Operations")
    url = reverse(
        "admin:webhooks_webhookendpoint_object_action", args=[endpoint.pk, "rotate_secrets"]
    )
    assert "whsec_…" in client.get(url).content.decode()
    page = client.post(url, {"confirm": "yes", "reason": "yearly"}, follow=True).content.decode()
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.previous_secret == old
    assert endpoint.secret in page
    assert AuditEntry.objects.get(action="webhook_endpoint.rotate_secret").reason == "yearly"


def test_the_message_list_replays_a_type_since_a_time_filtered_first(
    catalog: dict[str, Any],
) -> None:
    with Receiver(behave=lambda r, i: (400, {}, b"") if i < 2 else (200, {}, b"")) as receiver:
        outbound.endpoint_create(url=receiver.url, event_types=["credit.granted"], actor=None)
        for amount in (100, 200):
            services.credit_issue(
                customer=catalog["customer"],
                amount=amount,
                reason_code="goodwill",
                actor=None,
                reason="r",
            )
        client = logged_in("Operations")
        changelist = reverse("admin:webhooks_outboundmessage_changelist")
        ids = list(
            OutboundMessage.objects.filter(type="credit.granted").values_list("pk", flat=True)
        )
        client.post(
            changelist,
            {"action": "replay_messages", "_selected_action": ids, "confirm": "yes", "reason": "r"},
            follow=True,
        )
        receiver.wait_for(4)
    assert set(OutboundDelivery.objects.values_list("status", flat=True)) == {"delivered"}
