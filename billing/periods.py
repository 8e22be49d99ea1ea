"""Billing periods: pure calendar arithmetic in UTC, no database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta


def period_floor(*, interval: str, at: datetime) -> datetime:
    """Start of the calendar period (UTC month or day) containing ``at``."""
    at = at.astimezone(UTC)
    if interval == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def period_next(*, interval: str, start: datetime) -> datetime:
    """Start of the calendar period after the one starting at (or containing) ``start``."""
    floor = period_floor(interval=interval, at=start)
    if interval == "day":
        return floor + timedelta(days=1)
    if floor.month == 12:
        return floor.replace(year=floor.year + 1, month=1)
    return floor.replace(month=floor.month + 1)


def periods_between(
    *,
    interval: str,
    started_at: datetime,
    ended_at: datetime | None,
    since: datetime,
    through: datetime,
) -> Iterator[tuple[datetime, datetime]]:
    """The windows of a subscription that start at or after ``since`` and have closed by
    ``through``. Windows follow calendar boundaries; the first starts at ``started_at`` and the
    last ends at ``ended_at``, so partial first and last windows exist (their base fee is not
    prorated: a started period is a billed period)."""
    start = max(started_at, since)
    if start != started_at:
        start = period_floor(interval=interval, at=start)
        if start < since:
            start = period_next(interval=interval, start=start)
    while True:
        end = period_next(interval=interval, start=start)
        if ended_at is not None and ended_at < end:
            end = ended_at
        if end > through or end <= start:
            return
        yield start, end
        if ended_at is not None and end >= ended_at:
            return
        start = end


def period_current(
    *, interval: str, started_at: datetime, ended_at: datetime | None, at: datetime
) -> tuple[datetime, datetime] | None:
    """The (open) window containing ``at``, or ``None`` outside the subscription."""
    if at < started_at or (ended_at is not None and at >= ended_at):
        return None
    start = max(started_at, period_floor(interval=interval, at=at))
    end = period_next(interval=interval, start=at)
    if ended_at is not None:
        end = min(end, ended_at)
    return start, end
