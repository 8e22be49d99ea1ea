from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from rest_framework.test import APIClient

from tests.factories import CustomerFactory, MetricFactory

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def frozen() -> Any:
    """Ingest checks timestamps against now; tests pin now so the window is deterministic."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def meters(db: None) -> dict[str, Any]:
    return {
        "customer": CustomerFactory(external_id="acme", name="Acme"),
        "other": CustomerFactory(external_id="globex", name="Globex"),
        "api_calls": MetricFactory(code="api_calls", aggregation="count"),
        "compute_seconds": MetricFactory(
            code="compute_seconds", aggregation="sum", field="seconds"
        ),
        "storage_gb": MetricFactory(code="storage_gb", aggregation="max", field="gb"),
        "active_users": MetricFactory(
            code="active_users", aggregation="unique_count", field="user_id"
        ),
    }


@pytest.fixture
def ingest_client(api: Callable[..., APIClient], meters: dict[str, Any], frozen: Any) -> APIClient:
    return api("ingest", "read")


def event(key: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "idempotency_key": key,
        "customer": "acme",
        "metric": "api_calls",
        "timestamp": "2026-03-10T11:00:00Z",
        "properties": {"endpoint": "/v1/search"},
    }
    data.update(overrides)
    return data
