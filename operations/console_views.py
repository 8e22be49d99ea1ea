"""Console pages outside the model admins: runbooks, the billing explainer, adding notes."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from billing.selectors import usage_current
from neruba.admin_site import console
from neruba.models import Customer
from neruba.services import note_add as note_add_service
from operations.explain import explain_key
from operations.roles import ROLES
from operations.runbooks import runbook_get, runbook_html, runbook_list
from operations.search import console_search, customer_suggestions


@staff_member_required
def runbooks_index(request: HttpRequest) -> HttpResponse:
    context = {**console.each_context(request), "title": "Runbooks", "runbooks": runbook_list()}
    return TemplateResponse(request, "operations/runbooks.html", context)


@staff_member_required
def runbook_detail(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        book = runbook_get(slug)
    except Http404:
        # The console's own page, not Django's DEBUG 404: the list of runbooks is one click away.
        context = {
            **console.each_context(request),
            "title": "No such runbook",
            "runbooks": runbook_list(),
            "missing": slug,
        }
        return TemplateResponse(request, "operations/runbooks.html", context, status=404)
    context = {
        **console.each_context(request),
        "title": book.title,
        "runbook": book,
        "body": mark_safe(runbook_html(book)),  # noqa: S308 - rendered from files in the repo
    }
    return TemplateResponse(request, "operations/runbook.html", context)


@staff_member_required
def explain(request: HttpRequest) -> HttpResponse:
    """ "Why wasn't this billed?" for an idempotency key; the chain comes from the selector."""
    if not request.user.has_perm("ingest.view_usageevent"):
        raise PermissionDenied("Explaining an event needs the ingest.view_usageevent permission.")
    key = request.GET.get("key", "").strip()
    context = {
        **console.each_context(request),
        "title": "Why wasn't this billed?",
        "key": key,
        "explanation": explain_key(idempotency_key=key) if key else None,
    }
    return TemplateResponse(request, "operations/explain.html", context)


# Records that take support notes, and the customer each one belongs to.
NOTE_TARGETS: dict[str, Callable[[Any], Customer | None]] = {
    "neruba.customer": lambda obj: obj,
    "billing.invoice": lambda obj: obj.customer,
    "ingest.usageevent": lambda obj: obj.customer,
    "webhooks.stripeevent": lambda obj: obj.customer,
}


@staff_member_required
@require_POST
def note_add(request: HttpRequest) -> HttpResponse:
    """Adds a support note to a record the user may see; notes are never edited afterwards."""
    if not request.user.has_perm("neruba.add_supportnote"):
        raise PermissionDenied("Adding notes needs the neruba.add_supportnote permission.")
    try:
        content_type = ContentType.objects.get_for_id(int(request.POST.get("content_type", "")))
    except (ValueError, ContentType.DoesNotExist) as exc:
        raise Http404("No such record type.") from exc
    label = f"{content_type.app_label}.{content_type.model}"
    if label not in NOTE_TARGETS:
        raise PermissionDenied("Notes cannot be attached to that record type.")
    if not request.user.has_perm(f"{content_type.app_label}.view_{content_type.model}"):
        raise PermissionDenied("You cannot see that record.")
    model = content_type.model_class()
    assert model is not None
    target = get_object_or_404(model, pk=request.POST.get("object_id", ""))
    body = request.POST.get("body", "").strip()
    next_url = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = reverse("admin:index")
    if not body:
        messages.error(request, "A note needs some text.")
        return HttpResponseRedirect(next_url)
    note_add_service(
        target=target, author=request.user, body=body, customer=NOTE_TARGETS[label](target)
    )
    messages.success(request, "Note added.")
    return HttpResponseRedirect(next_url)


@staff_member_required
def customer_usage(request: HttpRequest, pk: int) -> HttpResponse:
    """The customer page's "usage so far" panel: billing's ``usage_current`` (the selector behind
    ``GET /api/v1/customers/{id}/usage``), rendered as a fragment."""
    if not request.user.has_perm("neruba.view_customer"):
        raise PermissionDenied("Viewing customers needs the neruba.view_customer permission.")
    customer = get_object_or_404(Customer, pk=pk)
    context = {"customer": customer, "usage": usage_current(customer=customer)}
    return TemplateResponse(request, "operations/_customer_usage.html", context)


@staff_member_required
def search(request: HttpRequest) -> HttpResponse:
    """The header's search box. One match goes straight to its page; more are listed."""
    q = request.GET.get("q", "").strip()[:200]
    groups = console_search(q=q, user=request.user) if q else []
    hits = [hit for group in groups for hit in group.hits if hit.url]
    if len(hits) == 1 and request.GET.get("list") != "1":
        return HttpResponseRedirect(hits[0].url)
    context = {
        **console.each_context(request),
        "title": f"Search: {q}" if q else "Search",
        "console_search_q": q,
        "q": q,
        "groups": groups,
    }
    return TemplateResponse(request, "operations/search.html", context)


@staff_member_required
def customer_autocomplete(request: HttpRequest) -> JsonResponse:
    """Customers by external id, name or email for the console's forms."""
    if not request.user.has_perm("neruba.view_customer"):
        raise PermissionDenied("Looking up customers needs the neruba.view_customer permission.")
    return JsonResponse({"results": customer_suggestions(q=request.GET.get("q", "")[:100])})


_PERM = re.compile(r"\b([a-z_]+\.[a-z_]+)\b")
_ADMIN_PATH = re.compile(r"^/admin/(?P<app>[a-z_]+)/(?P<model>[a-z_]+)/(?P<rest>.*)$")


def _needed_permission(request: HttpRequest, exception: Exception | None) -> str:
    """The permission a refusal was about: named in the message (guarded actions and console
    views say it), else read from the admin URL (add, change or view of a model)."""
    found = _PERM.search(str(exception or ""))
    if found and "." in found.group(1):
        return found.group(1)
    match = _ADMIN_PATH.match(request.path)
    if not match:
        return ""
    rest = match["rest"]
    verb = "add" if rest.startswith("add/") else "view"
    if rest.endswith("export.csv"):
        return "neruba.export_auditentry"
    return f"{match['app']}.{verb}_{match['model']}"


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A refusal inside the console: which permission is missing and which role has it, with
    the console around it. Outside the console (API, webhooks) the JSON envelope."""
    if request.path.startswith(("/api/", "/webhooks/")):
        from neruba.errors import json_error

        return json_error(request, "forbidden", str(exception or "Forbidden."), 403)
    permission = _needed_permission(request, exception)
    roles = [name for name, role in ROLES.items() if permission in role["permissions"]]
    user = getattr(request, "user", None)
    context = {
        **(console.each_context(request) if user is not None and user.is_active else {}),
        "title": "Not allowed",
        "message": str(exception or ""),
        "permission": permission,
        "roles": roles,
        "your_roles": sorted(user.groups.values_list("name", flat=True))
        if user is not None and user.is_authenticated
        else [],
    }
    return TemplateResponse(request, "operations/403.html", context, status=403)
