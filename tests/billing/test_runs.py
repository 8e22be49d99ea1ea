from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from billing import services
from billing.models import BillingRun, BillingWindow, Invoice, ProviderSync
from ingest.models import InvoicedWatermark
from neruba import locks
from tests.billing.helpers import add_events
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_scan_bills_each_closed_window_after_the_grace_period(catalog: dict[str, Any]) -> None:
    customer, metrics = catalog["customer"], catalog["metrics"]
    add_events(
        customer=customer, metric=metrics["api_calls"], timestamps=[JAN + timedelta(days=3)] * 10
    )
    add_events(
        customer=customer,
        metric=metrics["compute_seconds"],
        timestamps=[JAN + timedelta(days=4)] * 3,
        value="50",
    )
    add_events(customer=customer, metric=metrics["api_calls"], timestamps=[FEB])  # next window

    early = services.billing_scan(trigger="command", as_of=FEB + timedelta(minutes=30))
    assert early.status == "succeeded" and early.scanned == 0

    run = services.billing_scan(trigger="command", as_of=FEB + timedelta(hours=2))
    assert (run.status, run.scanned, run.invoiced, run.failed) == ("succeeded", 1, 1, 0)
    invoice = Invoice.objects.get()
    lines = {line.description: line for line in invoice.lines.all()}
    # base 1000 + 10 calls x 0.5 = 5 + 150 seconds graduated: 100 x 1 + 50 x 0.5 = 125
    assert lines["Pro base fee"].amount == 1000
    assert lines["Api Calls"].amount == 5
    assert lines["Compute Seconds"].amount == 125
    assert (invoice.subtotal, invoice.total, invoice.currency) == (1130, 1130, "USD")
    assert invoice.number == f"NER-{invoice.issued_at.year}-000001"
    assert (invoice.period_start, invoice.period_end) == (JAN, FEB)
    assert invoice.window.status == BillingWindow.Status.INVOICED
    assert InvoicedWatermark.objects.get(customer=customer).invoiced_through == FEB
    assert ProviderSync.objects.filter(invoice=invoice, action="push").exists()
    assert locks.lock_acquire(name=services.BILLING_LOCK, holder="next") is not None


def test_a_repeated_scan_is_a_no_op(catalog: dict[str, Any]) -> None:
    as_of = MAR + timedelta(hours=2)
    first = services.billing_scan(trigger="command", as_of=as_of)
    second = services.billing_scan(trigger="command", as_of=as_of)
    assert first.invoiced == 2
    assert (second.scanned, second.invoiced, second.status) == (0, 0, "succeeded")
    assert Invoice.objects.count() == 2


def test_a_scan_that_finds_the_lock_held_records_lock_held_and_writes_nothing(
    catalog: dict[str, Any],
) -> None:
    assert locks.lock_acquire(name=services.BILLING_LOCK, holder="someone else") is not None
    run = services.billing_scan(trigger="beat", as_of=MAR)
    assert run.status == BillingRun.Status.LOCK_HELD and run.finished_at is not None
    assert not Invoice.objects.exists()


def test_catch_up_after_three_months_down_bills_every_missed_window_oldest_first(
    catalog: dict[str, Any],
) -> None:
    daily = SubscriptionFactory(
        plan__code="daily", plan__interval="day", plan__base_amount=10, started_at=JAN
    )
    with time_machine.travel(datetime(2026, 4, 1, 3, tzinfo=UTC), tick=False):
        run = services.billing_scan(trigger="beat")
    assert run.invoiced == 3 + 90 and run.status == "succeeded"
    invoices = list(Invoice.objects.order_by("number"))
    ends = [i.period_end for i in invoices]
    assert ends == sorted(ends), "billed oldest first"
    assert {i.period_start for i in invoices if i.subscription == catalog["subscription"]} == {
        JAN,
        FEB,
        MAR,
    }
    assert Invoice.objects.filter(subscription=daily).count() == 90


def test_a_partial_first_and_last_window_are_billed_with_the_full_base_fee(
    catalog: dict[str, Any],
) -> None:
    sub = SubscriptionFactory(
        customer__external_id="partial",
        plan=catalog["plan"],
        started_at=JAN + timedelta(days=20),
        ended_at=FEB + timedelta(days=10),
    )
    services.billing_scan(trigger="command", as_of=MAR + timedelta(days=5))
    windows = list(BillingWindow.objects.filter(subscription=sub).order_by("period_start"))
    assert [(w.period_start, w.period_end) for w in windows] == [
        (JAN + timedelta(days=20), FEB),
        (FEB, FEB + timedelta(days=10)),
    ]
    assert [i.subtotal for i in Invoice.objects.filter(subscription=sub)] == [1000, 1000]


def test_credits_are_consumed_at_finalization_without_going_below_zero(
    catalog: dict[str, Any],
) -> None:
    from billing.ledger import credit_balance, credit_grant

    customer = catalog["customer"]
    credit_grant(customer=customer, amount=1500, reason_code="goodwill", actor=None, reason="sorry")
    services.billing_scan(trigger="command", as_of=MAR + timedelta(hours=2))
    jan, feb = Invoice.objects.order_by("period_start")
    assert (jan.subtotal, jan.credits_applied, jan.total) == (1000, 1000, 0)
    assert (feb.subtotal, feb.credits_applied, feb.total) == (1000, 500, 500)
    assert credit_balance(customer=customer, currency="USD") == 0
    assert jan.credit_entries.get().amount == -1000


def test_a_dry_run_scan_writes_no_invoice(catalog: dict[str, Any]) -> None:
    run = services.billing_scan(trigger="command", as_of=MAR + timedelta(hours=2), dry_run=True)
    assert run.dry_run and run.invoiced == 2 and run.invoiced_amount == 2000
    assert not Invoice.objects.exists()


def test_a_window_that_fails_to_price_is_recorded_and_the_rest_are_billed(
    catalog: dict[str, Any],
) -> None:
    from billing.models import Price

    broken = SubscriptionFactory(customer__external_id="broken", plan__code="broken")
    Price.objects.create(
        plan=broken.plan, metric=catalog["metrics"]["api_calls"], model="graduated", tiers="oops"
    )
    add_events(customer=broken.customer, metric=catalog["metrics"]["api_calls"], timestamps=[JAN])
    run = services.billing_scan(trigger="command", as_of=FEB + timedelta(hours=2))
    assert (run.status, run.invoiced, run.failed) == ("partial", 1, 1)
    window = BillingWindow.objects.get(subscription=broken)
    assert window.status == "failed" and "AttributeError" in window.last_error
    assert run.errors[0]["window"] == window.pk
    again = services.billing_scan(trigger="command", as_of=FEB + timedelta(hours=3))
    assert (again.scanned, again.failed) == (1, 1), "a failed window is retried by the next scan"


def test_billing_advances_the_ingest_watermark_forward_only_for_many_customers(
    catalog: dict[str, Any],
) -> None:
    for n in range(3):
        SubscriptionFactory(customer__external_id=f"wm-{n}", plan=catalog["plan"], started_at=JAN)
    later = SubscriptionFactory(
        customer__external_id="wm-ahead", plan=catalog["plan"], started_at=JAN
    )
    InvoicedWatermark.objects.create(customer=later.customer, invoiced_through=MAR)
    services.billing_scan(trigger="command", as_of=FEB + timedelta(hours=2))
    marks = dict(InvoicedWatermark.objects.values_list("customer__external_id", "invoiced_through"))
    assert marks == {"acme": FEB, "wm-0": FEB, "wm-1": FEB, "wm-2": FEB, "wm-ahead": MAR}


def test_the_beat_task_runs_a_scan_named_by_string(catalog: dict[str, Any]) -> None:
    from billing import tasks
    from neruba.celery import _beat_schedule

    entry = _beat_schedule()["billing-scan"]
    assert entry["task"] == "billing.scan" == tasks.billing_scan.name
    assert entry["schedule"] == 60.0
    with time_machine.travel(MAR + timedelta(hours=2), tick=False):
        tasks.billing_scan.delay()
    run = BillingRun.objects.get()
    assert (run.trigger, run.status, run.invoiced) == ("beat", "succeeded", 2)


def test_usage_is_aggregated_in_the_database_by_each_metrics_aggregation(
    catalog: dict[str, Any],
) -> None:
    from billing.models import Price
    from tests.factories import MetricFactory

    plan, customer = catalog["plan"], catalog["customer"]
    peak = MetricFactory(code="storage_gb", aggregation="max", field="gb")
    users = MetricFactory(code="active_users", aggregation="unique_count", field="user_id")
    Price.objects.create(plan=plan, metric=peak, unit_amount=Decimal("10"))
    Price.objects.create(plan=plan, metric=users, unit_amount=Decimal("100"))
    day = JAN + timedelta(days=1)
    add_events(customer=customer, metric=peak, timestamps=[day], value="3.5")
    add_events(customer=customer, metric=peak, timestamps=[day], value="7.25")
    for user in ["u1", "u2", "u1", "u3", "u2"]:
        add_events(customer=customer, metric=users, timestamps=[day], distinct=user)
    add_events(customer=customer, metric=users, timestamps=[FEB], distinct="u9")  # next window
    add_events(
        customer=customer,
        metric=catalog["metrics"]["compute_seconds"],
        timestamps=[day] * 2,
        value="0.25",
    )
    services.billing_scan(trigger="command", as_of=FEB + timedelta(hours=2))
    lines = {line.metric.code: line for line in Invoice.objects.get().lines.all() if line.metric}
    assert lines["storage_gb"].quantity == Decimal("7.25") and lines["storage_gb"].amount == 72
    assert lines["active_users"].quantity == 3 and lines["active_users"].amount == 300
    assert (
        lines["compute_seconds"].quantity == Decimal("0.5") and lines["compute_seconds"].amount == 0
    )
    assert lines["api_calls"].quantity == 0


def test_a_chunk_read_by_customer_id_range_bills_only_its_own_customers(
    catalog: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large chunks filter usage on the customers' id range; a customer inside the range but
    without a window in the chunk (here: no subscription at all) must not leak into anyone's
    invoice."""
    from billing import usage
    from tests.factories import CustomerFactory

    monkeypatch.setattr(usage, "RANGE_FILTER_MIN", 2)  # the threshold, lowered to three rows
    calls = catalog["metrics"]["api_calls"]
    first = catalog["customer"]
    between = CustomerFactory(external_id="between")
    last = CustomerFactory(external_id="last")
    SubscriptionFactory(customer=last, plan=catalog["plan"], started_at=JAN)
    assert first.pk < between.pk < last.pk
    day = JAN + timedelta(days=2)
    add_events(customer=first, metric=calls, timestamps=[day] * 2)
    add_events(customer=between, metric=calls, timestamps=[day] * 7)
    add_events(customer=last, metric=calls, timestamps=[day] * 4)

    run = services.billing_scan(trigger="command", as_of=FEB + timedelta(hours=2))

    assert (run.scanned, run.invoiced, run.failed) == (2, 2, 0)
    quantities = {
        invoice.customer_id: next(
            line.quantity for line in invoice.lines.all() if line.metric_id == calls.pk
        )
        for invoice in Invoice.objects.all()
    }
    assert quantities == {first.pk: 2, last.pk: 4}
