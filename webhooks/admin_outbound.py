"""Console for outbound webhooks: endpoints (with recent deliveries, success rate and a 24-hour
chart), messages (payload, deliveries and attempts) and the guarded replay and rotation
actions. Creating and editing an endpoint goes through the services, which audit."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Model
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from neruba.admin_actions import (
    CappedCountPaginator,
    GuardedAdminMixin,
    ReadOnlyAdminMixin,
    guarded_action,
)
from neruba.admin_site import console
from neruba.errors import NerubaError
from webhooks import outbound, selectors
from webhooks.models import DeliveryAttempt, OutboundDelivery, OutboundMessage, WebhookEndpoint

REPLAY_PERMISSION = "webhooks.replay_outbounddelivery"
ROTATE_PERMISSION = "webhooks.change_webhookendpoint"
OUTCOMES = ("delivered", "failed", "dead")


def _pre(text: str) -> SafeString:
    return format_html('<pre style="white-space: pre-wrap; max-height: 40em">{}</pre>', text)


def _link(name: str, pk: Any, text: Any) -> SafeString:
    return format_html(
        '<a href="{}">{}</a>', reverse(f"admin:webhooks_{name}_change", args=[pk]), text
    )


def _deliveries_table(deliveries: list[OutboundDelivery], *, show: str) -> SafeString | str:
    if not deliveries:
        return "—"
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                _link("outboundmessage", d.message_id, d.message.msg_id)
                if show == "message"
                else _link("webhookendpoint", d.endpoint_id, d.endpoint.url),
                d.message.type,
                d.status,
                d.attempts,
                d.last_error[:120] or (d.last_status_code or ""),
            )
            for d in deliveries
        ),
    )
    return format_html(
        "<table><tr><th>created</th><th>{}</th><th>type</th><th>status</th><th>attempts</th>"
        "<th>last answer</th></tr>{}</table>",
        show,
        rows,
    )


# --- endpoints -------------------------------------------------------------------------------


class EndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=[(t, t) for t in outbound.EVENT_TYPES], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "event_types", "enabled"]


_rotation = threading.local()


def _rotate(endpoint: WebhookEndpoint, actor: Any, reason: str) -> str | None:
    secret = outbound.endpoint_rotate_secret(endpoint=endpoint, actor=actor, reason=reason)
    # Shown once on the next page (see WebhookEndpointAdmin.rotate_secrets), never stored in
    # a message log or the audit entry.
    _rotation.secrets = [*getattr(_rotation, "secrets", []), (endpoint.url, secret)]
    return None


_rotate_action = guarded_action(
    name="rotate_secrets",
    label="Rotate signing secret",
    permission=ROTATE_PERMISSION,
    perform=_rotate,
    preview=lambda e: {
        "endpoint": e.url,
        "current secret": e.secret_hint(),
        "after": "a new secret signs; the current one also signs for "
        "NERUBA_OUTBOUND_ROTATION_GRACE. The new secret is shown once on the next page.",
    },
    explanation="Receivers verify either secret while both sign.",
)


def rotate_secrets(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: Any) -> Any:
    """The guarded rotation, then the new secrets shown once as messages on the next page."""
    _rotation.secrets = []
    try:
        response = _rotate_action(modeladmin, request, queryset)
        for url, secret in _rotation.secrets:
            messages.warning(request, f"New signing secret for {url} (shown once): {secret}")
    finally:
        _rotation.secrets = []
    return response


rotate_secrets.guarded_permission = ROTATE_PERMISSION  # type: ignore[attr-defined]
rotate_secrets.short_description = "Rotate signing secret"  # type: ignore[attr-defined]


def _chart(hours: list[str], series: dict[str, list[int]], *, title: str) -> str:
    """A small stacked bar chart (server-rendered SVG, like the console home's)."""
    colours = {"delivered": "#2e7d32", "failed": "#ef6c00", "dead": "#6a1b9a"}
    width, height = 560, 120
    totals = [sum(v[i] for v in series.values()) for i in range(len(hours))]
    peak = max(totals or [0]) or 1
    bar = (width - 40) / max(len(hours), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16}" '
        f'role="img" aria-label="{escape(title)}" class="neruba-chart"><title>{escape(title)}'
        f'</title><text x="0" y="12" font-size="11">{peak}</text>'
    ]
    for i, hour in enumerate(hours):
        y = float(height)
        for name, values in series.items():
            if not values[i]:
                continue
            h = (height - 16) * values[i] / peak
            y -= h
            parts.append(
                f'<rect x="{40 + i * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{colours[name]}"><title>{escape(hour)} '
                f"{escape(name)}: {values[i]}</title></rect>"
            )
    legend = " ".join(f"{n}" for n in series)
    parts.append(f'<text x="40" y="{height + 14}" font-size="11">{escape(legend)}</text></svg>')
    return "".join(parts)


def _replay_dead(endpoint: WebhookEndpoint, actor: Any, reason: str) -> str | None:
    plan = outbound.deliveries_replay(
        deliveries=outbound.deliveries_for_replay(endpoint=endpoint, dead_only=True),
        actor=actor,
        reason=reason,
        dry_run=False,
    )
    return None if plan.deliveries else "skipped"


def _replay_dead_preview(endpoint: WebhookEndpoint) -> dict[str, Any]:
    plan = outbound.deliveries_replay(
        deliveries=outbound.deliveries_for_replay(endpoint=endpoint, dead_only=True),
        actor=None,
        reason="",
        dry_run=True,
    )
    return {
        "endpoint": endpoint.url,
        "enabled": endpoint.enabled,
        "would": plan.render(),
        "messages": [d.message.msg_id for d in plan.deliveries[:20]] or ["none"],
    }


@admin.register(WebhookEndpoint, site=console)
class WebhookEndpointAdmin(GuardedAdminMixin, admin.ModelAdmin):
    form = EndpointForm
    list_display = ["url", "enabled", "types", "success_24h", "backlog", "failing_since"]
    list_filter = ["enabled"]
    search_fields = ["url", "description"]
    object_actions = ["rotate_secrets", "replay_dead"]
    readonly_fields = [
        "secret_shown",
        "disabled_reason",
        "disabled_at",
        "failing_since",
        "created_at",
        "success_rate",
        "chart",
        "recent_deliveries",
    ]
    actions = [
        rotate_secrets,
        guarded_action(
            name="replay_dead",
            label="Replay dead deliveries",
            permission=REPLAY_PERMISSION,
            perform=_replay_dead,
            preview=_replay_dead_preview,
            explanation="Every dead delivery of the endpoint is queued again with its original "
            "message id (webhook-id), so receivers that saw it before can deduplicate.",
        ),
    ]

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False  # deliveries reference it; disable instead

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        if obj is None:
            return ["url", "description", "event_types"]
        return [
            "url",
            "description",
            "event_types",
            "enabled",
            "disabled_reason",
            "disabled_at",
            "failing_since",
            "secret_shown",
            "created_at",
            "success_rate",
            "chart",
            "recent_deliveries",
        ]

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool
    ) -> None:
        data = form.cleaned_data
        try:
            if change:
                updated = outbound.endpoint_update(
                    endpoint=obj,
                    actor=request.user,
                    url=data["url"],
                    event_types=list(data["event_types"]),
                    enabled=data.get("enabled", obj.enabled),
                    description=data.get("description", ""),
                    reason="console edit",
                )
                obj.pk = updated.pk
            else:
                endpoint, secret = outbound.endpoint_create(
                    url=data["url"],
                    event_types=list(data["event_types"]),
                    description=data.get("description", ""),
                    actor=request.user,
                )
                obj.pk = endpoint.pk
                messages.warning(
                    request,
                    f"Signing secret (shown once, store it now): {secret}",
                )
        except NerubaError as exc:
            # Reported on the next page; nothing was written.
            messages.error(request, f"{exc.code}: {exc.message}")
            raise

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except NerubaError:
            from django.http import HttpResponseRedirect

            return HttpResponseRedirect(request.get_full_path())

    @admin.display(description="types")
    def types(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types or [])

    @admin.display(description="signing secret")
    def secret_shown(self, obj: WebhookEndpoint) -> str:
        hint = obj.secret_hint()
        if obj.previous_secret and obj.previous_secret_expires_at:
            until = f"{obj.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC"
            hint += f" (the previous one also signs until {until})"
        return hint

    @admin.display(description="delivered, 24 h")
    def success_24h(self, obj: WebhookEndpoint) -> str:
        stats = selectors.endpoint_stats(endpoint_id=obj.pk, now=timezone.now())
        if stats["success_rate"] is None:
            return "—"
        return f"{stats['success_rate']:.0%} of {stats['attempts']}"

    @admin.display(description="waiting")
    def backlog(self, obj: WebhookEndpoint) -> int:
        return OutboundDelivery.objects.filter(
            endpoint=obj, status__in=["pending", "sending", "failed"]
        ).count()

    @admin.display(description="success rate (24 h)")
    def success_rate(self, obj: WebhookEndpoint) -> str:
        stats = selectors.endpoint_stats(endpoint_id=obj.pk, now=timezone.now())
        if stats["success_rate"] is None:
            return "no attempts in the last 24 hours"
        return (
            f"{stats['success_rate']:.1%}: {stats['delivered']} of {stats['attempts']} attempts "
            "delivered"
        )

    @admin.display(description="attempts per hour, last 24 h")
    def chart(self, obj: WebhookEndpoint) -> SafeString:
        now = timezone.now()
        stats = selectors.endpoint_stats(endpoint_id=obj.pk, now=now)
        start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
        hours = [start + timedelta(hours=i) for i in range(24)]
        counts = {(r["hour"], r["outcome"]): r["n"] for r in stats["rows"]}
        series = {o: [counts.get((h, o), 0) for h in hours] for o in OUTCOMES}
        svg = _chart([f"{h:%H}:00" for h in hours], series, title="Delivery attempts per hour")
        return mark_safe(svg)  # noqa: S308 - our own SVG, every label escaped

    @admin.display(description="recent deliveries")
    def recent_deliveries(self, obj: WebhookEndpoint) -> SafeString | str:
        recent = list(
            OutboundDelivery.objects.filter(endpoint=obj)
            .select_related("message")
            .order_by("-created_at", "-id")[:20]
        )
        more = (
            reverse("admin:webhooks_outbounddelivery_changelist") + f"?endpoint__id__exact={obj.pk}"
        )
        return format_html(
            '{}<p><a href="{}">All deliveries</a></p>',
            _deliveries_table(recent, show="message"),
            more,
        )


# --- messages --------------------------------------------------------------------------------


def _replay_message(message: OutboundMessage, actor: Any, reason: str) -> str | None:
    plan = outbound.deliveries_replay(
        deliveries=outbound.deliveries_for_replay(message=message),
        actor=actor,
        reason=reason,
        dry_run=False,
    )
    return None if plan.deliveries else "skipped"


def _replay_message_preview(message: OutboundMessage) -> dict[str, Any]:
    plan = outbound.deliveries_replay(
        deliveries=outbound.deliveries_for_replay(message=message),
        actor=None,
        reason="",
        dry_run=True,
    )
    return {
        "message": f"{message.msg_id} ({message.type})",
        "would": plan.render(),
        "endpoints": [f"{d.endpoint.url}: {d.status}" for d in plan.deliveries] or ["none"],
    }


class DeliveryInline(admin.TabularInline):
    model = OutboundDelivery
    fk_name = "message"
    extra = 0
    can_delete = False
    fields = [
        "endpoint",
        "status",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "last_status_code",
        "last_error",
        "attempt_log",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("endpoint")

    @admin.display(description="attempts")
    def attempt_log(self, obj: OutboundDelivery) -> SafeString | str:
        attempts = list(obj.delivery_attempts.order_by("started_at", "id")[:50])
        if not attempts:
            return "—"
        return format_html_join(
            mark_safe("<br>"),
            "{} {} {} {} ms {}",
            (
                (
                    a.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    a.trigger,
                    a.outcome,
                    a.latency_ms,
                    f"HTTP {a.status_code}" if a.status_code else a.error[:200],
                )
                for a in attempts
            ),
        )


@admin.register(OutboundMessage, site=console)
class OutboundMessageAdmin(GuardedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    # These tables grow without bound: never a full COUNT(*).
    paginator = CappedCountPaginator
    list_display = ["created_at", "msg_id", "type", "fanned_out_at"]
    list_filter = ["type", "created_at"]
    search_fields = ["=msg_id"]
    show_full_result_count = False
    date_hierarchy = None
    inlines = [DeliveryInline]
    object_actions = ["replay_messages"]
    fields = ["msg_id", "type", "created_at", "fanned_out_at", "payload"]
    readonly_fields = ["payload"]
    actions = [
        guarded_action(
            name="replay_messages",
            label="Replay messages",
            permission=REPLAY_PERMISSION,
            perform=_replay_message,
            preview=_replay_message_preview,
            explanation="Each message is sent again to every endpoint that had it, with the "
            "same message id (webhook-id) and the same body, signed afresh. Filter the list "
            "by type and date first to replay a type since a time.",
        )
    ]

    @admin.display(description="payload (the exact body sent)")
    def payload(self, obj: OutboundMessage) -> SafeString:
        try:
            text = json.dumps(json.loads(obj.body), indent=2)
        except ValueError:
            text = obj.body
        return _pre(text)


def _replay_delivery(delivery: OutboundDelivery, actor: Any, reason: str) -> str | None:
    plan = outbound.deliveries_replay(
        deliveries=outbound.deliveries_for_replay(ids=[delivery.pk]),
        actor=actor,
        reason=reason,
        dry_run=False,
    )
    return None if plan.deliveries else "skipped"


@admin.register(OutboundDelivery, site=console)
class OutboundDeliveryAdmin(GuardedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    # These tables grow without bound: never a full COUNT(*).
    paginator = CappedCountPaginator
    list_display = [
        "created_at",
        "message",
        "endpoint",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
    ]
    list_filter = ["status", "endpoint"]
    search_fields = ["=message__msg_id"]
    list_select_related = ["message", "endpoint"]
    raw_id_fields = ["message", "endpoint"]
    show_full_result_count = False
    actions = [
        guarded_action(
            name="replay_deliveries",
            label="Replay deliveries",
            permission=REPLAY_PERMISSION,
            perform=_replay_delivery,
            preview=lambda d: {
                "message": f"{d.message.msg_id} ({d.message.type})",
                "endpoint": d.endpoint.url,
                "status now": d.status,
                "attempts so far": d.attempts,
            },
            explanation="Queued again with the original message id; the attempt history stays.",
        )
    ]


@admin.register(DeliveryAttempt, site=console)
class DeliveryAttemptAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # These tables grow without bound: never a full COUNT(*).
    paginator = CappedCountPaginator
    list_display = [
        "started_at",
        "delivery",
        "trigger",
        "outcome",
        "status_code",
        "latency_ms",
        "error",
    ]
    list_filter = ["outcome", "trigger"]
    list_select_related = ["delivery"]
    raw_id_fields = ["delivery"]
    show_full_result_count = False
