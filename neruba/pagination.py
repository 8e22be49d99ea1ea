from __future__ import annotations

from rest_framework.pagination import CursorPagination


class NerubaCursorPagination(CursorPagination):
    """Cursor pagination: stable under inserts and cheap on big tables (no COUNT)."""

    page_size = 50
    max_page_size = 500
    page_size_query_param = "limit"
    ordering = "-id"
