from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from ingest.models import IngestRejection, UsageEvent
from ingest.services import events_ingest
from neruba.models import AuditEntry
from tests.factories import CustomerFactory
from tests.ingest.conftest import event

CHANGELIST = "/admin/ingest/ingestrejection/"


@pytest.fixture
def stream(meters: dict[str, Any], frozen: Any) -> dict[str, Any]:
    events_ingest(payloads=[event("k-ok"), event("k-bad", customer="initech")], api_key=None)
    events_ingest(payloads=[event("k-ok"), event("k-ok", metric="storage_gb")], api_key=None)
    return {
        "event": UsageEvent.objects.get(),
        "failed": IngestRejection.objects.get(outcome="failed"),
        "conflict": IngestRejection.objects.get(outcome="conflict"),
    }


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_support_replays_a_rejection_from_the_list_after_a_preview(
    stream: dict[str, Any], console_user: Any
) -> None:
    client = logged_in(console_user("Support"))
    rejection = stream["failed"]
    CustomerFactory(external_id="initech")

    preview = client.post(
        CHANGELIST, {"action": "replay_rejections", "_selected_action": [rejection.pk]}
    )
    assert preview.status_code == 200
    assert b"would be stored" in preview.content
    rejection.refresh_from_db()
    assert rejection.status == "open"

    no_reason = client.post(
        CHANGELIST,
        {"action": "replay_rejections", "_selected_action": [rejection.pk], "confirm": "yes"},
    )
    assert b"A reason is required" in no_reason.content

    done = client.post(
        CHANGELIST,
        {
            "action": "replay_rejections",
            "_selected_action": [rejection.pk],
            "confirm": "yes",
            "reason": "customer created in CRM sync",
        },
        follow=True,
    )
    assert b"Replay: 1 done, 0 skipped, 0 failed." in done.content
    rejection.refresh_from_db()
    assert rejection.status == "replayed" and rejection.replayed_event.source == "replay"
    entry = AuditEntry.objects.get(action="ingest_rejection.replay")
    assert entry.reason == "customer created in CRM sync" and entry.actor_label == "support-user"


def test_the_object_button_replays_one_rejection_and_reports_a_still_failing_one(
    stream: dict[str, Any], console_user: Any
) -> None:
    client = logged_in(console_user("Support"))
    rejection = stream["failed"]
    url = f"{CHANGELIST}{rejection.pk}/action/replay_rejections/"
    page = client.get(f"{CHANGELIST}{rejection.pk}/change/")
    assert url.encode() in page.content

    preview = client.get(url)
    assert b"would fail: unknown_customer" in preview.content
    done = client.post(url, {"confirm": "yes", "reason": "try again"}, follow=True)
    assert b"1 failed" in done.content and b"still fails: unknown_customer" in done.content
    rejection.refresh_from_db()
    assert rejection.status == "open" and rejection.replay_attempts == 1


def test_conflicts_are_not_replayable(stream: dict[str, Any], console_user: Any) -> None:
    client = logged_in(console_user("Support"))
    done = client.post(
        CHANGELIST,
        {
            "action": "replay_rejections",
            "_selected_action": [stream["conflict"].pk],
            "confirm": "yes",
            "reason": "no",
        },
        follow=True,
    )
    assert b"Replay: 0 done, 1 skipped, 0 failed." in done.content


def test_support_dismisses_a_conflict_with_a_reason_and_it_leaves_the_open_backlog(
    stream: dict[str, Any], console_user: Any
) -> None:
    client = logged_in(console_user("Support"))
    conflict = stream["conflict"]
    url = f"{CHANGELIST}{conflict.pk}/action/dismiss_rejections/"
    preview = client.get(url)
    assert preview.status_code == 200
    assert b"closed as dismissed" in preview.content
    assert b"A reason is required" in client.post(url, {"confirm": "yes"}).content
    done = client.post(url, {"confirm": "yes", "reason": "the original event stands"}, follow=True)
    assert b"1 done, 0 skipped, 0 failed" in done.content
    conflict.refresh_from_db()
    assert conflict.status == "dismissed"
    entry = AuditEntry.objects.get(action="ingest_rejection.dismiss")
    assert entry.reason == "the original event stands" and entry.actor_label == "support-user"
    assert not IngestRejection.objects.filter(pk=conflict.pk, status="open").exists()
    # Dismissing again does nothing; the record is still there with its payload.
    again = client.post(url, {"confirm": "yes", "reason": "twice"}, follow=True)
    assert b"0 done, 1 skipped" in again.content


def test_a_dismissed_failed_rejection_can_still_be_replayed_once_its_cause_is_fixed(
    stream: dict[str, Any], console_user: Any
) -> None:
    client = logged_in(console_user("Support"))
    failed = stream["failed"]
    client.post(
        f"{CHANGELIST}{failed.pk}/action/dismiss_rejections/",
        {"confirm": "yes", "reason": "unknown tenant, ignore for now"},
    )
    failed.refresh_from_db()
    assert failed.status == "dismissed"
    CustomerFactory(external_id="initech")
    done = client.post(
        f"{CHANGELIST}{failed.pk}/action/replay_rejections/",
        {"confirm": "yes", "reason": "tenant onboarded after all"},
        follow=True,
    )
    assert b"Replay: 1 done" in done.content
    failed.refresh_from_db()
    assert failed.status == "replayed"


def test_finance_cannot_dismiss_rejections(stream: dict[str, Any], console_user: Any) -> None:
    client = logged_in(console_user("Finance"))
    url = f"{CHANGELIST}{stream['conflict'].pk}/action/dismiss_rejections/"
    assert client.get(url).status_code == 403
    assert client.post(url, {"confirm": "yes", "reason": "x"}).status_code == 403
    stream["conflict"].refresh_from_db()
    assert stream["conflict"].status == "open"


def test_finance_cannot_replay_ingest(stream: dict[str, Any], console_user: Any) -> None:
    client = logged_in(console_user("Finance"))
    page = client.get(CHANGELIST)
    assert page.status_code == 200 and b"replay_rejections" not in page.content
    refused = client.get(f"{CHANGELIST}{stream['failed'].pk}/action/replay_rejections/")
    assert refused.status_code == 403
    forced = client.post(
        CHANGELIST,
        {
            "action": "replay_rejections",
            "_selected_action": [stream["failed"].pk],
            "confirm": "yes",
            "reason": "x",
        },
    )
    assert forced.status_code in (302, 403)
    stream["failed"].refresh_from_db()
    assert stream["failed"].replay_attempts == 0


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?outcome=failed",
        "?error_code=unknown_customer",
        "?status__exact=open",
        "?customer_ref=initech",
        "?metric_ref=api_calls",
        "?q=k-bad",
    ],
)
def test_the_rejection_list_filters_render(
    stream: dict[str, Any], console_user: Any, query: str
) -> None:
    response = logged_in(console_user("Support")).get(CHANGELIST + query)
    assert response.status_code == 200


def test_the_event_page_shows_key_payload_hash_batch_and_outcome_history(
    stream: dict[str, Any], console_user: Any
) -> None:
    client = logged_in(console_user("Support"))
    stored = stream["event"]
    page = client.get(f"/admin/ingest/usageevent/{stored.pk}/change/")
    assert page.status_code == 200
    content = page.content.decode()
    assert stored.idempotency_key in content and stored.payload_hash in content
    assert f"Batch {stored.batch_id}" in content
    assert "accepted" in content and "conflict" in content
    assert "1 duplicate submission(s)" in content
    assert b"Save" not in page.content


def test_the_event_and_batch_lists_render_with_filters(
    stream: dict[str, Any], console_user: Any
) -> None:
    client = logged_in(console_user("Operations"))
    for url in [
        "/admin/ingest/usageevent/",
        "/admin/ingest/usageevent/?late__exact=1",
        "/admin/ingest/usageevent/?q=k-ok",
        "/admin/ingest/ingestbatch/",
        "/admin/ingest/ingestbatch/?source=api",
    ]:
        assert client.get(url).status_code == 200, url
