"""Runbooks: Markdown files in docs/runbooks, rendered in the console for staff."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import markdown
from django.conf import settings
from django.http import Http404

RUNBOOK_DIR = Path(settings.BASE_DIR) / "docs" / "runbooks"
_SLUG = re.compile(r"^[a-z0-9-]+$")
_MD_LINK = re.compile(r'href="([a-z0-9-]+)\.md(#[a-z0-9-]+)?"')


@dataclass(frozen=True)
class Runbook:
    slug: str
    title: str
    path: Path


def runbook_list() -> list[Runbook]:
    books = []
    for path in sorted(RUNBOOK_DIR.glob("*.md")):
        if path.name == "README.md":
            continue
        first = path.read_text().splitlines()[0] if path.stat().st_size else path.stem
        books.append(Runbook(path.stem, first.lstrip("# ").strip(), path))
    return books


def runbook_get(slug: str) -> Runbook:
    if not _SLUG.match(slug):
        raise Http404("No such runbook.")
    for book in runbook_list():
        if book.slug == slug:
            return book
    raise Http404("No such runbook.")


def runbook_html(book: Runbook) -> str:
    """Renders the Markdown; links between runbooks point at their console pages. The files
    are ours (in the repository), not user input."""
    html = markdown.markdown(book.path.read_text(), extensions=["tables", "fenced_code", "toc"])
    html = _MD_LINK.sub(lambda m: f'href="/console/runbooks/{m.group(1)}{m.group(2) or ""}"', html)
    # A console path written as code (`/admin/webhooks/stripeevent/?status__exact=failed`) is
    # also a link to that page.
    return _CONSOLE_PATH.sub(r'<a href="\1"><code>\1</code></a>', html)


_CONSOLE_PATH = re.compile(r"<code>(/(?:admin|console)/[^<\s\"]*)</code>")
