"""Recording the SQL a piece of code sends, for tests of how a page reads the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from extensions import db


@contextmanager
def recorded_statements() -> Iterator[list[tuple[str, object]]]:
    """Yield a list that fills with (sql, parameters) of every statement run meanwhile."""
    statements: list[tuple[str, object]] = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", remember)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", remember)
