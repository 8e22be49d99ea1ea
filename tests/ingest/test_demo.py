from __future__ import annotations

from typing import Any

from ingest.demo import seed_events
from ingest.models import IngestBatch, IngestRejection, UsageEvent
from tests.factories import CustomerFactory, MetricFactory


def test_seed_events_ingests_a_realistic_stream_once(db: None, frozen: Any) -> None:
    for external_id in ("acme", "globex", "initech"):
        CustomerFactory(external_id=external_id)
    MetricFactory(code="api_calls", aggregation="count")
    MetricFactory(code="compute_seconds", aggregation="sum", field="seconds")
    MetricFactory(code="storage_gb", aggregation="max", field="gb")
    MetricFactory(code="active_users", aggregation="unique_count", field="user_id")

    counts = seed_events(events=120)

    assert counts == {
        "events_accepted": 120,
        "events_duplicate": 12,
        "events_conflict": 1,
        "events_failed": 5,
    }
    assert set(UsageEvent.objects.values_list("source", flat=True)) == {"demo"}
    assert set(UsageEvent.objects.values_list("metric__code", flat=True)) == {
        "api_calls",
        "compute_seconds",
        "storage_gb",
        "active_users",
    }
    codes = set(IngestRejection.objects.values_list("error_code", flat=True))
    assert codes == {
        "conflict",
        "unknown_customer",
        "unknown_metric",
        "invalid_value",
        "timestamp_too_old",
        "missing_field",
    }
    batches = IngestBatch.objects.count()

    assert seed_events(events=120)["events_accepted"] == 0
    assert UsageEvent.objects.count() == 120 and IngestBatch.objects.count() == batches
