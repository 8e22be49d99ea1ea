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
from tests import factories
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
    assert "Dead Stripe events" in html
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
    row = html[html.index('id="queue-dead_webhooks"') :]
    assert '<td class="count">3</td>' in row[:400]


@pytest.mark.django_db
def test_staff_without_permissions_sees_readiness_and_runbooks_but_no_data_panels() -> None:
    user = User.objects.create_user("bare", password="x-Password-1", is_staff=True)
    html = _home(user)
    assert 'id="panel-readiness"' in html and 'id="panel-runbooks"' in html
    for panel in ("queue-", "panel-runs", "panel-locks", "panel-ingest", "panel-webhooks"):
        assert f'id="{panel}"' not in html


def test_stacked_bars_scale_to_the_peak_and_escape_labels() -> None:
    svg = stacked_bars(
        ["a<b", "c"], {"accepted": [2, 4], "failed": [2, 0]}, title="t&t", height=100
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "a&lt;b accepted: 2" in svg and "t&amp;t" in svg
    # Time labels under the bars and the peak right-aligned against the axis (never clipped).
    assert 'text-anchor="middle" fill="#555">a&lt;b</text>' in svg
    assert 'text-anchor="end">4</text>' in svg
    # The tallest bar (4 + 0) fills the drawable height (100 - 16).
    assert 'height="84.0"' in svg


@pytest.mark.django_db
def test_each_role_gets_its_own_shortcuts_and_the_explainer_box(console_user) -> None:
    support = _home(console_user("Support"))
    assert 'id="panel-explain"' in support and 'action="/console/explain/"' in support
    assert "Open ingest rejections to replay" in support
    assert "Release stale locks" not in support
    # Support cannot resolve findings or replay webhooks: neither is offered.
    assert "Open drift findings to resolve" not in support
    assert "Dead Stripe events to replay" not in support
    operations = _home(console_user("Operations"))
    assert "Release stale locks" in operations and "Dead Stripe events to replay" in operations
    finance = _home(console_user("Finance"))
    assert "Credit ledger (filter, export)" in finance and "Release stale locks" not in finance
    assert "ingest rejections to replay" not in finance


def _queue_keys(html: str) -> set[str]:
    import re

    return set(re.findall(r'id="queue-([a-z_]+)"', html))


@pytest.mark.django_db
def test_the_work_queue_shows_each_role_only_what_it_can_act_on(console_user) -> None:
    heartbeat_record(name="beat")
    assert _queue_keys(_home(console_user("Support"))) == {"open_rejections"}
    assert _queue_keys(_home(console_user("Finance"))) == {
        "usage_findings",
        "payment_findings",
        "over_returned_charges",
        "awaiting_payment",
        "open_disputes",
    }
    assert _queue_keys(_home(console_user("Operations"))) == {
        "dead_webhooks",
        "failed_webhooks",
        "windows_unbilled",
        "provider_outbox",
        "expired_locks",
        "refused_webhooks",
        "outbound_waiting",
        "outbound_dead",
    }


@pytest.mark.django_db
def test_windows_due_but_unbilled_count_those_no_scan_has_written_yet(
    catalog, console_user
) -> None:
    from billing.models import BillingWindow
    from operations.queues import windows_unbilled

    heartbeat_record(name="beat")
    now = timezone.now()
    before = windows_unbilled(now)
    daily = factories.PlanFactory(code="q-daily", interval="day", base_amount=100)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=5)
    factories.SubscriptionFactory(customer=catalog["customer"], plan=daily, started_at=start)
    assert not BillingWindow.objects.filter(subscription__plan=daily).exists()
    # Five closed days past the grace (today's window is still open), none written as rows.
    assert windows_unbilled(now + timedelta(hours=2)) - before == 5
    html = _home(console_user("Operations"))
    row = html[html.index('id="queue-windows_unbilled"') - 30 :][:800]
    assert 'class="tone-alert"' in row


@pytest.mark.django_db
def test_dry_runs_are_listed_apart_and_marked(console_user) -> None:
    from billing.models import BillingRun

    heartbeat_record(name="beat")
    now = timezone.now()
    BillingRun.objects.create(
        trigger="command", as_of=now, dry_run=True, status="succeeded", scanned=7, invoiced=7
    )
    html = _home(console_user("Operations"))
    runs = html[html.index('id="panel-runs"') : html.index('id="panel-dry-runs"')]
    assert "No billing runs yet." in runs
    dry = html[html.index('id="panel-dry-runs"') :]
    assert "DRY RUN" in dry[:2000] and "nothing was written" in dry[:200]


@pytest.mark.django_db
def test_a_stale_heartbeat_puts_a_red_banner_with_the_runbook_link_on_the_home_page(
    console_user,
) -> None:
    from operations.models import Heartbeat

    heartbeat_record(name="beat")
    Heartbeat.objects.update(seen_at=timezone.now() - timedelta(hours=1))
    support = console_user("Support")
    html = _home(support)
    banner = html[html.index('id="readiness-banner"') :][:1000]
    assert "scheduler" in banner
    assert "/console/runbooks/billing-runs#scheduler-heartbeat" in banner
    heartbeat_record(name="beat")
    assert 'id="readiness-banner"' not in _home(support)


@pytest.mark.django_db
def test_last_successful_scan_age_is_on_the_home_page(console_user) -> None:
    from billing.models import BillingRun

    heartbeat_record(name="beat")
    now = timezone.now()
    run = BillingRun.objects.create(
        trigger="beat",
        as_of=now,
        status="succeeded",
        started_at=now - timedelta(minutes=7),
        finished_at=now - timedelta(minutes=6),
    )
    html = _home(console_user("Operations"))
    row = html[html.index('id="queue-last-scan"') :][:600]
    assert f"run #{run.pk}, 6 min ago" in row


@pytest.mark.django_db
def test_recent_actions_come_from_the_audit_log_so_guarded_actions_show(console_user) -> None:
    from neruba import audit

    audit.record(
        actor=None,
        action="invoice.mark_paid",
        target_type="billing.invoice",
        target_id="1",
        reason="wire received",
    )
    html = _home(console_user("Finance"))
    recent = html[html.index('id="panel-recent"') :][:2000]
    assert "invoice.mark_paid" in recent and "wire received" in recent


@pytest.mark.django_db
def test_refused_webhooks_and_the_configured_secret_hints_show_on_the_operations_home(
    console_user, settings
) -> None:
    import re

    heartbeat_record(name="beat")
    user = console_user("Operations")

    def refused(html: str) -> int:
        row = html[html.index('id="queue-refused_webhooks"') :]
        return int(re.search(r'<td class="count">(\d+)</td>', row).group(1))

    before = refused(_home(user))
    response = Client().post(
        "/webhooks/stripe",
        data=b"{}",
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE="t=1,v1=deadbeef",
    )
    assert response.status_code == 400
    html = _home(user)
    assert refused(html) == before + 1
    secret = settings.NERUBA["STRIPE_WEBHOOK_SECRETS"][0]
    assert f"secret#1 …{secret[-4:]}" in html[html.index('id="webhook-secrets"') :][:400]
    assert secret not in html


@pytest.mark.django_db
def test_console_home_and_metrics_show_which_beat_is_active_and_degraded_in_red(
    console_user, client
) -> None:
    from neruba.beat import BEAT_LOCK

    html = _home(console_user("superuser"))
    assert '<span class="degraded">DEGRADED</span>' in html, "no heartbeat yet"
    assert '<tr class="failing"><th>scheduler</th>' in html
    assert '<tr id="beat-active" class="failing">' in html
    assert "no celery beat holds the scheduling lease" in html
    assert "#panel-readiness .degraded" in html and "color: #ba2121" in html

    heartbeat_record(name="beat")
    locks.lock_acquire(name=BEAT_LOCK, holder="beat:host-a:41:cafe", ttl=timedelta(seconds=30))
    html = _home(console_user("superuser", username="second"))
    assert '<span class="ready">ready</span>' in html
    assert '<tr id="beat-active"><th>active beat</th>' in html and "beat:host-a:41:cafe" in html
    metrics = client.get("/metrics").content.decode()
    assert 'neruba_beat_active{holder="beat:host-a:41:cafe"} 1.0' in metrics
    assert (
        "active beat beat:host-a:41:cafe"
        in client.get("/readyz").json()["checks"]["scheduler"]["detail"]
    )


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
