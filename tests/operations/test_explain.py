"""The "Why wasn't this billed?" explainer, over real records."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import User

from billing.models import BillingWindow, DriftFinding, Price
from operations.explain import explain_key, explanation_dict
from tests.factories import CustomerFactory
from tests.operations.console import FEB_LATER, JAN, bill_january, call, client_for, ingest

pytestmark = pytest.mark.django_db


def _statuses(key: str) -> dict[str, str]:
    return {
        s["title"]: s["status"] for s in explanation_dict(explain_key(idempotency_key=key))["steps"]
    }


def test_a_key_never_seen_is_explained_as_never_received(catalog: dict[str, Any]) -> None:
    explanation = explain_key(idempotency_key="nobody-sent-this")
    assert explanation.verdict == "Never received."
    assert not explanation.billed


@time_machine.travel(JAN + timedelta(days=4), tick=False)
def test_a_rejected_event_names_the_error_and_says_it_can_be_replayed_once_fixed(
    catalog: dict[str, Any],
) -> None:
    ingest(call("k-unknown", customer="globex"))
    explanation = explain_key(idempotency_key="k-unknown")
    assert "rejected" in explanation.verdict and "never stored" in explanation.verdict
    assert explanation.steps[-1].status == "warn"
    assert "does not exist" in explanation.steps[-1].detail
    CustomerFactory(external_id="globex")
    assert explain_key(idempotency_key="k-unknown").steps[-1].status == "ok"


@time_machine.travel(JAN + timedelta(days=4), tick=False)
def test_an_event_in_an_open_window_is_not_billed_yet(catalog: dict[str, Any]) -> None:
    ingest(call("k-open"))
    explanation = explain_key(idempotency_key="k-open")
    assert explanation.verdict == "Not billed yet: its billing window has not closed."
    assert _statuses("k-open")["Subscription"] == "ok"


@time_machine.travel(JAN + timedelta(days=4), tick=False)
def test_an_event_for_a_metric_the_plan_does_not_price_is_never_billed(
    catalog: dict[str, Any],
) -> None:
    Price.objects.filter(metric=catalog["metrics"]["api_calls"]).delete()
    ingest(call("k-unpriced"))
    explanation = explain_key(idempotency_key="k-unpriced")
    assert explanation.verdict == "Not billed: plan pro does not price api_calls."


@time_machine.travel(JAN + timedelta(days=4), tick=False)
def test_an_event_before_the_subscription_started_is_never_billed(
    catalog: dict[str, Any],
) -> None:
    catalog["subscription"].started_at = JAN + timedelta(days=10)
    catalog["subscription"].save()
    ingest(call("k-early"))
    assert "no subscription was active" in explain_key(idempotency_key="k-early").verdict


def test_a_billed_event_names_its_invoice_and_line(catalog: dict[str, Any]) -> None:
    with time_machine.travel(JAN + timedelta(days=4), tick=False):
        ingest(call("k-billed"))
    with time_machine.travel(FEB_LATER, tick=False):
        invoice = bill_january()
    explanation = explain_key(idempotency_key="k-billed")
    assert explanation.billed
    assert explanation.verdict == f"Billed on invoice {invoice.number}."
    assert _statuses("k-billed")["Billing window"] == "ok"


def test_a_late_event_names_the_late_flag_and_its_drift_finding(
    catalog: dict[str, Any], console_user: Any
) -> None:
    with time_machine.travel(FEB_LATER, tick=False):
        invoice = bill_january()
        (result,) = ingest(call("k-late"))
    assert result["outcome"] == "accepted"
    explanation = explain_key(idempotency_key="k-late")
    assert "Late: arrived after invoice" in explanation.verdict
    assert "no drift finding raised yet" in explanation.verdict
    window = BillingWindow.objects.get(subscription=catalog["subscription"], period_start=JAN)
    finding = DriftFinding.objects.create(
        window=window,
        metric=catalog["metrics"]["api_calls"],
        invoice=invoice,
        invoiced_quantity=0,
        actual_quantity=1,
        delta_amount=1,
    )
    explanation = explain_key(idempotency_key="k-late")
    assert explanation.verdict == (
        f"Late: arrived after invoice {invoice.number}; drift finding #{finding.pk} is open."
    )


def test_the_explainer_page_answers_for_each_role_and_refuses_anonymous_users(
    catalog: dict[str, Any], console_user: Any
) -> None:
    for role in ("Support", "Finance", "Operations"):
        response = client_for(console_user, role).get("/console/explain/?key=nope")
        assert response.status_code == 200
        assert "Never received." in response.content.decode()
    from django.test import Client

    response = Client().get("/console/explain/?key=nope")
    assert response.status_code == 302 and "/login/" in response["Location"]
    bare = User.objects.create_user("bare", password="x-Password-1", is_staff=True)
    client = Client()
    client.force_login(bare)
    assert client.get("/console/explain/?key=nope").status_code == 403


def test_a_late_event_billed_by_resolving_its_finding_names_the_rerun_invoice(
    catalog: dict[str, Any], console_user: Any
) -> None:
    from billing.drift import finding_resolve, usage_drift_sweep

    finance = console_user("Finance")
    with time_machine.travel(FEB_LATER, tick=False):
        first = bill_january()
        # Two late calls at half a cent each: the amount moves by a cent, so the rerun voids.
        ingest(call("k-late"), call("k-late-2"))
        assert usage_drift_sweep(lease=None, since=FEB_LATER - timedelta(hours=1))["findings"]
        finding = DriftFinding.objects.get()
    with time_machine.travel(FEB_LATER + timedelta(hours=1), tick=False):
        finding_resolve(
            finding=finding, action="rerun", actor=finance, reason="late usage", dry_run=False
        )
    explanation = explain_key(idempotency_key="k-late")
    first.refresh_from_db()
    new = first.superseded_by
    assert first.status == "void" and explanation.billed
    assert explanation.verdict == (
        f"Billed on invoice {new.number} after a rerun: the event arrived late; drift finding "
        f"#{finding.pk} is resolved (rerun)."
    )


def test_a_billed_event_tells_the_cash_story_of_its_invoice(
    catalog: dict[str, Any], console_user: Any
) -> None:
    from billing.models import Refund
    from billing.payments import refund_record
    from billing.services import invoice_mark_paid

    with time_machine.travel(FEB_LATER, tick=False):
        ingest(call("k-cash"))
        invoice = bill_january()
        invoice_mark_paid(invoice=invoice, actor=None, reason="wire")
        refund_record(
            stripe_refund_id="re_explain",
            charge_id="ch_explain",
            amount=633,
            currency="usd",
            status="succeeded",
            reason="requested_by_customer",
            stripe_created=None,
            customer=invoice.customer,
            invoice=invoice,
            source="test",
        )
    invoice.refresh_from_db()
    steps = {
        s["title"]: s["detail"]
        for s in explanation_dict(explain_key(idempotency_key="k-cash"))["steps"]
    }
    paid = f"{invoice.total / 100:.2f}"
    collected = f"{(invoice.total - 633) / 100:.2f}"
    assert steps["Payment"] == (
        f"Invoice {invoice.number}: charged {paid}, paid {paid}, refunded 6.33, lost in disputes "
        f"0.00, collected {collected} USD."
    )
    assert steps["Refund re_explain"] == "refund processed: 6.33 USD back to the card."
    assert Refund.objects.get().invoice == invoice
    assert not any("credit" in detail.lower() for detail in steps.values())
