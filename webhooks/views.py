"""``POST /webhooks/stripe``: a plain Django view, not DRF, so nothing parses the body before
the signature is checked on its exact bytes."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from neruba.errors import envelope
from neruba.metrics import WEBHOOK_RECEIPTS
from webhooks import services
from webhooks.exceptions import WebhookRejected


def _rejected(exc: WebhookRejected) -> JsonResponse:
    return JsonResponse(envelope(exc.code, exc.message, exc.details), status=exc.http_status)


@csrf_exempt  # Stripe cannot send a CSRF token; the signature authenticates the request.
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    limit = settings.NERUBA["STRIPE_WEBHOOK_MAX_BYTES"]
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        # Refused before reading, so an oversize body is never buffered.
        WEBHOOK_RECEIPTS.labels(result="too_large").inc()
        return JsonResponse(
            envelope("too_large", f"The body is larger than {limit} bytes."), status=400
        )
    headers = dict(request.headers)
    headers["X-Request-ID"] = getattr(request, "request_id", "")
    try:
        with services.deferred_enqueues() as stored:
            event, created = services.event_receive(
                body=request.body,
                signature=request.headers.get("Stripe-Signature"),
                headers=headers,
            )
    except WebhookRejected as exc:
        return _rejected(exc)
    response = JsonResponse(
        {"id": event.stripe_id, "status": "stored" if created else "duplicate"}, status=200
    )
    if stored:
        # The WSGI server closes the response after sending it: Stripe has its 200 before we
        # talk to the broker. The row is already committed, so the worker will find it.
        response._resource_closers.append(lambda: services.events_enqueue(event_ids=stored))
    return response
