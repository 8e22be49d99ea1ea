from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import override_settings

from billing.models import Plan, Subscription
from ingest.models import Metric
from neruba.models import Customer
from operations.demo import DEMO_USERS

pytestmark = pytest.mark.django_db

APPS = ("neruba", "ingest", "billing", "webhooks", "operations", "auth")


def row_counts() -> dict[str, int]:
    return {
        model._meta.label: model._default_manager.count()
        for app in APPS
        for model in apps.get_app_config(app).get_models()
    }


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    # seed_admin keeps the generated password under BASE_DIR/var; keep the real one untouched.
    (tmp_path / "var").mkdir()
    with override_settings(BASE_DIR=tmp_path):
        yield tmp_path


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def test_seed_demo_loads_the_catalog_and_prints_the_login(project_dir: Path) -> None:
    output = seed()
    assert Customer.objects.count() >= 3 and Metric.objects.count() >= 4
    assert Plan.objects.count() >= 3 and Subscription.objects.count() >= 3
    match = re.search(r"Console login: admin / (\S+)", output)
    assert match, output
    password = match.group(1)
    assert (project_dir / "var" / "admin-password.txt").read_text().strip() == password
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password(password)


def test_seed_demo_twice_duplicates_nothing_and_keeps_the_password(project_dir: Path) -> None:
    first = seed()
    after_first = row_counts()
    second = seed()
    assert row_counts() == after_first
    assert "created 0 customers, 0 metrics, 0 plans, 0 subscriptions" in second
    login = re.compile(r"Console login: admin / (\S+)")
    assert login.search(first).group(1) == login.search(second).group(1)  # type: ignore[union-attr]


def test_the_demo_users_are_staff_in_their_role_groups(project_dir: Path) -> None:
    output = seed()
    password = re.search(r"Console login: admin / (\S+)", output).group(1)  # type: ignore[union-attr]
    for username, group in DEMO_USERS.items():
        user = User.objects.get(username=username)
        assert user.is_staff and not user.is_superuser
        assert list(user.groups.values_list("name", flat=True)) == [group]
        assert user.check_password(password)


def test_seed_demo_without_users_creates_no_logins(project_dir: Path) -> None:
    output = seed("--no-users")
    assert "Console login" not in output
    assert not User.objects.exists()
    assert Customer.objects.filter(external_id="acme").exists()
