"""CSV export of console lists (the credit ledger, the audit log)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from typing import Any

from django.db.models import QuerySet

from neruba import audit

CHUNK = 2000


class _Echo:
    """A file-like object whose ``write`` returns the line: csv.writer feeds the stream."""

    def write(self, value: str) -> str:
        return value


def csv_export(
    *,
    queryset: QuerySet[Any],
    columns: list[tuple[str, Callable[[Any], Any]]],
    actor: audit.Actor,
    label: str,
    filters: str,
) -> Iterator[str]:
    """The rows ``queryset`` selects as CSV lines, read in chunks so memory stays flat however
    many rows match. Exports leave the building, so each one is audited (who, which list, which
    filters) before the first row is produced."""
    audit.record(
        actor=actor,
        action="export.csv",
        target_type=label,
        target_id="",
        reason=f"filters: {filters or '(none)'}",
    )
    writer = csv.writer(_Echo())

    def rows() -> Iterator[str]:
        yield writer.writerow([name for name, _ in columns])
        for obj in queryset.iterator(chunk_size=CHUNK):
            yield writer.writerow([_cell(get(obj)) for _, get in columns])

    return rows()


def _cell(value: Any) -> Any:
    # Spreadsheet apps run cells starting with these as formulas (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
