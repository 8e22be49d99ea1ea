from __future__ import annotations

import pytest

from tests import factories
from webhooks.demo import seed_webhooks
from webhooks.models import StripeEvent


@pytest.mark.django_db
def test_demo_events_cover_each_state_and_seeding_twice_changes_nothing() -> None:
    customer = factories.CustomerFactory(external_id="acme", stripe_customer_id="")
    assert seed_webhooks() == {"stripe_events": 4}
    states = dict(StripeEvent.objects.values_list("stripe_id", "status"))
    assert states == {
        "evt_demo_processed": "processed",
        "evt_demo_failed": "failed",
        "evt_demo_dead": "dead",
        "evt_demo_ignored": "ignored",
    }
    assert all(e.secret_hint for e in StripeEvent.objects.all())
    customer.refresh_from_db()
    assert customer.stripe_customer_id == "cus_demo_acme"

    assert seed_webhooks() == {"stripe_events": 0}
    assert StripeEvent.objects.count() == 4
