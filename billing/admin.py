from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from billing import payments, services
from billing.models import (
    GRANTABLE,
    BillingRun,
    BillingShard,
    BillingWindow,
    CreditEntry,
    Dispute,
    DriftFinding,
    Invoice,
    InvoiceLine,
    PaymentFinding,
    Plan,
    Price,
    ProviderSync,
    Refund,
    Subscription,
)
from neruba.admin_actions import (
    AuditedAdminMixin,
    GuardedAdminMixin,
    ReadOnlyAdminMixin,
    guarded_action,
)
from neruba.admin_site import console
from neruba.errors import NerubaError
from neruba.money import money

# Reason codes a person may grant credit for (never a Stripe refund or dispute: those are cash).
GRANTABLE_CHOICES = [(c.value, c.label) for c in GRANTABLE]


def cash_story(invoice: Invoice) -> str:
    """The invoice's money in one line, in major units: what it charged, what arrived, what
    went back to the card, and the net."""
    cur = invoice.currency
    return (
        f"charged {money(invoice.total, cur)}, paid {money(invoice.amount_paid, cur)}, "
        f"refunded {money(invoice.amount_refunded, cur)}, lost in disputes "
        f"{money(invoice.amount_disputed, cur)}, collected {money(invoice.amount_collected, cur)}"
        f" {cur}"
    )


class PriceInline(admin.TabularInline):
    model = Price
    extra = 0
    raw_id_fields = ["metric"]


@admin.register(Plan, site=console)
class PlanAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["code", "name", "currency", "interval", "base_amount"]
    list_filter = ["interval", "currency"]
    search_fields = ["code", "name"]
    inlines = [PriceInline]


class SubscriptionForm(forms.ModelForm):
    """Checks the same rules as the API (currency, no overlap) before anything is saved."""

    class Meta:
        model = Subscription
        fields = ["customer", "plan", "started_at", "ended_at", "external_id"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        instance = self.instance
        customer = data.get("customer") or getattr(instance, "customer", None)
        plan = data.get("plan") or getattr(instance, "plan", None)
        started_at = data.get("started_at") or instance.started_at
        ended_at = data.get("ended_at")
        if customer is None or plan is None or started_at is None:
            return data
        if ended_at is not None and ended_at <= started_at:
            raise forms.ValidationError({"ended_at": "The end must be after the start."})
        try:
            services.subscription_check(
                customer=customer,
                plan=plan,
                started_at=started_at,
                ended_at=ended_at,
                exclude_pk=instance.pk,
            )
        except NerubaError as exc:
            raise forms.ValidationError(exc.message) from exc
        return data


@admin.register(Subscription, site=console)
class SubscriptionAdmin(admin.ModelAdmin):
    """Created through subscription_create; afterwards only the end can change (its windows
    and invoices depend on the customer, plan and start). Both paths are audited."""

    form = SubscriptionForm
    list_display = ["customer", "plan", "external_id", "started_at", "ended_at"]
    list_filter = ["plan"]
    list_select_related = ["customer", "plan"]
    raw_id_fields = ["customer"]
    search_fields = ["customer__external_id", "customer__name", "=external_id"]
    show_full_result_count = False

    def get_readonly_fields(
        self, request: HttpRequest, obj: Subscription | None = None
    ) -> list[str]:
        return ["customer", "plan", "started_at", "external_id"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        if change:
            services.subscription_end(
                subscription=obj, ended_at=obj.ended_at, actor=request.user, reason="console edit"
            )
            return
        created = services.subscription_create(
            customer=obj.customer,
            plan=obj.plan,
            started_at=obj.started_at,
            ended_at=obj.ended_at,
            external_id=obj.external_id,
            actor=request.user,
        )
        obj.pk = created.pk

    def has_delete_permission(self, request: HttpRequest, obj: Subscription | None = None) -> bool:
        return False


# --- billing records: read-only, changed only through guarded actions -----------------------


def _link(obj: Any, label: str | None = None) -> str:
    if obj is None:
        return "-"
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label or str(obj))


def _rerun(obj: Invoice | BillingWindow, actor: Any, reason: str) -> str | None:
    kwargs: dict[str, Any] = {"invoice": obj} if isinstance(obj, Invoice) else {"window": obj}
    result = services.invoice_rerun(actor=actor, reason=reason, dry_run=False, **kwargs)
    return None if result.applied else "skipped"


def _rerun_preview(obj: Invoice | BillingWindow) -> str:
    kwargs: dict[str, Any] = {"invoice": obj} if isinstance(obj, Invoice) else {"window": obj}
    return services.invoice_rerun(actor=None, reason="", dry_run=True, **kwargs).render()


RERUN_EXPLANATION = (
    "The window is re-priced from the events stored now. An unpaid invoice is voided and a "
    "superseding invoice issued (its consumed credits are given back first); a paid invoice "
    "gets a correction credit (over-billed) or a supplementary invoice (under-billed). Nothing "
    "is edited in place."
)

rerun_invoices = guarded_action(
    name="rerun_invoices",
    label="Rerun billing (void and supersede, or adjust)",
    permission="billing.rerun_invoice",
    perform=_rerun,
    preview=_rerun_preview,
    eligible=lambda inv: inv.kind == Invoice.Kind.REGULAR and inv.status != Invoice.Status.VOID,
    explanation=RERUN_EXPLANATION,
)

rerun_windows = guarded_action(
    name="rerun_windows",
    label="Rerun billing for these windows",
    permission="billing.rerun_invoice",
    perform=_rerun,
    preview=_rerun_preview,
    explanation=RERUN_EXPLANATION,
)

mark_paid = guarded_action(
    name="mark_paid",
    label="Mark paid (payment received outside Stripe)",
    permission="billing.mark_invoice_paid",
    perform=lambda inv, actor, reason: (
        services.invoice_mark_paid(invoice=inv, actor=actor, reason=reason) and None
    ),
    preview=lambda inv: f"{inv.number}: {inv.status} -> paid ({inv.total} {inv.currency})",
    eligible=lambda inv: inv.status in services.UNPAID,
    explanation="Records a payment received outside the payment provider.",
)


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = ["metric", "description", "quantity", "unit_amount", "amount"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class CreditAppliedInline(admin.TabularInline):
    model = CreditEntry
    fk_name = "invoice"
    extra = 0
    can_delete = False
    verbose_name_plural = "credit entries (applied, given back, corrections)"
    fields = ["kind", "amount", "currency", "reason_code", "note", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RefundInline(_ReadOnlyInline):
    model = Refund
    verbose_name_plural = "refunds (cash back to the card, never credit)"
    fields = ["stripe_refund_id", "charge_id", "status", "amount_shown", "stripe_created"]
    readonly_fields = fields

    @admin.display(description="amount")
    def amount_shown(self, obj: Refund) -> str:
        return f"{money(obj.amount, obj.currency)} {obj.currency}"


class DisputeInline(_ReadOnlyInline):
    model = Dispute
    verbose_name_plural = "disputes (a lost one is cash taken back by the card issuer)"
    fields = ["stripe_dispute_id", "charge_id", "status", "amount_shown", "closed_at"]
    readonly_fields = fields

    @admin.display(description="amount")
    def amount_shown(self, obj: Dispute) -> str:
        return f"{money(obj.amount, obj.currency)} {obj.currency}"


class PaymentFindingInline(_ReadOnlyInline):
    model = PaymentFinding
    verbose_name_plural = "payment findings (charges that returned more than they collected)"
    fields = ["detail", "status", "resolution", "created_at"]
    readonly_fields = fields


@admin.register(Invoice, site=console)
class InvoiceAdmin(GuardedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "number",
        "customer",
        "status",
        "kind",
        "period_start",
        "period_end",
        "total",
        "amount_collected",
        "currency",
        "issued_at",
    ]
    list_filter = ["status", "kind", "currency", "provider"]
    list_select_related = ["customer"]
    raw_id_fields = ["customer", "subscription", "window", "run", "supersedes"]
    search_fields = ["=number", "customer__external_id", "=provider_invoice_id"]
    show_full_result_count = False
    inlines = [
        InvoiceLineInline,
        CreditAppliedInline,
        RefundInline,
        DisputeInline,
        PaymentFindingInline,
    ]
    readonly_fields = [
        "number",
        "customer",
        "kind",
        "status",
        "currency",
        "period_start",
        "period_end",
        "subtotal",
        "credits_applied",
        "total",
        "cash",
        "window_link",
        "run_link",
        "supersedes_link",
        "superseded_by_link",
        "issued_at",
        "paid_at",
        "voided_at",
        "provider",
        "provider_invoice_id",
        "provider_synced_at",
    ]
    fields = readonly_fields
    actions = [rerun_invoices, mark_paid]
    object_actions = ["rerun_invoices", "mark_paid"]

    @admin.display(description="cash story")
    def cash(self, obj: Invoice) -> str:
        return cash_story(obj)

    @admin.display(description="window")
    def window_link(self, obj: Invoice) -> str:
        return _link(obj.window)

    @admin.display(description="run")
    def run_link(self, obj: Invoice) -> str:
        return _link(obj.run)

    @admin.display(description="supersedes")
    def supersedes_link(self, obj: Invoice) -> str:
        return _link(obj.supersedes)

    @admin.display(description="superseded by")
    def superseded_by_link(self, obj: Invoice) -> str:
        return _link(getattr(obj, "superseded_by", None))


@admin.register(BillingWindow, site=console)
class BillingWindowAdmin(GuardedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "subscription", "period_start", "period_end", "status", "billed_at"]
    list_filter = ["status", "subscription__plan__interval"]
    list_select_related = ["subscription__customer", "subscription__plan"]
    raw_id_fields = ["subscription", "claimed_by_run"]
    search_fields = ["subscription__customer__external_id"]
    show_full_result_count = False
    actions = [rerun_windows]
    object_actions = ["rerun_windows"]


class BillingShardInline(admin.TabularInline):
    """A fanned-out run's shards: which customer range, which worker, how far, what failed."""

    model = BillingShard
    extra = 0
    can_delete = False
    verbose_name_plural = "shards (fanned-out runs: one customer-id range per Celery task)"
    fields = [
        "index",
        "customer_from",
        "customer_to",
        "status",
        "attempts",
        "holder",
        "scanned",
        "invoiced",
        "already_invoiced",
        "failed",
        "invoiced_amount",
        "started_at",
        "finished_at",
        "errors",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BillingRun, site=console)
class BillingRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    inlines = [BillingShardInline]
    list_display = [
        "id",
        "trigger",
        "status",
        "started_at",
        "finished_at",
        "scanned",
        "invoiced",
        "already_invoiced",
        "failed",
        "dry_run",
    ]
    list_filter = ["status", "trigger", "dry_run"]
    list_select_related = ["actor"]
    raw_id_fields = ["actor"]
    show_full_result_count = False


class CreditIssueForm(forms.ModelForm):
    """Issuing a credit: the only way a finance user adds a ledger entry."""

    amount = forms.IntegerField(min_value=1, help_text="Minor units (cents).")
    currency = forms.RegexField(
        r"^[A-Za-z]{3}$", required=False, help_text="Default: the customer's currency."
    )
    reason_code = forms.ChoiceField(
        choices=GRANTABLE_CHOICES,
        help_text="Refund as credit: finance chose credit instead of a cash refund. A Stripe "
        "refund or lost dispute is cash, shown on its invoice, never credit.",
    )
    note = forms.CharField(label="Reason", widget=forms.Textarea, help_text="Required; audited.")

    class Meta:
        model = CreditEntry
        fields = ["customer", "amount", "currency", "reason_code", "note"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        customer, currency = data.get("customer"), (data.get("currency") or "").upper()
        if customer is not None and currency and currency != customer.currency.upper():
            self.add_error(
                "currency",
                f"A credit must be in the customer's currency ({customer.currency.upper()}), "
                f"not {currency}.",
            )
        return data


@admin.register(CreditEntry, site=console)
class CreditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "customer",
        "kind",
        "amount_shown",
        "currency",
        "reason_code",
        "invoice",
        "created_at",
    ]
    list_filter = ["kind", "reason_code", "currency"]
    list_select_related = ["customer", "invoice"]
    raw_id_fields = ["customer", "invoice", "reverses", "actor"]
    search_fields = ["customer__external_id", "=source_key"]
    show_full_result_count = False
    form = CreditIssueForm

    @admin.display(description="amount", ordering="amount")
    def amount_shown(self, obj: CreditEntry) -> str:
        return money(obj.amount, obj.currency)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("billing.issue_credit")

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        if obj is None:
            return CreditIssueForm
        return super().get_form(request, obj, **kwargs)

    def save_model(self, request: HttpRequest, obj: CreditEntry, form: Any, change: bool) -> None:
        if change:
            raise PermissionDenied("Credit entries are append-only.")
        data = form.cleaned_data
        try:
            entry = services.credit_issue(
                customer=data["customer"],
                amount=data["amount"],
                currency=data.get("currency") or None,
                reason_code=data["reason_code"],
                actor=request.user,
                reason=data["note"],
            )
        except NerubaError as exc:
            raise PermissionDenied(exc.message) from exc
        obj.pk = entry.pk
        obj.__dict__.update({k: v for k, v in entry.__dict__.items() if not k.startswith("_")})


@admin.register(ProviderSync, site=console)
class ProviderSyncAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "invoice", "action", "status", "attempts", "next_attempt_at", "sent_at"]
    list_filter = ["status", "action"]
    list_select_related = ["invoice"]
    raw_id_fields = ["invoice"]
    search_fields = ["=invoice__number"]
    show_full_result_count = False


@admin.register(Refund, site=console)
class RefundAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "stripe_refund_id",
        "charge_id",
        "invoice",
        "customer",
        "amount",
        "currency",
        "status",
    ]
    list_filter = ["status", "currency"]
    list_select_related = ["invoice", "customer"]
    raw_id_fields = ["invoice", "customer"]
    search_fields = ["=stripe_refund_id", "=charge_id"]
    show_full_result_count = False


@admin.register(Dispute, site=console)
class DisputeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "stripe_dispute_id",
        "charge_id",
        "invoice",
        "customer",
        "amount",
        "currency",
        "status",
    ]
    list_filter = ["status", "currency"]
    list_select_related = ["invoice", "customer"]
    raw_id_fields = ["invoice", "customer"]
    search_fields = ["=stripe_dispute_id", "=charge_id"]
    show_full_result_count = False


@admin.register(DriftFinding, site=console)
class DriftFindingAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "kind", "window", "metric", "delta_amount", "status", "created_at"]
    list_filter = ["status", "kind"]
    list_select_related = ["window", "metric"]
    raw_id_fields = ["window", "metric", "invoice", "resolved_by"]
    show_full_result_count = False


def _finding_close(finding: PaymentFinding, actor: Any, reason: str) -> str | None:
    payments.payment_finding_close(finding=finding, actor=actor, reason=reason)
    return None


close_payment_findings = guarded_action(
    name="close_payment_findings",
    label="Mark handled (settled with the provider)",
    permission="billing.resolve_paymentfinding",
    perform=_finding_close,
    preview=lambda f: f"{f.detail}: closed as handled; no balance moves",
    eligible=lambda f: f.status == PaymentFinding.Status.OPEN,
    explanation="Nothing is credited or charged: the cash already went back to the card. Close "
    "the finding once finance has settled the over-return with the provider (e.g. accepted the "
    "loss or recovered the refund). It reopens only if the charge's numbers change again.",
)


@admin.register(PaymentFinding, site=console)
class PaymentFindingAdmin(GuardedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "detail", "customer", "invoice", "status", "resolution", "created_at"]
    list_filter = ["status", "resolution", "currency"]
    list_select_related = ["customer", "invoice"]
    raw_id_fields = ["charge", "customer", "invoice", "resolved_by"]
    search_fields = ["=charge__charge_id", "=invoice__number", "customer__external_id"]
    show_full_result_count = False
    readonly_fields = [
        "detail",
        "charge",
        "customer",
        "invoice",
        "collected_shown",
        "refunded_shown",
        "disputed_shown",
        "returned_shown",
        "status",
        "resolution",
        "resolved_by",
        "resolved_at",
        "resolution_reason",
        "created_at",
        "updated_at",
    ]
    fields = readonly_fields
    actions = [close_payment_findings]
    object_actions = ["close_payment_findings"]

    def _money(self, obj: PaymentFinding, amount: int) -> str:
        return f"{money(amount, obj.currency)} {obj.currency}"

    @admin.display(description="charge collected")
    def collected_shown(self, obj: PaymentFinding) -> str:
        return self._money(obj, obj.collected)

    @admin.display(description="refunded")
    def refunded_shown(self, obj: PaymentFinding) -> str:
        return self._money(obj, obj.refunded)

    @admin.display(description="lost in disputes")
    def disputed_shown(self, obj: PaymentFinding) -> str:
        return self._money(obj, obj.disputed)

    @admin.display(description="returned to the card")
    def returned_shown(self, obj: PaymentFinding) -> str:
        return self._money(obj, obj.returned)
