"""Browser fixtures shared by the console's Playwright tests: the system Chromium, the role
groups (a transactional test starts from a flushed database), a 1400-px tab on the live
server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission

from operations.roles import ROLES
from tests.conftest import CHROMIUM

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls made here between
    # page steps are plain synchronous calls, so Django's async guard is off while the browser
    # runs (and only then).
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def roles(transactional_db: None) -> None:
    """A transactional test starts from a flushed database: the role groups the migration made
    are gone, so they are made again from the same declaration."""
    for name, role in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        perms = []
        for dotted in role["permissions"]:
            app_label, codename = dotted.split(".", 1)
            perms.append(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        group.permissions.set(perms)


@pytest.fixture
def page(browser: Any, live_server: Any, roles: None) -> Iterator[Any]:
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1400, "height": 1000}
    )
    context.set_default_timeout(10_000)
    tab = context.new_page()
    yield tab
    context.close()
