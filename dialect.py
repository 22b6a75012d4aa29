"""What differs between the two supported databases, SQLite and PostgreSQL, in one place.

Everything else is written once, in SQL both understand (TRUE/FALSE, ON CONFLICT, CAST AS
BIGINT). Search has its own two implementations (services/search.py).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, Integer, Table, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Text

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


def name_of(connection: Connection) -> str:
    """The dialect name of a connection: "sqlite" or "postgresql"."""
    return connection.dialect.name


def is_sqlite(connection: Connection) -> bool:
    return connection.dialect.name == SQLITE


def id_in(column, ids: list[int], dialect_name: str) -> ColumnElement[bool]:
    """`column IN (ids)`, for lists of up to a few thousand ids.

    On PostgreSQL one array parameter (`= ANY(:ids)`): a parameter per id costs the client
    about 10 microseconds each to bind and send (7 ms for 750 ids), and every list length
    is a new statement text. SQLite binds each id, in C.
    """
    if dialect_name == POSTGRESQL:
        return column == any_(bindparam(None, ids, type_=ARRAY(Integer)))
    return column.in_(ids)


def lock_rows_in_order(connection: Connection, table: Table, ids) -> None:
    """Lock the rows of `table` with these ids, lowest id first (PostgreSQL).

    Two transactions that update some of the same rows must take them in one order, else
    each can hold a row the other waits for (a deadlock: PostgreSQL aborts one of them). An
    UPDATE ... WHERE id IN (...) takes its rows in the order it happens to scan them, and
    the ORM flushes in id order: so writers of shared rows (a request marking mail read, the
    worker's write-back, a sync pass) lock them here first. SQLite has one writer at a time.
    """
    ids = sorted(set(ids))
    if not ids or connection.dialect.name != POSTGRESQL:
        return
    connection.execute(
        select(table.c.id)
        .where(id_in(table.c.id, ids, POSTGRESQL))
        .order_by(table.c.id)
        .with_for_update()
    ).all()


def upsert_insert(table: Table, dialect_name: str):
    """An INSERT of `table` that offers on_conflict_do_nothing / on_conflict_do_update."""
    if dialect_name == POSTGRESQL:
        from sqlalchemy.dialects.postgresql import insert

        return insert(table)
    from sqlalchemy.dialects.sqlite import insert

    return insert(table)


class likely(FunctionElement):  # noqa: N801 (spelled as the SQL function)
    """A condition that is almost always true, as a hint to SQLite's planner.

    SQLite then skips an index on that column (a boolean, or deleted_at) that would
    otherwise drive the query instead of the index serving ORDER BY ... LIMIT. PostgreSQL
    has statistics for that and no such function: there it is the bare condition.
    """

    inherit_cache = True
    name = "likely"


@compiles(likely)
def _likely_bare(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


@compiles(likely, SQLITE)
def _likely_sqlite(element, compiler, **kw):
    return f"likely({compiler.process(element.clauses, **kw)})"


class json_text(FunctionElement):  # noqa: N801
    """A JSON column's stored text, to decode in Python only when needed.

    SQLite stores JSON as text already; psycopg would decode PostgreSQL's json type itself
    unless it is cast to text in the query.
    """

    type = Text()
    inherit_cache = True
    name = "json_text"


@compiles(json_text)
def _json_text_cast(element, compiler, **kw):
    return f"CAST({compiler.process(element.clauses, **kw)} AS TEXT)"


@compiles(json_text, SQLITE)
def _json_text_sqlite(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)
