"""Shared fixtures. Tests that need PostgreSQL are marked ``postgres`` and skip on SQLite with
the reason printed; CI runs the suite a second time on PostgreSQL and Redis."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from neruba import services
from neruba.models import ApiKey
from tests import factories

PG_REASON = (
    "needs PostgreSQL: run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/neruba "
    "(CI's second pass does)"
)
REDIS_REASON = "needs Redis: run with REDIS_URL=redis://127.0.0.1:6379/0 (CI's second pass does)"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_REASON = "needs the system Chromium (Debian package chromium; .ci/run installs it)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    on_postgres = connection.vendor == "postgresql"
    has_redis = bool(os.environ.get("REDIS_URL"))
    has_chromium = os.path.exists(CHROMIUM)
    for item in items:
        if "postgres" in item.keywords and not on_postgres:
            item.add_marker(pytest.mark.skip(reason=PG_REASON))
        if "redis" in item.keywords and not has_redis:
            item.add_marker(pytest.mark.skip(reason=REDIS_REASON))
        if "browser" in item.keywords and not has_chromium:
            item.add_marker(pytest.mark.skip(reason=BROWSER_REASON))


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    # Throttle counters live in the cache; each test starts with none.
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def make_api_key(db: None) -> Callable[..., tuple[ApiKey, str]]:
    def make(*scopes: str, name: str = "test key") -> tuple[ApiKey, str]:
        return services.api_key_create(
            name=name, scopes=scopes or ("ingest", "read", "write"), actor=None
        )

    return make


@pytest.fixture
def api(make_api_key: Callable[..., tuple[ApiKey, str]]) -> Callable[..., APIClient]:
    """``api("read", "write")`` is a client authenticated with a key of those scopes;
    ``api()`` has every scope; ``api(None)`` sends no key."""

    def client(*scopes: str | None) -> APIClient:
        c = APIClient()
        if scopes == (None,):
            return c
        _, raw = make_api_key(*[s for s in scopes if s])
        c.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
        return c

    return client


@pytest.fixture
def console_user(db: None) -> Callable[[str], Any]:
    """``console_user("Finance")`` is a staff user in that group (``"superuser"`` for admin)."""
    return factories.console_user


@pytest.fixture
def catalog(db: None) -> dict[str, Any]:
    """A small priced catalog: one customer on a monthly plan with a per-unit and a graduated
    price."""
    return factories.catalog()
