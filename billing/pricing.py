"""Pricing arithmetic: pure functions over Decimal, no database."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from billing.exceptions import InvalidTiers


def tiers_validate(tiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalises graduated tiers: ascending ``up_to`` bounds, the last one open (``None``),
    Decimal-parsable unit prices, integer flat amounts."""
    if not tiers:
        raise InvalidTiers(details={"tiers": "at least one tier is required"})
    clean: list[dict[str, Any]] = []
    previous = Decimal(0)
    for index, tier in enumerate(tiers):
        up_to = tier.get("up_to")
        try:
            unit = Decimal(str(tier.get("unit_amount", "0")))
            flat = int(tier.get("flat_amount", 0) or 0)
        except (InvalidOperation, TypeError, ValueError):
            raise InvalidTiers(details={"tier": index, "problem": "bad amount"}) from None
        if unit < 0 or flat < 0:
            raise InvalidTiers(details={"tier": index, "problem": "negative amount"})
        last = index == len(tiers) - 1
        if up_to is None:
            if not last:
                raise InvalidTiers(details={"tier": index, "problem": "only the last tier is open"})
        else:
            try:
                bound = Decimal(str(up_to))
            except InvalidOperation:
                raise InvalidTiers(details={"tier": index, "problem": "bad up_to"}) from None
            if bound <= previous:
                raise InvalidTiers(details={"tier": index, "problem": "up_to must ascend"})
            if last:
                raise InvalidTiers(details={"tier": index, "problem": "the last tier must be open"})
            previous = bound
        clean.append(
            {
                "up_to": None if up_to is None else str(Decimal(str(up_to))),
                "unit_amount": str(unit),
                "flat_amount": flat,
            }
        )
    return clean
