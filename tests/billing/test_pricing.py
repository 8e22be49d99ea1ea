from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing.periods import period_current, periods_between
from billing.pricing import (
    amount_round,
    credits_applicable,
    graduated_amount,
    line_amount,
    tiers_validate,
)

TIERS = tiers_validate(
    [
        {"up_to": 100, "unit_amount": "1"},
        {"up_to": 1000, "unit_amount": "0.5", "flat_amount": 200},
        {"up_to": None, "unit_amount": "0.1"},
    ]
)

quantities = st.decimals(min_value=0, max_value=10**7, places=4, allow_nan=False)
prices = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False)


def test_graduated_tiers_match_a_hand_computed_table() -> None:
    table = {
        "0": "0",
        "1": "1",
        "100": "100",
        "101": "300.5",  # 100 + flat 200 + 1 x 0.5
        "1000": "750",  # 100 + 200 + 900 x 0.5
        "1001": "750.1",
        "5000": "1150",  # 750 + 4000 x 0.1
        "0.5": "0.5",
    }
    for quantity, expected in table.items():
        assert graduated_amount(tiers=TIERS, quantity=Decimal(quantity)) == Decimal(expected)


def test_rounding_is_half_even_once_per_line() -> None:
    assert [amount_round(Decimal(v)) for v in ["0.5", "1.5", "2.5", "2.5001", "-0.5"]] == [
        0,
        2,
        2,
        3,
        0,
    ]
    # 3 units at 0.5 = 1.5 -> 2, not 3 x round(0.5) = 0
    assert (
        line_amount(model="per_unit", unit_amount=Decimal("0.5"), tiers=[], quantity=Decimal(3))
        == 2
    )


@given(st.lists(st.tuples(quantities, prices), min_size=1, max_size=8), st.integers(0, 10**6))
def test_an_invoice_total_equals_the_sum_of_its_rounded_lines(
    lines: list[tuple[Decimal, Decimal]], base: int
) -> None:
    amounts = [
        line_amount(model="per_unit", unit_amount=price, tiers=[], quantity=qty)
        for qty, price in lines
    ]
    subtotal = base + sum(amounts)
    assert all(isinstance(a, int) for a in amounts)
    assert subtotal == base + sum(amount_round(q * p) for q, p in lines)
    for amount, (qty, price) in zip(amounts, lines, strict=True):
        assert abs(Decimal(amount) - qty * price) <= Decimal("0.5")


@given(quantities, quantities)
def test_graduated_amounts_grow_with_quantity(a: Decimal, b: Decimal) -> None:
    low, high = sorted([a, b])
    assert graduated_amount(tiers=TIERS, quantity=low) <= graduated_amount(
        tiers=TIERS, quantity=high
    )


@given(st.integers(0, 10**9), st.integers(-(10**9), 10**9))
def test_credits_never_drive_a_total_below_zero(subtotal: int, balance: int) -> None:
    applied = credits_applicable(subtotal=subtotal, balance=balance)
    assert 0 <= applied <= max(balance, 0)
    assert subtotal - applied >= 0


def test_monthly_windows_follow_the_calendar_with_partial_ends() -> None:
    start = datetime(2026, 1, 15, 12, tzinfo=UTC)
    end = datetime(2026, 4, 10, tzinfo=UTC)
    windows = list(
        periods_between(
            interval="month",
            started_at=start,
            ended_at=end,
            since=start,
            through=datetime(2027, 1, 1, tzinfo=UTC),
        )
    )
    assert windows == [
        (start, datetime(2026, 2, 1, tzinfo=UTC)),
        (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),
        (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
        (datetime(2026, 4, 1, tzinfo=UTC), end),
    ]


def test_only_closed_windows_are_generated_and_december_rolls_over() -> None:
    start = datetime(2025, 12, 1, tzinfo=UTC)
    windows = list(
        periods_between(
            interval="month",
            started_at=start,
            ended_at=None,
            since=start,
            through=datetime(2026, 1, 20, tzinfo=UTC),
        )
    )
    assert windows == [(start, datetime(2026, 1, 1, tzinfo=UTC))]
    assert period_current(
        interval="day", started_at=start, ended_at=None, at=datetime(2026, 1, 20, 5, tzinfo=UTC)
    ) == (datetime(2026, 1, 20, tzinfo=UTC), datetime(2026, 1, 21, tzinfo=UTC))
