from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from billing.models import Invoice
from neruba.models import AuditEntry
from tests.webhooks.helpers import invoice_event, make_invoice
from tests.webhooks.test_services import fix_customer_link, mismatched_invoice_event
from webhooks.models import StripeEvent


def run(*args: str) -> tuple[str, bool]:
    out = StringIO()
    try:
        call_command("replay_stripe_events", *args, stdout=out)
    except CommandError:
        return out.getvalue(), False
    return out.getvalue(), True


@pytest.mark.django_db
def test_the_command_is_a_dry_run_unless_told_to_apply(deliver: Any) -> None:
    invoice = mismatched_invoice_event(deliver)
    fix_customer_link(invoice)
    output, ok = run("--failed")
    assert ok and "would be processed" in output and "finalized → paid" in output
    assert "dry run: would process 1 of 1" in output
    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.FINALIZED
    assert StripeEvent.objects.get().attempts == 1


@pytest.mark.django_db
def test_the_command_keeps_going_past_failures_and_exits_non_zero(deliver: Any) -> None:
    broken = mismatched_invoice_event(deliver, event_id="evt_broken")
    fixed = mismatched_invoice_event(deliver, event_id="evt_fixed")
    fix_customer_link(fixed)
    good = make_invoice()
    deliver(*invoice_event(good, type="invoice.payment_failed", id="evt_ok"))

    output, ok = run("--failed", "--apply", "--reason", "link repaired")

    assert not ok
    assert "processed 1 of 2; 1 failed" in output
    assert "evt_broken" in output and "evt_fixed" in output and "evt_ok" not in output
    fixed.refresh_from_db()
    broken.refresh_from_db()
    assert fixed.status == Invoice.Status.PAID and broken.status == Invoice.Status.FINALIZED
    entries = AuditEntry.objects.filter(action="stripe_event.replay")
    assert entries.count() == 2 and {e.reason for e in entries} == {"link repaired"}
    assert {e.actor_label for e in entries} == {"system"}


@pytest.mark.django_db
def test_the_command_selects_by_ids_type_and_since(deliver: Any) -> None:
    invoice = make_invoice()
    deliver(*invoice_event(invoice, type="invoice.paid", id="evt_a"))
    deliver(*invoice_event(invoice, type="invoice.payment_failed", id="evt_b"))
    output, ok = run("--ids", "evt_a", "--apply")
    assert ok and "processed 1 of 1" in output and "evt_b" not in output
    output, ok = run("--type", "invoice.payment_failed", "--since", "2020-01-01T00:00:00")
    assert ok and "evt_b" in output and "evt_a" not in output
    output, ok = run("--dead")
    assert ok and "0 of 0" in output


def test_the_command_refuses_to_select_everything() -> None:
    with pytest.raises(CommandError):
        call_command("replay_stripe_events")
