from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from neruba import locks, services
from neruba.admin_actions import (
    REASON_FIELD,
    GuardedAdminMixin,
    ReadOnlyAdminMixin,
    ReasonRequiredAdminMixin,
    guarded_action,
)
from neruba.admin_site import console
from neruba.models import SCOPES, ApiKey, AuditEntry, Customer, SchedulerLock, SupportNote

# Superusers manage console users and their role groups here; the roles grant no auth permission.
console.register(User, UserAdmin)
console.register(Group, GroupAdmin)


@admin.register(Customer, site=console)
class CustomerAdmin(ReasonRequiredAdminMixin, admin.ModelAdmin):
    list_display = ["external_id", "name", "email", "currency", "stripe_customer_id", "created_at"]
    search_fields = ["external_id", "name", "email", "stripe_customer_id"]
    list_filter = ["currency"]
    show_full_result_count = False
    readonly_fields = ["created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Customer | None = None) -> list[str]:
        # API clients address customers by external id, and customer_update never changes it:
        # an editable field would be a rename the console reports as saved but silently drops.
        if obj is not None:
            return [*self.readonly_fields, "external_id"]
        return list(self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: Customer, form: Any, change: bool) -> None:
        # Through the services so the change is audited like any other entry point.
        if change:
            services.customer_update(
                customer=obj,
                changes={f: getattr(obj, f) for f in form.changed_data if f != REASON_FIELD},
                actor=request.user,
                reason=self.change_reason(form),
            )
        else:
            created = services.customer_create(
                external_id=obj.external_id,
                name=obj.name,
                email=obj.email,
                currency=obj.currency,
                stripe_customer_id=obj.stripe_customer_id,
                actor=request.user,
                reason=self.change_reason(form),
            )
            obj.pk = created.pk


def _revoke(api_key: ApiKey, actor: Any, reason: str) -> str | None:
    if api_key.revoked:
        return "skipped"
    services.api_key_revoke(api_key=api_key, actor=actor, reason=reason)
    return None


class ApiKeyForm(forms.ModelForm):
    # Checkboxes, not free JSON: an unknown scope used to reach api_key_create and fail as a 500.
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        help_text="What the key may do: ingest events, read, write.",
    )

    class Meta:
        model = ApiKey
        fields = ["name", "scopes", "expiry_date"]


class _PrefixChangeList(ChangeList):
    def url_for_result(self, result: ApiKey) -> str:
        return reverse("admin:neruba_apikey_change", args=[result.prefix])


@admin.register(ApiKey, site=console)
class ApiKeyAdmin(ReasonRequiredAdminMixin, GuardedAdminMixin, admin.ModelAdmin):
    """Keys are addressed by their visible prefix everywhere in the console: the primary key
    (``prefix.<hash>``) embeds the stored hash, which no page, link or form field shows."""

    form = ApiKeyForm
    list_display = ["name", "prefix", "scopes", "created", "revoked", "expiry_date"]
    list_filter = ["revoked"]
    search_fields = ["name", "prefix"]
    fields = ["name", "scopes", "expiry_date", "prefix", "created", "revoked", "revoked_at"]
    readonly_fields = ["prefix", "created", "revoked", "revoked_at"]
    show_full_result_count = False
    actions = [
        guarded_action(
            name="revoke_keys",
            label="Revoke API keys",
            permission="neruba.change_apikey",
            perform=_revoke,
            preview=lambda k: "already revoked" if k.revoked else f"key {k.prefix}… stops working",
        )
    ]

    def public_pk(self, obj: ApiKey) -> str:
        return obj.prefix

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _PrefixChangeList

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        if "." not in object_id:
            return self.get_queryset(request).filter(prefix=object_id).first()
        return super().get_object(request, object_id, from_field)

    def action_checkbox(self, obj: ApiKey) -> str:
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" '
            'aria-label="Select this object for an action - {}">',
            helpers.ACTION_CHECKBOX_NAME,
            obj.prefix,
            str(obj),
        )

    action_checkbox.short_description = mark_safe(  # type: ignore[attr-defined]
        '<input type="checkbox" id="action-toggle" aria-label="Select all objects on this page '
        'for an action">'
    )

    def response_action(self, request: HttpRequest, queryset: Any) -> Any:
        # The checkboxes carry prefixes; the action runs on the keys they name.
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        if selected:
            post = request.POST.copy()
            by_prefix = dict(ApiKey.objects.filter(prefix__in=selected).values_list("prefix", "pk"))
            post.setlist(helpers.ACTION_CHECKBOX_NAME, [str(by_prefix.get(v, v)) for v in selected])
            request.POST = post  # type: ignore[misc]
        return super().response_action(request, queryset)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        extra_context = dict(extra_context or {})
        obj = self.get_object(request, object_id)
        if obj is not None:
            # History is the audit log, addressed by prefix (Django's own history URL would
            # carry the primary key).
            extra_context["audit_history_url"] = (
                reverse("admin:neruba_auditentry_changelist")
                + f"?target_type=neruba.apikey&target_id=prefix:{obj.prefix}"
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: Any = None) -> Any:
        # Django's own message links the new record by primary key; name it by prefix.
        self.message_user(request, f"The API key “{obj}” ({obj.prefix}…) was added.")
        return HttpResponseRedirect(reverse("admin:neruba_apikey_changelist"))

    def _reason_wanted(self, request: HttpRequest, obj: Any) -> bool:
        # A key is never edited after creation (its page is read-only): only creation asks.
        return obj is None and self.has_add_permission(request)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is not None:
            return [*self.readonly_fields, "name", "scopes", "expiry_date"]
        return list(self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            return
        created, raw = services.api_key_create(
            name=obj.name,
            scopes=obj.scopes,
            expiry_date=obj.expiry_date,
            actor=request.user,
            reason=self.change_reason(form),
        )
        obj.pk = created.pk
        messages.warning(
            request, f"The API key is {raw} — copy it now; it is shown once and stored hashed."
        )

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False


@admin.register(AuditEntry, site=console)
class AuditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "actor_shown",
        "action",
        "target_type",
        "target_id_shown",
        "customer",
        "reason",
    ]
    # Every field but the raw target id: an API key's stored id embeds its hash.
    fields = [
        "created_at",
        "actor_label",
        "action",
        "target_type",
        "target_id_shown",
        "target_repr",
        "customer",
        "reason",
        "before",
        "after",
        "request_id",
    ]
    readonly_fields = fields
    list_filter = ["action", "target_type", "actor_label"]
    search_fields = ["target_id", "reason", "actor_label"]

    @admin.display(description="target id")
    def target_id_shown(self, obj: AuditEntry) -> str:
        return obj.target_id_shown

    @admin.display(description="actor", ordering="actor_label")
    def actor_shown(self, obj: AuditEntry) -> str:
        return obj.actor_label or "system"

    list_select_related = ["customer"]
    raw_id_fields = ["customer", "actor"]
    date_hierarchy = "created_at"
    show_full_result_count = False


def _lock_expired(lock: SchedulerLock) -> bool:
    return not lock.holder or lock.expires_at is None or lock.expires_at <= timezone.now()


@admin.register(SchedulerLock, site=console)
class SchedulerLockAdmin(GuardedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "holder",
        "token",
        "acquired_at",
        "heartbeat_at",
        "expires_at",
        "is_expired",
    ]
    object_actions = ["release_locks"]
    actions = [
        guarded_action(
            name="release_locks",
            label="Release expired locks",
            permission="neruba.release_schedulerlock",
            perform=lambda lock, actor, reason: (
                locks.lock_force_release(lock=lock, actor=actor, reason=reason) and None
            ),
            preview=lambda lock: (
                f"holder {lock.holder or '(none)'} (token {lock.token}) is "
                "cleared; the next scan takes a new token"
            ),
            eligible=_lock_expired,
            explanation="Only expired leases can be released: a live holder may still be writing.",
        )
    ]

    @admin.display(boolean=True, description="expired")
    def is_expired(self, obj: SchedulerLock) -> bool:
        return _lock_expired(obj)


@admin.register(SupportNote, site=console)
class SupportNoteAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "author", "content_type", "object_id", "customer", "body"]
    list_select_related = ["author", "content_type", "customer"]
    search_fields = ["body", "object_id"]
    show_full_result_count = False
