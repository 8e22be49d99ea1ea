"""What a guarded action will do, in a shape the confirmation page renders as tables.

A preview is for a person about to confirm: a one-line summary, the fields that change
(before -> after), facts worth checking (totals, balances, eligibility), and tables such as
invoice lines old vs new. No Python reprs reach the page: ``as_preview`` turns the plain
strings, dicts and lists older previews return into the same structure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PreviewTable:
    caption: str
    headers: list[str]
    rows: list[list[str]]
    footer: list[str] | None = None


@dataclass
class Preview:
    summary: str = ""
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: list[PreviewTable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # "ok" (will happen), "warn" (will happen, check it), "fail" (will not happen).
    tone: str = "ok"


def _text(value: Any) -> str:
    """A value as words: dicts as "key: value" pairs, lists joined, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) or "—"
    if isinstance(value, (list, tuple, set)):
        return ", ".join(_text(v) for v in value) or "—"
    return str(value)


def as_preview(value: Any) -> Preview | None:
    """Any preview an action returns, as a ``Preview`` (``None`` stays ``None``)."""
    if value is None or isinstance(value, Preview):
        return value
    if hasattr(value, "to_preview"):
        return value.to_preview()
    if isinstance(value, str):
        lines = [line.strip() for line in value.splitlines() if line.strip()]
        tone = (
            "fail" if lines and lines[0].lower().startswith(("will fail", "would fail")) else "ok"
        )
        return Preview(summary=lines[0] if lines else "", notes=lines[1:], tone=tone)
    if isinstance(value, Mapping):
        return Preview(facts=[(str(k), _text(v)) for k, v in value.items()])
    if isinstance(value, Iterable):
        items = [_text(v) for v in value]
        return Preview(summary=items[0] if items else "", notes=items[1:])
    return Preview(summary=_text(value))


def rows_of(pairs: Sequence[tuple[Any, ...]]) -> list[list[str]]:
    return [[_text(cell) for cell in row] for row in pairs]
