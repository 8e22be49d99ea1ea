from __future__ import annotations

import pytest
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from neruba.metrics import INGEST_ITEMS
from webhooks.models import StripeEvent


def _families(body: bytes) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        families[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def _metrics_setting(token: str) -> dict[str, object]:
    from django.conf import settings

    return {**settings.NERUBA, "METRICS_TOKEN": token}


@pytest.mark.django_db
def test_metrics_output_parses_and_carries_neruba_counters_and_backlog_gauges() -> None:
    INGEST_ITEMS.labels(outcome="accepted", surface="api").inc(3)
    StripeEvent.objects.create(
        stripe_id="evt_failed_1",
        type="invoice.paid",
        created="2026-11-01T00:00:00Z",
        raw_body=b"{}",
        payload={},
        status="failed",
    )
    response = Client().get("/metrics")
    assert response.status_code == 200
    families = _families(response.content)
    accepted = [
        v
        for name, labels, v in families["neruba_ingest_items"]
        if name == "neruba_ingest_items_total"
        and labels == {"outcome": "accepted", "surface": "api"}
    ]
    assert accepted and accepted[0] >= 3
    backlog = {labels["status"]: v for _, labels, v in families["neruba_webhook_events_backlog"]}
    assert backlog["failed"] == 1 and backlog["dead"] == 0
    assert families["neruba_scheduler_heartbeat_age_seconds"][0][2] == -1
    assert families["neruba_backlog_scrape_ok"][0][2] == 1


@pytest.mark.django_db
def test_metrics_require_the_bearer_token_when_one_is_set() -> None:
    with override_settings(NERUBA=_metrics_setting("s3cret-metrics-token")):
        client = Client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        ok = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token")
        assert ok.status_code == 200
        assert "neruba_backlog_scrape_ok" in _families(ok.content)


def test_a_celery_worker_serves_its_metrics_on_the_configured_port() -> None:
    import urllib.request

    from neruba.celery import _serve_worker_metrics
    from neruba.metrics import REPLAYS
    from neruba.servers import free_port

    port = free_port()
    REPLAYS.labels(kind="webhook", outcome="processed").inc()
    with override_settings(NERUBA=_metrics_setting("") | {"NERUBA_WORKER_METRICS_PORT": port}):
        _serve_worker_metrics()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    samples = _families(body)["neruba_replays"]
    assert any(
        labels == {"kind": "webhook", "outcome": "processed"} and value >= 1
        for _, labels, value in samples
    )
