"""Runbooks must not lie: every command, flag, URL and setting they name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class
from django.test import Client
from django.urls import Resolver404, resolve

from neruba.config import BY_NAME
from operations.runbooks import RUNBOOK_DIR, runbook_html, runbook_list
from operations.smoke import RUNBOOK

# Environment names that belong to other software, not to Neruba's declared list.
FOREIGN_ENV = {"PROMETHEUS_MULTIPROC_DIR", "POSTGRES_PASSWORD"}
RUNBOOKS = sorted(RUNBOOK_DIR.glob("*.md"))
CODE = re.compile(r"`([^`]+)`")
# Flags that belong to the subcommand rather than the command's own parser.
SUBCOMMAND_COMMANDS = {"benchmark"}


def _code_spans(path: Path) -> list[str]:
    return CODE.findall(path.read_text())


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_every_command_and_flag_a_runbook_names_exists(path: Path) -> None:
    commands = get_commands()
    for span in _code_spans(path):
        for match in re.finditer(r"manage\.py (\w+)((?: [^`]*)?)", span):
            name, rest = match.group(1), match.group(2)
            assert name in commands, f"{path.name}: unknown command manage.py {name}"
            if name in SUBCOMMAND_COMMANDS:
                continue
            parser = load_command_class(commands[name], name).create_parser("manage.py", name)
            known = {opt for action in parser._actions for opt in action.option_strings}
            for flag in re.findall(r"(--[a-z][a-z-]*)", rest):
                assert flag in known, f"{path.name}: manage.py {name} has no {flag}"


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_every_url_a_runbook_names_resolves(path: Path) -> None:
    for span in _code_spans(path):
        for url in re.findall(r"(?:^|\s|https?://[^/\s]+)(/[\w/{}.?=&_-]*)", span):
            if url.startswith(("/etc/", "/run/", "/opt/", "/app/")):
                continue  # file paths, not URLs
            route = re.sub(r"\{[^}]+\}", "x", url.split("?")[0])
            try:
                resolve(route)
            except Resolver404:
                pytest.fail(f"{path.name}: {url} does not resolve")


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_every_setting_a_runbook_names_is_declared(path: Path) -> None:
    for span in _code_spans(path):
        for name in re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", span):
            name = name.split("=")[0]
            assert name in BY_NAME or name in FOREIGN_ENV, f"{path.name}: unknown setting {name}"


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_links_between_runbooks_point_at_existing_sections(path: Path) -> None:
    for target, anchor in re.findall(r"\]\(([a-z0-9-]+)\.md(?:#([a-z0-9-]+))?\)", path.read_text()):
        linked = RUNBOOK_DIR / f"{target}.md"
        assert linked.exists(), f"{path.name}: link to missing {target}.md"
        if anchor:
            book = next(b for b in runbook_list() if b.slug == target)
            assert f'id="{anchor}"' in runbook_html(book), f"{path.name}: no #{anchor} in {target}"


def test_the_runbook_sections_smoke_names_exist() -> None:
    from operations import smoke

    source = Path(smoke.__file__).read_text()
    for target, anchor in re.findall(r'"([a-z0-9-]+)\.md#([a-z0-9-]+)"', source):
        book = next((b for b in runbook_list() if b.slug == target), None)
        assert book is not None, f"smoke names missing runbook {target}"
        assert f'id="{anchor}"' in runbook_html(book), f"smoke names missing #{anchor}"
    assert RUNBOOK == "docs/runbooks"


@pytest.mark.django_db
def test_runbooks_render_in_the_console_for_staff_only(console_user) -> None:
    client = Client()
    assert client.get("/console/runbooks/").status_code == 302  # to the login page
    client.force_login(console_user("Support"))
    index = client.get("/console/runbooks/")
    assert index.status_code == 200
    for book in runbook_list():
        assert f"/console/runbooks/{book.slug}" in index.content.decode()
        page = client.get(f"/console/runbooks/{book.slug}")
        assert page.status_code == 200 and "<h1" in page.content.decode()
    assert client.get("/console/runbooks/nope").status_code == 404


def test_every_runbook_link_on_a_console_object_points_at_an_existing_section() -> None:
    from operations.templatetags.runbook_links import RUNBOOK_LINKS

    books = {b.slug: runbook_html(b) for b in runbook_list()}
    for label, links in RUNBOOK_LINKS.items():
        for _, slug, anchor in links:
            assert slug in books, f"{label}: no runbook {slug}"
            assert f'id="{anchor}"' in books[slug], f"{label}: no #{anchor} in {slug}"


@pytest.mark.django_db
def test_a_stripe_event_page_links_to_its_runbook_sections(console_user) -> None:
    from django.utils import timezone

    from webhooks.models import StripeEvent

    event = StripeEvent.objects.create(
        stripe_id="evt_rb",
        type="invoice.paid",
        created=timezone.now(),
        raw_body=b"{}",
        payload={},
        status="dead",
    )
    client = Client()
    client.force_login(console_user("Operations"))
    page = client.get(f"/admin/webhooks/stripeevent/{event.pk}/change/").content.decode()
    assert "/console/runbooks/webhooks#failed-and-dead-events" in page
    assert "/console/runbooks/webhooks#replaying-stripe-events" in page


@pytest.mark.django_db
def test_console_paths_in_runbooks_are_links_and_the_title_shows_once(console_user) -> None:
    from django.test import Client

    client = Client()
    client.force_login(console_user("Operations"))
    html = client.get("/console/runbooks/console").content.decode()
    assert '<a href="/admin/webhooks/stripeevent/?status__exact=dead"><code>' in html
    assert html.count(">The operator console</h1>") == 1
