"""The console in a real browser (Playwright driving the system Chromium), logged in through the
login form as each role (fixtures in tests/operations/conftest.py). Screenshots go to
test-artifacts/console/."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from billing import services as billing_services
from billing.drift import usage_drift_sweep
from billing.periods import period_floor
from ingest.models import IngestRejection, UsageEvent
from ingest.services import events_ingest
from neruba.models import AuditEntry, Customer
from tests import factories
from webhooks.models import StripeEvent
from webhooks.samples import event_body, stripe_event, stripe_object

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
PASSWORD = "pw-Neruba-123"


def login(page: Any, role: str) -> None:
    user = factories.console_user(role, password=PASSWORD)
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#neruba-dashboard")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def confirm(page: Any, reason: str) -> str:
    """Fills the guarded action's reason, confirms, and returns the message shown."""
    page.fill("#id_reason", reason)
    page.click("#confirm-action")
    return page.inner_text(".messagelist")


def _item(key: str, customer: str, at: Any) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "customer": customer,
        "metric": "api_calls",
        "timestamp": at.isoformat(),
        "properties": {},
    }


def test_support_replays_a_rejection_after_creating_the_missing_customer(page: Any) -> None:
    factories.catalog()
    now = timezone.now()
    (result,) = events_ingest(
        payloads=[_item("br-globex-1", "globex", now - timedelta(hours=1))], api_key=None
    ).results
    assert result["outcome"] == "failed"
    login(page, "Support")
    page.goto("/admin/neruba/customer/add/")
    page.fill("#id_external_id", "globex")
    page.fill("#id_name", "Globex")
    page.fill("#id_email", "ops@globex.example")
    page.fill("#id_change_reason", "Globex signed up; its usage was rejected")
    page.click("input[name=_save]")
    assert "was added successfully" in page.inner_text(".messagelist")
    globex = Customer.objects.get(external_id="globex")
    page.goto(f"/admin/neruba/customer/{globex.pk}/change/")
    page.click("#hub-rejections a:has-text('br-globex-1')")
    page.click("a.guarded-object-action:has-text('Replay')")
    assert "would be stored" in page.inner_text(".guarded-preview")
    shot(page, "support-replay-confirm")
    message = confirm(page, "Customer globex created; replaying its usage")
    shot(page, "support-replay-done")
    assert "Replay: 1 done, 0 skipped, 0 failed." in message
    assert IngestRejection.objects.get().status == "replayed"
    assert UsageEvent.objects.get(idempotency_key="br-globex-1").customer == globex


def test_finance_issues_a_credit_and_sees_it_in_the_ledger_and_the_audit_log(page: Any) -> None:
    acme = factories.catalog()["customer"]
    login(page, "Finance")
    page.goto(f"/admin/neruba/customer/{acme.pk}/change/")
    page.click("a.guarded-object-action:has-text('Issue a credit')")
    page.fill("#id_amount", "15.00")
    page.select_option("#id_reason_code", "goodwill")
    shot(page, "finance-credit-confirm")
    assert "Issue a credit: 1 done" in confirm(page, "API outage on the 3rd, agreed with the CFO")
    page.goto(f"/admin/neruba/customer/{acme.pk}/change/")
    assert "$15.00" in page.inner_text("#hub-balance")
    page.wait_for_selector("#usage-so-far")  # the usage panel fills itself in
    assert "Amount so far (pro)" in page.inner_text("#hub-usage")
    assert "added a credit of $15.00" in page.input_value("textarea.support-message")
    shot(page, "finance-customer-hub")
    page.goto("/admin/billing/creditentry/?customer=acme")
    assert "API outage on the 3rd" in page.inner_text("#result_list")
    shot(page, "finance-ledger")
    page.goto("/admin/neruba/auditentry/?action=credit.grant")
    row = page.inner_text("#result_list")
    assert "finance-user" in row and "API outage on the 3rd" in row
    shot(page, "finance-audit")
    with page.expect_download() as download:
        page.click("#export-csv")
    csv_text = Path(download.value.path()).read_text()
    assert "credit.grant" in csv_text and "API outage on the 3rd" in csv_text
    assert AuditEntry.objects.filter(action="export.csv", actor_label="finance-user").exists()


def _dead_event(customer: Customer) -> StripeEvent:
    payload = stripe_event(
        stripe_object("customer", id="cus_browser", email="new@acme.example"),
        type="customer.updated",
        id="evt_browser_dead",
    )
    return StripeEvent.objects.create(
        stripe_id=payload["id"],
        type=payload["type"],
        created=timezone.now(),
        raw_body=event_body(payload),
        payload=payload,
        object_id="cus_browser",
        customer=customer,
        status="dead",
        attempts=8,
        last_error="handler crashed (fixed since)",
    )


def test_operations_replays_a_dead_webhook_event(page: Any) -> None:
    acme = factories.catalog()["customer"]
    event = _dead_event(acme)
    login(page, "Operations")
    page.goto("/admin/webhooks/stripeevent/?status__exact=dead")
    page.click("#result_list tr:has-text('evt_browser_dead') th a")
    page.click("a.guarded-object-action:has-text('Replay Stripe events')")
    assert "status now" in page.inner_text(".guarded-preview")
    message = confirm(page, "Handler fixed in 1.4.2")
    shot(page, "operations-webhook-replay")
    assert "Replay Stripe events: 1 done, 0 skipped, 0 failed." in message
    event.refresh_from_db()
    assert event.status != "dead"
    assert AuditEntry.objects.filter(actor_label="operations-user", reason="Handler fixed in 1.4.2")


def test_support_is_refused_the_webhook_replay_and_the_credit(page: Any) -> None:
    acme = factories.catalog()["customer"]
    event = _dead_event(acme)
    login(page, "Support")
    page.goto(f"/admin/webhooks/stripeevent/{event.pk}/change/")
    assert page.locator("a.guarded-object-action").count() == 0
    response = page.goto(f"/admin/webhooks/stripeevent/{event.pk}/action/replay_events/")
    assert response.status == 403
    shot(page, "support-refused-replay")
    page.goto(f"/admin/neruba/customer/{acme.pk}/change/")
    # Support may void usage (its own permission), never issue a credit.
    buttons = page.locator("a.guarded-object-action")
    assert [buttons.nth(i).inner_text().lower() for i in range(buttons.count())] == [
        "void usage in a time range"
    ]
    response = page.goto(f"/admin/neruba/customer/{acme.pk}/action/issue_credit/")
    assert response.status == 403
    event.refresh_from_db()
    assert event.status == "dead"
    assert not AuditEntry.objects.filter(actor_label="support-user").exists()


def test_the_explainer_answers_for_a_late_event(page: Any) -> None:
    catalog = factories.catalog()
    now = timezone.now()
    today = period_floor(interval="day", at=now)
    daily = factories.PlanFactory(code="daily", interval="day", base_amount=0)
    factories.PriceFactory(plan=daily, metric=catalog["metrics"]["api_calls"])
    initech = factories.CustomerFactory(external_id="initech", name="Initech")
    factories.SubscriptionFactory(
        customer=initech, plan=daily, started_at=today - timedelta(days=3)
    )
    billing_services.billing_scan(trigger="command", as_of=now)
    (result,) = events_ingest(
        payloads=[_item("br-late-1", "initech", now - timedelta(days=2))], api_key=None
    ).results
    assert result["outcome"] == "accepted"
    event = UsageEvent.objects.get(idempotency_key="br-late-1")
    assert event.late
    # The drift sweep re-checks the late event's window and raises the finding.
    assert usage_drift_sweep(lease=None, since=now - timedelta(hours=1))["findings"] == 1
    login(page, "Support")
    page.goto(f"/admin/ingest/usageevent/{event.pk}/change/")
    page.click("#explain-link")
    verdict = page.inner_text("#verdict")
    shot(page, "explainer-late-event")
    assert verdict.startswith("Late: arrived after invoice")
    assert verdict.endswith("is open.") and "drift finding #" in verdict
    page.click("#explain-steps a:has-text('Drift finding')")
    assert "View drift finding" in page.inner_text("#content")
    assert page.locator("a.guarded-object-action").count() == 0  # support cannot resolve it


def test_operations_sees_a_stale_scheduler_in_red_and_then_the_active_beat(page: Any) -> None:
    from neruba.beat import BEAT_LOCK
    from neruba.locks import lock_acquire
    from operations.health import heartbeat_record

    login(page, "Operations")
    heading = page.locator("#panel-readiness h2 .degraded")
    assert heading.inner_text() == "DEGRADED"
    red = "rgb(186, 33, 33)"
    assert heading.evaluate("e => getComputedStyle(e).color") == red
    scheduler = page.locator("#panel-readiness tr.failing", has_text="scheduler")
    assert scheduler.evaluate("e => getComputedStyle(e).color") == red
    assert "no celery beat holds" in page.inner_text("#beat-active")
    shot(page, "operations-home-degraded")

    heartbeat_record(name="beat")
    lock_acquire(name=BEAT_LOCK, holder="beat:host-b:77:beef", ttl=timedelta(minutes=1))
    page.goto("/admin/")
    assert page.inner_text("#panel-readiness h2 .ready") == "ready"
    assert "beat:host-b:77:beef" in page.inner_text("#beat-active")
    assert page.locator("#panel-readiness tr.failing").count() == 0
    shot(page, "operations-home-ready")


def test_finance_sees_a_refunded_and_lost_charge_as_cash_never_credit_and_closes_its_finding(
    page: Any, settings: Any
) -> None:
    from django.test import Client

    from billing.models import CreditEntry, PaymentFinding
    from tests.webhooks.helpers import SECRET, delivery, invoice_event, make_invoice, post

    settings.NERUBA = {**settings.NERUBA, "STRIPE_WEBHOOK_SECRETS": [SECRET]}
    acme = Customer.objects.create(
        external_id="acme-cash", name="Acme Cash", currency="USD", stripe_customer_id="cus_cash"
    )
    invoice = make_invoice(customer=acme, total=1900)
    charge = stripe_object(
        "charge",
        id="ch_browser",
        customer="cus_cash",
        invoice=invoice.provider_invoice_id,
        amount=1900,
        amount_captured=1900,
    )
    refund = stripe_object("refund", id="re_browser", charge="ch_browser", amount=1900)
    lost = stripe_object(
        "dispute", id="dp_browser", charge="ch_browser", amount=1900, status="lost"
    )
    for body, signature in (
        invoice_event(invoice, type="invoice.paid", amount_paid=1900),
        delivery(charge, type="charge.succeeded"),
        delivery(refund, type="refund.created"),
        delivery(lost, type="charge.dispute.closed"),
    ):
        assert post(Client(), body, signature).status_code == 200
    assert not CreditEntry.objects.exists()

    login(page, "Finance")
    page.goto(f"/admin/neruba/customer/{acme.pk}/change/")
    assert "No credits." in page.inner_text("#hub-balance")
    cash = page.inner_text("#hub-cash")
    assert "$19.00" in cash and "-$19.00" in cash
    replies = page.locator("textarea.support-message")
    texts = [replies.nth(i).input_value() for i in range(replies.count())]
    assert any("dispute closed: lost" in text for text in texts)
    assert any("refund processed: $19.00 back to your card" in text for text in texts)
    shot(page, "finance-hub-cash")
    page.click("#hub-payment_findings a:has-text('ch_browser')")
    page.wait_for_url("**/paymentfinding/*/change/")
    detail = page.inner_text("#content")
    assert "returned $38.00 of $19.00: refunded and lost in dispute" in detail
    page.click("a.guarded-object-action:has-text('Mark handled')")
    assert "no balance moves" in page.inner_text(".guarded-preview")
    message = confirm(page, "Chargeback accepted; refund stands")
    shot(page, "finance-payment-finding-closed")
    assert "1 done, 0 skipped, 0 failed." in message
    assert PaymentFinding.objects.get().resolution == "handled"

    page.goto(f"/admin/billing/invoice/{invoice.pk}/change/")
    assert (
        "charged $19.00, paid $19.00, refunded $19.00, lost in disputes $19.00, collected -$19.00"
        in page.inner_text("#content")
    )
    shot(page, "finance-invoice-cash")
    page.goto("/admin/billing/creditentry/?customer=acme-cash")
    ledger = page.inner_text("#ledger-cash")
    assert "$0.00" in ledger and "-$19.00" in ledger
    shot(page, "finance-ledger-cash")
