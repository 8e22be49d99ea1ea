from __future__ import annotations

from neruba.errors import NerubaError


class WebhookRejected(NerubaError):
    """A webhook request refused before anything is stored. ``code`` is the reason, also used as
    the ``result`` label of the receipts counter."""

    code = "webhook_rejected"
    http_status = 400
    message = "The webhook request was rejected."


class EventBusy(NerubaError):
    code = "event_busy"
    http_status = 409
    message = "The event is being processed right now; try again when it finishes."


class StripeCustomerMismatch(NerubaError):
    """The Stripe object names another Stripe customer than the Neruba record it matched: our
    data disagrees with Stripe's, and a human has to decide which side is right."""

    code = "stripe_customer_mismatch"
    http_status = 409
    message = "The Stripe customer on the event differs from the Neruba customer's Stripe id."


class EndpointUrlNotAllowed(NerubaError):
    """An outbound endpoint URL Neruba refuses to call (scheme, or an address that is loopback,
    private, link-local or a cloud metadata service)."""

    code = "endpoint_url_not_allowed"
    http_status = 422
    message = "This webhook endpoint URL is not allowed."


class UnknownEventType(NerubaError):
    code = "unknown_event_type"
    http_status = 422
    message = "Unknown webhook event type."
