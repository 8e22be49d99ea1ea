"""The outbound webhook console in a real browser (Playwright, system Chromium): Operations
finds a dead delivery from the home page, reads the endpoint page and replays the message."""

from __future__ import annotations

from typing import Any

import pytest

from billing import services
from neruba.models import AuditEntry
from tests import factories
from tests.operations.conftest import browser, page, roles  # noqa: F401 - fixtures
from tests.operations.test_browser_console import confirm, login, shot
from tests.webhooks.receivers import Receiver
from webhooks import outbound
from webhooks.models import OutboundDelivery

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_operations_replays_a_dead_outbound_message_from_the_endpoint_page(page: Any) -> None:  # noqa: F811
    acme = factories.catalog()["customer"]
    with Receiver(behave=lambda r, i: (400, {}, b"bad") if i == 0 else (200, {}, b"ok")) as rec:
        endpoint, _ = outbound.endpoint_create(
            url=rec.url, event_types=["credit.granted"], description="ERP", actor=None
        )
        services.credit_issue(
            customer=acme, amount=300, reason_code="goodwill", actor=None, reason="sorry"
        )
        delivery = OutboundDelivery.objects.get()
        assert delivery.status == "dead"
        login(page, "Operations")
        page.click("text=Dead outbound webhooks")
        page.wait_for_selector("#result_list")
        page.goto(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/")
        assert page.locator("svg.neruba-chart").count() == 1
        assert "0 of 1 attempts delivered" in page.inner_text("body")
        shot(page, "operations-outbound-endpoint")
        page.click(f"text={delivery.message.msg_id}")
        assert "HTTP 400" in page.inner_text("body")
        page.click("a.guarded-object-action:has-text('Replay messages')")
        assert "would queue 1 deliveries" in page.inner_text(".guarded-preview")
        message = confirm(page, "ERP route fixed")
        shot(page, "operations-outbound-replay")
        assert "Replay messages: 1 done, 0 skipped, 0 failed." in message
        rec.wait_for(2)
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert rec.requests[0].msg_id == rec.requests[1].msg_id
    assert AuditEntry.objects.filter(action="webhook_delivery.replay", reason="ERP route fixed")


def test_support_sees_outbound_deliveries_but_cannot_replay(page: Any) -> None:  # noqa: F811
    acme = factories.catalog()["customer"]
    with Receiver(behave=lambda r, i: (400, {}, b"bad")) as rec:
        outbound.endpoint_create(url=rec.url, event_types=["credit.granted"], actor=None)
        services.credit_issue(
            customer=acme, amount=1, reason_code="goodwill", actor=None, reason="r"
        )
        delivery = OutboundDelivery.objects.get()
        login(page, "Support")
        page.goto(f"/admin/webhooks/outboundmessage/{delivery.message_id}/change/")
        assert "credit.granted" in page.inner_text("body")
        assert page.locator("a.guarded-object-action").count() == 0
        response = page.goto(
            f"/admin/webhooks/outboundmessage/{delivery.message_id}/action/replay_messages/"
        )
        assert response.status == 403
    assert len(rec.requests) == 1
