from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from ingest import selectors, services
from ingest.exceptions import ReplayFailed
from ingest.models import EventKey, IngestBatch, IngestRejection, Metric, Outcome, UsageEvent
from neruba.admin_actions import (
    AuditedAdminMixin,
    CappedCountPaginator,
    GuardedAdminMixin,
    ReadOnlyAdminMixin,
    guarded_action,
)
from neruba.admin_site import console


@admin.register(Metric, site=console)
class MetricAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["code", "name", "aggregation", "field", "created_at"]
    list_filter = ["aggregation"]
    search_fields = ["code", "name"]


def _admin_link(obj_label: str, app_model: str, pk: Any) -> str:
    if pk is None:
        return "—"
    return format_html(
        '<a href="{}">{}</a>', reverse(f"admin:{app_model}_change", args=[pk]), obj_label
    )


@admin.register(UsageEvent, site=console)
class UsageEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "idempotency_key",
        "customer",
        "metric",
        "timestamp",
        "value",
        "distinct_value",
        "late",
        "source",
        "received_at",
    ]
    list_filter = ["late", "source", "metric"]
    # Exact match only, through the key registry (see get_search_results).
    search_fields = ["=idempotency_key"]
    search_help_text = "Exact idempotency key."
    list_select_related = ["customer", "metric"]
    raw_id_fields = ["customer", "metric", "rejection"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    fields = [
        "idempotency_key",
        "payload_hash",
        "customer",
        "metric",
        "timestamp",
        "value",
        "distinct_value",
        "properties",
        "late",
        "source",
        "received_at",
        "batch_link",
        "rejection_link",
        "outcome_history",
    ]
    readonly_fields = ["batch_link", "rejection_link", "outcome_history"]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UsageEvent], search_term: str
    ) -> tuple[QuerySet[UsageEvent], bool]:
        # The events table has no index on the key (on PostgreSQL it is partitioned by month and
        # the key registry is where keys are unique): look the key up there, then read the one
        # partition its timestamp names.
        term = search_term.strip()
        if not term:
            return queryset, False
        found = EventKey.objects.filter(idempotency_key=term).first()
        if found is None:
            return queryset.none(), False
        return queryset.filter(pk=found.event_id, timestamp=found.timestamp), False

    @admin.display(description="batch")
    def batch_link(self, obj: UsageEvent) -> str:
        return _admin_link(f"Batch {obj.batch_id}", "ingest_ingestbatch", obj.batch_id)

    @admin.display(description="replayed from rejection")
    def rejection_link(self, obj: UsageEvent) -> str:
        return _admin_link(
            f"Rejection {obj.rejection_id}", "ingest_ingestrejection", obj.rejection_id
        )

    @admin.display(description="outcome history")
    def outcome_history(self, obj: UsageEvent) -> str:
        found = selectors.event_history(idempotency_key=obj.idempotency_key)
        if found is None:
            return "—"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    entry["at"].strftime("%Y-%m-%d %H:%M:%S"),
                    entry["outcome"],
                    entry["batch_id"] or "—",
                    _admin_link(
                        f"Rejection {entry['rejection_id']}",
                        "ingest_ingestrejection",
                        entry["rejection_id"],
                    ),
                    (entry["error"] or {}).get("message", ""),
                )
                for entry in found["history"]
            ),
        )
        duplicates = format_html(
            "<p>{} duplicate submission(s){}</p>",
            found["duplicate_count"],
            f", last at {found['last_duplicate_at']:%Y-%m-%d %H:%M:%S}"
            if found["last_duplicate_at"]
            else "",
        )
        return format_html(
            "<table><thead><tr><th>at</th><th>outcome</th><th>batch</th><th>rejection</th>"
            "<th>error</th></tr></thead><tbody>{}</tbody></table>{}",
            rows,
            duplicates,
        )


@admin.register(IngestBatch, site=console)
class IngestBatchAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "received_at",
        "api_key_prefix",
        "source",
        "size",
        "accepted",
        "duplicate",
        "conflict",
        "failed",
        "replay",
        "duration_ms",
    ]
    list_filter = ["source", "received_at", "api_key_prefix"]
    search_fields = ["=api_key_prefix", "=request_id"]
    raw_id_fields = ["api_key"]
    show_full_result_count = False
    paginator = CappedCountPaginator


def _replay(rejection: IngestRejection, actor: Any, reason: str) -> str | None:
    result = services.rejection_replay(rejection=rejection, actor=actor, reason=reason)
    if result.outcome not in (Outcome.REPLAY, Outcome.DUPLICATE):
        raise ReplayFailed(result.describe())
    return None


def _replay_preview(rejection: IngestRejection) -> str:
    return services.rejection_replay(
        rejection=rejection, actor=None, reason="", dry_run=True
    ).describe()


def _replayable(rejection: IngestRejection) -> bool:
    return rejection.status == IngestRejection.Status.OPEN and rejection.outcome == Outcome.FAILED


@admin.register(IngestRejection, site=console)
class IngestRejectionAdmin(GuardedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "outcome",
        "error_code",
        "status",
        "idempotency_key",
        "customer_ref",
        "metric_ref",
        "api_key_prefix",
        "surface",
        "replay_attempts",
    ]
    list_filter = [
        "outcome",
        "error_code",
        "status",
        "surface",
        "api_key_prefix",
        "customer_ref",
        "metric_ref",
        "created_at",
    ]
    search_fields = ["=idempotency_key", "=customer_ref", "=metric_ref"]
    search_help_text = "Exact idempotency key, customer or metric."
    raw_id_fields = ["batch", "original_event"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    object_actions = ["replay_rejections"]
    actions = [
        guarded_action(
            name="replay_rejections",
            label="Replay",
            permission="ingest.replay_ingestrejection",
            perform=_replay,
            preview=_replay_preview,
            eligible=_replayable,
            explanation=(
                "Each failed item is submitted again exactly as the client sent it. Stored "
                "items get the outcome `replay` and link to their rejection; items that still "
                "fail stay open with their new error. Conflicts are not replayable: the "
                "original event stands."
            ),
        )
    ]
