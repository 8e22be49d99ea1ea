"""Outbound webhooks against real HTTP receivers on loopback (no mocked transport): every fact
billing commits reaches a receiver that verifies it with the ``standardwebhooks`` library;
retries, timeouts, 410, redirects, rotation, private addresses, rollback and replay."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.db import transaction

from billing import messages, services
from billing.models import BillingRun, DriftFinding, Invoice
from billing.payments import invoice_payment_status_record
from neruba import outbox
from neruba.models import AuditEntry, OutboxBatch, OutboxMessage
from tests.billing.helpers import add_events
from tests.factories import SubscriptionFactory
from tests.webhooks.receivers import Received, Receiver
from webhooks import outbound
from webhooks.exceptions import EndpointUrlNotAllowed
from webhooks.models import DeliveryAttempt, OutboundDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db(transaction=True)

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
BILLING_TYPES = [t for t in outbound.EVENT_TYPES if t != outbound.SMOKE_TYPE]


def _endpoint(receiver: Receiver, types: list[str] | None = None) -> tuple[WebhookEndpoint, str]:
    endpoint, secret = outbound.endpoint_create(
        url=receiver.url, event_types=types or list(outbound.EVENT_TYPES), actor=None
    )
    receiver.secrets.append(secret)
    return endpoint, secret


def _bill(catalog: dict[str, Any], calls: int = 4) -> Invoice:
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[JAN + timedelta(days=3)] * calls,
    )
    run = services.billing_scan(trigger="command", as_of=FEB + timedelta(hours=2))
    assert run.invoiced == 1
    return Invoice.objects.get(window__subscription=catalog["subscription"], period_start=JAN)


def _retry_due(at: datetime) -> dict[str, int]:
    with time_machine.travel(at, tick=False):
        return outbound.deliveries_retry_due()


def test_every_billing_fact_reaches_a_receiver_that_verifies_it_with_standardwebhooks(
    catalog: dict[str, Any], api: Any
) -> None:
    with Receiver() as receiver:
        _endpoint(receiver)
        invoice = _bill(catalog)
        at_finalization = api("read").get(f"/api/v1/invoices/{invoice.number}").json()
        services.invoice_mark_paid(invoice=invoice, actor=None, reason="paid by wire")
        services.credit_issue(
            customer=catalog["customer"],
            amount=500,
            reason_code="goodwill",
            actor=None,
            reason="sorry",
        )
        other = SubscriptionFactory(customer=catalog["customer"], plan=catalog["plan"])
        services.billing_scan(trigger="command", as_of=FEB + timedelta(hours=3))
        second = Invoice.objects.get(window__subscription=other, period_start=JAN)
        invoice_payment_status_record(
            invoice=second,
            status="payment_failed",
            occurred_at=FEB + timedelta(days=1),
            source="test",
        )
        invoice_payment_status_record(
            invoice=second, status="void", occurred_at=FEB + timedelta(days=2), source="test"
        )
        add_events(  # a late event: the drift sweep opens a finding
            customer=catalog["customer"],
            metric=catalog["metrics"]["api_calls"],
            timestamps=[JAN + timedelta(days=5)],
        )
        from billing.drift import usage_drift_sweep

        usage_drift_sweep(lease=None, now=FEB + timedelta(days=3))
        with transaction.atomic():
            finding = DriftFinding.objects.create(
                kind="payment", window=second.window, invoice=second, detail="amount mismatch"
            )
            messages.payment_finding_opened_published(finding=finding)
            run = BillingRun.objects.create(
                trigger="command",
                holder="t",
                as_of=FEB,
                status="failed",
                failed=1,
                errors=[{"window": 1, "error": "bad price"}],
            )
            messages.billing_run_failed_published(run=run)
        receiver.wait_for(9)
    assert sorted(set(receiver.types())) == sorted(BILLING_TYPES)
    assert all(r.verified for r in receiver.requests), [r.error for r in receiver.requests]
    for request in receiver.requests:
        body = request.json()
        assert set(body) == {"id", "type", "created", "data"}
        assert body["id"] == request.msg_id and request.msg_id.startswith("msg_")
        assert request.headers["webhook-signature"].startswith("v1,")
        assert request.headers["content-type"] == "application/json"
    # The data is the public API's shape of the object, field for field.
    finalized = next(
        r.json()["data"]
        for r in receiver.requests
        if r.json()["type"] == "invoice.finalized" and r.json()["data"]["number"] == invoice.number
    )
    assert finalized == at_finalization
    paid = next(r.json()["data"] for r in receiver.requests if r.json()["type"] == "invoice.paid")
    assert paid == api("read").get(f"/api/v1/invoices/{invoice.number}").json()
    assert OutboundDelivery.objects.exclude(status="delivered").count() == 0


def test_a_rolled_back_invoice_transaction_sends_nothing(catalog: dict[str, Any]) -> None:
    add_events(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        timestamps=[JAN + timedelta(days=3)],
    )
    window = services.windows_generate(through=FEB)
    assert window
    from billing.models import BillingWindow

    row = BillingWindow.objects.get(period_start=JAN)
    with Receiver() as receiver:
        _endpoint(receiver)

        class Boom(Exception):
            pass

        with pytest.raises(Boom), transaction.atomic():
            services.window_bill(window=row)
            # The fact's message, as one outbox batch row, in the invoice's transaction.
            assert OutboxBatch.objects.filter(type="invoice.finalized").count() == 1
            raise Boom
        assert OutboxBatch.objects.count() == 0 and OutboxMessage.objects.count() == 0
        assert outbound.deliveries_retry_due(now=datetime.now(UTC) + timedelta(hours=1)) == {
            "fanned_out": 0,
            "due": 0,
        }
        time.sleep(0.2)  # a real receiver: give a stray request time to land
        assert receiver.requests == []
        # The same write committed is delivered.
        services.window_bill(window=row)
        receiver.wait_for(1)
    assert receiver.types() == ["invoice.finalized"] and receiver.requests[0].verified


def test_without_a_subscribed_endpoint_billing_writes_no_outbox_rows(
    catalog: dict[str, Any],
) -> None:
    with Receiver() as receiver:
        _endpoint(receiver, types=["credit.granted"])
        _bill(catalog)
    assert OutboxBatch.objects.count() == 0 and OutboxMessage.objects.count() == 0
    assert receiver.requests == []


def test_500_twice_then_200_is_delivered_on_the_third_attempt_under_one_webhook_id(
    catalog: dict[str, Any],
) -> None:
    def flaky(received: Received, index: int) -> tuple[int, dict[str, str], bytes]:
        return (500, {}, b"boom") if index < 2 else (200, {}, b"ok")

    with Receiver(behave=flaky) as receiver:
        _endpoint(receiver, types=["invoice.finalized"])
        _bill(catalog)
        receiver.wait_for(1)
        delivery = OutboundDelivery.objects.get()
        assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 1, 500)
        first_due = delivery.next_attempt_at
        # Not due yet: nothing is sent.
        assert _retry_due(first_due - timedelta(seconds=1))["due"] == 0
        _retry_due(first_due + timedelta(seconds=1))
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == ("failed", 2)
        assert delivery.next_attempt_at - first_due > timedelta(minutes=3)  # backed off
        _retry_due(delivery.next_attempt_at + timedelta(seconds=1))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)
    assert len({r.msg_id for r in receiver.requests}) == 1 and len(receiver.requests) == 3
    assert all(r.verified for r in receiver.requests)
    attempts = list(delivery.delivery_attempts.order_by("started_at"))
    assert [(a.status_code, a.outcome) for a in attempts] == [
        (500, "failed"),
        (500, "failed"),
        (200, "delivered"),
    ]
    assert attempts[0].response_excerpt == "boom" and attempts[0].trigger == "send"
    assert attempts[2].trigger == "send"  # retried by the due task, same delivery


def test_a_receiver_hanging_past_the_read_timeout_is_a_failed_attempt_retried_later(
    catalog: dict[str, Any], settings: Any
) -> None:
    settings.NERUBA = {**settings.NERUBA, "NERUBA_OUTBOUND_READ_TIMEOUT": 1}

    def hang(received: Received, index: int) -> tuple[int, dict[str, str], bytes]:
        if index == 0:
            time.sleep(3)
        return 200, {}, b"ok"

    with Receiver(behave=hang) as receiver:
        _endpoint(receiver, types=["invoice.finalized"])
        clock = time.monotonic()
        _bill(catalog)
        elapsed = time.monotonic() - clock
        delivery = OutboundDelivery.objects.get()
        attempt = delivery.delivery_attempts.get()
        assert (delivery.status, attempt.outcome, attempt.status_code) == ("failed", "failed", None)
        assert attempt.error.startswith("timeout") and 900 <= attempt.latency_ms < 2900
        assert elapsed < 2.9
        _retry_due(delivery.next_attempt_at + timedelta(seconds=1))
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and len({r.msg_id for r in receiver.requests}) == 1


def test_a_410_makes_the_delivery_dead_and_disables_the_endpoint_saying_why(
    catalog: dict[str, Any],
) -> None:
    with Receiver(behave=lambda r, i: (410, {}, b"gone")) as receiver:
        endpoint, _ = _endpoint(receiver, types=["invoice.finalized", "credit.granted"])
        _bill(catalog)
        receiver.wait_for(1)
        services.credit_issue(
            customer=catalog["customer"],
            amount=100,
            reason_code="goodwill",
            actor=None,
            reason="later fact",
        )
    endpoint.refresh_from_db()
    delivery = OutboundDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code) == ("dead", 410)
    assert not endpoint.enabled and "410" in endpoint.disabled_reason
    assert len(receiver.requests) == 1  # the disabled endpoint hears nothing more
    assert AuditEntry.objects.filter(action="webhook_endpoint.disable").count() == 1


def test_429_with_retry_after_waits_at_least_that_long(catalog: dict[str, Any]) -> None:
    with Receiver(behave=lambda r, i: (429, {"Retry-After": "3600"}, b"slow down")) as receiver:
        _endpoint(receiver, types=["invoice.finalized"])
        before = datetime.now(UTC)
        _bill(catalog)
        receiver.wait_for(1)
    delivery = OutboundDelivery.objects.get()
    assert delivery.status == "failed"
    assert delivery.next_attempt_at >= before + timedelta(seconds=3600)


def test_a_delivery_is_dead_after_the_maximum_attempts(
    catalog: dict[str, Any], settings: Any
) -> None:
    settings.NERUBA = {**settings.NERUBA, "NERUBA_OUTBOUND_MAX_ATTEMPTS": 2}
    with Receiver(behave=lambda r, i: (503, {}, b"down")) as receiver:
        _endpoint(receiver, types=["invoice.finalized"])
        _bill(catalog)
        delivery = OutboundDelivery.objects.get()
        _retry_due(delivery.next_attempt_at + timedelta(seconds=1))
        _retry_due(delivery.next_attempt_at + timedelta(days=1))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("dead", 2)
    assert "gave up after 2 attempts" in delivery.last_error
    assert len(receiver.requests) == 2


def test_an_endpoint_failing_continuously_past_disable_after_is_disabled(
    catalog: dict[str, Any], settings: Any
) -> None:
    settings.NERUBA = {**settings.NERUBA, "NERUBA_OUTBOUND_DISABLE_AFTER": 3600}
    with Receiver(behave=lambda r, i: (500, {}, b"")) as receiver:
        endpoint, _ = _endpoint(receiver, types=["invoice.finalized"])
        _bill(catalog)
        endpoint.refresh_from_db()
        assert endpoint.enabled and endpoint.failing_since is not None
        _retry_due(datetime.now(UTC) + timedelta(hours=2))
    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert "NERUBA_OUTBOUND_DISABLE_AFTER" in endpoint.disabled_reason


def test_a_redirect_is_not_followed_and_is_not_retried(catalog: dict[str, Any]) -> None:
    with (
        Receiver() as target,
        Receiver(behave=lambda r, i: (302, {"Location": target.url}, b"")) as receiver,
    ):
        _endpoint(receiver, types=["invoice.finalized"])
        _bill(catalog)
    delivery = OutboundDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code) == ("dead", 302)
    assert target.requests == [] and len(receiver.requests) == 1


def test_after_a_rotation_both_secrets_sign_until_the_grace_ends(
    catalog: dict[str, Any],
) -> None:
    with Receiver() as receiver:
        endpoint, old = _endpoint(receiver, types=["credit.granted"])
        new = outbound.endpoint_rotate_secret(endpoint=endpoint, actor=None)
        assert new != old and new.startswith("whsec_")
        services.credit_issue(
            customer=catalog["customer"],
            amount=100,
            reason_code="goodwill",
            actor=None,
            reason="r",
        )
        receiver.wait_for(1)
        header = receiver.requests[0].headers["webhook-signature"]
        assert len(header.split(" ")) == 2
        for secret in (old, new):
            verified = Receiver(secrets=[secret])
            from standardwebhooks.webhooks import Webhook

            Webhook(secret).verify(receiver.requests[0].body, receiver.requests[0].headers)
            assert verified.secrets == [secret]
        endpoint.refresh_from_db()
        with time_machine.travel(endpoint.previous_secret_expires_at + timedelta(seconds=1)):
            services.credit_issue(
                customer=catalog["customer"],
                amount=100,
                reason_code="goodwill",
                actor=None,
                reason="r",
            )
            receiver.wait_for(2)
    assert len(receiver.requests[1].headers["webhook-signature"].split(" ")) == 1
    entry = AuditEntry.objects.get(action="webhook_endpoint.rotate_secret")
    assert old not in json.dumps(entry.after) and new not in json.dumps(entry.after)


def test_production_refuses_private_addresses_at_creation_and_at_each_delivery(
    catalog: dict[str, Any], settings: Any
) -> None:
    with Receiver() as receiver:
        endpoint, _ = _endpoint(receiver, types=["credit.granted"])
        settings.NERUBA_ENV = "production"
        settings.NERUBA = {**settings.NERUBA, "NERUBA_OUTBOUND_ALLOW_PRIVATE": False}
        for url in (
            receiver.url,
            "https://127.0.0.1/x",
            "https://localhost/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
        ):
            with pytest.raises(EndpointUrlNotAllowed):
                outbound.endpoint_create(url=url, event_types=["credit.granted"], actor=None)
        # Created while allowed, now refused at delivery: no request leaves.
        services.credit_issue(
            customer=catalog["customer"],
            amount=100,
            reason_code="goodwill",
            actor=None,
            reason="r",
        )
        delivery = OutboundDelivery.objects.get(endpoint=endpoint)
        assert delivery.status == "failed" and "refused" in delivery.last_error
        assert receiver.requests == []
        settings.NERUBA = {**settings.NERUBA, "NERUBA_OUTBOUND_ALLOW_PRIVATE": True}
        _retry_due(delivery.next_attempt_at + timedelta(seconds=1))
        receiver.wait_for(1)


def test_dns_rebinding_is_caught_at_delivery(
    catalog: dict[str, Any], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    real = socket.getaddrinfo
    answers = {"hooks.example.com": "93.184.215.14"}

    def resolver(host: str, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], args[0]))]
        return real(host, *args, **kwargs)

    # The DNS server is the outside world here; the resolver answers as an attacker's would.
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    settings.NERUBA_ENV = "production"
    settings.NERUBA = {**settings.NERUBA, "NERUBA_OUTBOUND_ALLOW_PRIVATE": False}
    endpoint, _ = outbound.endpoint_create(
        url="https://hooks.example.com/in", event_types=["credit.granted"], actor=None
    )
    answers["hooks.example.com"] = "127.0.0.1"  # rebinds after the check at creation
    services.credit_issue(
        customer=catalog["customer"], amount=100, reason_code="goodwill", actor=None, reason="r"
    )
    attempt = DeliveryAttempt.objects.get(delivery__endpoint=endpoint)
    assert attempt.status_code is None and "loopback" in attempt.error


def test_a_replay_keeps_the_message_id_and_is_audited(catalog: dict[str, Any]) -> None:
    with Receiver(behave=lambda r, i: (400, {}, b"bad") if i == 0 else (200, {}, b"ok")) as rec:
        endpoint, _ = _endpoint(rec, types=["invoice.finalized"])
        _bill(catalog)
        delivery = OutboundDelivery.objects.get()
        assert delivery.status == "dead"
        selection = outbound.deliveries_for_replay(endpoint=endpoint, dead_only=True)
        plan = outbound.deliveries_replay(deliveries=selection, actor=None, reason="", dry_run=True)
        assert "would queue 1 deliveries" in plan.render() and len(rec.requests) == 1
        outbound.deliveries_replay(
            deliveries=selection, actor=None, reason="receiver fixed", dry_run=False
        )
        rec.wait_for(2)
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert rec.requests[0].msg_id == rec.requests[1].msg_id == delivery.message.msg_id
    assert rec.requests[0].body == rec.requests[1].body
    triggers = list(
        delivery.delivery_attempts.order_by("started_at").values_list("trigger", flat=True)
    )
    assert triggers == ["send", "replay"]
    entry = AuditEntry.objects.get(action="webhook_delivery.replay")
    assert entry.reason == "receiver fixed" and entry.after["messages"] == [delivery.message.msg_id]


def test_a_lost_fan_out_kick_is_recovered_by_the_due_task(catalog: dict[str, Any]) -> None:
    with Receiver() as receiver:
        _endpoint(receiver, types=["credit.granted", "invoice.finalized"])
        # The after-commit kick never ran (the process died right after commit).
        with transaction.atomic():
            outbox.publish(type="credit.granted", data={"id": 1})
            invoice = _bill(catalog)
            transaction.get_connection().run_on_commit.clear()
        assert OutboundDelivery.objects.count() == 0
        assert _retry_due(datetime.now(UTC) + timedelta(seconds=5))["fanned_out"] == 0  # fresh
        assert _retry_due(datetime.now(UTC) + timedelta(minutes=1))["fanned_out"] == 2
        receiver.wait_for(2)
    assert set(OutboundDelivery.objects.values_list("status", flat=True)) == {"delivered"}
    assert OutboxBatch.objects.get().expanded_at is not None
    finalized = next(r.json() for r in receiver.requests if r.json()["type"] == "invoice.finalized")
    assert finalized["data"]["number"] == invoice.number


def test_endpoint_urls_must_be_http_and_types_known() -> None:
    with pytest.raises(EndpointUrlNotAllowed):
        outbound.endpoint_create(url="ftp://x.test/", event_types=["invoice.paid"], actor=None)
    from webhooks.exceptions import UnknownEventType

    with pytest.raises(UnknownEventType):
        outbound.endpoint_create(
            url="http://127.0.0.1:9/", event_types=["invoice.nope"], actor=None
        )
    assert settings.NERUBA["NERUBA_OUTBOUND_ALLOW_PRIVATE"] is True  # test default: loopback ok


def test_signing_secrets_never_reach_the_logs(
    catalog: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    with Receiver(behave=lambda r, i: (410, {}, b"gone")) as receiver:
        endpoint, secret = _endpoint(receiver, types=["credit.granted"])
        new = outbound.endpoint_rotate_secret(endpoint=endpoint, actor=None)
        services.credit_issue(
            customer=catalog["customer"],
            amount=100,
            reason_code="goodwill",
            actor=None,
            reason="r",
        )
        receiver.wait_for(1)
    assert "disabled" in caplog.text  # the endpoint's disabling was logged...
    assert secret not in caplog.text and new not in caplog.text  # ...without a secret
    assert secret[6:] not in caplog.text


def test_after_a_timeout_the_rest_of_the_batch_waits_without_losing_attempts(
    catalog: dict[str, Any], settings: Any
) -> None:
    settings.NERUBA = {**settings.NERUBA, "NERUBA_OUTBOUND_READ_TIMEOUT": 1}

    def hang(received: Received, index: int) -> tuple[int, dict[str, str], bytes]:
        time.sleep(2)
        return 200, {}, b"late"

    with Receiver(behave=hang) as receiver:
        endpoint, _ = _endpoint(receiver, types=["credit.granted"])
        with transaction.atomic():
            for n in range(3):
                outbox.publish(type="credit.granted", data={"n": n})
        time.sleep(0.5)
        assert len(receiver.requests) == 1  # one timeout, not three
    states = list(OutboundDelivery.objects.order_by("id").values_list("status", "attempts"))
    assert sorted(states) == [("failed", 0), ("failed", 0), ("failed", 1)]
    assert DeliveryAttempt.objects.count() == 1
    assert endpoint.pk


def test_the_readme_verify_snippet_verifies_a_real_delivery(catalog: dict[str, Any]) -> None:
    import re
    from pathlib import Path

    readme = (Path(settings.BASE_DIR) / "README.md").read_text()
    section = readme.split("## Outbound webhooks", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert snippet, "the README's Outbound webhooks section has no Python snippet"
    with Receiver() as receiver:
        _, secret = _endpoint(receiver, types=["credit.granted"])
        services.credit_issue(
            customer=catalog["customer"],
            amount=100,
            reason_code="goodwill",
            actor=None,
            reason="r",
        )
        receiver.wait_for(1)
    seen: list[str] = []
    handled: list[str] = []
    namespace: dict[str, Any] = {
        "already_seen": lambda msg_id: msg_id in seen or bool(seen.append(msg_id)),
        "handle": lambda type, data: handled.append(type),
    }
    exec(snippet.group(1).replace("whsec_…", secret), namespace)
    request = receiver.requests[0]
    assert namespace["receive"](request.body, request.headers) == 200
    assert namespace["receive"](request.body, request.headers) == 200  # a retry: deduplicated
    assert handled == ["credit.granted"]
    assert namespace["receive"](request.body.replace(b"100", b"999"), request.headers) == 400


def test_a_charge_returning_more_than_it_collected_is_a_payment_finding_message(
    deliver: Any,
) -> None:
    from billing.models import PaymentFinding
    from tests.webhooks.helpers import delivery
    from tests.webhooks.test_money_story import NOW, _paid_invoice, _refund_then_lost_dispute

    with Receiver() as receiver:
        _endpoint(receiver, types=["payment_finding.opened", "invoice.paid"])
        invoice, charge_id = _paid_invoice(deliver, "outbound")
        for obj, type, offset in _refund_then_lost_dispute(invoice, charge_id):
            deliver(*delivery(obj, type=type, created=NOW + offset))
        receiver.wait_for(2)
    finding = PaymentFinding.objects.get()
    message = next(
        r.json() for r in receiver.requests if r.json()["type"] == "payment_finding.opened"
    )
    assert message["data"]["id"] == finding.pk and message["data"]["kind"] == "over_returned"
    assert message["data"]["charge"] == charge_id
    assert message["data"]["returned"] > message["data"]["collected"]
    assert all(r.verified for r in receiver.requests)
