"""Small server-rendered SVG charts for the console (no JavaScript, no CDN)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = {
    "accepted": "#2e7d32",
    "duplicate": "#90a4ae",
    "conflict": "#ef6c00",
    "failed": "#c62828",
    "replay": "#1565c0",
    "processed": "#2e7d32",
    "ignored": "#90a4ae",
    "dead": "#6a1b9a",
    "received": "#1565c0",
    "processing": "#f9a825",
}


def stacked_bars(
    buckets: Sequence[str],
    series: dict[str, Sequence[int]],
    *,
    title: str,
    width: int = 560,
    height: int = 140,
) -> str:
    """A stacked bar chart, one bar per bucket (e.g. hour), one colour per series."""
    n = max(len(buckets), 1)
    totals = [sum(values[i] for values in series.values()) for i in range(len(buckets))]
    peak = max(totals or [0]) or 1
    bar_w = (width - 40) / n
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" '
        f'viewBox="0 0 {width} {height + 40}" '
        f'role="img" aria-label="{escape(title)}" class="neruba-chart">',
        f"<title>{escape(title)}</title>",
        # The peak, right-aligned against the axis so a wide number is never clipped.
        f'<text x="36" y="20" font-size="11" text-anchor="end">{peak}</text>',
        f'<text x="36" y="{height}" font-size="11" text-anchor="end">0</text>',
        f'<line x1="38" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>',
    ]
    # A time label under every sixth bucket (and the last), so a bar says when it was.
    for i, bucket in enumerate(buckets):
        if i % 6 == 0 or i == len(buckets) - 1:
            parts.append(
                f'<text x="{40 + (i + 0.5) * bar_w:.1f}" y="{height + 10}" font-size="9" '
                f'text-anchor="middle" fill="#555">{escape(bucket)}</text>'
            )
    for i, bucket in enumerate(buckets):
        y = float(height)
        for name, values in series.items():
            value = values[i]
            if not value:
                continue
            h = (height - 16) * value / peak
            y -= h
            parts.append(
                f'<rect x="{40 + i * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{PALETTE.get(name, "#555")}">'
                f"<title>{escape(bucket)} {escape(name)}: {value}</title></rect>"
            )
    x = 40.0
    for name in series:
        parts.append(
            f'<rect x="{x}" y="{height + 22}" width="10" height="10" '
            f'fill="{PALETTE.get(name, "#555")}"/>'
            f'<text x="{x + 14}" y="{height + 31}" font-size="11">{escape(name)}</text>'
        )
        x += 14 + 8 * len(name) + 12
    parts.append("</svg>")
    return "".join(parts)
