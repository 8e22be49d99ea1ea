"""The published OpenMeter and Lago client libraries, unchanged but for their endpoint and key,
against a live Neruba on loopback: what they send is stored, what Neruba answers is what they
expect, and the console counts it like native ingest."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from corehttp.exceptions import ClientAuthenticationError, HttpResponseError
from django.contrib.auth.models import Group, Permission
from django.test import Client as DjangoClient
from lago_python_client.client import Client as LagoClient
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models.event import BatchEvent
from lago_python_client.models.event import Event as LagoEvent
from openmeter import Client as OpenMeterClient
from openmeter.models import Event as OpenMeterEvent

from billing import services as billing_services
from ingest import services as ingest_services
from ingest.models import IngestBatch, IngestRejection, UsageEvent
from neruba import services
from neruba.models import Customer
from operations.roles import ROLES
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(transactional_db: None) -> dict[str, Any]:
    """Roles (a transactional test starts from a flushed database), one customer with a
    subscription that has an external id, two metrics and an ingest key."""
    for name, role in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        perms = []
        for dotted in role["permissions"]:
            app_label, codename = dotted.split(".", 1)
            perms.append(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        group.permissions.set(perms)
    customer = factories.CustomerFactory(external_id="acme", name="Acme")
    factories.CustomerFactory(external_id="globex", name="Globex")
    factories.MetricFactory(code="api_calls", aggregation="count")
    factories.MetricFactory(code="compute_seconds", aggregation="sum", field="seconds")
    plan = factories.PlanFactory(code="pro", base_amount=1000)
    subscription = billing_services.subscription_create(
        customer=customer,
        plan=plan,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        external_id="sub_acme_pro",
    )
    _, key = services.api_key_create(name="compat", scopes=("ingest",), actor=None)
    return {"key": key, "subscription": subscription}


@pytest.fixture
def support(world: dict[str, Any]) -> DjangoClient:
    client = DjangoClient()
    client.force_login(factories.console_user("Support"))
    return client


# One instant per run (the server checks timestamps against the real clock): an event built
# twice must be the same event, or its resend would rightly be a conflict.
_STARTED = datetime.now(UTC).replace(microsecond=0)


def _when(minutes_ago: int = 30) -> datetime:
    return _STARTED - timedelta(minutes=minutes_ago)


def _console_batches(support: DjangoClient, source: str) -> str:
    response = support.get(f"/admin/ingest/ingestbatch/?source={source}")
    assert response.status_code == 200
    return response.content.decode()


def _open_rejections_count(support: DjangoClient) -> int:
    response = support.get("/admin/")
    assert response.status_code == 200
    (item,) = [i for i in response.context["backlog"] if i["label"] == "Open ingest rejections"]
    return item["count"]


# --- OpenMeter -----------------------------------------------------------------------------------


@pytest.fixture
def openmeter(live_server: Any, world: dict[str, Any]) -> Iterator[OpenMeterClient]:
    client = OpenMeterClient(
        endpoint=f"{live_server.url}/compat/openmeter", token=world["key"], retry_total=0
    )
    with client:
        yield client


def om_event(event_id: str, **overrides: Any) -> OpenMeterEvent:
    fields: dict[str, Any] = {
        "id": event_id,
        "source": "api-gateway",
        "specversion": "1.0",
        "type": "compute_seconds",
        "subject": "acme",
        "time": _when(),
        "data": {"seconds": 4.5, "region": "eu"},
    }
    fields.update(overrides)
    return OpenMeterEvent(**fields)


def test_an_openmeter_client_sends_one_event_and_it_is_stored_as_sent(
    openmeter: OpenMeterClient, support: DjangoClient
) -> None:
    when = _when()
    assert openmeter.events.ingest_event(om_event("om-1", time=when)) is None  # 204
    stored = UsageEvent.objects.select_related("customer", "metric").get(idempotency_key="om-1")
    assert (stored.customer.external_id, stored.metric.code) == ("acme", "compute_seconds")
    assert stored.timestamp == when and float(stored.value) == 4.5
    assert stored.properties == {"seconds": 4.5, "region": "eu"}
    assert stored.source == "openmeter"
    batch = IngestBatch.objects.get(pk=stored.batch_id)
    assert (batch.source, batch.size, batch.accepted) == ("openmeter", 1, 1)
    assert batch.api_key_prefix  # the Bearer key is the batch's key
    assert f">{batch.pk}<" in _console_batches(support, "openmeter")


def test_an_openmeter_batch_and_its_resend_store_each_event_once_without_a_client_error(
    openmeter: OpenMeterClient, support: DjangoClient
) -> None:
    events = [
        om_event("om-b1"),
        om_event("om-b2", type="api_calls", data={"endpoint": "/v1/search"}),
        om_event("om-b3", subject="globex", data={"seconds": 1}),
    ]
    openmeter.events.ingest_events(events)
    openmeter.events.ingest_events(events)  # a client retrying after a timeout
    openmeter.events.ingest_event(events[0])
    assert UsageEvent.objects.filter(idempotency_key__startswith="om-b").count() == 3
    first, again, single = IngestBatch.objects.filter(source="openmeter").order_by("id")
    assert (first.size, first.accepted, first.duplicate) == (3, 3, 0)
    assert (again.size, again.accepted, again.duplicate) == (3, 0, 3)
    assert (single.accepted, single.duplicate) == (0, 1)
    assert IngestRejection.objects.count() == 0
    assert _open_rejections_count(support) == 0


def test_an_openmeter_event_without_a_time_gets_the_receipt_and_its_resend_is_a_duplicate(
    openmeter: OpenMeterClient,
) -> None:
    before = datetime.now(UTC)
    openmeter.events.ingest_event(om_event("om-now", time=None))
    openmeter.events.ingest_event(om_event("om-now", time=None))
    stored = UsageEvent.objects.get(idempotency_key="om-now")
    assert before - timedelta(seconds=1) <= stored.timestamp <= datetime.now(UTC)
    batches = IngestBatch.objects.filter(source="openmeter").order_by("id")
    assert [(b.accepted, b.duplicate) for b in batches] == [(1, 0), (0, 1)]


def test_a_conflicting_openmeter_event_is_refused_with_409_and_kept_as_a_rejection(
    openmeter: OpenMeterClient, support: DjangoClient
) -> None:
    openmeter.events.ingest_event(om_event("om-c"))
    with pytest.raises(HttpResponseError) as raised:
        openmeter.events.ingest_event(om_event("om-c", data={"seconds": 99}))
    response = raised.value.response
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 409 and problem["title"] == "Conflict"
    (error,) = problem["extensions"]["errors"]
    assert (error["id"], error["outcome"]) == ("om-c", "conflict")
    assert error["details"]["differing_fields"] == ["properties"]
    original = UsageEvent.objects.get(idempotency_key="om-c")
    assert original.properties["seconds"] == 4.5  # unchanged
    rejection = IngestRejection.objects.get(idempotency_key="om-c")
    assert (rejection.outcome, rejection.surface) == ("conflict", "openmeter")
    assert rejection.raw_payload["data"] == {"seconds": 99}
    assert _open_rejections_count(support) == 1


def test_an_openmeter_batch_with_an_unknown_customer_stores_the_rest_and_names_the_failure(
    openmeter: OpenMeterClient, support: DjangoClient
) -> None:
    events = [om_event("om-u1"), om_event("om-u2", subject="initech"), om_event("om-u3")]
    with pytest.raises(HttpResponseError) as raised:
        openmeter.events.ingest_events(events)
    assert raised.value.status_code == 400
    problem = raised.value.response.json()
    assert problem["detail"].startswith("1 of 3 events were not stored (2 were).")
    assert problem["extensions"]["counts"]["accepted"] == 2
    assert [(e["index"], e["code"]) for e in problem["extensions"]["errors"]] == [
        (1, "unknown_customer")
    ]
    assert set(
        UsageEvent.objects.filter(idempotency_key__startswith="om-u").values_list(
            "idempotency_key", flat=True
        )
    ) == {"om-u1", "om-u3"}
    rejection = IngestRejection.objects.get(idempotency_key="om-u2")
    assert (rejection.error_code, rejection.customer_ref, rejection.surface) == (
        "unknown_customer",
        "initech",
        "openmeter",
    )
    batch = IngestBatch.objects.get(source="openmeter")
    assert (batch.accepted, batch.failed) == (2, 1)
    assert _open_rejections_count(support) == 1

    # The same replay as native ingest: the customer is created, the rejection replayed.
    factories.CustomerFactory(external_id="initech", name="Initech")
    replayed = ingest_services.rejection_replay(
        rejection=rejection, actor=None, reason="customer synced"
    )
    assert replayed.outcome == "replay"
    assert UsageEvent.objects.get(idempotency_key="om-u2").customer.external_id == "initech"
    assert _open_rejections_count(support) == 0
    # And a resend of the whole batch now raises nothing: every event is a duplicate.
    openmeter.events.ingest_events(events)


def test_an_openmeter_client_with_a_wrong_key_gets_its_authentication_error(
    live_server: Any, world: dict[str, Any]
) -> None:
    client = OpenMeterClient(
        endpoint=f"{live_server.url}/compat/openmeter", token="nope.nope", retry_total=0
    )
    with pytest.raises(ClientAuthenticationError) as raised:
        client.events.ingest_event(om_event("om-auth"))
    assert raised.value.response.json()["extensions"]["code"] == "authentication_failed"
    assert not UsageEvent.objects.filter(idempotency_key="om-auth").exists()


# --- Lago --------------------------------------------------------------------------------------


@pytest.fixture
def lago(live_server: Any, world: dict[str, Any]) -> LagoClient:
    # The trailing slash matters: Lago's client joins "api/v1/" onto the URL.
    return LagoClient(api_key=world["key"], api_url=f"{live_server.url}/compat/lago/")


def lago_event(transaction_id: str, **overrides: Any) -> LagoEvent:
    fields: dict[str, Any] = {
        "transaction_id": transaction_id,
        "external_subscription_id": "sub_acme_pro",
        "code": "compute_seconds",
        "timestamp": int(_when().timestamp()),
        "precise_total_amount_cents": None,
        "properties": {"seconds": 3},
    }
    fields.update(overrides)
    return LagoEvent(**fields)


def test_a_lago_client_sends_one_event_by_subscription_and_it_reaches_that_customer(
    lago: LagoClient, support: DjangoClient
) -> None:
    when = _when()
    answer = lago.events.create(lago_event("lg-1", timestamp=int(when.timestamp())))
    assert answer is not None
    assert (answer.transaction_id, answer.code) == ("lg-1", "compute_seconds")
    assert answer.external_subscription_id == "sub_acme_pro"
    stored = UsageEvent.objects.select_related("customer", "metric").get(idempotency_key="lg-1")
    assert answer.lago_id == str(stored.pk)
    assert stored.customer.external_id == "acme" and stored.metric.code == "compute_seconds"
    assert stored.timestamp == when and float(stored.value) == 3
    assert stored.source == "lago"
    assert datetime.fromisoformat(answer.timestamp) == when
    batch = IngestBatch.objects.get(pk=stored.batch_id)
    assert (batch.source, batch.accepted) == ("lago", 1)
    assert f">{batch.pk}<" in _console_batches(support, "lago")


def test_a_lago_event_naming_a_customer_and_an_iso_timestamp_is_stored_for_that_customer(
    lago: LagoClient,
) -> None:
    when = _when(45)
    lago.events.create(
        lago_event("lg-iso", external_subscription_id="globex", timestamp=when.isoformat())
    )
    stored = UsageEvent.objects.get(idempotency_key="lg-iso")
    assert stored.customer.external_id == "globex" and stored.timestamp == when


def test_a_lago_batch_and_its_resend_store_each_event_once_without_a_client_error(
    lago: LagoClient, support: DjangoClient
) -> None:
    batch = BatchEvent(
        events=[
            lago_event("lg-b1"),
            lago_event("lg-b2", code="api_calls", properties=None),
            lago_event("lg-b3", timestamp=None),
        ]
    )
    assert lago.events.batch_create(batch) is None
    lago.events.batch_create(batch)  # a client retrying after a timeout
    resent = lago.events.create(lago_event("lg-b1"))
    assert resent is not None
    assert resent.lago_id == str(UsageEvent.objects.get(idempotency_key="lg-b1").pk)
    assert UsageEvent.objects.filter(idempotency_key__startswith="lg-b").count() == 3
    rows = IngestBatch.objects.filter(source="lago").order_by("id")
    assert [(b.size, b.accepted, b.duplicate) for b in rows] == [(3, 3, 0), (3, 0, 3), (1, 0, 1)]
    assert _open_rejections_count(support) == 0


def test_a_conflicting_lago_event_is_a_422_with_value_already_exist(
    lago: LagoClient, support: DjangoClient
) -> None:
    lago.events.create(lago_event("lg-c"))
    with pytest.raises(LagoApiError) as raised:
        lago.events.create(lago_event("lg-c", properties={"seconds": 7}))
    assert raised.value.status_code == 422
    body = raised.value.response
    assert body["code"] == "validation_errors"
    assert body["error_details"] == {"transaction_id": ["value_already_exist"]}
    assert body["neruba"]["results"][0]["outcome"] == "conflict"
    assert float(UsageEvent.objects.get(idempotency_key="lg-c").value) == 3
    rejection = IngestRejection.objects.get(idempotency_key="lg-c")
    assert (rejection.outcome, rejection.surface) == ("conflict", "lago")
    assert _open_rejections_count(support) == 1


def test_a_lago_batch_with_an_unknown_subscription_stores_the_rest_and_replays_once_it_exists(
    lago: LagoClient, support: DjangoClient, world: dict[str, Any]
) -> None:
    batch = BatchEvent(
        events=[
            lago_event("lg-u1"),
            lago_event("lg-u2", external_subscription_id="sub_unknown"),
            lago_event("lg-u3", code="no_such_metric"),
        ]
    )
    with pytest.raises(LagoApiError) as raised:
        lago.events.batch_create(batch)
    assert raised.value.status_code == 422
    assert raised.value.response["error_details"] == {
        "1": {"external_subscription_id": ["subscription_not_found"]},
        "2": {"code": ["unknown_metric"]},
    }
    assert list(
        UsageEvent.objects.filter(idempotency_key__startswith="lg-u").values_list(
            "idempotency_key", flat=True
        )
    ) == ["lg-u1"]
    rejection = IngestRejection.objects.get(idempotency_key="lg-u2")
    assert (rejection.error_code, rejection.customer_ref, rejection.surface) == (
        "unknown_customer",
        "sub_unknown",
        "lago",
    )
    assert _open_rejections_count(support) == 2

    # The subscription appears (with that external id, for globex): the replay resolves it.
    billing_services.subscription_create(
        customer=Customer.objects.get(external_id="globex"),
        plan=world["subscription"].plan,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        external_id="sub_unknown",
    )
    # Replayed from the console like any rejection: preview, reason, done.
    changelist = "/admin/ingest/ingestrejection/"
    chosen = {"action": "replay_rejections", "_selected_action": [rejection.pk]}
    assert b"would be stored" in support.post(changelist, chosen).content
    done = support.post(
        changelist, {**chosen, "confirm": "yes", "reason": "subscription created"}, follow=True
    )
    assert done.status_code == 200
    rejection.refresh_from_db()
    assert rejection.status == "replayed"
    replayed = UsageEvent.objects.get(idempotency_key="lg-u2")
    assert (replayed.customer.external_id, replayed.rejection_id) == ("globex", rejection.pk)
    assert _open_rejections_count(support) == 1


def test_a_lago_client_with_a_wrong_key_gets_a_401(live_server: Any, world: dict[str, Any]) -> None:
    client = LagoClient(api_key="nope.nope", api_url=f"{live_server.url}/compat/lago/")
    with pytest.raises(LagoApiError) as raised:
        client.events.create(lago_event("lg-auth"))
    assert raised.value.status_code == 401
    assert raised.value.response["code"] == "authentication_failed"
    assert not UsageEvent.objects.filter(idempotency_key="lg-auth").exists()
