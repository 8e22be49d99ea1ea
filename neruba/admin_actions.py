"""The guarded admin action: permission check -> confirmation page that shows what will happen
-> reason required -> service call (which writes the audit entry in its own transaction) ->
message with counts. Every state-changing console action is built with ``guarded_action``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property

from neruba.errors import NerubaError
from neruba.previews import Preview, as_preview

MAX_OBJECTS = 500
MAX_PREVIEWS = 50

PreviewFn = Callable[[Any], "Preview | str | dict[str, Any] | list[Any]"]
Perform = Callable[..., "str | None"]


@dataclass
class ActionOutcome:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, label: str) -> str:
        text = f"{label}: {self.done} done, {self.skipped} skipped, {self.failed} failed."
        if self.notes:
            text += " " + "; ".join(self.notes[:5])
        if self.errors:
            text += " " + "; ".join(self.errors[:5])
        return text


def guarded_action(
    *,
    name: str,
    label: str,
    permission: str,
    perform: Perform,
    preview: PreviewFn | None = None,
    explanation: str = "",
    eligible: Callable[[Any], bool] | None = None,
    form: type[forms.Form] | None = None,
) -> Callable[[admin.ModelAdmin, HttpRequest, QuerySet[Any]], HttpResponse | None]:
    """Builds an admin action.

    ``perform(obj, actor, reason)`` calls the service and returns ``"skipped"`` when there was
    nothing to do (``"skipped: <why>"`` shows why in the message; any other text is shown with
    the counts); raising ``NerubaError`` counts the object as failed with its message.
    ``preview(obj)`` describes what will happen (a dry run) for the confirmation page.
    With ``form`` (e.g. an amount and a reason code) the confirmation page asks for its fields
    too, and ``perform(obj, actor, reason, data)`` gets the cleaned data.
    """

    def action(
        modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
    ) -> HttpResponse | None:
        if not request.user.has_perm(permission):
            raise PermissionDenied(f"{label} needs the {permission} permission.")
        objects = list(queryset[: MAX_OBJECTS + 1])
        capped = len(objects) > MAX_OBJECTS
        objects = objects[:MAX_OBJECTS]
        reason = request.POST.get("reason", "").strip()
        reason_missing = False
        confirming = request.POST.get("confirm") == "yes"
        bound = None
        if form is not None:
            # A form that needs the records (an amount typed in their currency) says so with
            # ``takes_objects``; it gets them as ``objects``.
            kwargs = {"objects": objects} if getattr(form, "takes_objects", False) else {}
            bound = form(request.POST, **kwargs) if confirming else form(**kwargs)
        if confirming:
            if reason and (bound is None or bound.is_valid()):
                extra = () if bound is None else (bound.cleaned_data,)
                outcome = ActionOutcome()
                for obj in objects:
                    if eligible is not None and not eligible(obj):
                        outcome.skipped += 1
                        continue
                    try:
                        result = perform(obj, request.user, reason, *extra)
                    except NerubaError as exc:
                        outcome.failed += 1
                        outcome.errors.append(f"{obj}: {exc.message}")
                        continue
                    if result == "skipped":
                        outcome.skipped += 1
                    elif result is not None and result.startswith("skipped: "):
                        # Nothing changed, with the reason shown (e.g. a dry run's count).
                        outcome.skipped += 1
                        outcome.notes.append(result.removeprefix("skipped: "))
                    else:
                        outcome.done += 1
                        if result:
                            outcome.notes.append(result)
                level = messages.ERROR if outcome.failed else messages.SUCCESS
                summary = outcome.summary(label)
                # What the form understood (e.g. "amount $15.00"), so a typo shows at once.
                echo = getattr(bound, "confirmation_note", None)
                if callable(echo) and echo():
                    summary += f" ({echo()})"
                modeladmin.message_user(request, summary, level)
                return None
            reason_missing = not reason
        rows = []
        for obj in objects[:MAX_PREVIEWS]:
            ok = eligible(obj) if eligible is not None else True
            try:
                shown = as_preview(preview(obj)) if (preview is not None and ok) else None
            except NerubaError as exc:
                shown, ok = Preview(summary=f"Will fail: {exc.message}", tone="fail"), False
            rows.append({"object": obj, "preview": shown, "eligible": ok})
        opts = modeladmin.model._meta
        context = {
            **modeladmin.admin_site.each_context(request),
            "title": f"Confirm: {label}",
            "label": label,
            "explanation": explanation,
            "opts": opts,
            "rows": rows,
            "more": max(0, len(objects) - MAX_PREVIEWS),
            "count": len(objects),
            "capped": MAX_OBJECTS if capped else 0,
            "action_name": name,
            "selected": [getattr(modeladmin, "public_pk", lambda o: str(o.pk))(o) for o in objects],
            "reason": reason,
            "reason_missing": reason_missing,
            "form": bound,
            "cancel_url": request.get_full_path(),
            "is_object_action": bool(
                request.resolver_match
                and request.resolver_match.url_name
                and request.resolver_match.url_name.endswith("_object_action")
            ),
        }
        return TemplateResponse(request, "admin/neruba/guarded_action.html", context)

    action.__name__ = name
    action.short_description = label  # type: ignore[attr-defined]
    action.guarded_permission = permission  # type: ignore[attr-defined]
    return action


class GuardedAdminMixin:
    """Hides guarded actions from users without their permission, and serves them for one
    object at ``<pk>/action/<name>/`` (the buttons in ``object_actions`` on the change page)."""

    object_actions: Sequence[str] = ()

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)  # type: ignore[misc]
        return {
            key: value
            for key, value in actions.items()
            if not hasattr(value[0], "guarded_permission")
            or request.user.has_perm(value[0].guarded_permission)
        }

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # A hidden action is simply absent from get_actions(), which Django answers with a quiet
        # "No action selected" redirect; a forced POST naming a guarded action is refused loudly.
        if request.method == "POST":
            every = super().get_actions(request)  # type: ignore[misc]
            for name in request.POST.getlist("action"):
                perm = getattr(every.get(name, (None,))[0], "guarded_permission", None)
                if perm and not request.user.has_perm(perm):
                    raise PermissionDenied(f"{name} needs the {perm} permission.")
        return super().changelist_view(request, extra_context)  # type: ignore[misc]

    def get_urls(self) -> list[Any]:
        opts = self.model._meta  # type: ignore[attr-defined]
        name = f"{opts.app_label}_{opts.model_name}_object_action"
        extra = [
            path(
                "<path:object_id>/action/<str:action>/",
                self.admin_site.admin_view(self.object_action_view),  # type: ignore[attr-defined]
                name=name,
            )
        ]
        return extra + super().get_urls()  # type: ignore[misc]

    def object_action_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        if action not in self.object_actions:
            raise PermissionDenied("Unknown action.")
        func = getattr(self, action, None) or dict(
            (f.__name__, f)
            for f in self.actions or ()  # type: ignore[attr-defined]
        ).get(action)
        if func is None:
            raise PermissionDenied("Unknown action.")
        queryset = self.model._default_manager.filter(pk=object_id)  # type: ignore[attr-defined]
        if not queryset.exists():
            raise PermissionDenied("No such object.")
        bound = func if hasattr(func, "__self__") else (lambda r, q: func(self, r, q))
        response = bound(request, queryset)
        if response is not None:
            return response
        opts = self.model._meta  # type: ignore[attr-defined]
        return HttpResponseRedirect(
            reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id])
        )

    def object_action_buttons(self, request: HttpRequest, obj: Model) -> list[dict[str, str]]:
        buttons = []
        opts = obj._meta
        actions = {f.__name__: f for f in self.actions or ()}  # type: ignore[attr-defined]
        for action in self.object_actions:
            func = getattr(self, action, None) or actions.get(action)
            if func is None:
                continue
            perm = getattr(func, "guarded_permission", None)
            if perm and not request.user.has_perm(perm):
                continue
            buttons.append(
                {
                    "label": str(getattr(func, "short_description", action)),
                    "url": reverse(
                        f"admin:{opts.app_label}_{opts.model_name}_object_action",
                        args=[obj.pk, action],
                    ),
                }
            )
        return buttons

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = extra_context or {}
        obj = self.get_object(request, object_id)  # type: ignore[attr-defined]
        if obj is not None:
            extra_context["object_action_buttons"] = self.object_action_buttons(request, obj)
        return super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]


COUNT_CAP = 10_000


class CappedCountPaginator(Paginator):
    """Counts at most ``COUNT_CAP`` rows: a full ``COUNT(*)`` over millions of rows would cost
    more than the page itself. Past the cap the last page shown is the cap's. The count drops
    the list's ordering: any ``COUNT_CAP`` matching rows will do, and sorting them would not."""

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[: COUNT_CAP + 1].count()  # type: ignore[union-attr]


class ExactSearchMixin:
    """Search by exact, case-sensitive value on indexed columns. Django's ``=field`` search is
    ``iexact`` (``UPPER(col) = UPPER(term)``), which no plain index serves: over millions of
    rows it is a full scan. Each field here is matched with ``=`` and the matches are OR-ed, so
    PostgreSQL combines the columns' indexes."""

    exact_search_fields: Sequence[str] = ()
    # Matched by prefix too ("evt-00" finds "evt-0001"): a range on the same btree index
    # (``col >= term AND col < next(term)``), which every collation's index serves.
    prefix_search_fields: Sequence[str] = ()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term or not self.exact_search_fields:
            return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        match = Q()
        for name in self.exact_search_fields:
            match |= Q(**{name: term})
        after = term[:-1] + chr(ord(term[-1]) + 1)
        for name in self.prefix_search_fields:
            match |= Q(**{f"{name}__gte": term, f"{name}__lt": after, f"{name}__startswith": term})
        return queryset.filter(match), False


class ReadOnlyAdminMixin:
    """Records of fact: viewable, never added, changed or deleted from the console."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


REASON_FIELD = "change_reason"


class ReasonRequiredAdminMixin:
    """Every create and change made through a plain console form asks for a reason, kept in the
    audit entry the save writes (``change_reason(form)``), as every guarded action does."""

    reason_label = "Reason (required, kept in the audit log)"

    def _reason_wanted(self, request: HttpRequest, obj: Model | None) -> bool:
        if obj is None:
            return bool(self.has_add_permission(request))  # type: ignore[attr-defined]
        return bool(self.has_change_permission(request, obj))  # type: ignore[attr-defined]

    def get_form(
        self, request: HttpRequest, obj: Model | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if self._reason_wanted(request, obj):
            base = kwargs.get("form")
            if base is None:
                add_form = getattr(self, "add_form", None)
                base = add_form if (obj is None and add_form is not None) else self.form  # type: ignore[attr-defined]
            kwargs["form"] = type(
                base.__name__,
                (base,),
                {
                    REASON_FIELD: forms.CharField(
                        label=self.reason_label,
                        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
                        help_text="Why this change: what a colleague reading the audit log "
                        "needs to know.",
                    )
                },
            )
        return super().get_form(request, obj, change=change, **kwargs)  # type: ignore[misc]

    def get_fieldsets(self, request: HttpRequest, obj: Model | None = None) -> Any:
        from django.contrib.admin.utils import flatten_fieldsets

        fieldsets = list(super().get_fieldsets(request, obj))  # type: ignore[misc]
        if self._reason_wanted(request, obj) and REASON_FIELD not in flatten_fieldsets(fieldsets):
            fieldsets.append(("Reason", {"fields": [REASON_FIELD]}))
        return fieldsets

    @staticmethod
    def change_reason(form: Any, default: str = "console edit") -> str:
        data = getattr(form, "cleaned_data", None) or {}
        return (data.get(REASON_FIELD) or "").strip() or default


class AuditedAdminMixin(ReasonRequiredAdminMixin):
    """Plain console edits of reference data (catalog, meters) are audited too: the save and
    its audit entry commit together, with the fields before and after.

    ``audit_snapshot`` is what the entry records of a row (override it to leave secrets out).
    With ``audit_after_related`` the entry is written once the many-to-many fields (a user's
    groups, a group's permissions) are saved too, still inside the admin's transaction."""

    audit_after_related = False

    def audit_snapshot(self, obj: Model) -> dict[str, Any]:
        from django.forms.models import model_to_dict

        return model_to_dict(obj)

    def _audit_save(
        self, request: HttpRequest, obj: Model, change: bool, before: Any, reason: str
    ) -> None:
        from neruba import audit

        audit.record(
            actor=request.user,
            action=f"{obj._meta.model_name}.{'update' if change else 'create'}",
            target=obj,
            reason=reason,
            before=before,
            after=self.audit_snapshot(obj),
            customer=getattr(obj, "customer", None),
        )

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        from django.db import transaction

        # Inline rows (a plan's prices) are saved after this and audited with the same reason.
        request._neruba_change_reason = self.change_reason(form)  # type: ignore[attr-defined]
        with transaction.atomic():
            before = None
            if change:
                before = self.audit_snapshot(type(obj)._default_manager.get(pk=obj.pk))
            super().save_model(request, obj, form, change)  # type: ignore[misc]
            if self.audit_after_related:
                form.audit_before = before
            else:
                self._audit_save(request, obj, change, before, self.change_reason(form))

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)  # type: ignore[misc]
        if self.audit_after_related:
            self._audit_save(
                request,
                form.instance,
                change,
                getattr(form, "audit_before", None),
                self.change_reason(form),
            )

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        from django.db import transaction

        from neruba import audit

        with transaction.atomic():
            audit.record(
                actor=request.user,
                action=f"{obj._meta.model_name}.delete",
                target=obj,
                reason="console delete",
                before=self.audit_snapshot(obj),
            )
            super().delete_model(request, obj)  # type: ignore[misc]

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        from django.db import transaction
        from django.forms.models import model_to_dict

        from neruba import audit

        with transaction.atomic():
            super().save_formset(request, form, formset, change)  # type: ignore[misc]
            for obj in formset.new_objects:
                audit.record(
                    actor=request.user,
                    action=f"{obj._meta.model_name}.create",
                    target=obj,
                    reason=getattr(request, "_neruba_change_reason", "console edit"),
                    after=model_to_dict(obj),
                )
            for obj, fields in formset.changed_objects:
                audit.record(
                    actor=request.user,
                    action=f"{obj._meta.model_name}.update",
                    target=obj,
                    reason=getattr(request, "_neruba_change_reason", "console edit"),
                    after={**model_to_dict(obj), "changed": fields},
                )
            for obj in formset.deleted_objects:
                audit.record(
                    actor=request.user,
                    action=f"{obj._meta.model_name}.delete",
                    target_type=obj._meta.label_lower,
                    target_id=str(obj.pk),
                    reason=getattr(request, "_neruba_change_reason", "console edit"),
                    before=model_to_dict(obj),
                )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            self.delete_model(request, obj)


def money_column(
    field_name: str, *, currency: str = "currency", description: str | None = None
) -> Callable[[Any, Any], str]:
    """An admin column (or read-only field) that shows the minor-unit ``field_name`` through
    the one money formatter: ``money_column("total")`` shows 1500 USD as "$15.00".
    ``currency`` is the attribute path of the currency code (``"subscription__plan__currency"``).
    """
    from neruba.money import money

    def column(modeladmin: Any, obj: Any) -> str:
        value: Any = obj
        for part in currency.split("__"):
            value = getattr(value, part, None) if value is not None else None
        return money(getattr(obj, field_name, None), str(value or ""))

    column.short_description = description or field_name.replace("_", " ")  # type: ignore[attr-defined]
    column.admin_order_field = field_name  # type: ignore[attr-defined]
    column.__name__ = f"{field_name}_money"
    return column


def quantity_column(
    field_name: str, *, description: str | None = None
) -> Callable[[Any, Any], str]:
    """A Decimal column without storage noise (``1.0000000000`` -> 1)."""
    from neruba.money import quantity

    def column(modeladmin: Any, obj: Any) -> str:
        return quantity(getattr(obj, field_name, None))

    column.short_description = description or field_name.replace("_", " ")  # type: ignore[attr-defined]
    column.__name__ = f"{field_name}_qty"
    return column
