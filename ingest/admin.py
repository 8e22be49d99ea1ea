from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from ingest import corrections, selectors, services
from ingest.exceptions import ReplayFailed
from ingest.models import (
    Backfill,
    EventCorrection,
    EventKey,
    IngestBatch,
    IngestRejection,
    Metric,
    Outcome,
    UsageEvent,
)
from neruba.admin_actions import (
    AuditedAdminMixin,
    CappedCountPaginator,
    GuardedAdminMixin,
    ReadOnlyAdminMixin,
    guarded_action,
    quantity_column,
)
from neruba.admin_site import console
from neruba.previews import Preview


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


class AmendForm(forms.Form):
    properties = forms.JSONField(
        help_text="The event's complete new properties (JSON object). Customer, metric and "
        "timestamp stay; the value is extracted from the metric's field as at ingest."
    )

    def clean_properties(self) -> Any:
        value = self.cleaned_data["properties"]
        if not isinstance(value, dict):
            raise forms.ValidationError("Give a JSON object.")
        return value


def _correctable(event: UsageEvent) -> bool:
    return event.idempotency_key is not None and (
        event.voided_at is None or event.amendments.filter(voided_at__isnull=True).exists()
    )


def _describe(event: UsageEvent) -> str:
    row = selectors.counting_row(event=event)
    invoiced = (
        " Its period is already invoiced: the drift sweep re-checks the window."
        if (event.late or corrections.period_invoiced(event.customer_id, event.timestamp))
        else ""
    )
    value = "—" if row is None or row.value is None else row.value.normalize()
    return (
        f"{event.customer.external_id} / {event.metric.code} at "
        f"{event.timestamp:%Y-%m-%d %H:%M:%S}: value {value}, properties "
        f"{row.properties if row else '—'}.{invoiced}"
    )


def _void(event: UsageEvent, actor: Any, reason: str) -> str | None:
    corrections.event_void(event=event, actor=actor, reason=reason)
    return None


def _amend(event: UsageEvent, actor: Any, reason: str, data: dict[str, Any]) -> str | None:
    corrections.event_amend(event=event, actor=actor, reason=reason, properties=data["properties"])
    return None


void_events = guarded_action(
    name="void_events",
    label="Void events",
    permission="ingest.correct_usageevent",
    perform=_void,
    preview=lambda e: "stops counting: " + _describe(e),
    eligible=_correctable,
    explanation=(
        "A voided event is kept as it is (never deleted or edited) and no aggregation counts it "
        "from now on; its key stays taken. No invoice changes: windows already invoiced become "
        "drift findings, resolved by Finance."
    ),
)
amend_event = guarded_action(
    name="amend_event",
    label="Amend event",
    permission="ingest.correct_usageevent",
    perform=_amend,
    preview=lambda e: "counts with the new properties instead of: " + _describe(e),
    eligible=_correctable,
    form=AmendForm,
    explanation=(
        "The stored event stops counting and a row with the amended properties counts in its "
        "place; the correction records who, why, before and after."
    ),
)


class VoidRangeForm(forms.Form):
    metric = forms.ModelChoiceField(queryset=Metric.objects.all(), to_field_name="code")
    starts_at = forms.DateTimeField(help_text="UTC, e.g. 2026-11-03 00:00:00")
    ends_at = forms.DateTimeField(help_text="UTC, exclusive")
    apply = forms.BooleanField(
        required=False,
        help_text="Leave unticked for a dry run: the message then says how many events would be "
        "voided, and nothing changes.",
    )


def _void_range(customer: Any, actor: Any, reason: str, data: dict[str, Any]) -> str | None:
    result = corrections.events_void_bulk(
        customer=customer,
        metric=data["metric"],
        starts_at=data["starts_at"],
        ends_at=data["ends_at"],
        actor=actor,
        reason=reason,
        dry_run=not data["apply"],
    )
    span = f"{customer.external_id} / {data['metric'].code}"
    if result.dry_run:
        return (
            f"skipped: dry run: {result.matched} event(s) of {span} would be voided "
            f"({result.invoiced} in invoiced periods); nothing changed"
        )
    return f"voided {result.voided} event(s) of {span} ({result.invoiced} in invoiced periods)"


void_usage_range = guarded_action(
    name="void_usage_range",
    label="Void usage in a time range",
    permission="ingest.correct_usageevent",
    perform=_void_range,
    preview=lambda c: f"every counted event of {c.external_id} for the metric and range below",
    form=VoidRangeForm,
    explanation=(
        "For a client that sent wrong events: first leave 'apply' unticked to see the count, then "
        "tick it. Events are voided, never deleted; no invoice changes (invoiced windows become "
        "drift findings, resolved by Finance)."
    ),
)


@admin.register(UsageEvent, site=console)
class UsageEventAdmin(GuardedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "idempotency_key",
        "customer",
        "metric",
        "timestamp",
        "value_shown",
        "distinct_value",
        "late",
        "source",
        "received_at",
        "voided_at",
    ]
    value_shown = quantity_column("value", description="value")
    list_filter = ["late", "source", "metric"]
    actions = [void_events, amend_event]
    object_actions = ["void_events", "amend_event"]
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
        "voided_at",
        "amends_link",
        "batch_link",
        "rejection_link",
        "corrections_list",
        "outcome_history",
    ]
    readonly_fields = [
        "amends_link",
        "batch_link",
        "rejection_link",
        "corrections_list",
        "outcome_history",
    ]

    @admin.display(description="amends")
    def amends_link(self, obj: UsageEvent) -> str:
        return _admin_link(f"Event {obj.amends_id}", "ingest_usageevent", obj.amends_id)

    @admin.display(description="corrections")
    def corrections_list(self, obj: UsageEvent) -> str:
        keyed = obj.amends if obj.amends_id else obj
        found = selectors.event_corrections(event=keyed)
        if not found:
            return "—"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td></tr>",
            (
                (
                    c["at"].strftime("%Y-%m-%d %H:%M:%S"),
                    c["kind"],
                    c["actor"],
                    c["reason"],
                    c["before"].get("value") or "—",
                    "not counted" if c["kind"] == "void" else (c["after"].get("value") or "—"),
                    _admin_link(
                        f"Event {c['replacement_event_id']}",
                        "ingest_usageevent",
                        c["replacement_event_id"],
                    ),
                )
                for c in found
            ),
        )
        return format_html(
            "<table><thead><tr><th>at</th><th>correction</th><th>by</th><th>reason</th>"
            "<th>value</th><th>counted as</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

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
        keyed = obj.amends if obj.amends_id else obj
        if keyed is None or keyed.idempotency_key is None:
            return "—"
        found = selectors.event_history(idempotency_key=keyed.idempotency_key)
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
    return (
        rejection.status in (IngestRejection.Status.OPEN, IngestRejection.Status.DISMISSED)
        and rejection.outcome == Outcome.FAILED
    )


def _dismiss(rejection: IngestRejection, actor: Any, reason: str) -> str | None:
    return (
        None
        if services.rejection_dismiss(rejection=rejection, actor=actor, reason=reason)
        else "skipped"
    )


def _dismiss_preview(rejection: IngestRejection) -> Preview:
    replay = services.rejection_replay(rejection=rejection, actor=None, reason="", dry_run=True)
    return Preview(
        summary="The rejection is closed as dismissed; its raw payload is kept.",
        changes=[("status", rejection.status, IngestRejection.Status.DISMISSED)],
        facts=[
            ("error", f"{rejection.error_code}: {rejection.error_message}"),
            ("a replay now", replay.describe()),
        ],
    )


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
    object_actions = ["replay_rejections", "dismiss_rejections"]
    actions = [
        guarded_action(
            name="dismiss_rejections",
            label="Dismiss (will not be replayed)",
            permission="ingest.replay_ingestrejection",
            perform=_dismiss,
            preview=_dismiss_preview,
            eligible=lambda r: r.status == IngestRejection.Status.OPEN,
            explanation=(
                "For rejections nobody will replay: a conflict whose original event stands, an "
                "event too old to store, test traffic. The rejection leaves the open backlog; "
                "nothing is deleted, and it can still be replayed from its page."
            ),
        ),
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
        ),
    ]


@admin.register(Backfill, site=console)
class BackfillAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "created_at",
        "status",
        "starts_at",
        "ends_at",
        "source",
        "accepted",
        "duplicate",
        "failed",
        "late",
        "findings",
        "reason",
    ]
    list_filter = ["status", "source"]
    raw_id_fields = ["created_by"]
    show_full_result_count = False


@admin.register(EventCorrection, site=console)
class EventCorrectionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "kind", "event", "actor_label", "reason", "late", "bulk_id"]
    list_filter = ["kind", "late"]
    search_fields = ["=bulk_id", "=event__idempotency_key", "=event__customer__external_id"]
    search_help_text = "Exact bulk id, idempotency key or customer external id."
    list_select_related = ["event"]
    raw_id_fields = ["event", "excluded", "replacement", "actor"]
    show_full_result_count = False
    paginator = CappedCountPaginator
