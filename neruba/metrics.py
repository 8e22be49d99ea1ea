"""Neruba's own Prometheus metrics, defined once here so every app increments the same series.

Counters never reset on a schedule. Under gunicorn with several workers (and on the Celery
worker) set PROMETHEUS_MULTIPROC_DIR so prometheus_client aggregates across processes.
Backlog gauges are computed from the database at scrape time by ``operations``.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Ingest series carry ``surface``: the way the request came in (api, openmeter, lago) or replay.
INGEST_ITEMS = Counter(
    "neruba_ingest_items_total", "Ingested items by outcome and surface.", ["outcome", "surface"]
)
INGEST_BATCH_SIZE = Histogram(
    "neruba_ingest_batch_size",
    "Items per ingest request.",
    ["surface"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 5000),
)
INGEST_LATENCY = Histogram(
    "neruba_ingest_request_seconds",
    "Ingest request handling time.",
    ["surface"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
INGEST_REJECTIONS = Counter(
    "neruba_ingest_rejections_total",
    "Failed or conflicting items by error code and surface.",
    ["code", "surface"],
)
WEBHOOK_RECEIPTS = Counter(
    "neruba_webhook_receipts_total",
    "Stripe webhook requests by result (stored, duplicate, or the rejection reason).",
    ["result"],
)
WEBHOOK_PROCESSING = Counter(
    "neruba_webhook_processing_total",
    "Stripe event processing attempts by outcome.",
    ["outcome", "trigger"],
)
BILLING_RUNS = Counter("neruba_billing_runs_total", "Billing runs by final status.", ["status"])
BILLING_RUN_DURATION = Histogram(
    "neruba_billing_run_seconds",
    "Billing run duration.",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
)
WINDOWS_INVOICED = Counter("neruba_billing_windows_invoiced_total", "Windows invoiced.")
LOCK_ACQUISITIONS = Counter(
    "neruba_lock_acquisitions_total",
    "Scheduler lock attempts by lock and result.",
    ["lock", "result"],
)
SWEEP_FINDINGS = Counter("neruba_sweep_findings_total", "Sweep findings by sweep.", ["sweep"])
REPLAYS = Counter("neruba_replays_total", "Replays by kind and outcome.", ["kind", "outcome"])


def worker_metrics_serve(*, port: int) -> None:
    """Serves /metrics from a Celery worker's main process. In multiprocess mode (the pool's
    child processes write to PROMETHEUS_MULTIPROC_DIR) it adds every process up."""
    import os

    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
