"""``manage.py replay_webhook_deliveries``: a dry run unless --apply; keeps the message id."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from billing import services
from neruba.models import AuditEntry
from tests.webhooks.receivers import Receiver
from webhooks import outbound
from webhooks.models import OutboundDelivery

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_command_dry_runs_then_replays_dead_deliveries_under_their_message_id(
    catalog: dict[str, Any],
) -> None:
    with Receiver(behave=lambda r, i: (404, {}, b"") if i == 0 else (200, {}, b"")) as receiver:
        endpoint, _ = outbound.endpoint_create(
            url=receiver.url, event_types=["credit.granted"], actor=None
        )
        services.credit_issue(
            customer=catalog["customer"],
            amount=100,
            reason_code="goodwill",
            actor=None,
            reason="r",
        )
        delivery = OutboundDelivery.objects.get()
        assert delivery.status == "dead"
        dry = StringIO()
        call_command(
            "replay_webhook_deliveries", "--endpoint", str(endpoint.pk), "--dead", stdout=dry
        )
        assert "1 deliver(ies) selected; dry run" in dry.getvalue()
        assert "would queue 1 of 1" in dry.getvalue() and len(receiver.requests) == 1
        with pytest.raises(CommandError, match="--reason"):
            call_command("replay_webhook_deliveries", "--dead", "--apply", stdout=StringIO())
        out = StringIO()
        call_command(
            "replay_webhook_deliveries",
            "--message",
            delivery.message.msg_id,
            "--apply",
            "--reason",
            "receiver route fixed",
            stdout=out,
        )
        assert "queued 1 of 1" in out.getvalue()
        receiver.wait_for(2)
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert {r.msg_id for r in receiver.requests} == {delivery.message.msg_id}
    assert AuditEntry.objects.get(action="webhook_delivery.replay").reason == "receiver route fixed"


def test_the_command_refuses_to_run_without_a_selection() -> None:
    with pytest.raises(CommandError, match="choose deliveries"):
        call_command("replay_webhook_deliveries", stdout=StringIO())
