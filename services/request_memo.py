"""Values read once per web request: a page asks several services for the same small rows
(the user's preferences, their mailbox ids), and on PostgreSQL each query is a round trip.

Outside a request (the worker, the CLI) nothing is kept: each call reads afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import g, has_request_context

T = TypeVar("T")


def remembered(name: str, key: int | str, read: Callable[[], T]) -> T:
    """Return read() for (name, key), read at most once in this request."""
    if not has_request_context():
        return read()
    values = g.setdefault(f"memo_{name}", {})
    if key not in values:
        values[key] = read()
    return values[key]


def forget(name: str, key: int | str) -> None:
    """Drop (name, key) after a write in this request, so the next read sees the change."""
    if has_request_context():
        g.get(f"memo_{name}", {}).pop(key, None)
