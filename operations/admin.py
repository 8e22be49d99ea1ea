"""The operator console's hub pages, layered on the apps' admins (operations may import every
app; nothing imports operations).

- the customer page as the hub (subscriptions, usage so far, invoices, ledger, refunds,
  disputes, rejections, webhook events, audit trail, notes) with "Issue a credit";
- support notes and ready-to-send replies on customer, invoice, event and webhook pages;
- "Why wasn't this billed?" links from events and rejections;
- finance screens: the credit ledger and the audit log with filters and a CSV export of the
  filtered rows; invoice totals per status and currency above the invoice list;
- "Record a correction" on invoices; resolve or ignore drift findings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Model, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_date

import billing.admin as billing_admin
import ingest.admin as ingest_admin
import neruba.admin as neruba_admin
import webhooks.admin as webhooks_admin
from billing import services as billing_services
from billing.drift import finding_resolve
from billing.ledger import credit_grant
from billing.models import (
    BillingRun,
    BillingWindow,
    CreditEntry,
    Dispute,
    DriftFinding,
    Invoice,
    ReasonCode,
)
from billing.selectors import cash_totals, credit_balances
from ingest.models import IngestRejection, UsageEvent
from neruba import audit
from neruba.admin_actions import (
    AuditedAdminMixin,
    CappedCountPaginator,
    ExactSearchMixin,
    GuardedAdminMixin,
    guarded_action,
)
from neruba.admin_site import console
from neruba.models import AuditEntry, Customer
from neruba.money import major_str, money
from neruba.previews import Preview
from operations import exports
from operations.hub import customer_hub, notes_for
from operations.stories import dispute_story, invoice_story, run_story, timeline, window_story
from operations.support_messages import messages_for_customer, messages_for_invoice
from webhooks.handlers import HANDLERS
from webhooks.models import StripeEvent

EXPORT_PERMISSION = "neruba.export_auditentry"


# --- filters with a text or date input ---------------------------------------------------------


class InputFilter(admin.ListFilter):
    """A list filter that is a text (or date) box: customers and actors are too many to list
    as links, and listing them would scan the table for distinct values."""

    parameter_name = ""
    lookup = ""
    input_type = "text"
    placeholder = ""
    # Offered as you type (a <datalist>): the box still takes any value.
    suggestions: Sequence[str] = ()
    template = "admin/neruba/input_filter.html"

    def __init__(
        self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any
    ) -> None:
        super().__init__(request, params, model, model_admin)
        value = params.pop(self.parameter_name, None)
        if isinstance(value, list):
            value = value[-1] if value else None
        self.used_value = (value or "").strip()
        self.other = [
            (key, v)
            for key, values in request.GET.lists()
            for v in values
            if key not in (self.parameter_name, "p")
        ]

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str]:
        return [self.parameter_name]

    def clean(self, value: str) -> Any:
        return value

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if not self.used_value:
            return queryset
        try:
            cleaned = self.clean(self.used_value)
        except ValueError as exc:
            raise IncorrectLookupParameters(str(exc)) from exc
        return queryset.filter(**{self.lookup: cleaned})

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        yield {
            "name": self.parameter_name,
            "value": self.used_value,
            "other": self.other,
            "input_type": self.input_type,
            "placeholder": self.placeholder,
            "suggestions": self.suggestions,
        }


def input_filter(
    title: str,
    parameter: str,
    lookup: str,
    placeholder: str = "",
    suggestions: Sequence[str] = (),
) -> type[InputFilter]:
    return type(
        f"{parameter.title().replace('_', '')}Filter",
        (InputFilter,),
        {
            "title": title,
            "parameter_name": parameter,
            "lookup": lookup,
            "placeholder": placeholder,
            "suggestions": tuple(suggestions),
        },
    )


# The actions the services audit, offered in the audit log's action filter (listing the
# distinct values of a big table would scan it on every page).
AUDIT_ACTIONS = sorted(
    {
        *(
            "api_key.create api_key.revoke credit.grant credit.reverse customer.create "
            "customer.stripe_link customer.update drift_finding.resolve export.csv "
            "ingest_rejection.dismiss ingest_rejection.replay invoice.mark_paid "
            "invoice.payment_status invoice.rerun lock.release metric.create note.add "
            "plan.create stripe_event.dead stripe_event.replay subscription.create "
            "subscription.end user.password_set user.create user.update group.create "
            "group.update price.create price.update plan.update metric.update "
            "dispute.record dispute.update refund.record refund.update"
        ).split()
    }
)


class _DateFilter(InputFilter):
    input_type = "date"
    inclusive_end = False

    def clean(self, value: str) -> Any:
        day = parse_date(value)
        if day is None:
            raise ValueError(f"{value!r} is not a date (YYYY-MM-DD).")
        start = timezone.make_aware(datetime.combine(day, time.min), timezone.get_fixed_timezone(0))
        return start + timedelta(days=1) if self.inclusive_end else start


def date_filters(field: str) -> list[type[InputFilter]]:
    """Filters "from day" and "until day" (inclusive) on ``field``, in UTC."""
    since = type(
        "SinceFilter",
        (_DateFilter,),
        {"title": "from day", "parameter_name": "since", "lookup": f"{field}__gte"},
    )
    until = type(
        "UntilFilter",
        (_DateFilter,),
        {
            "title": "until day (inclusive)",
            "parameter_name": "until",
            "lookup": f"{field}__lt",
            "inclusive_end": True,
        },
    )
    return [since, until]


# --- notes, explain links, replies on change pages -----------------------------------------


def _change_url(obj: Model) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])


class ConsolePageMixin:
    """Adds the console's panels below a record's form: support notes (with the add form),
    "Why wasn't this billed?" for events and rejections, ready-to-send replies."""

    change_form_template = "operations/change_form.html"
    notes = True

    def console_context(self, request: HttpRequest, obj: Any) -> dict[str, Any]:
        context: dict[str, Any] = {"console_links": []}
        # The audit log is the real history: Django's own (admin LogEntry) never sees the
        # services' writes, so its History page is always empty here.
        if request.user.has_perm("neruba.view_auditentry"):
            context["timeline"] = timeline(obj=obj)
            context["audit_history_url"] = (
                reverse("admin:neruba_auditentry_changelist")
                + "?"
                + urlencode(
                    {"target_type": obj._meta.label_lower, "target_id": audit.public_id(obj)}
                )
            )
        if self.notes and request.user.has_perm("neruba.view_supportnote"):
            context["notes"] = notes_for(target=obj)
            context["can_add_note"] = request.user.has_perm("neruba.add_supportnote")
            context["note_target"] = {
                "content_type": ContentType.objects.get_for_model(obj).pk,
                "object_id": obj.pk,
                "next": _change_url(obj),
            }
        return context

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = dict(extra_context or {})
        obj = self.get_object(request, object_id)  # type: ignore[attr-defined]
        if obj is not None and self.has_view_or_change_permission(request, obj):  # type: ignore[attr-defined]
            extra_context.update(self.console_context(request, obj))
        return super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]


def _explain_link(key: str) -> dict[str, str]:
    return {
        "label": "Why wasn't this billed?",
        "url": reverse("explain") + "?" + urlencode({"key": key}),
        "id": "explain-link",
    }


# --- guarded credit actions --------------------------------------------------------------------


class _AmountForm(forms.Form):
    """An amount typed in major units of the selected records' one currency."""

    takes_objects = True
    amount = billing_admin.MajorAmountField()

    def __init__(self, *args: Any, objects: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.currencies = sorted({self.currency_of(o).upper() for o in objects})
        if len(self.currencies) == 1:
            self.fields["amount"].label = f"Amount in {self.currencies[0]}"

    def currency_of(self, obj: Any) -> str:
        return obj.currency

    def confirmation_note(self) -> str:
        amount = (getattr(self, "cleaned_data", None) or {}).get("amount")
        if amount is None or len(self.currencies) != 1:
            return ""
        return f"amount {money(amount, self.currencies[0])}"

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if len(self.currencies) != 1:
            self.add_error("amount", "Select records of one currency to type one amount.")
            return data
        data["amount"] = billing_admin.minor_amount(self, "amount", self.currencies[0])
        return data


class CreditForm(_AmountForm):
    """The ledger form's fields, less the customer (the action's record), the currency (always
    the customer's: a credit in another currency could never be spent) and the reason (the
    guarded action's own)."""

    reason_code = forms.ChoiceField(
        choices=billing_admin.GRANTABLE_CHOICES,
        initial=ReasonCode.GOODWILL,
        help_text=billing_admin.CreditIssueForm.declared_fields["reason_code"].help_text,
    )


def _credit_issue(customer: Customer, actor: Any, reason: str, data: dict[str, Any]) -> None:
    billing_services.credit_issue(
        customer=customer,
        amount=data["amount"],
        currency=customer.currency,
        reason_code=data["reason_code"],
        actor=actor,
        reason=reason,
    )


def _credit_preview(customer: Customer) -> Preview:
    balances = credit_balances(customer=customer) or {customer.currency: 0}
    return Preview(
        summary=f"A credit entry is added to {customer.external_id}'s ledger; it is applied to "
        "the next invoice.",
        facts=[
            ("currency", customer.currency),
            *((f"balance now ({cur})", money(amount, cur)) for cur, amount in balances.items()),
        ],
    )


issue_credit = guarded_action(
    name="issue_credit",
    label="Issue a credit",
    permission="billing.issue_credit",
    perform=_credit_issue,
    preview=_credit_preview,
    form=CreditForm,
    explanation="Credits are spendable ledger entries: never edited; a mistake is corrected by "
    "another entry. Type the amount in major units of the customer's currency (15.00 is "
    "$15.00). A Stripe refund or lost dispute is never credit: it is cash back on the card, "
    "shown on its invoice.",
)


class CorrectionForm(_AmountForm):
    pass


def _correction(invoice: Invoice, actor: Any, reason: str, data: dict[str, Any]) -> None:
    credit_grant(
        customer=invoice.customer,
        amount=data["amount"],
        reason_code=ReasonCode.CORRECTION,
        actor=actor,
        reason=reason,
        currency=invoice.currency,
        invoice=invoice,
    )


record_correction = guarded_action(
    name="record_correction",
    label="Record a correction (credit for this invoice)",
    permission="billing.issue_credit",
    perform=_correction,
    preview=lambda inv: Preview(
        summary=f"A correction credit linked to {inv.number} is added to "
        f"{inv.customer.external_id}'s ledger; the invoice itself is not changed.",
        facts=[("invoice total", money(inv.total, inv.currency)), ("currency", inv.currency)],
    ),
    eligible=lambda inv: inv.status != Invoice.Status.VOID,
    form=CorrectionForm,
    explanation="For a wrong amount on an invoice that should stand (e.g. paid): the "
    "difference is credited and applied to the next invoice. To re-price the window from the "
    "events instead, use Rerun. Type the amount in major units (15.00 is $15.00).",
)


# --- CSV export --------------------------------------------------------------------------------


class CsvExportMixin:
    """``export.csv`` next to the changelist: the rows the current filters and search select,
    streamed, for users with the export permission; the export itself is audited."""

    csv_columns: list[tuple[str, Callable[[Any], Any]]] = []
    change_list_template = "operations/change_list.html"

    def can_export(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request) and request.user.has_perm(EXPORT_PERMISSION)  # type: ignore[attr-defined]

    def get_urls(self) -> list[Any]:
        opts = self.model._meta  # type: ignore[attr-defined]
        return [
            path(
                "export.csv",
                self.admin_site.admin_view(self.export_view),  # type: ignore[attr-defined]
                name=f"{opts.app_label}_{opts.model_name}_export",
            ),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        if not self.can_export(request):
            raise PermissionDenied(f"Exporting needs the {EXPORT_PERMISSION} permission.")
        changelist = self.get_changelist_instance(request)  # type: ignore[attr-defined]
        opts = self.model._meta  # type: ignore[attr-defined]
        rows = exports.csv_export(
            queryset=changelist.queryset,
            columns=self.csv_columns,
            actor=request.user,
            label=opts.label_lower,
            filters=request.GET.urlencode(),
        )
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{opts.model_name}-{stamp}.csv"'
        return response

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = dict(extra_context or {})
        if self.can_export(request):
            opts = self.model._meta  # type: ignore[attr-defined]
            query = request.GET.urlencode()
            extra_context["export_url"] = reverse(
                f"admin:{opts.app_label}_{opts.model_name}_export"
            ) + (f"?{query}" if query else "")
        return super().changelist_view(request, extra_context)  # type: ignore[misc]


# --- the customer hub --------------------------------------------------------------------------


class CustomerHubAdmin(ConsolePageMixin, GuardedAdminMixin, neruba_admin.CustomerAdmin):
    actions = [issue_credit, ingest_admin.void_usage_range]
    object_actions = ["issue_credit", "void_usage_range"]

    def has_delete_permission(self, request: HttpRequest, obj: Customer | None = None) -> bool:
        # Invoices, ledger entries and the audit log point at customers: history stays.
        return False

    def console_context(self, request: HttpRequest, obj: Customer) -> dict[str, Any]:
        context = super().console_context(request, obj)
        context["hub"] = customer_hub(customer=obj)
        context["support_messages"] = messages_for_customer(customer=obj)
        return context


# --- records with notes and explain links ------------------------------------------------------


class ChoicesFilter(admin.SimpleListFilter):
    """Links for a fixed list of values: the list filter Django builds for a plain column
    (``SELECT DISTINCT``) scans the whole table on every page."""

    values: Sequence[str] = ()
    lookup = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(v, v) for v in self.values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.lookup: value}) if value else queryset


def choices_filter(title: str, field: str, values: Sequence[str]) -> type[ChoicesFilter]:
    return type(
        f"{field.title()}ChoicesFilter",
        (ChoicesFilter,),
        {"title": title, "parameter_name": field, "lookup": field, "values": tuple(values)},
    )


# Sources the ingest path writes (the API, operator replays, the demo seed).
EVENT_SOURCES = ("api", "replay", "demo", "backfill", "amend")


class UsageEventConsoleAdmin(ConsolePageMixin, ExactSearchMixin, ingest_admin.UsageEventAdmin):
    list_filter = [
        "late",
        choices_filter("source", "source", EVENT_SOURCES),
        "metric",
        input_filter("customer", "customer", "customer__external_id", "external id"),
    ]
    # None here: the events table has no key index (partitioned on PostgreSQL); keys are
    # looked up in the key registry (exact or by prefix) in get_search_results.
    exact_search_fields = ()
    search_help_text = "Idempotency key or its start (case-sensitive)."

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UsageEvent], search_term: str
    ) -> tuple[QuerySet[UsageEvent], bool]:
        from operations.search import events_by_key_prefix

        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(events_by_key_prefix(term, limit=100)), False

    def console_context(self, request: HttpRequest, obj: UsageEvent) -> dict[str, Any]:
        context = super().console_context(request, obj)
        # An amendment's row has no key of its own: explain the event it amends.
        key = obj.amends.idempotency_key if obj.amends_id else obj.idempotency_key
        context["console_links"].append(_explain_link(key or ""))
        return context


class IngestRejectionConsoleAdmin(
    ConsolePageMixin, ExactSearchMixin, ingest_admin.IngestRejectionAdmin
):
    notes = False
    list_filter = [
        "outcome",
        "status",
        input_filter("error code", "error_code", "error_code", "e.g. unknown_customer"),
        input_filter("customer", "customer_ref", "customer_ref", "external id as sent"),
        input_filter("metric", "metric_ref", "metric_ref", "metric code as sent"),
        input_filter("API key", "api_key_prefix", "api_key_prefix", "key prefix"),
        "created_at",
    ]
    exact_search_fields = ["idempotency_key", "customer_ref", "metric_ref"]
    prefix_search_fields = ["idempotency_key"]

    def console_context(self, request: HttpRequest, obj: IngestRejection) -> dict[str, Any]:
        context = super().console_context(request, obj)
        if obj.idempotency_key:
            context["console_links"].append(_explain_link(obj.idempotency_key))
        return context


class StripeEventConsoleAdmin(ConsolePageMixin, ExactSearchMixin, webhooks_admin.StripeEventAdmin):
    list_filter = [
        "status",
        choices_filter("type", "type", sorted(HANDLERS)),
        "livemode",
        "received_at",
    ]
    exact_search_fields = ["stripe_id", "object_id"]
    paginator = CappedCountPaginator

    def get_queryset(self, request: HttpRequest) -> QuerySet[StripeEvent]:
        # The list never shows the bodies; a 200,000-row table should not ship them per page.
        qs = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name.endswith("_changelist"):
            qs = qs.defer("raw_body", "payload", "headers")
        return qs


class InvoiceConsoleAdmin(ConsolePageMixin, billing_admin.InvoiceAdmin):
    search_help_text = "Invoice number (or its digits, e.g. 96), customer external id, or "
    "provider invoice id."

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Invoice], search_term: str
    ) -> tuple[QuerySet[Invoice], bool]:
        from operations.search import invoice_match

        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(invoice_match(term)), False

    change_list_template = "operations/change_list.html"
    actions = [*billing_admin.InvoiceAdmin.actions, record_correction]
    object_actions = [*billing_admin.InvoiceAdmin.object_actions, "record_correction"]

    def console_context(self, request: HttpRequest, obj: Invoice) -> dict[str, Any]:
        context = super().console_context(request, obj)
        context["support_messages"] = messages_for_invoice(invoice=obj)
        context["story"] = invoice_story(invoice=obj)
        context["story_template"] = "operations/_invoice_story.html"
        context["console_links"].append(
            {
                "label": "Customer page",
                "url": _change_url(obj.customer),
                "id": "customer-link",
            }
        )
        return context

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        if isinstance(response, TemplateResponse) and "cl" in (response.context_data or {}):
            response.context_data["totals"] = invoice_totals(response.context_data["cl"].queryset)
        return response


def invoice_totals(queryset: QuerySet[Invoice]) -> list[dict[str, Any]]:
    """Count and sums per status and currency of the filtered invoices, one GROUP BY."""
    return list(
        queryset.order_by()
        .values("status", "currency")
        .annotate(
            n=Count("id"),
            subtotal_sum=Sum("subtotal"),
            credits_sum=Sum("credits_applied"),
            total_sum=Sum("total"),
            paid_sum=Sum("amount_paid"),
            refunded_sum=Sum("amount_refunded"),
            disputed_sum=Sum("amount_disputed"),
            collected_sum=Sum("amount_collected"),
        )
        .order_by("status", "currency")
    )


# --- finance: ledger and audit log -------------------------------------------------------------

_ledger_columns: list[tuple[str, Callable[[Any], Any]]] = [
    ("id", lambda e: e.pk),
    ("created_at", lambda e: e.created_at.isoformat()),
    ("customer", lambda e: e.customer.external_id),
    ("kind", lambda e: e.kind),
    # Both units, named: major units for people and spreadsheets, minor units for exact sums.
    ("amount", lambda e: major_str(e.amount, e.currency)),
    ("amount_minor_units", lambda e: e.amount),
    ("currency", lambda e: e.currency),
    ("reason_code", lambda e: e.reason_code),
    ("invoice", lambda e: e.invoice.number if e.invoice_id else ""),
    ("actor", lambda e: e.actor.get_username() if e.actor_id else "system"),
    ("note", lambda e: e.note),
    ("source_key", lambda e: e.source_key or ""),
]


class CreditLedgerAdmin(CsvExportMixin, billing_admin.CreditEntryAdmin):
    list_display = [*billing_admin.CreditEntryAdmin.list_display, "actor", "note"]
    list_select_related = ["customer", "invoice", "actor"]
    list_filter = [
        input_filter("customer", "customer", "customer__external_id", "external id"),
        input_filter("actor", "actor", "actor__username", "username"),
        "kind",
        "reason_code",
        "currency",
        *date_filters("created_at"),
    ]
    csv_columns = _ledger_columns

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Filtered to one customer, the ledger also shows that customer's cash story beside the
        spendable balance, so nobody reads a refund into the credit column."""
        extra_context = dict(extra_context or {})
        external_id = (request.GET.get("customer") or "").strip()
        if not external_id and request.GET.get("customer__id__exact", "").isdigit():
            found = Customer.objects.filter(pk=int(request.GET["customer__id__exact"])).first()
            external_id = found.external_id if found else ""
        customer = Customer.objects.filter(external_id=external_id).first() if external_id else None
        if customer is not None:
            balances = credit_balances(customer=customer)
            cash = {row["currency"]: row for row in cash_totals(customer=customer)}
            extra_context["ledger_customer"] = customer
            extra_context["ledger_cash"] = [
                {
                    "currency": currency,
                    "balance": balances.get(currency, 0),
                    **{
                        k: cash.get(currency, {}).get(k, 0)
                        for k in ("paid", "refunded", "disputed", "collected")
                    },
                }
                for currency in sorted({*balances, *cash})
            ]
        return super().changelist_view(request, extra_context)


_audit_columns: list[tuple[str, Callable[[Any], Any]]] = [
    ("id", lambda a: a.pk),
    ("created_at", lambda a: a.created_at.isoformat()),
    ("actor", lambda a: a.actor_label),
    ("action", lambda a: a.action),
    ("target_type", lambda a: a.target_type),
    ("target_id", lambda a: audit.shown_target_id(a.target_type, a.target_id)),
    ("target", lambda a: a.target_repr),
    ("customer", lambda a: a.customer.external_id if a.customer_id else ""),
    ("reason", lambda a: a.reason),
    ("reason_code", lambda a: (a.after or {}).get("reason_code", "")),
    ("request_id", lambda a: a.request_id),
]


class AuditLogAdmin(CsvExportMixin, neruba_admin.AuditEntryAdmin):
    list_filter = [
        input_filter("customer", "customer", "customer__external_id", "external id"),
        input_filter("actor", "actor", "actor_label", "username or api_key:prefix"),
        input_filter("action", "action", "action", "e.g. credit.grant", AUDIT_ACTIONS),
        input_filter("reason code", "reason_code", "after__reason_code", "e.g. goodwill"),
        input_filter("record type", "target_type", "target_type", "e.g. billing.invoice"),
        input_filter("record id", "target_id", "target_id", "e.g. 42"),
        *date_filters("created_at"),
    ]
    csv_columns = _audit_columns


# --- drift findings ----------------------------------------------------------------------------


def _settle_action(finding: DriftFinding) -> str:
    """How a usage finding is settled: an unpaid (or missing) invoice is rerun, a paid one
    gets a correction credit or a supplementary invoice."""
    invoice = (
        Invoice.objects.filter(window_id=finding.window_id, kind=Invoice.Kind.REGULAR)
        .exclude(status=Invoice.Status.VOID)
        .first()
    )
    return "credit" if invoice is not None and invoice.status == Invoice.Status.PAID else "rerun"


def _drift_actions() -> list[Any]:
    """Resolve (re-price the window) or ignore, through ``billing.drift.finding_resolve``."""

    def resolve(finding: DriftFinding, actor: Any, reason: str, action: str) -> None:
        finding_resolve(finding=finding, action=action, actor=actor, reason=reason, dry_run=False)

    def preview(finding: DriftFinding, action: str) -> Preview:
        shown = finding_resolve(
            finding=finding, action=action, actor=None, reason="", dry_run=True
        ).to_preview()
        if action != "ignore" and finding.delta_amount == 0:
            # The quantity moved but the money did not: re-pricing would void and reissue an
            # invoice for the same total.
            shown.tone = "warn"
            shown.notes.insert(
                0,
                "The money difference is zero: re-pricing would issue an identical total. "
                "Mark ignored is usually the right choice.",
            )
        return shown

    def is_open(finding: DriftFinding) -> bool:
        return finding.status == DriftFinding.Status.OPEN

    def is_open_usage(finding: DriftFinding) -> bool:
        # A payment finding is settled at the provider: only "ignore" closes it.
        return is_open(finding) and finding.kind == "usage"

    return [
        guarded_action(
            name="resolve_findings",
            label="Resolve: re-price the window (rerun or correction)",
            permission="billing.resolve_driftfinding",
            perform=lambda f, actor, reason: resolve(f, actor, reason, _settle_action(f)),
            preview=lambda f: preview(f, _settle_action(f)),
            eligible=is_open_usage,
            explanation="The window is re-priced from the events stored now: an unpaid invoice "
            "is voided and superseded, a paid one gets a correction credit or a supplementary "
            "invoice. Every open usage finding of the window closes with it.",
        ),
        guarded_action(
            name="ignore_findings",
            label="Mark ignored (accept the drift)",
            permission="billing.resolve_driftfinding",
            perform=lambda f, actor, reason: resolve(f, actor, reason, "ignore"),
            preview=lambda f: preview(f, "ignore"),
            eligible=is_open,
            explanation="Nothing is billed or credited; the finding is closed with your reason.",
        ),
    ]


class BillingRunConsoleAdmin(ConsolePageMixin, billing_admin.BillingRunAdmin):
    notes = False

    def console_context(self, request: HttpRequest, obj: BillingRun) -> dict[str, Any]:
        context = super().console_context(request, obj)
        context["story"] = run_story(run=obj)
        context["story_template"] = "operations/_run_story.html"
        return context


class BillingWindowConsoleAdmin(ConsolePageMixin, billing_admin.BillingWindowAdmin):
    notes = False

    def console_context(self, request: HttpRequest, obj: BillingWindow) -> dict[str, Any]:
        context = super().console_context(request, obj)
        context["story"] = window_story(window=obj)
        context["story_template"] = "operations/_window_story.html"
        return context


class DisputeConsoleAdmin(ConsolePageMixin, billing_admin.DisputeAdmin):
    notes = False

    def console_context(self, request: HttpRequest, obj: Dispute) -> dict[str, Any]:
        context = super().console_context(request, obj)
        context["story"] = dispute_story(dispute=obj)
        context["story_template"] = "operations/_dispute_story.html"
        return context


class DriftFindingConsoleAdmin(
    ConsolePageMixin, GuardedAdminMixin, billing_admin.DriftFindingAdmin
):
    notes = False
    actions = _drift_actions()
    object_actions = [a.__name__ for a in actions]

    def object_action_buttons(self, request: HttpRequest, obj: Model) -> list[dict[str, str]]:
        # A closed finding offers nothing; a payment finding only "ignore".
        if obj.status != DriftFinding.Status.OPEN:
            return []
        buttons = super().object_action_buttons(request, obj)
        if obj.kind != "usage":
            buttons = [b for b in buttons if "resolve_findings" not in b["url"]]
        return buttons


# --- console users and role groups (superusers only): audited like every other change --------


def _user_snapshot(user: User) -> dict[str, Any]:
    # Never the password hash: the audit log is exported.
    return {
        "username": user.get_username(),
        "email": user.email,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
        "groups": sorted(user.groups.values_list("name", flat=True)),
    }


def _group_snapshot(group: Group) -> dict[str, Any]:
    return {
        "name": group.name,
        "permissions": sorted(
            f"{p.content_type.app_label}.{p.codename}"
            for p in group.permissions.select_related("content_type")
        ),
    }


class AuditedUserAdmin(AuditedAdminMixin, UserAdmin):
    audit_after_related = True

    def audit_snapshot(self, obj: User) -> dict[str, Any]:
        return _user_snapshot(obj)

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and response.status_code == 302:
            user = User.objects.get(pk=id)
            audit.record(
                actor=request.user,
                action="user.password_set",
                target=user,
                reason="console edit",
                after={"username": user.get_username()},
            )
        return response


class AuditedGroupAdmin(AuditedAdminMixin, GroupAdmin):
    audit_after_related = True

    def audit_snapshot(self, obj: Group) -> dict[str, Any]:
        return _group_snapshot(obj)


# --- registration: replace the apps' admins with the console's ----------------------------------

for model, model_admin in (
    (User, AuditedUserAdmin),
    (Group, AuditedGroupAdmin),
    (Customer, CustomerHubAdmin),
    (UsageEvent, UsageEventConsoleAdmin),
    (IngestRejection, IngestRejectionConsoleAdmin),
    (StripeEvent, StripeEventConsoleAdmin),
    (Invoice, InvoiceConsoleAdmin),
    (CreditEntry, CreditLedgerAdmin),
    (AuditEntry, AuditLogAdmin),
    (DriftFinding, DriftFindingConsoleAdmin),
    (BillingRun, BillingRunConsoleAdmin),
    (BillingWindow, BillingWindowConsoleAdmin),
    (Dispute, DisputeConsoleAdmin),
):
    if console.is_registered(model):
        console.unregister(model)
    console.register(model, model_admin)
