"""The API's request parser: DRF's JSON parser on ``neruba.jsonparse.loads_strict``."""

from __future__ import annotations

from typing import Any

from rest_framework.parsers import BaseParser

from neruba.jsonparse import loads_strict


class StrictJSONParser(BaseParser):
    """``application/json`` bodies, read strictly: depth limit, no non-finite or out-of-range
    numbers, no duplicate keys; each refused as a 400 with its own code."""

    media_type = "application/json"

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:
        return loads_strict(stream.read() if stream is not None else b"")
