"""Every guarded action's confirmation page, rendered for real records: previews are tables and
sentences, never Python reprs, and amounts go through the money formatter."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from billing import services as billing_services
from billing.models import BillingWindow, DriftFinding, Invoice, PaymentCharge, PaymentFinding
from ingest.models import IngestRejection, UsageEvent
from neruba import locks
from neruba import services as kernel_services
from neruba.admin_actions import GuardedAdminMixin
from neruba.admin_site import console
from neruba.models import ApiKey, Customer, SchedulerLock
from tests.operations.console import FEB_LATER, JAN, bill_january, call, ingest
from tests.webhooks.receivers import Receiver
from webhooks import outbound
from webhooks.models import OutboundDelivery, OutboundMessage, StripeEvent, WebhookEndpoint

pytestmark = pytest.mark.django_db

REPRS = ("\\n", "('", "{'", "[{", "Decimal(")


@pytest.fixture
def records(catalog: dict[str, Any], django_capture_on_commit_callbacks: Any) -> dict[type, Any]:
    """One record of every model that has a guarded action."""
    with time_machine.travel(JAN + timedelta(days=4), tick=False):
        ingest(call("p-ok"), call("p-bad", customer="initech"))
        ingest({**call("p-ok"), "properties": {"changed": True}})
    with time_machine.travel(FEB_LATER, tick=False):
        invoice = bill_january()
    window = BillingWindow.objects.get(pk=invoice.window_id)
    DriftFinding.objects.create(
        window=window,
        metric=catalog["metrics"]["api_calls"],
        invoice=invoice,
        invoiced_quantity=1,
        actual_quantity=2,
        delta_amount=1500,
    )
    StripeEvent.objects.create(
        stripe_id="evt_preview",
        type="invoice.paid",
        created=timezone.now(),
        raw_body=b"{}",
        payload={"data": {"object": {"id": "in_x", "object": "invoice"}}},
        status="dead",
    )
    kernel_services.api_key_create(name="preview", scopes=["read"], actor=None)
    locks.lock_acquire(name="billing-scan", holder="gone", ttl=timedelta(seconds=-1))
    charge = PaymentCharge.objects.create(charge_id="ch_preview", currency="USD")
    PaymentFinding.objects.create(
        charge=charge,
        currency="USD",
        collected=1900,
        refunded=1900,
        disputed=1900,
        returned=3800,
        detail="charge ch_preview returned $38.00 of $19.00: refunded and lost in dispute",
    )
    # A dead outbound delivery: its endpoint, message and delivery each have guarded actions.
    with (
        Receiver(behave=lambda r, i: (400, {}, b"nope")) as receiver,
        django_capture_on_commit_callbacks(execute=True),
    ):
        outbound.endpoint_create(url=receiver.url, event_types=["credit.granted"], actor=None)
        billing_services.credit_issue(
            customer=catalog["customer"], amount=250, reason_code="goodwill", actor=None, reason="r"
        )
    delivery = OutboundDelivery.objects.get()
    return {
        WebhookEndpoint: delivery.endpoint,
        OutboundMessage: delivery.message,
        OutboundDelivery: delivery,
        PaymentFinding: PaymentFinding.objects.get(),
        UsageEvent: UsageEvent.objects.filter(idempotency_key="p-ok").get(),
        Customer: catalog["customer"],
        Invoice: invoice,
        BillingWindow: window,
        DriftFinding: DriftFinding.objects.get(),
        IngestRejection: IngestRejection.objects.filter(outcome="failed").first(),
        StripeEvent: StripeEvent.objects.get(),
        ApiKey: ApiKey.objects.get(name="preview"),
        SchedulerLock: SchedulerLock.objects.get(),
    }


def _guarded_actions() -> list[tuple[type, str]]:
    from django.contrib import admin

    admin.autodiscover()  # the console's admins register when the URLs load
    found = []
    for model, model_admin in console._registry.items():
        if not isinstance(model_admin, GuardedAdminMixin):
            continue
        for func, name, _ in model_admin._get_base_actions():
            if hasattr(func, "guarded_permission"):
                found.append((model, name))
    return sorted(found, key=lambda pair: (pair[0]._meta.label, pair[1]))


def test_every_guarded_action_is_covered_by_this_test() -> None:
    names = {name for _, name in _guarded_actions()}
    # A new guarded action must get a record in the fixture above; this list says which exist.
    assert names >= {
        "issue_credit",
        "rerun_invoices",
        "mark_paid",
        "record_correction",
        "rerun_windows",
        "resolve_findings",
        "ignore_findings",
        "replay_rejections",
        "dismiss_rejections",
        "replay_events",
        "revoke_keys",
        "release_locks",
        "close_payment_findings",
    }


def test_every_guarded_confirmation_page_renders_its_preview_without_python_reprs(
    records: dict[type, Any], console_user: Any
) -> None:
    client = Client()
    client.force_login(console_user("superuser"))
    rendered = 0
    for model, name in _guarded_actions():
        obj = records[model]
        opts = model._meta
        response = client.post(
            f"/admin/{opts.app_label}/{opts.model_name}/",
            {"action": name, "_selected_action": [obj.pk]},
        )
        assert response.status_code == 200, (model, name, response.status_code)
        html = response.content.decode()
        assert 'class="guarded-preview"' in html, (model, name)
        cell = html[html.index('class="guarded-preview"') : html.index('id="confirm-action"')]
        for bad in REPRS:
            assert bad not in cell, (model, name, bad, cell[:2000])
        rendered += 1
    assert rendered >= 12


def test_the_rerun_preview_is_a_table_of_lines_before_and_after_in_money(
    records: dict[type, Any], console_user: Any
) -> None:
    invoice = records[Invoice]
    with time_machine.travel(FEB_LATER, tick=False):
        ingest(*(call(f"p-late-{n}") for n in range(5)))
    client = Client()
    client.force_login(console_user("Finance"))
    html = client.get(
        f"/admin/billing/invoice/{invoice.pk}/action/rerun_invoices/"
    ).content.decode()
    table = html[html.index('class="preview-detail preview-table"') :]
    table = table[: table.index("</table>")]
    assert "<th>Line</th>" in table and "Amount after" in table and "Subtotal" in table
    assert re.search(r"\$\d+\.\d\d", table), table
    assert f"void {invoice.number}" in html


def test_a_zero_money_finding_warns_that_ignoring_is_the_sensible_choice(
    records: dict[type, Any], console_user: Any
) -> None:
    finding = records[DriftFinding]
    DriftFinding.objects.filter(pk=finding.pk).update(delta_amount=0)
    client = Client()
    client.force_login(console_user("Finance"))
    html = client.get(
        f"/admin/billing/driftfinding/{finding.pk}/action/resolve_findings/"
    ).content.decode()
    assert "Mark ignored is usually the right choice" in html
