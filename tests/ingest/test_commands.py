from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from ingest.models import IngestRejection, UsageEvent
from ingest.services import events_ingest
from neruba.models import AuditEntry
from tests.factories import CustomerFactory
from tests.ingest.conftest import event


@pytest.fixture
def rejections(meters: dict[str, Any], frozen: Any) -> dict[str, IngestRejection]:
    events_ingest(
        payloads=[
            event("k-umbrella", customer="umbrella"),
            event("k-hooli", customer="hooli"),
            event("k-metric", metric="gpu_hours"),
        ],
        api_key=None,
    )
    return {r.idempotency_key: r for r in IngestRejection.objects.all()}


def run(*args: str) -> tuple[str, str, CommandError | None]:
    out, err = StringIO(), StringIO()
    try:
        call_command("replay_ingest", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


def test_replay_ingest_is_a_dry_run_without_apply(rejections: dict[str, Any]) -> None:
    CustomerFactory(external_id="umbrella")
    out, _, error = run("--ids", str(rejections["k-umbrella"].pk))
    assert error is None
    assert "would be stored" in out
    assert "dry run: 1 selected, would replay 1" in out and "nothing was changed" in out
    assert not UsageEvent.objects.exists()
    assert IngestRejection.objects.filter(status="open").count() == 3


def test_replay_ingest_apply_replays_by_code_and_audits(rejections: dict[str, Any]) -> None:
    CustomerFactory(external_id="umbrella")
    CustomerFactory(external_id="hooli")
    out, _, error = run("--code", "unknown_customer", "--apply", "--reason", "customers synced")
    assert error is None
    assert "apply: 2 selected, replayed 2, 0 already stored, 0 still failing, 0 errors" in out
    assert set(UsageEvent.objects.values_list("idempotency_key", flat=True)) == {
        "k-umbrella",
        "k-hooli",
    }
    assert IngestRejection.objects.get(idempotency_key="k-metric").status == "open"
    reasons = set(
        AuditEntry.objects.filter(action="ingest_rejection.replay").values_list("reason", flat=True)
    )
    assert reasons == {"customers synced"}


def test_replay_ingest_keeps_going_past_failures_and_exits_non_zero(
    rejections: dict[str, Any],
) -> None:
    CustomerFactory(external_id="hooli")  # umbrella still missing
    out, _, error = run("--code", "unknown_customer", "--apply")
    assert error is not None and "1 rejection(s) could not be replayed" in str(error)
    assert "[1/2]" in out and "[2/2]" in out
    assert "replayed 1, 0 already stored, 1 still failing" in out
    assert IngestRejection.objects.get(idempotency_key="k-umbrella").replay_attempts == 1
    assert IngestRejection.objects.get(idempotency_key="k-hooli").status == "replayed"


def test_replay_ingest_since_limits_the_selection(rejections: dict[str, Any], frozen: Any) -> None:
    CustomerFactory(external_id="umbrella")
    out, _, _ = run("--code", "unknown_customer", "--since", "2026-03-10T12:00:01Z")
    assert "0 selected" in out
    out, _, _ = run("--code", "unknown_customer", "--since", "2026-03-10T12:00:00+00:00")
    assert "2 selected" in out


def test_replay_ingest_reports_unknown_ids(rejections: dict[str, Any]) -> None:
    _, err, _ = run("--ids", "999999")
    assert "rejection 999999: not found or not an open failure" in err


def test_replay_ingest_refuses_a_since_without_offset(rejections: dict[str, Any]) -> None:
    with pytest.raises(CommandError):
        call_command("replay_ingest", "--code", "x", "--since", "2026-03-10")
