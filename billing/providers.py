"""Payment providers. ``LocalProvider`` (the embedded default, no Stripe keys) keeps invoices
open until an operator marks them paid; ``StripeProvider`` pushes them through the stripe SDK.

Every Stripe request carries an idempotency key derived from the invoice number, so a retried
outbox send (a timeout after Stripe accepted the request) cannot create a second invoice."""

from __future__ import annotations

from typing import Any, Protocol

import stripe
from django.conf import settings

from billing.models import Invoice


class PaymentProvider(Protocol):
    name: str

    def push_invoice(self, invoice: Invoice) -> str:
        """Creates the invoice at the provider; returns the provider's invoice id."""

    def void_invoice(self, invoice: Invoice) -> None: ...

    def fetch_invoice_status(self, invoice: Invoice) -> str | None:
        """The provider's view of the invoice status (for reconciliation)."""


class LocalProvider:
    """Offline: nothing leaves the process; invoices stay open until ``invoice_mark_paid``."""

    name = "local"

    def push_invoice(self, invoice: Invoice) -> str:
        return ""

    def void_invoice(self, invoice: Invoice) -> None:
        return None

    def fetch_invoice_status(self, invoice: Invoice) -> str | None:
        return invoice.status


class StripeProvider:
    name = "stripe"

    def __init__(self, client: stripe.StripeClient) -> None:
        self.client = client

    def _customer_id(self, invoice: Invoice) -> str:
        customer = invoice.customer
        if customer.stripe_customer_id:
            return customer.stripe_customer_id
        created = self.client.v1.customers.create(
            params={
                "name": customer.name,
                "email": customer.email or None,
                "metadata": {"neruba_customer": customer.external_id},
            },
            options={"idempotency_key": f"customer:{customer.external_id}"},
        )
        # Stored at once (outside the invoice's locks): the idempotency key makes a retry
        # before this save return the same Stripe customer.
        type(customer).objects.filter(pk=customer.pk, stripe_customer_id="").update(
            stripe_customer_id=created.id
        )
        customer.stripe_customer_id = created.id
        return created.id

    def push_invoice(self, invoice: Invoice) -> str:
        number = invoice.number
        metadata = {"neruba_invoice_number": number}
        customer_id = self._customer_id(invoice)
        stripe_invoice = self.client.v1.invoices.create(
            params={
                "customer": customer_id,
                "currency": invoice.currency.lower(),
                "auto_advance": True,
                "collection_method": "charge_automatically",
                "pending_invoice_items_behavior": "exclude",
                "description": f"{number} ({invoice.period_start:%Y-%m-%d} to "
                f"{invoice.period_end:%Y-%m-%d})",
                "metadata": metadata,
            },
            options={"idempotency_key": f"{number}:invoice"},
        )
        items: list[tuple[str, dict[str, Any]]] = [
            (
                f"{number}:item:{line.pk}",
                {"amount": line.amount, "description": line.description},
            )
            for line in invoice.lines.all()
            if line.amount
        ]
        if invoice.credits_applied:
            items.append(
                (
                    f"{number}:credits",
                    {"amount": -invoice.credits_applied, "description": "Credits applied"},
                )
            )
        for key, item in items:
            self.client.v1.invoice_items.create(
                params={
                    "customer": customer_id,
                    "invoice": stripe_invoice.id,
                    "currency": invoice.currency.lower(),
                    "metadata": metadata,
                    **item,
                },
                options={"idempotency_key": key},
            )
        self.client.v1.invoices.finalize_invoice(
            stripe_invoice.id, options={"idempotency_key": f"{number}:finalize"}
        )
        return stripe_invoice.id

    def void_invoice(self, invoice: Invoice) -> None:
        if not invoice.provider_invoice_id:
            return
        self.client.v1.invoices.void_invoice(
            invoice.provider_invoice_id, options={"idempotency_key": f"{invoice.number}:void"}
        )

    def fetch_invoice_status(self, invoice: Invoice) -> str | None:
        if not invoice.provider_invoice_id:
            return None
        return self.client.v1.invoices.retrieve(invoice.provider_invoice_id).status


def provider_get(*, client: stripe.StripeClient | None = None) -> PaymentProvider:
    """Stripe when ``STRIPE_SECRET_KEY`` is set (or a client is given), else the local one."""
    if client is not None:
        return StripeProvider(client)
    key = settings.NERUBA.get("STRIPE_SECRET_KEY")
    if key:
        return StripeProvider(stripe.StripeClient(key, max_network_retries=2))
    return LocalProvider()
