from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from ingest.models import IngestBatch
from neruba import locks
from operations.charts import stacked_bars
from operations.health import heartbeat_record
from webhooks.models import StripeEvent


def _home(user: User) -> str:
    client = Client()
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_console_home_shows_readiness_backlogs_runs_locks_charts_and_runbooks(console_user) -> None:
    heartbeat_record(name="beat")
    locks.lock_acquire(name="billing-scan", holder="worker-1", ttl=timedelta(minutes=2))
    IngestBatch.objects.create(size=5, accepted=3, duplicate=1, failed=1)
    for n, status in enumerate(["failed", "dead", "dead", "processed"]):
        StripeEvent.objects.create(
            stripe_id=f"evt_{n}",
            type="invoice.paid",
            created=timezone.now(),
            raw_body=b"{}",
            payload={},
            status=status,
        )
    html = _home(console_user("superuser"))
    assert 'id="panel-readiness"' in html and "ready" in html
    assert "Dead webhook events" in html
    assert "?status__exact=dead" in html
    assert 'id="panel-locks"' in html and "worker-1" in html
    assert html.count('class="neruba-chart"') == 2
    assert "Ingest outcomes per hour" in html
    assert "/console/runbooks/webhooks" in html


@pytest.mark.django_db
def test_backlog_counts_are_right_and_link_to_filtered_lists(console_user) -> None:
    for n in range(3):
        StripeEvent.objects.create(
            stripe_id=f"evt_dead_{n}",
            type="charge.refunded",
            created=timezone.now(),
            raw_body=b"{}",
            payload={},
            status="dead",
        )
    html = _home(console_user("Operations"))
    row = html[html.index("Dead webhook events") :]
    assert '<td class="count">3</td>' in row[:200]


@pytest.mark.django_db
def test_staff_without_permissions_sees_readiness_and_runbooks_but_no_data_panels() -> None:
    user = User.objects.create_user("bare", password="x-Password-1", is_staff=True)
    html = _home(user)
    assert 'id="panel-readiness"' in html and 'id="panel-runbooks"' in html
    for panel in ("panel-backlog", "panel-runs", "panel-locks", "panel-ingest", "panel-webhooks"):
        assert f'id="{panel}"' not in html


def test_stacked_bars_scale_to_the_peak_and_escape_labels() -> None:
    svg = stacked_bars(
        ["a<b", "c"], {"accepted": [2, 4], "failed": [2, 0]}, title="t&t", height=100
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "a&lt;b accepted: 2" in svg and "t&amp;t" in svg
    # The tallest bar (4 + 0) fills the drawable height (100 - 16).
    assert 'height="84.0"' in svg


@pytest.mark.django_db
def test_each_role_gets_its_own_shortcuts_and_the_explainer_box(console_user) -> None:
    support = _home(console_user("Support"))
    assert 'id="panel-explain"' in support and 'action="/console/explain/"' in support
    assert "Open ingest rejections to replay" in support
    assert "Release stale locks" not in support
    operations = _home(console_user("Operations"))
    assert "Release stale locks" in operations and "Dead Stripe events to replay" in operations
    finance = _home(console_user("Finance"))
    assert "Credit ledger (filter, export)" in finance and "Release stale locks" not in finance


@pytest.mark.django_db
def test_open_payment_findings_are_a_backlog_row_for_finance(console_user) -> None:
    from billing.models import PaymentCharge, PaymentFinding

    charge = PaymentCharge.objects.create(charge_id="ch_home", currency="USD")
    PaymentFinding.objects.create(
        charge=charge,
        currency="USD",
        collected=1900,
        refunded=1900,
        disputed=1900,
        returned=3800,
        detail="charge ch_home returned 38.00 of 19.00 USD: refunded and lost in dispute",
    )
    html = _home(console_user("Finance"))
    row = html[html.index("Open payment findings") :]
    assert '<td class="count">1</td>' in row[:300]
    assert "/admin/billing/paymentfinding/?status__exact=open" in html
