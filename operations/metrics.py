"""``/metrics``: Prometheus text for the process counters (multiprocess-aware) plus backlog
gauges read from the database at scrape time."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Min
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from billing.models import DriftFinding
from ingest.models import IngestRejection
from operations.health import beat_active
from operations.models import Heartbeat
from webhooks.models import StripeEvent
from webhooks.selectors import outbound_backlog


class BacklogCollector(Collector):
    """What is waiting for a person or a retry. Computed per scrape, never cached, so it is
    right whichever process answers."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        try:
            webhook = GaugeMetricFamily(
                "neruba_webhook_events_backlog",
                "Stripe events needing attention, by status.",
                labels=["status"],
            )
            for status in ("failed", "dead", "received", "processing"):
                webhook.add_metric([status], StripeEvent.objects.filter(status=status).count())
            yield webhook
            yield GaugeMetricFamily(
                "neruba_ingest_rejections_open",
                "Ingest rejections not yet replayed.",
                value=IngestRejection.objects.filter(status="open").count(),
            )
            yield GaugeMetricFamily(
                "neruba_drift_findings_open",
                "Open drift findings.",
                value=DriftFinding.objects.filter(status="open").count(),
            )
            oldest = StripeEvent.objects.filter(
                status__in=["received", "processing", "failed"]
            ).aggregate(oldest=Min("received_at"))["oldest"]
            yield GaugeMetricFamily(
                "neruba_webhook_oldest_unprocessed_age_seconds",
                "Age of the oldest Stripe event not yet processed (0 when none).",
                value=(now - oldest).total_seconds() if oldest else 0,
            )
            beat = Heartbeat.objects.filter(name="beat").values_list("seen_at", flat=True).first()
            yield GaugeMetricFamily(
                "neruba_scheduler_heartbeat_age_seconds",
                "Seconds since celery beat last recorded a heartbeat (-1 when never).",
                value=(now - beat).total_seconds() if beat else -1,
            )
            outbound = outbound_backlog(now=now)
            deliveries = GaugeMetricFamily(
                "neruba_outbound_deliveries_backlog",
                "Outbound webhook deliveries not delivered, by status.",
                labels=["status"],
            )
            for status, count in outbound["counts"].items():
                deliveries.add_metric([status], count)
            yield deliveries
            yield GaugeMetricFamily(
                "neruba_outbound_oldest_pending_age_seconds",
                "Age of the oldest outbound webhook message still to be delivered (0 when none).",
                value=outbound["oldest_pending_age"],
            )
            yield GaugeMetricFamily(
                "neruba_outbound_endpoints_disabled",
                "Outbound webhook endpoints disabled (by an operator or after failing).",
                value=outbound["disabled_endpoints"],
            )
            active = GaugeMetricFamily(
                "neruba_beat_active",
                "1 for the celery beat holding the scheduling lease (none when no beat does).",
                labels=["holder"],
            )
            holder = beat_active()
            if holder:
                active.add_metric([holder], 1)
            yield active
            yield GaugeMetricFamily(
                "neruba_backlog_scrape_ok", "1 when the backlog was read.", value=1
            )
        except DatabaseError:
            yield GaugeMetricFamily(
                "neruba_backlog_scrape_ok", "1 when the backlog was read.", value=0
            )


_backlog_registry = CollectorRegistry(auto_describe=False)
_backlog_registry.register(BacklogCollector())


def _authorized(request: HttpRequest) -> bool:
    token = settings.NERUBA.get("METRICS_TOKEN") or ""
    if not token:
        return True
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # gunicorn workers and Celery processes each write their own files; add them up.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def webhook_receipts() -> dict[str, int]:
    """``neruba_webhook_receipts_total`` by result, as ``/metrics`` reports it (every web
    process since it started): refused receipts store nothing, so this is their only trace."""
    totals: dict[str, int] = {}
    for metric in _registry().collect():
        if metric.name != "neruba_webhook_receipts":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                result = sample.labels.get("result", "")
                totals[result] = totals.get(result, 0) + int(sample.value)
    return totals


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = HttpResponse("metrics token required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = "Bearer"
        return response
    body = generate_latest(_registry()) + generate_latest(_backlog_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
