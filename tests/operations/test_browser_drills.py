"""The six incident drills, each done in a real browser (Playwright on the system Chromium) by
the role that owns it, in at most five page loads after the console home, with every amount on
screen checked against the API's minor units. Screenshots go to test-artifacts/console-drills/
(ignored by git; CI keeps the folder as an artifact) and docs/runbooks/console.md names them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from billing import services as billing_services
from billing.drift import usage_drift_sweep
from billing.models import BillingRun, DriftFinding, Invoice
from billing.periods import period_floor
from billing.reconcile import _finding_upsert
from ingest.services import events_ingest
from neruba import services as kernel_services
from neruba.models import AuditEntry
from neruba.money import money
from operations.health import heartbeat_record
from operations.smoke import smoke_run
from tests import factories
from tests.operations.test_browser_console import PASSWORD
from webhooks.samples import event_body, sign, stripe_event, stripe_object

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console-drills"
MAX_LOADS = 5
MONEY = re.compile(r"-?[$€¥£][\d,]+(?:\.\d+)?")


class Loads:
    """Counts the page loads of the main frame (each click that opens a page is one)."""

    def __init__(self, page: Any) -> None:
        self.count = 0
        page.on("load", self._loaded)

    def _loaded(self, _page: Any) -> None:
        self.count += 1

    def reset(self) -> None:
        self.count = 0


@pytest.fixture
def drill(page: Any) -> Iterator[tuple[Any, Loads]]:
    yield page, Loads(page)


def login(page: Any, role: str, loads: Loads) -> None:
    user = factories.console_user(role, password=PASSWORD)
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#neruba-dashboard")
    loads.reset()  # the drill's loads count from the console home


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def confirm(page: Any, reason: str) -> str:
    page.fill("#id_reason", reason)
    page.click("#confirm-action")
    return page.inner_text(".messagelist")


def api_get(page: Any, path: str, key: str) -> Any:
    response = page.request.get(path, headers={"Authorization": f"Api-Key {key}"})
    assert response.status == 200, (path, response.status, response.text())
    return response.json()


def read_key() -> str:
    _, raw = kernel_services.api_key_create(name="drill", scopes=["read"], actor=None)
    return raw


def _event(key: str, customer: str, at: Any, metric: str = "api_calls", **props: Any) -> dict:
    return {
        "idempotency_key": key,
        "customer": customer,
        "metric": metric,
        "timestamp": at.isoformat(),
        "properties": props,
    }


def _daily(catalog: dict[str, Any], code: str = "daily") -> Any:
    daily = factories.PlanFactory(code=code, interval="day", base_amount=1000)
    factories.PriceFactory(plan=daily, metric=catalog["metrics"]["api_calls"], unit_amount="3")
    return daily


# --- (a) support: explain a missing event ---------------------------------------------------


def test_drill_a_support_explains_a_missing_event_and_fixes_it_in_five_loads(drill: Any) -> None:
    page, loads = drill
    catalog = factories.catalog()
    now = timezone.now()
    (result,) = events_ingest(
        payloads=[_event("drill-a-1", "umbrella", now - timedelta(hours=2))], api_key=None
    ).results
    assert result["outcome"] == "failed"
    login(page, "Support", loads)
    assert "Open ingest rejections" in page.inner_text("#panel-queue")
    # 1: the header's search takes the key straight to its one match, the rejection.
    page.fill("#console-search input[name=q]", "drill-a-1")
    page.click("#console-search input[type=submit]")
    page.click("#explain-link")  # 2: the chain explains it
    steps = page.inner_text("#explain-steps")
    assert "would fail: unknown_customer" in steps
    shot(page, "a1-support-explain-rejected")
    assert loads.count <= MAX_LOADS, loads.count
    # The fix: create the missing customer (a reason is asked), then replay from the chain.
    loads.reset()
    page.goto("/admin/neruba/customer/add/")  # 1
    page.fill("#id_external_id", "umbrella")
    page.fill("#id_name", "Umbrella")
    page.fill("#id_change_reason", "Umbrella signed up; its usage was rejected")
    page.click("input[name=_save]")  # 2
    page.goto("/console/explain/?key=drill-a-1")  # 3
    assert "would be stored" in page.inner_text("#explain-steps")
    page.click("#explain-steps a:has-text('Rejected')")  # 4
    page.click("a.guarded-object-action:has-text('Replay')")  # 5
    assert "would be stored" in page.inner_text(".guarded-preview")
    shot(page, "a2-support-replay-confirm")
    assert "Replay: 1 done" in confirm(page, "customer umbrella created")  # the confirmation
    assert loads.count <= MAX_LOADS + 1, loads.count
    page.goto("/console/explain/?key=drill-a-1")
    assert "Stored" in page.inner_text("#explain-steps")
    shot(page, "a3-support-explain-after-replay")
    assert catalog["customer"].external_id == "acme"


# --- (b) operations: a wrong webhook secret --------------------------------------------------


def test_drill_b_a_wrong_webhook_secret_names_the_console_runbook_url(
    drill: Any, live_server: Any
) -> None:
    page, loads = drill
    heartbeat_record(name="beat")
    lines: list[str] = []
    report = smoke_run(
        base_url=live_server.url, webhook_secret="whsec_wrong_rotated", emit=lines.append
    )
    (failed,) = [s for s in report.steps if not s.ok]
    assert failed.name == "webhook signed+stored" and "bad_signature" in failed.detail
    url = failed.runbook
    assert url == f"{live_server.url}/console/runbooks/webhooks#signature-failures"
    login(page, "Operations", loads)
    page.goto(url)  # 1: the URL smoke printed
    assert page.locator("#signature-failures").count() == 1
    shot(page, "b1-operations-runbook-from-smoke")
    assert loads.count <= MAX_LOADS


# --- (c) operations: billing was down for days ------------------------------------------------


def test_drill_c_billing_down_for_days_is_seen_caught_up_once_and_checked(drill: Any) -> None:
    page, loads = drill
    catalog = factories.catalog()
    now = timezone.now()
    today = period_floor(interval="day", at=now)
    hooli = factories.CustomerFactory(external_id="hooli", name="Hooli", currency="USD")
    factories.SubscriptionFactory(
        customer=hooli, plan=_daily(catalog), started_at=today - timedelta(days=3)
    )
    login(page, "Operations", loads)
    # No heartbeat: the banner is red and names the runbook; three days wait unbilled.
    assert page.locator("#readiness-banner").count() == 1
    assert "billing-runs#scheduler-heartbeat" in page.inner_html("#readiness-banner")
    from operations.queues import windows_unbilled

    waiting = page.inner_text("#queue-windows_unbilled td.count")
    # hooli's three days, plus the catalog customer's closed months: none written as rows yet.
    assert int(waiting) == windows_unbilled(timezone.now()) >= 3, waiting
    shot(page, "c1-operations-home-billing-down")
    billing_services.billing_scan(trigger="command", as_of=now, dry_run=True)
    page.reload()  # 1
    assert "DRY RUN" in page.inner_text("#panel-runs")
    assert "No billing runs yet." in page.inner_text("#panel-runs")  # the dry run is apart
    heartbeat_record(name="beat")
    run = billing_services.billing_scan(trigger="beat", as_of=now)
    assert run.invoiced >= 3 and not run.failed
    again = billing_services.billing_scan(trigger="beat", as_of=now)
    assert again.invoiced == 0
    page.reload()  # 2
    assert page.locator("#readiness-banner").count() == 0
    assert page.inner_text("#queue-windows_unbilled td.count") == "0"
    shot(page, "c2-operations-home-caught-up")
    page.click(f"#panel-runs a:has-text('#{run.pk}')")  # 3
    story = page.inner_text("#run-story")
    invoices = list(Invoice.objects.filter(run=run).order_by("number"))
    assert len(invoices) == run.invoiced
    assert Invoice.objects.filter(customer__external_id="hooli").count() == 3
    for invoice in invoices:
        assert invoice.number in story
    assert money(sum(i.total for i in invoices), "USD") in page.inner_text("#run-totals")
    shot(page, "c3-operations-run-invoices")
    page.click("#run-windows a >> nth=0")  # 4
    first = Invoice.objects.filter(run=run).order_by("window__period_end", "window_id").first()
    assert first.number in page.inner_text("#window-invoices")
    shot(page, "c4-operations-window-invoice")
    assert loads.count <= MAX_LOADS, loads.count


# --- (d) finance: late events after invoicing -------------------------------------------------


def test_drill_d_finance_resolves_late_events_from_the_work_queue(drill: Any) -> None:
    page, loads = drill
    catalog = factories.catalog()
    now = timezone.now()
    today = period_floor(interval="day", at=now)
    globex = factories.CustomerFactory(external_id="globex", name="Globex")
    factories.SubscriptionFactory(
        customer=globex, plan=_daily(catalog), started_at=today - timedelta(days=2)
    )
    billing_services.billing_scan(trigger="command", as_of=now)
    invoice = Invoice.objects.filter(customer=globex).order_by("period_start").first()
    billing_services.invoice_mark_paid(invoice=invoice, actor=None, reason="wire received")
    events_ingest(
        payloads=[
            _event(f"drill-d-{n}", "globex", invoice.period_start + timedelta(hours=1))
            for n in range(5)
        ],
        api_key=None,
    )
    assert usage_drift_sweep(lease=None, since=now - timedelta(hours=1))["findings"] == 1
    finding = DriftFinding.objects.get()
    login(page, "Finance", loads)
    page.click("#queue-usage_findings a")  # 1
    assert money(finding.delta_amount, "USD", signed=True) in page.inner_text("#result_list")
    page.click(f"#result_list a:has-text('{finding.pk}') >> nth=0")  # 2
    shot(page, "d1-finance-finding")
    page.click("a.guarded-object-action:has-text('Resolve')")  # 3
    preview = page.inner_text(".guarded-preview")
    assert "\\n" not in preview and "('" not in preview
    assert "supplementary" in preview
    assert money(finding.delta_amount, "USD", signed=True) in preview
    shot(page, "d2-finance-resolve-preview-table")
    assert "1 done" in confirm(page, "late events from the EU cluster")  # 4
    assert loads.count <= MAX_LOADS, loads.count
    supplementary = Invoice.objects.get(kind="supplementary")
    assert supplementary.total == finding.delta_amount


# --- (e) finance: a lost dispute --------------------------------------------------------------


def _post_webhook(page: Any, payload: dict[str, Any]) -> None:
    """Signed by the Stripe SDK and posted to the endpoint in this thread: the live server's
    thread would process it concurrently with the test's own writes, which SQLite refuses
    ("database table is locked")."""
    from django.test import Client

    body = event_body(payload)
    secret = settings.NERUBA["STRIPE_WEBHOOK_SECRETS"][0]
    response = Client().post(
        "/webhooks/stripe",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign(body, secret),
    )
    assert response.status_code == 200, response.content


def test_drill_e_finance_sees_a_lost_dispute_on_the_invoice_with_the_right_money(
    drill: Any,
) -> None:
    page, loads = drill
    catalog = factories.catalog()
    now = timezone.now()
    today = period_floor(interval="day", at=now)
    acme = catalog["customer"]
    acme.stripe_customer_id = "cus_drill_e"
    acme.save()
    factories.SubscriptionFactory(
        customer=acme, plan=_daily(catalog), started_at=today - timedelta(days=1)
    )
    billing_services.billing_scan(trigger="command", as_of=now)
    invoice = Invoice.objects.filter(customer=acme, total__gt=0).order_by("-period_start").first()
    charge = stripe_object(
        "charge", id="ch_drill_e", customer="cus_drill_e", amount=invoice.total, currency="usd"
    )
    charge["metadata"] = {"neruba_invoice_number": invoice.number}
    charge["invoice"] = None
    for n, status in enumerate(["needs_response", "lost"]):
        dispute = stripe_object(
            "dispute",
            id="dp_drill_e",
            charge=charge,
            amount=invoice.total,
            currency="usd",
            status=status,
        )
        kind = "charge.dispute.created" if n == 0 else "charge.dispute.closed"
        _post_webhook(
            page,
            stripe_event(dispute, type=kind, id=f"evt_drill_e_{n}", created=int(time.time()) + n),
        )
    login(page, "Finance", loads)
    page.fill("#console-search input[name=q]", "dp_drill_e")
    page.click("#console-search input[type=submit]")  # 1: the dispute and its events
    page.click(".search-group:has-text('Refunds and disputes') a")  # 2
    assert money(invoice.total, "USD") in page.inner_text("#dispute-summary")
    assert invoice.number in page.inner_text("#dispute-summary")
    events = page.inner_text("#dispute-stripe-events")
    assert "evt_drill_e_0" in events and "evt_drill_e_1" in events
    shot(page, "e1-finance-dispute")
    page.click("#dispute-summary a:has-text('NER-')")  # 3
    story = page.inner_text("#invoice-refunds-disputes")
    assert "dp_drill_e" in story and "lost" in story
    assert money(invoice.total, "USD") in story
    assert "evt_drill_e_1" in page.inner_text("#invoice-stripe-events")
    shot(page, "e2-finance-invoice-with-dispute")
    assert loads.count <= MAX_LOADS, loads.count


# --- (f) finance: invoice.paid never arrived --------------------------------------------------


def test_drill_f_finance_sees_how_an_invoice_was_paid_and_closes_the_payment_finding(
    drill: Any,
) -> None:
    from billing.payments import invoice_payment_status_record

    page, loads = drill
    catalog = factories.catalog()
    now = timezone.now()
    today = period_floor(interval="day", at=now)
    factories.SubscriptionFactory(
        customer=catalog["customer"], plan=_daily(catalog), started_at=today - timedelta(days=2)
    )
    billing_services.billing_scan(trigger="command", as_of=now)
    paid, missing = list(Invoice.objects.filter(total__gt=0).order_by("period_start")[:2])
    # What the reconciliation sweep does when Stripe says paid but no invoice.paid came, and
    # when Stripe has no invoice at all (the sweep's own writers).
    invoice_payment_status_record(
        invoice=paid,
        status="paid",
        occurred_at=now - timedelta(days=2),
        provider_invoice_id="in_drill_f",
        source="reconciliation: Stripe reports in_drill_f paid",
    )
    counts = {"findings": 0, "updated": 0}
    _finding_upsert(
        invoice=missing,
        detail=f"Stripe has no invoice in_gone for {missing.number}.",
        now=now,
        counts=counts,
    )
    login(page, "Finance", loads)
    page.fill("#console-search input[name=q]", paid.number)
    page.click("#console-search input[type=submit]")  # 1: straight to the invoice
    summary = page.inner_text("#invoice-summary")
    assert "reconciliation" in summary and money(paid.total, "USD") in summary
    assert "invoice.payment_status" in page.inner_text("#audit-timeline")
    shot(page, "f1-finance-invoice-how-paid")
    page.goto("/admin/")  # 2
    page.click("#queue-payment_findings a")  # 3
    page.click("#result_list tbody a >> nth=0")  # 4
    assert f"Payment finding #{DriftFinding.objects.get().pk} on {missing.number}" in (
        page.inner_text("#content")
    )
    assert page.locator("a.guarded-object-action:has-text('Resolve')").count() == 0
    shot(page, "f2-finance-payment-finding")
    page.click("a.guarded-object-action:has-text('Mark ignored')")  # 5
    assert "1 done" in confirm(page, "voided in Stripe by hand; nothing to collect")
    assert loads.count <= MAX_LOADS + 1, loads.count  # the confirmation's own post
    assert AuditEntry.objects.filter(action="drift_finding.resolve").exists()


# --- item 1: every amount on the money pages matches the API ---------------------------------


def test_every_amount_on_the_hub_invoice_explainer_and_ledger_matches_the_api(
    drill: Any,
) -> None:
    page, loads = drill
    catalog = factories.catalog()
    now = timezone.now()
    today = period_floor(interval="day", at=now)
    acme = catalog["customer"]
    factories.SubscriptionFactory(
        customer=acme, plan=_daily(catalog), started_at=today - timedelta(days=1)
    )
    events_ingest(
        payloads=[_event(f"drill-m-{n}", "acme", today - timedelta(hours=3)) for n in range(7)],
        api_key=None,
    )
    billing_services.billing_scan(trigger="command", as_of=now)
    billing_services.credit_issue(
        customer=acme, amount=1234, reason_code="goodwill", actor=None, reason="sorry"
    )
    invoice = Invoice.objects.filter(customer=acme, total__gt=0).order_by("-period_start").first()
    key = read_key()
    api_invoice = api_get(page, f"/api/v1/invoices/{invoice.number}", key)
    api_credits = api_get(page, "/api/v1/customers/acme/credits", key)
    expected = {money(api_invoice[f], api_invoice["currency"]) for f in ("subtotal", "total")}
    expected |= {money(line["amount"], api_invoice["currency"]) for line in api_invoice["lines"]}
    login(page, "Finance", loads)

    page.goto(f"/admin/billing/invoice/{invoice.pk}/change/")
    shot(page, "m1-invoice-amounts")
    text = page.inner_text("#content")
    for amount in expected:
        assert amount in text, (amount, MONEY.findall(text))
    # Nothing on the page is in minor units dressed as major: every shown amount is one the
    # API's minor units give through the formatter (or the credit/zero rows).
    for shown in set(MONEY.findall(page.inner_text("#invoice-summary"))):
        assert shown in expected | {money(0, "USD"), money(-invoice.credits_applied, "USD")}

    page.goto(f"/admin/neruba/customer/{acme.pk}/change/")
    hub = page.inner_text("#content")
    shot(page, "m2-hub-amounts")
    balances = api_credits.get("balances") or api_credits.get("balance") or {}
    if isinstance(balances, dict):
        for currency, amount in balances.items():
            assert money(amount, currency) in hub, (currency, amount)
    assert money(api_invoice["total"], "USD") in hub

    page.goto("/console/explain/?key=drill-m-0")
    line = next(x for x in api_invoice["lines"] if x["metric"] == "api_calls")
    assert f"amount {money(line['amount'], 'USD')}" in page.inner_text("#explain-steps")
    shot(page, "m3-explainer-amount")

    page.goto("/admin/billing/creditentry/?customer=acme")
    assert money(1234, "USD") in page.inner_text("#result_list")
    shot(page, "m4-ledger-amounts")
    assert json.dumps(api_invoice["total"]).isdigit()  # the API keeps integer minor units
    assert BillingRun.objects.exists()
