"""Money shown to people: integer minor units in, major units with the currency's exponent out.

The one helper every layer uses for text (support replies, findings, the console), so an amount
reads the same everywhere. Amounts are stored and computed in minor units only."""

from __future__ import annotations

from decimal import Decimal

# ISO 4217 currencies without minor units; every other currency has two decimals here.
ZERO_DECIMAL = {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "XAF"}


def money(amount: int, currency: str) -> str:
    """Minor units as the customer reads them: 1250 USD -> 12.50."""
    if currency.upper() in ZERO_DECIMAL:
        return str(amount)
    return f"{Decimal(amount) / 100:.2f}"
