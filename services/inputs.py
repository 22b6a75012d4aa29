"""Bounds on what a request can hand to the database: ids and search text.

One home for both, so every route, form and search applies the same limits.
"""

from __future__ import annotations

from typing import Any

MAX_ID = 2**63 - 1  # SQLite INTEGER is 64-bit signed: a larger id raises OverflowError
# Long enough for any real search; SQLite refuses LIKE patterns past 50,000 bytes, and long
# FTS queries only cost time.
MAX_SEARCH_LENGTH = 200


def is_database_id(value: int) -> bool:
    """Tell whether `value` can be the id of a row (1..2**63-1)."""
    return 0 < value <= MAX_ID


def parse_id(value: Any) -> int | None:
    """Return a database id from query or form text, or None for anything else."""
    text = str(value if value is not None else "").strip()
    if not text.isdigit() or len(text) > len(str(MAX_ID)):
        return None
    number = int(text)
    return number if is_database_id(number) else None


def search_text(value: str | None) -> str:
    """Return a search query as typed, trimmed and cut to MAX_SEARCH_LENGTH characters."""
    return (value or "").replace("\x00", "").strip()[:MAX_SEARCH_LENGTH].strip()
