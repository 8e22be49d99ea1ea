from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.safestring import mark_safe

from neruba.admin_site import console
from operations.runbooks import runbook_get, runbook_html, runbook_list


@staff_member_required
def runbooks_index(request: HttpRequest) -> HttpResponse:
    context = {**console.each_context(request), "title": "Runbooks", "runbooks": runbook_list()}
    return TemplateResponse(request, "operations/runbooks.html", context)


@staff_member_required
def runbook_detail(request: HttpRequest, slug: str) -> HttpResponse:
    book = runbook_get(slug)
    context = {
        **console.each_context(request),
        "title": book.title,
        "runbook": book,
        "body": mark_safe(runbook_html(book)),  # noqa: S308 - rendered from files in the repo
    }
    return TemplateResponse(request, "operations/runbook.html", context)
