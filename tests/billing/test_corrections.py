"""Usage corrections with the money following: backfills and voids of invoiced windows become
drift findings, resolved through the rerun paths; amendments count with their new value."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db.models import Sum
from rest_framework.test import APIClient

from billing import services
from billing.drift import finding_resolve, usage_drift_sweep
from billing.models import DriftFinding, Invoice, Price
from billing.usage import WindowRef, usage_between, usage_for_windows
from ingest.corrections import event_amend, event_for_key, event_void
from ingest.models import Backfill, EventCorrection, UsageEvent
from ingest.services import events_ingest
from neruba.models import AuditEntry
from operations.explain import explain_key, explanation_dict
from tests.factories import MetricFactory

pytestmark = pytest.mark.django_db

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
_keys = itertools.count()


def ingest(metric: str, count: int, *, day: int = 5, key: str = "", **props: Any) -> list[str]:
    keys = [key or f"corr-{next(_keys)}" for _ in range(count)]
    payloads = [
        {
            "idempotency_key": k,
            "customer": "acme",
            "metric": metric,
            "timestamp": (JAN + timedelta(days=day, minutes=n)).isoformat(),
            "properties": props,
        }
        for n, k in enumerate(keys)
    ]
    result = events_ingest(payloads=payloads, api_key=None)
    assert result.counts["accepted"] == count, result.results[0].get("error")
    return keys


def _charged(window_id: int) -> int:
    total = (
        Invoice.objects.filter(window_id=window_id)
        .exclude(status="void")
        .aggregate(total=Sum("subtotal"))["total"]
    )
    return int(total or 0)


def test_a_backfill_into_a_paid_window_becomes_a_finding_and_a_supplementary_invoice(
    catalog: dict[str, Any], api: Callable[..., APIClient]
) -> None:
    with time_machine.travel(datetime(2026, 2, 3, 12, tzinfo=UTC), tick=False):
        ingest("api_calls", 100)
        services.billing_scan(trigger="command")
    january = Invoice.objects.get()
    assert january.subtotal == 1000 + 50
    services.invoice_mark_paid(invoice=january, actor=None, reason="wire")

    # Two months on: January is older than the ingest window, only a backfill takes it.
    with time_machine.travel(datetime(2026, 4, 10, 12, tzinfo=UTC), tick=False):
        client = api("ingest", "read")
        old = {
            "idempotency_key": "hist-0",
            "customer": "acme",
            "metric": "api_calls",
            "timestamp": "2026-01-20T00:00:00Z",
            "properties": {},
        }
        refused = client.post("/api/v1/events", old, format="json")
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "timestamp_too_old"

        created = client.post(
            "/api/v1/backfills",
            {"reason": "migration from the old biller", "starts_at": JAN, "ends_at": FEB},
            format="json",
        )
        assert created.status_code == 201, created.content
        backfill_id = created.json()["id"]
        events = [
            dict(old, idempotency_key=f"hist-{i}", timestamp=f"2026-01-{10 + i % 10}T00:00:00Z")
            for i in range(40)
        ]
        events.append(dict(old, idempotency_key="hist-outside", timestamp="2026-02-02T00:00:00Z"))
        events.append(dict(events[0]))  # a duplicate, reported as usual
        loaded = client.post(
            f"/api/v1/events?backfill={backfill_id}",
            json.dumps({"events": events}),
            content_type="application/json",
        )
        assert loaded.status_code == 200, loaded.content
        body = loaded.json()
        assert body["counts"]["accepted"] == 40 and body["counts"]["duplicate"] == 1
        outside = body["results"][40]
        assert outside["outcome"] == "failed"
        assert outside["error"]["code"] == "outside_backfill_window"
        assert UsageEvent.objects.filter(source="backfill", late=True).count() == 40
        assert DriftFinding.objects.count() == 0, "no finding before the backfill closes"

        closed = client.post(f"/api/v1/backfills/{backfill_id}/close")
        assert closed.status_code == 200, closed.content
        answer = closed.json()
        assert answer["status"] == "closed"
        assert answer["counts"] == {"accepted": 40, "duplicate": 1, "conflict": 0, "failed": 1}
        assert (answer["late"], answer["invoiced_windows"], answer["drift_findings"]) == (40, 1, 1)
        again = client.post(f"/api/v1/backfills/{backfill_id}/close")
        assert again.status_code == 409 and again.json()["error"]["code"] == "backfill_closed"
        late = client.post(
            f"/api/v1/events?backfill={backfill_id}",
            json.dumps({"events": [dict(old, idempotency_key="hist-late")]}),
            content_type="application/json",
        )
        assert late.status_code == 409 and late.json()["error"]["code"] == "backfill_closed"

        finding = DriftFinding.objects.get()
        assert (finding.window_id, finding.metric.code) == (january.window_id, "api_calls")
        assert (finding.invoiced_quantity, finding.actual_quantity) == (100, 140)
        assert finding.delta_amount == 20
        result = finding_resolve(
            finding=finding, action="credit", actor=None, reason="backfill", dry_run=False
        )
    assert result.rerun is not None and result.rerun.action == "supplementary"
    supplementary = Invoice.objects.get(kind="supplementary")
    assert supplementary.subtotal == 20
    january.refresh_from_db()
    assert january.status == "paid" and january.subtotal == 1050, "history is not rewritten"
    assert AuditEntry.objects.filter(action__in=["backfill.create", "backfill.close"]).count() == 2
    assert Backfill.objects.get().findings == 1


def test_a_void_in_an_unpaid_window_is_rerun_into_a_void_and_a_superseding_invoice(
    catalog: dict[str, Any], console_user: Any
) -> None:
    with time_machine.travel(datetime(2026, 2, 3, 12, tzinfo=UTC), tick=False):
        keys = ingest("api_calls", 100)
        services.billing_scan(trigger="command")
    january = Invoice.objects.get()
    assert january.status == "finalized" and january.subtotal == 1050
    support = console_user("Support")

    with time_machine.travel(datetime(2026, 2, 4, 12, tzinfo=UTC), tick=False):
        for key in keys[:30]:
            correction = event_void(
                event=event_for_key(idempotency_key=key), actor=support, reason="test tenant"
            )
            assert correction.late, "the period was invoiced"
        assert Invoice.objects.get().subtotal == 1050, "a void touches no invoice"
        counts = usage_drift_sweep(lease=None, since=datetime(2026, 2, 4, 11, tzinfo=UTC))
        assert (counts["full"], counts["windows"], counts["findings"]) == (0, 1, 1)
        finding = DriftFinding.objects.get()
        assert (finding.invoiced_quantity, finding.actual_quantity) == (100, 70)
        result = finding_resolve(
            finding=finding, action="rerun", actor=support, reason="test tenant", dry_run=False
        )

    assert result.rerun is not None and result.rerun.action == "supersede"
    january.refresh_from_db()
    assert january.status == "void"
    replacement = Invoice.objects.exclude(status="void").get()
    assert replacement.supersedes_id == january.pk and replacement.subtotal == 1000 + 35
    assert _charged(january.window_id) == services.window_draft(window=january.window).subtotal


def test_amending_changes_a_max_and_a_unique_count_metric_in_both_aggregations(
    catalog: dict[str, Any],
) -> None:
    peak = MetricFactory(code="peak_gb", aggregation="max", field="gb")
    seats = MetricFactory(code="seats", aggregation="unique_count", field="user")
    plan = catalog["plan"]
    Price.objects.create(plan=plan, metric=peak, model="per_unit", unit_amount=Decimal(2))
    Price.objects.create(plan=plan, metric=seats, model="per_unit", unit_amount=Decimal(3))
    with time_machine.travel(datetime(2026, 1, 20, tzinfo=UTC), tick=False):
        high = ingest("peak_gb", 1, gb=90)[0]
        ingest("peak_gb", 1, day=6, gb=40)
        ingest("seats", 1, user="ann")
        bob = ingest("seats", 1, day=6, user="bob")[0]
        ingest("seats", 1, day=7, user="cy")
        assert _both() == {"peak_gb": Decimal(90), "seats": Decimal(3)}

        event_amend(
            event=event_for_key(idempotency_key=high),
            actor=None,
            reason="unit bug",
            properties={"gb": 9},
        )
        event_amend(
            event=event_for_key(idempotency_key=bob),
            actor=None,
            reason="bob is ann",
            properties={"user": "ann"},
        )
        assert _both() == {"peak_gb": Decimal(40), "seats": Decimal(2)}

        # Amending again replaces the amendment; voiding voids what counts now.
        event_amend(
            event=event_for_key(idempotency_key=high),
            actor=None,
            reason="it was 60",
            properties={"gb": 60},
        )
        assert _both()["peak_gb"] == Decimal(60)
        event_void(event=event_for_key(idempotency_key=high), actor=None, reason="not ours")
        assert _both()["peak_gb"] == Decimal(40)
    original = UsageEvent.objects.get(idempotency_key=high)
    assert original.properties == {"gb": 90} and original.value == 90, "never edited in place"
    assert UsageEvent.objects.filter(amends=original).count() == 2
    assert EventCorrection.objects.filter(event=original).count() == 3


def _both() -> dict[str, Decimal]:
    """The billing pass's SQL aggregation and the ORM one (usage so far, the explainer) on the
    same data must agree."""
    metrics = {
        m.pk: m for m in MetricFactory._meta.model.objects.filter(code__in=["peak_gb", "seats"])
    }
    aggregations = {pk: m.aggregation for pk, m in metrics.items()}
    customer_id = UsageEvent.objects.filter(metric_id__in=metrics).values_list(
        "customer_id", flat=True
    )[0]
    sql = usage_for_windows(
        windows=[
            WindowRef(
                window_id=1,
                customer_id=customer_id,
                period_start=JAN,
                period_end=FEB,
                metric_ids=frozenset(metrics),
            )
        ],
        aggregations=aggregations,
    )[1]
    orm = usage_between(
        customer_id=customer_id, metric_aggregations=aggregations, start=JAN, end=FEB
    )
    assert sql == orm
    return {metrics[pk].code: quantity for pk, quantity in sql.items()}


def test_both_aggregations_leave_voided_events_out_on_the_same_data(
    catalog: dict[str, Any],
) -> None:
    MetricFactory(code="peak_gb", aggregation="max", field="gb")
    MetricFactory(code="seats", aggregation="unique_count", field="user")
    with time_machine.travel(datetime(2026, 1, 20, tzinfo=UTC), tick=False):
        top = ingest("peak_gb", 1, gb=70)[0]
        ingest("peak_gb", 2, day=8, gb=10)
        ann = ingest("seats", 1, user="ann")[0]
        ingest("seats", 2, day=8, user="bob")
        assert _both() == {"peak_gb": Decimal(70), "seats": Decimal(2)}
        event_void(event=event_for_key(idempotency_key=top), actor=None, reason="bad host")
        event_void(event=event_for_key(idempotency_key=ann), actor=None, reason="test user")
        assert _both() == {"peak_gb": Decimal(10), "seats": Decimal(1)}


def test_a_voided_key_can_never_be_reused(
    catalog: dict[str, Any], api: Callable[..., APIClient]
) -> None:
    client = api("ingest", "read", "write")
    with time_machine.travel(datetime(2026, 1, 20, tzinfo=UTC), tick=False):
        event = {
            "idempotency_key": "wrong-1",
            "customer": "acme",
            "metric": "api_calls",
            "timestamp": "2026-01-19T00:00:00Z",
            "properties": {"host": "a"},
        }
        assert client.post("/api/v1/events", event, format="json").status_code == 201
        voided = client.post(
            "/api/v1/events/wrong-1/void", {"reason": "double-counted day"}, format="json"
        )
        assert voided.status_code == 201, voided.content
        assert voided.json()["event"]["counted"] is False

        same = client.post("/api/v1/events", event, format="json")
        assert same.status_code == 200 and same.json()["outcome"] == "duplicate"
        other = client.post("/api/v1/events", dict(event, properties={"host": "b"}), format="json")
        assert other.status_code == 409 and other.json()["outcome"] == "conflict"
        twice = client.post("/api/v1/events/wrong-1/void", {"reason": "again"}, format="json")
        assert twice.status_code == 409 and twice.json()["error"]["code"] == "event_voided"
        amend = client.post(
            "/api/v1/events/wrong-1/amend",
            {"reason": "x", "properties": {"host": "c"}},
            format="json",
        )
        assert amend.status_code == 409
    assert UsageEvent.objects.filter(idempotency_key="wrong-1").count() == 1
    stored = UsageEvent.objects.get(idempotency_key="wrong-1")
    assert stored.voided_at is not None and stored.properties == {"host": "a"}


def test_corrections_are_audited_and_visible_in_the_explainer_and_the_event_lookup(
    catalog: dict[str, Any], api: Callable[..., APIClient]
) -> None:
    client = api("ingest", "read", "write")
    with time_machine.travel(datetime(2026, 2, 3, 12, tzinfo=UTC), tick=False):
        voided, amended = ingest("compute_seconds", 2, seconds=50)
        services.billing_scan(trigger="command")
        answer = client.post(
            f"/api/v1/events/{amended}/amend",
            {"reason": "seconds were milliseconds", "properties": {"seconds": 5}},
            format="json",
        )
        assert answer.status_code == 201, answer.content
        body = answer.json()
        assert body["correction"]["kind"] == "amend"
        assert body["correction"]["before"]["value"].startswith("50")
        assert body["correction"]["after"]["properties"] == {"seconds": 5}
        assert body["correction"]["invoiced_period"] is True
        assert body["event"]["counted_event"]["properties"] == {"seconds": 5}
        assert (
            client.post(
                f"/api/v1/events/{voided}/void", {"reason": "dupe"}, format="json"
            ).status_code
            == 201
        )

    lookup = client.get(f"/api/v1/events/{voided}").json()
    assert lookup["counted"] is False and lookup["event"]["voided_at"] is not None
    assert [c["kind"] for c in lookup["corrections"]] == ["void"]
    assert [h["outcome"] for h in lookup["history"]] == ["accepted", "void"]

    entries = AuditEntry.objects.filter(action__in=["usage_event.void", "usage_event.amend"])
    assert {(e.action, e.reason) for e in entries} == {
        ("usage_event.void", "dupe"),
        ("usage_event.amend", "seconds were milliseconds"),
    }
    assert all(e.customer is not None for e in entries)

    steps = explanation_dict(explain_key(idempotency_key=voided))
    assert "voided" in steps["verdict"].lower()
    assert any("dupe" in s["detail"] for s in steps["steps"])
    amended_steps = explanation_dict(explain_key(idempotency_key=amended))
    assert any(
        "amended" in s["title"].lower() and "seconds were milliseconds" in s["detail"]
        for s in amended_steps["steps"]
    )
