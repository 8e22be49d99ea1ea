"""The console shows every time as ISO-like UTC ("2026-11-26 04:27 UTC"): lists, detail
pages and the explainer read the same, and no one has to guess the zone."""

from __future__ import annotations

DATETIME_FORMAT = "Y-m-d H:i T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i"
