"""The guarded admin action, driven through the console on real models: API-key revoke on the
changelist and the scheduler-lock release (per selection and per object)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.contrib.messages.storage.fallback import FallbackStorage
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client, RequestFactory
from django.utils import timezone

from neruba import services
from neruba.admin_actions import guarded_action
from neruba.admin_site import console
from neruba.errors import NerubaError
from neruba.models import ApiKey, AuditEntry, SchedulerLock

pytestmark = pytest.mark.django_db

KEYS_URL = "/admin/neruba/apikey/"
LOCKS_URL = "/admin/neruba/schedulerlock/"


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def viewer_without(perm_codenames: list[str]) -> User:
    """A staff user who can see the changelist but lacks the action's permission."""
    user = User.objects.create_user(username="viewer", password="pw-Neruba-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perm_codenames))
    return user


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def keys() -> tuple[ApiKey, ApiKey]:
    live, _ = services.api_key_create(name="live", scopes=["read"], actor=None)
    gone, _ = services.api_key_create(name="gone", scopes=["read"], actor=None)
    services.api_key_revoke(api_key=gone, actor=None, reason="earlier")
    return live, gone


@pytest.fixture
def locks() -> tuple[SchedulerLock, SchedulerLock]:
    now = timezone.now()
    live = SchedulerLock.objects.create(
        name="billing-scan",
        holder="worker-1:42",
        token=7,
        acquired_at=now,
        heartbeat_at=now,
        expires_at=now + timedelta(minutes=2),
    )
    stale = SchedulerLock.objects.create(
        name="sweeps",
        holder="worker-2:99",
        token=3,
        acquired_at=now - timedelta(hours=1),
        heartbeat_at=now - timedelta(hours=1),
        expires_at=now - timedelta(minutes=58),
    )
    return live, stale


def revoke_post(keys: tuple[ApiKey, ...], **extra: str) -> dict[str, Any]:
    return {"action": "revoke_keys", "_selected_action": [k.pk for k in keys], **extra}


def test_a_user_without_the_permission_does_not_see_the_action(
    keys: tuple[ApiKey, ApiKey], console_user: Callable[[str], Any]
) -> None:
    viewer = login(viewer_without(["view_apikey"]))
    page = viewer.get(KEYS_URL)
    assert page.status_code == 200
    assert "revoke_keys" not in page.content.decode()
    operations = login(console_user("Operations"))
    assert 'value="revoke_keys"' in operations.get(KEYS_URL).content.decode()


def test_a_forced_post_without_the_permission_is_refused(keys: tuple[ApiKey, ApiKey]) -> None:
    live, _ = keys
    viewer = login(viewer_without(["view_apikey"]))
    for data in (
        revoke_post((live,), index="0"),
        revoke_post((live,), confirm="yes", reason="forced"),
    ):
        assert viewer.post(KEYS_URL, data).status_code == 403
    live.refresh_from_db()
    assert not live.revoked
    assert not AuditEntry.objects.filter(
        action="api_key.revoke", target_id=f"prefix:{live.prefix}"
    ).exists()


def test_the_confirmation_page_shows_what_will_happen_and_changes_nothing(
    keys: tuple[ApiKey, ApiKey], console_user: Callable[[str], Any]
) -> None:
    live, gone = keys
    client = login(console_user("Operations"))
    page = client.post(KEYS_URL, revoke_post((live, gone), index="0"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Confirm: Revoke API keys" in html
    assert f"key {live.prefix}… stops working" in html
    assert "already revoked" in html
    assert 'name="reason"' in html and 'name="confirm" value="yes"' in html
    live.refresh_from_db()
    assert not live.revoked


@pytest.mark.parametrize("reason", ["", "   "])
def test_confirming_without_a_reason_re_renders_with_an_error_and_changes_nothing(
    keys: tuple[ApiKey, ApiKey], console_user: Callable[[str], Any], reason: str
) -> None:
    live, _ = keys
    client = login(console_user("Operations"))
    page = client.post(KEYS_URL, revoke_post((live,), confirm="yes", reason=reason))
    assert page.status_code == 200
    assert "A reason is required." in page.content.decode()
    live.refresh_from_db()
    assert not live.revoked
    assert not AuditEntry.objects.filter(
        action="api_key.revoke", target_id=f"prefix:{live.prefix}"
    ).exists()


def test_confirming_with_a_reason_runs_the_service_audits_and_reports_counts(
    keys: tuple[ApiKey, ApiKey], console_user: Callable[[str], Any]
) -> None:
    live, gone = keys
    user = console_user("Operations")
    client = login(user)
    response = client.post(
        KEYS_URL, revoke_post((live, gone), confirm="yes", reason="leaked in a CI log")
    )
    assert response.status_code == 302
    assert messages_of(response) == ["Revoke API keys: 1 done, 1 skipped, 0 failed."]
    live.refresh_from_db()
    assert live.revoked and live.revoked_at is not None
    entry = AuditEntry.objects.get(action="api_key.revoke", target_id=f"prefix:{live.prefix}")
    assert entry.actor == user and entry.actor_label == user.username
    assert entry.reason == "leaked in a CI log"
    assert (entry.before, entry.after) == ({"revoked": False}, {"revoked": True})
    assert AuditEntry.objects.filter(action="api_key.revoke").count() == 2  # one was earlier


def test_the_lock_release_skips_live_leases_and_releases_expired_ones(
    locks: tuple[SchedulerLock, SchedulerLock], console_user: Callable[[str], Any]
) -> None:
    live, stale = locks
    user = console_user("Operations")
    client = login(user)
    selection = {"action": "release_locks", "_selected_action": [live.pk, stale.pk]}
    page = client.post(LOCKS_URL, {**selection, "index": "0"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "Only expired leases can be released" in html
    assert "holder worker-2:99 (token 3) is cleared" in html
    assert "Skipped: not eligible for this action." in html
    assert "worker-1:42 (token 7) is cleared" not in html

    response = client.post(LOCKS_URL, {**selection, "confirm": "yes", "reason": "crashed node"})
    assert messages_of(response) == ["Release expired locks: 1 done, 1 skipped, 0 failed."]
    live.refresh_from_db()
    stale.refresh_from_db()
    assert (live.holder, live.token) == ("worker-1:42", 7)
    assert stale.holder == "" and stale.token == 3
    (entry,) = AuditEntry.objects.filter(action="lock.release")
    assert entry.target_id == str(stale.pk) and entry.actor == user
    assert entry.reason == "crashed node" and entry.before["holder"] == "worker-2:99"


def test_the_per_object_action_url_confirms_and_releases_one_lock(
    locks: tuple[SchedulerLock, SchedulerLock], console_user: Callable[[str], Any]
) -> None:
    _, stale = locks
    client = login(console_user("Operations"))
    change_page = client.get(f"{LOCKS_URL}{stale.pk}/change/").content.decode()
    url = f"{LOCKS_URL}{stale.pk}/action/release_locks/"
    assert f'href="{url}"' in change_page

    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "holder worker-2:99 (token 3) is cleared" in html
    assert 'name="_selected_action"' not in html  # the object comes from the URL

    again = client.post(url, {"confirm": "yes", "reason": ""})
    assert "A reason is required." in again.content.decode()
    stale.refresh_from_db()
    assert stale.holder == "worker-2:99"

    done = client.post(url, {"confirm": "yes", "reason": "node gone"})
    assert done.status_code == 302 and done["Location"] == f"{LOCKS_URL}{stale.pk}/change/"
    assert messages_of(done) == ["Release expired locks: 1 done, 0 skipped, 0 failed."]
    stale.refresh_from_db()
    assert stale.holder == ""
    assert AuditEntry.objects.get(action="lock.release").reason == "node gone"


def test_the_per_object_action_on_a_live_lease_releases_nothing(
    locks: tuple[SchedulerLock, SchedulerLock], console_user: Callable[[str], Any]
) -> None:
    live, _ = locks
    client = login(console_user("Operations"))
    url = f"{LOCKS_URL}{live.pk}/action/release_locks/"
    done = client.post(url, {"confirm": "yes", "reason": "trying"})
    assert messages_of(done) == ["Release expired locks: 0 done, 1 skipped, 0 failed."]
    live.refresh_from_db()
    assert live.holder == "worker-1:42"
    assert not AuditEntry.objects.filter(action="lock.release").exists()


def test_the_per_object_action_is_refused_without_the_permission(
    locks: tuple[SchedulerLock, SchedulerLock],
) -> None:
    _, stale = locks
    client = login(viewer_without(["view_schedulerlock"]))
    change_page = client.get(f"{LOCKS_URL}{stale.pk}/change/")
    assert change_page.status_code == 200
    assert "/action/release_locks/" not in change_page.content.decode()
    url = f"{LOCKS_URL}{stale.pk}/action/release_locks/"
    assert client.get(url).status_code == 403
    assert client.post(url, {"confirm": "yes", "reason": "forced"}).status_code == 403
    stale.refresh_from_db()
    assert stale.holder == "worker-2:99"


def test_an_unknown_per_object_action_is_refused(
    locks: tuple[SchedulerLock, SchedulerLock], console_user: Callable[[str], Any]
) -> None:
    _, stale = locks
    client = login(console_user("superuser"))
    assert client.get(f"{LOCKS_URL}{stale.pk}/action/delete_selected/").status_code == 403
    assert client.get(f"{LOCKS_URL}999999/action/release_locks/").status_code == 403


def test_a_failing_service_call_is_counted_as_failed_with_its_message(
    keys: tuple[ApiKey, ApiKey], console_user: Callable[[str], Any]
) -> None:
    live, _ = keys

    def perform(api_key: ApiKey, actor: Any, reason: str) -> str | None:
        if api_key.pk == live.pk:
            raise NerubaError("the key is pinned")
        return "skipped"

    action = guarded_action(
        name="pin", label="Pin", permission="neruba.change_apikey", perform=perform
    )
    request = RequestFactory().post("/", {"confirm": "yes", "reason": "test"})
    request.user = console_user("Operations")
    request.session = SessionStore()
    request._messages = FallbackStorage(request)  # type: ignore[attr-defined]
    assert action(console._registry[ApiKey], request, ApiKey.objects.order_by("pk")) is None
    (message,) = [str(m) for m in get_messages(request)]
    assert message == "Pin: 0 done, 1 skipped, 1 failed. live: the key is pinned"


@pytest.mark.django_db
def test_the_confirmation_page_says_when_a_selection_is_capped(console_user) -> None:
    from django.test import Client

    from neruba.admin_actions import MAX_OBJECTS
    from neruba.models import SchedulerLock

    SchedulerLock.objects.bulk_create(
        SchedulerLock(name=f"lock-{n}") for n in range(MAX_OBJECTS + 1)
    )
    client = Client()
    client.force_login(console_user("superuser"))
    ids = list(SchedulerLock.objects.values_list("pk", flat=True))
    page = client.post(
        "/admin/neruba/schedulerlock/", {"action": "release_locks", "_selected_action": ids}
    )
    assert page.status_code == 200
    assert f"Only the first {MAX_OBJECTS} selected records" in page.content.decode()
    few = client.post(
        "/admin/neruba/schedulerlock/", {"action": "release_locks", "_selected_action": ids[:3]}
    )
    assert "Only the first" not in few.content.decode()
