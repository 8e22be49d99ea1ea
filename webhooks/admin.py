"""Console for Stripe events: read-only records of fact, plus the guarded "Replay" action that
only ``webhooks.replay_stripeevent`` (Operations, superusers) may run."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from neruba.admin_actions import GuardedAdminMixin, ReadOnlyAdminMixin, guarded_action
from neruba.admin_site import console
from neruba.errors import NerubaError
from webhooks import selectors, services
from webhooks.models import EventAttempt, StripeEvent

REPLAY_PERMISSION = "webhooks.replay_stripeevent"


def _admin_link(obj: Model | None) -> SafeString | str:
    if obj is None:
        return "—"
    opts = obj._meta
    try:
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return str(obj)
    return format_html('<a href="{}">{}</a>', url, obj)


def _pre(text: str) -> SafeString:
    return format_html('<pre style="white-space: pre-wrap; max-height: 40em">{}</pre>', text)


def _replay(event: StripeEvent, actor: Any, reason: str) -> str | None:
    attempt = services.event_replay(event=event, actor=actor, reason=reason)
    if attempt.outcome == "failed":
        # Counted as failed in the action's message; the attempt and traceback are stored.
        raise NerubaError(f"replay failed: {attempt.error}")
    return None


def _replay_preview(event: StripeEvent) -> dict[str, Any]:
    try:
        result = services.event_dry_run(event=event)
    except Exception as exc:  # the dry run shows the failure the replay would record
        return {"status now": event.status, "would fail": f"{type(exc).__name__}: {exc}"}
    return {
        "status now": event.status,
        "would be": result.outcome,
        "changes": result.notes or ["nothing"],
    }


class EventAttemptInline(admin.TabularInline):
    model = EventAttempt
    extra = 0
    can_delete = False
    fields = ["started_at", "finished_at", "trigger", "actor", "outcome", "notes", "error", "tb"]
    readonly_fields = fields
    ordering = ["-started_at", "-id"]

    @admin.display(description="traceback")
    def tb(self, obj: EventAttempt) -> SafeString | str:
        return _pre(obj.traceback) if obj.traceback else "—"

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("actor")


@admin.register(StripeEvent, site=console)
class StripeEventAdmin(GuardedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "received_at",
        "stripe_id",
        "type",
        "status",
        "attempts",
        "next_attempt_at",
        "customer",
        "invoice",
        "error_summary",
        "livemode",
    ]
    list_filter = ["status", "type", "livemode", "received_at"]
    # Exact matches use the unique and object_id indexes; the table grows without bound.
    search_fields = ["=stripe_id", "=object_id"]
    list_select_related = ["customer", "invoice"]
    show_full_result_count = False
    inlines = [EventAttemptInline]
    object_actions = ["replay_events"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "stripe_id",
                    "type",
                    "status",
                    "attempts",
                    "next_attempt_at",
                    "last_error",
                    "created",
                    "received_at",
                    "processed_at",
                    "livemode",
                    "api_version",
                    "secret_hint",
                ]
            },
        ),
        ("Linked records", {"fields": ["object_id", "customer_link", "invoice_link", "linked"]}),
        ("Delivery", {"fields": ["headers_pretty", "payload_pretty", "raw_body_text"]}),
    ]
    readonly_fields = [
        "customer_link",
        "invoice_link",
        "linked",
        "headers_pretty",
        "payload_pretty",
        "raw_body_text",
    ]
    actions = [
        guarded_action(
            name="replay_events",
            label="Replay Stripe events",
            permission=REPLAY_PERMISSION,
            perform=_replay,
            preview=_replay_preview,
            explanation=(
                "Each event is processed again by its handler, as if Stripe had just sent it. "
                "Handlers are idempotent: what is already applied is not applied twice. The "
                "preview is a dry run of the handler against the current data."
            ),
        )
    ]

    @admin.display(description="last error")
    def error_summary(self, obj: StripeEvent) -> str:
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error

    @admin.display(description="customer")
    def customer_link(self, obj: StripeEvent) -> SafeString | str:
        return _admin_link(obj.customer)

    @admin.display(description="invoice")
    def invoice_link(self, obj: StripeEvent) -> SafeString | str:
        return _admin_link(obj.invoice)

    @admin.display(description="refunds and disputes")
    def linked(self, obj: StripeEvent) -> SafeString | str:
        records = selectors.event_linked_records(event=obj)
        rows = [
            (kind, _admin_link(r), getattr(r, "status", ""))
            for kind in ("refunds", "disputes")
            for r in records[kind]
        ]
        if not rows:
            return "—"
        return format_html_join(format_html("<br>"), "{}: {} ({})", rows)

    @admin.display(description="headers")
    def headers_pretty(self, obj: StripeEvent) -> SafeString:
        return _pre(json.dumps(obj.headers, indent=2, sort_keys=True))

    @admin.display(description="payload")
    def payload_pretty(self, obj: StripeEvent) -> SafeString:
        return _pre(json.dumps(obj.payload, indent=2, sort_keys=True))

    @admin.display(description="raw body (exact bytes signed)")
    def raw_body_text(self, obj: StripeEvent) -> SafeString:
        return _pre(bytes(obj.raw_body).decode("utf-8", errors="replace"))


@admin.register(EventAttempt, site=console)
class EventAttemptAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["started_at", "event", "trigger", "outcome", "actor", "finished_at", "error"]
    list_filter = ["trigger", "outcome", "started_at"]
    search_fields = ["=event__stripe_id"]
    list_select_related = ["event", "actor"]
    raw_id_fields = ["event", "actor"]
    show_full_result_count = False
    readonly_fields = ["tb"]
    exclude = ["traceback"]

    @admin.display(description="traceback")
    def tb(self, obj: EventAttempt) -> SafeString | str:
        return _pre(obj.traceback) if obj.traceback else "—"


from webhooks import admin_outbound  # noqa: E402, F401 - registers the outbound console pages
