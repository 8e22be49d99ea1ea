"""The payment-provider outbox: rows queued in the billing transaction, sent after it commits."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from billing.models import Invoice, ProviderSync

if TYPE_CHECKING:
    from billing.providers import PaymentProvider


def _enqueue_syncs(sync_ids: list[int]) -> None:
    if not sync_ids:
        return

    def send() -> None:
        from billing import tasks

        tasks.provider_syncs_send.delay(sync_ids)

    transaction.on_commit(send)


SYNC_MAX_ATTEMPTS = 8


def provider_sync_send(*, sync: ProviderSync, provider: PaymentProvider | None = None) -> bool:
    """Sends one outbox row to the payment provider. The call happens outside any row lock;
    the outcome is written afterwards. Returns True when sent (or already sent); on failure
    records the error and the next attempt time (exponential backoff) and re-raises."""
    from billing.providers import provider_get

    sync = ProviderSync.objects.select_related("invoice__customer").get(pk=sync.pk)
    if sync.status == ProviderSync.Status.SENT:
        return True
    invoice = sync.invoice
    provider = provider or provider_get()
    try:
        if sync.action == ProviderSync.Action.PUSH:
            provider_id = provider.push_invoice(invoice)
        else:
            provider.void_invoice(invoice)
            provider_id = invoice.provider_invoice_id
    except Exception as exc:
        attempts = sync.attempts + 1
        ProviderSync.objects.filter(pk=sync.pk).update(
            attempts=attempts,
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
            next_attempt_at=timezone.now() + timedelta(seconds=min(3600, 30 * 2**attempts)),
            status=(
                ProviderSync.Status.FAILED
                if attempts >= SYNC_MAX_ATTEMPTS
                else ProviderSync.Status.PENDING
            ),
        )
        raise
    now = timezone.now()
    with transaction.atomic():
        ProviderSync.objects.filter(pk=sync.pk).update(
            status=ProviderSync.Status.SENT, sent_at=now, attempts=F("attempts") + 1, last_error=""
        )
        Invoice.objects.filter(pk=invoice.pk).update(
            provider=provider.name,
            provider_invoice_id=provider_id or invoice.provider_invoice_id,
            provider_synced_at=now,
        )
    return True
