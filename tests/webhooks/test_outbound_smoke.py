"""``smoke`` sends a signed ``neruba.smoke`` message to the endpoints subscribed to it and checks
the attempt; metrics and readiness show the outbound backlog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client

from operations.health import heartbeat_record
from operations.smoke import smoke_run
from tests.webhooks.receivers import Receiver
from webhooks import outbound
from webhooks.models import OutboundDelivery

pytestmark = pytest.mark.django_db(transaction=True)


def _step(report: Any) -> Any:
    return next(s for s in report.steps if s.name == "outbound webhook delivered")


def test_smoke_delivers_a_signed_smoke_message_to_each_subscribed_endpoint() -> None:
    heartbeat_record(name="beat")
    with Receiver() as receiver, Receiver() as other:
        _, secret = outbound.endpoint_create(
            url=receiver.url, event_types=[outbound.SMOKE_TYPE], actor=None
        )
        receiver.secrets.append(secret)
        outbound.endpoint_create(url=other.url, event_types=["invoice.paid"], actor=None)
        report = smoke_run(emit=lambda line: None)
    step = _step(report)
    assert step.ok and "delivered to 1 endpoint" in step.detail
    assert receiver.types() == ["neruba.smoke"] and receiver.requests[0].verified
    assert other.requests == []


def test_smoke_fails_its_outbound_step_when_the_receiver_refuses() -> None:
    with Receiver(behave=lambda r, i: (503, {}, b"down")) as receiver:
        outbound.endpoint_create(url=receiver.url, event_types=[outbound.SMOKE_TYPE], actor=None)
        report = smoke_run(emit=lambda line: None)
    step = _step(report)
    assert not step.ok and "failed 503" in step.detail
    assert step.runbook.startswith("/console/runbooks/outbound-webhooks#smoke-check-fails")


def test_smoke_without_a_subscribed_endpoint_says_nothing_was_sent() -> None:
    report = smoke_run(emit=lambda line: None)
    step = _step(report)
    assert step.ok and "nothing sent" in step.detail


def test_metrics_and_readiness_show_the_outbound_backlog(catalog: dict[str, Any]) -> None:
    with Receiver(behave=lambda r, i: (500, {}, b"")) as receiver:
        outbound.endpoint_create(url=receiver.url, event_types=["credit.granted"], actor=None)
        from billing import services

        services.credit_issue(
            customer=catalog["customer"],
            amount=100,
            reason_code="goodwill",
            actor=None,
            reason="r",
        )
    assert OutboundDelivery.objects.get().status == "failed"
    text = Client().get("/metrics").content.decode()
    assert 'neruba_outbound_deliveries_backlog{status="failed"} 1.0' in text
    assert 'neruba_outbound_deliveries_total{outcome="failed"}' in text
    assert "neruba_outbound_oldest_pending_age_seconds" in text
    ready = Client().get("/readyz").json()["checks"]["outbound_webhooks"]
    assert ready["ok"] and "1 waiting (1 awaiting retry), 0 dead" in ready["detail"]
    backlog = outbound.deliveries_retry_due(now=datetime.now(UTC) + timedelta(seconds=1))
    assert backlog["due"] == 0
