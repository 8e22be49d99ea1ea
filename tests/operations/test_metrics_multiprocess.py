"""/metrics under gunicorn with several workers: counters add up across processes."""

from __future__ import annotations

import http.client
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from neruba.servers import gunicorn_server


def _get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", path, headers={**(headers or {}), "Connection": "close"})
    response = conn.getresponse()
    return response.status, response.read().decode()


def _healthz_responses(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "django_http_responses_total_by_status_view_method_total"
                and sample.labels.get("view") == "healthz"
            ):
                total += sample.value
    return total


def test_metrics_add_up_across_gunicorn_workers_and_need_the_token(tmp_path: Path) -> None:
    prom = tmp_path / "prometheus"
    prom.mkdir()
    env = {
        "NERUBA_ENV": "development",
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "DATABASE_URL": f"sqlite:////{tmp_path}/metrics.sqlite3".replace("/////", "////"),
        "METRICS_TOKEN": "multiproc-token-123",
    }
    with gunicorn_server(workers=3, env=env) as base:
        for _ in range(60):
            assert _get(base, "/healthz")[0] == 200
        assert _get(base, "/metrics")[0] == 401
        auth = {"Authorization": "Bearer multiproc-token-123"}
        scrapes = [_get(base, "/metrics", auth) for _ in range(6)]
    assert all(status == 200 for status, _ in scrapes)
    # Whichever worker answered the scrape, it reports every worker's requests.
    assert all(_healthz_responses(text) >= 60 for _, text in scrapes)
    served_by = {p.name.rsplit("_", 1)[-1] for p in prom.glob("counter_*.db")}
    assert len(served_by) >= 2, "several workers should have written counters"
