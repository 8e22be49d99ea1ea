"""Demo Stripe events for ``make run``: signed, verified and stored through the same receive
service as real deliveries, then processed, so the console shows one event in each state."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from neruba.models import Customer
from webhooks import services
from webhooks.models import EventAttempt, StripeEvent
from webhooks.samples import event_body, sign, stripe_event, stripe_object

DEMO_SECRET = "whsec_neruba_demo_only"


def _events(customer: Customer) -> dict[str, dict]:
    stripe_customer = f"cus_demo_{customer.external_id}"
    return {
        # Links the customer to its Stripe customer: processed.
        "evt_demo_processed": stripe_event(
            stripe_object(
                "customer",
                id=stripe_customer,
                email=customer.email,
                metadata={"external_id": customer.external_id},
            ),
            type="customer.updated",
            id="evt_demo_processed",
        ),
        # A refund with no amount (Stripe never sends one): failed, waiting for its retry.
        "evt_demo_failed": stripe_event(
            stripe_object(
                "refund", id="re_demo_zero", amount=0, charge="ch_demo_1", customer=stripe_customer
            ),
            type="charge.refund.updated",
            id="evt_demo_failed",
        ),
        # The same problem, retried until Neruba gave up: dead.
        "evt_demo_dead": stripe_event(
            stripe_object(
                "refund", id="re_demo_dead", amount=0, charge="ch_demo_2", customer=stripe_customer
            ),
            type="charge.refund.updated",
            id="evt_demo_dead",
        ),
        # An invoice Neruba never issued (made by hand in the Stripe dashboard): ignored.
        "evt_demo_ignored": stripe_event(
            stripe_object("invoice", id="in_demo_dashboard", customer="cus_demo_unknown"),
            type="invoice.paid",
            id="evt_demo_ignored",
        ),
    }


def seed_webhooks() -> dict[str, int]:
    """Stores and processes the demo events once; a second call changes nothing."""
    customer = Customer.objects.order_by("created_at", "id").first()
    if customer is None:
        return {"stripe_events": 0}
    secrets = list(settings.NERUBA["STRIPE_WEBHOOK_SECRETS"]) or [DEMO_SECRET]
    stored = 0
    for stripe_id, event in _events(customer).items():
        body = event_body(event)
        stored_event, created = services.event_receive(
            body=body,
            signature=sign(body, secrets[0]),
            headers={"User-Agent": "Neruba demo", "Content-Type": "application/json"},
            secrets=secrets[:1],
        )
        if not created:
            continue
        stored += 1
        # Processed here rather than by the worker so the demo is complete at once; the
        # after-commit task then finds the event already claimed and does nothing.
        services.event_process(event=stored_event, trigger=EventAttempt.Trigger.HTTP)
        if stripe_id == "evt_demo_dead":
            # Fast-forward the backoff: retry until the attempts run out.
            for _ in range(settings.NERUBA["STRIPE_WEBHOOK_MAX_ATTEMPTS"]):
                StripeEvent.objects.filter(
                    pk=stored_event.pk, status=StripeEvent.Status.FAILED
                ).update(next_attempt_at=timezone.now())
                services.event_process(event=stored_event, trigger=EventAttempt.Trigger.RETRY)
    return {"stripe_events": stored}
