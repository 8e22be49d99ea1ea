"""Pricing arithmetic: pure functions over Decimal, no database."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
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


def amount_round(amount: Decimal) -> int:
    """Minor units, rounded half-even. Called once per invoice line, never on partial sums."""
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def graduated_amount(*, tiers: list[dict[str, Any]], quantity: Decimal) -> Decimal:
    """Unrounded amount of ``quantity`` across graduated tiers: each unit is priced by the tier
    it falls in; a tier's ``flat_amount`` is charged once the quantity reaches into it."""
    total = Decimal(0)
    lower = Decimal(0)
    for tier in tiers:
        if quantity <= lower:
            break
        upper = None if tier.get("up_to") is None else Decimal(str(tier["up_to"]))
        in_tier = (quantity if upper is None else min(quantity, upper)) - lower
        total += in_tier * Decimal(str(tier.get("unit_amount", "0")))
        total += Decimal(int(tier.get("flat_amount", 0) or 0))
        if upper is None:
            break
        lower = upper
    return total


def price_amount(
    *, model: str, unit_amount: Decimal, tiers: list[dict[str, Any]], quantity: Decimal
) -> Decimal:
    """Unrounded amount of one priced metric for one window."""
    if model == "graduated":
        return graduated_amount(tiers=tiers, quantity=quantity)
    return quantity * Decimal(unit_amount)


def line_amount(
    *, model: str, unit_amount: Decimal, tiers: list[dict[str, Any]], quantity: Decimal
) -> int:
    return amount_round(
        price_amount(model=model, unit_amount=unit_amount, tiers=tiers, quantity=quantity)
    )


def effective_unit_amount(*, amount: Decimal, quantity: Decimal) -> Decimal:
    """The average unit price shown on a graduated line (amount / quantity)."""
    if quantity == 0:
        return Decimal(0)
    return (amount / quantity).quantize(Decimal("0.0000000001"), rounding=ROUND_HALF_EVEN)


def credits_applicable(*, subtotal: int, balance: int) -> int:
    """Credits consumed by an invoice: never more than the balance, never below a zero total."""
    return max(0, min(subtotal, balance))


def decimal_str(value: Decimal) -> str:
    """A plain decimal string without exponent or trailing zeros: ``120``, ``0.5``."""
    text = format(Decimal(value).normalize(), "f")
    return "0" if text in ("-0", "") else text
