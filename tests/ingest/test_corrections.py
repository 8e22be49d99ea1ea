"""Backfills and event corrections from the ingest side: the commands, the API's guards and the
bulk void."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from ingest.backfills import backfill_create
from ingest.corrections import events_void_bulk
from ingest.models import Backfill, EventCorrection, IngestBatch, UsageEvent
from ingest.services import events_ingest
from neruba.models import AuditEntry

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 10, 12, tzinfo=UTC)
MARCH = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _june() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


def _event(key: str, when: datetime, **props: Any) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "customer": "acme",
        "metric": "api_calls",
        "timestamp": when.isoformat(),
        "properties": props,
    }


def _ndjson(tmp_path: Path, events: list[Any]) -> Path:
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in events) + "\n")
    return path


def test_backfill_events_is_a_dry_run_by_default_and_keeps_nothing(
    catalog: dict[str, Any], tmp_path: Path
) -> None:
    path = _ndjson(tmp_path, [_event(f"h-{i}", MARCH + timedelta(hours=i)) for i in range(5)])
    out, err = StringIO(), StringIO()

    call_command("backfill_events", file=str(path), reason="old biller", stdout=out, stderr=err)

    assert "dry run" in out.getvalue() and "5 accepted" in out.getvalue()
    assert "5/5 events" in err.getvalue(), "progress is shown"
    assert not UsageEvent.objects.exists() and not Backfill.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="backfill").exists()


def test_backfill_events_with_apply_loads_history_closes_the_backfill_and_reports_failures(
    catalog: dict[str, Any], tmp_path: Path
) -> None:
    events: list[Any] = [_event(f"h-{i}", MARCH + timedelta(hours=i)) for i in range(5)]
    events.append(_event("h-unknown", MARCH, region="x") | {"customer": "nobody"})
    events.append("{not json")
    path = _ndjson(tmp_path, events)
    out = StringIO()

    with pytest.raises(CommandError, match="2 event"):
        call_command(
            "backfill_events",
            file=str(path),
            reason="old biller",
            apply=True,
            batch_size=2,
            stdout=out,
            stderr=StringIO(),
        )

    assert "5 accepted" in out.getvalue() and "1 failed, 1 unparseable" in out.getvalue()
    backfill = Backfill.objects.get()
    assert backfill.status == "closed" and backfill.source == "command"
    assert (backfill.accepted, backfill.failed) == (5, 1)
    assert UsageEvent.objects.filter(source="backfill").count() == 5
    assert IngestBatch.objects.filter(backfill=backfill).count() == 3


def test_a_backfill_refuses_an_empty_or_future_window_and_events_outside_it(
    catalog: dict[str, Any], api: Callable[..., APIClient]
) -> None:
    client = api("ingest")
    empty = client.post(
        "/api/v1/backfills",
        {"reason": "x", "starts_at": MARCH, "ends_at": MARCH},
        format="json",
    )
    assert empty.status_code == 400 and "ends_at" in empty.json()["error"]["details"]
    future = client.post(
        "/api/v1/backfills",
        {"reason": "x", "starts_at": MARCH, "ends_at": NOW + timedelta(days=1)},
        format="json",
    )
    assert future.status_code == 400
    backfill = backfill_create(
        reason="march", starts_at=MARCH, ends_at=MARCH + timedelta(days=31), actor=None
    )
    before = client.post(
        f"/api/v1/events?backfill={backfill.pk}",
        _event("early", MARCH - timedelta(seconds=1)),
        format="json",
    )
    assert before.status_code == 422
    assert before.json()["error"]["code"] == "outside_backfill_window"
    unknown = client.post("/api/v1/events?backfill=999999", _event("x", MARCH), format="json")
    assert unknown.status_code == 404


def test_a_read_only_key_can_neither_void_nor_open_a_backfill(
    catalog: dict[str, Any], api: Callable[..., APIClient]
) -> None:
    events_ingest(payloads=[_event("k-1", NOW - timedelta(hours=1))], api_key=None)
    reader = api("read")
    voided = reader.post("/api/v1/events/k-1/void", {"reason": "x"}, format="json")
    assert voided.status_code == 403 and voided.json()["error"]["code"] == "missing_scope"
    opened = reader.post(
        "/api/v1/backfills",
        {"reason": "x", "starts_at": MARCH, "ends_at": NOW},
        format="json",
    )
    assert opened.status_code == 403
    assert UsageEvent.objects.get().voided_at is None
    assert reader.get("/api/v1/events/k-1").json()["counted"] is True


def test_a_key_ending_in_void_is_still_looked_up_by_get(
    catalog: dict[str, Any], api: Callable[..., APIClient]
) -> None:
    events_ingest(payloads=[_event("jobs/void", NOW - timedelta(hours=1))], api_key=None)
    found = api("read").get("/api/v1/events/jobs/void")
    assert found.status_code == 200 and found.json()["idempotency_key"] == "jobs/void"


def test_bulk_void_counts_first_then_voids_a_range_in_chunks_with_progress(
    catalog: dict[str, Any], api: Callable[..., APIClient]
) -> None:
    start = NOW - timedelta(days=2)
    events_ingest(
        payloads=[_event(f"b-{i}", start + timedelta(minutes=i)) for i in range(25)],
        api_key=None,
    )
    client = api("write")
    body = {
        "customer": "acme",
        "metric": "api_calls",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(minutes=20)).isoformat(),
    }
    preview = client.post("/api/v1/event-voids", body, format="json")
    assert preview.status_code == 200 and preview.json()["matched"] == 20
    assert preview.json()["dry_run"] is True and not EventCorrection.objects.exists()

    err, out = StringIO(), StringIO()
    call_command(
        "void_events",
        customer="acme",
        metric="api_calls",
        starts_at=start,
        ends_at=start + timedelta(minutes=20),
        reason="test tenant traffic",
        apply=True,
        chunk_size=8,
        stdout=out,
        stderr=err,
    )
    assert "voided 20 of 20" in out.getvalue()
    assert err.getvalue().count("voided ") == 3, "one progress line per chunk"
    assert UsageEvent.objects.filter(voided_at__isnull=False).count() == 20
    corrections = EventCorrection.objects.all()
    assert corrections.count() == 20 and len({c.bulk_id for c in corrections}) == 1
    assert corrections[0].before["counted"] is True and corrections[0].reason
    entry = AuditEntry.objects.get(action="usage_event.void_bulk")
    assert entry.after["bulk_id"] == corrections[0].bulk_id

    again = events_void_bulk(
        customer=catalog["customer"],
        metric=catalog["metrics"]["api_calls"],
        starts_at=start,
        ends_at=start + timedelta(minutes=20),
        actor=None,
        reason="again",
        dry_run=False,
    )
    assert (again.matched, again.voided) == (0, 0), "voided events are never voided twice"
