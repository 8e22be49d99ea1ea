"""Money as people read and type it.

Amounts are stored as integer minor units (``1500`` USD cents). Everything a person sees —
console pages, previews, the explainer, support replies, CSV exports — goes through
``money()`` here, and every amount a person types goes through ``parse_major()``: one place
that knows each currency's exponent (JPY has none, KWD has three), taken from Babel's copy of
the CLDR/ISO 4217 data rather than a hand-kept list.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from babel.numbers import format_currency, format_decimal, get_currency_precision

# The console is in English; the locale also fixes the symbol ($, €, ¥, CA$) and grouping.
LOCALE = "en_US"


class MoneyInputError(ValueError):
    """A typed amount that is not a valid amount of the currency."""


def exponent(currency: str) -> int:
    """Decimal places of ``currency`` (USD 2, JPY 0, KWD 3). Unknown codes fall back to 2,
    Babel's own default, so a display never fails on an odd code."""
    return int(get_currency_precision((currency or "").upper() or "XXX"))


def to_major(amount: int, currency: str) -> Decimal:
    """Minor units as a Decimal of major units: 1500 USD -> Decimal('15.00')."""
    places = exponent(currency)
    return (Decimal(int(amount)).scaleb(-places)).quantize(Decimal(1).scaleb(-places))


def money(amount: Any, currency: str, *, signed: bool = False) -> str:
    """Minor units as a person reads them: 1500 USD -> "$15.00", 100 EUR -> "€1.00",
    500 JPY -> "¥500". ``signed`` shows "+" on positive amounts (deltas). ``None`` is "—"."""
    if amount is None or amount == "":
        return "—"
    code = (currency or "").upper()
    value = to_major(int(amount), code)
    text = format_currency(value, code, locale=LOCALE, currency_digits=True, format_type="standard")
    if signed and value > 0:
        text = "+" + text
    return text


def major_str(amount: Any, currency: str) -> str:
    """Minor units as a plain major-unit number without symbol, for exports and form
    defaults: 150000 USD -> "1500.00", 500 JPY -> "500"."""
    if amount is None or amount == "":
        return ""
    return str(to_major(int(amount), currency))


def parse_major(text: Any, currency: str) -> int:
    """A typed major-unit amount as minor units: "15" / "15.00" / "1,500.5" USD -> 1500 /
    1500 / 150050; "500" JPY -> 500. More decimals than the currency has is an error, never
    a silent rounding: "0.005" USD is refused."""
    raw = str(text if text is not None else "").strip().replace(",", "").replace(" ", "")
    if not raw:
        raise MoneyInputError("Enter an amount.")
    try:
        value = Decimal(raw)
    except InvalidOperation as exc:
        raise MoneyInputError(f"{text!r} is not an amount.") from exc
    if not value.is_finite():
        raise MoneyInputError(f"{text!r} is not an amount.")
    places = exponent(currency)
    minor = value.scaleb(places)
    if minor != minor.to_integral_value(rounding=ROUND_HALF_EVEN):
        unit = "no decimals" if places == 0 else f"at most {places} decimals"
        raise MoneyInputError(f"{currency.upper()} amounts have {unit}.")
    return int(minor)


def quantity(value: Any) -> str:
    """A Decimal quantity without storage noise: Decimal('1.0000000000') -> "1",
    6197.989999999999 (a SQLite float sum) -> "6,197.99"."""
    if value is None or value == "":
        return "—"
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    # Ten places is the column's scale; a float sum's tail beyond it is noise.
    number = number.quantize(Decimal("0.0000000001"), rounding=ROUND_HALF_EVEN).normalize()
    return format_decimal(number, locale=LOCALE, decimal_quantization=False, group_separator=True)
