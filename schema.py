"""The database schema's version: upgrade it to the newest migration, and check it is there.

Schema changes are Alembic migrations (migrations/versions). Only `flask init-db` (which
`make run` runs first) changes the schema; `flask serve`, `flask sync-worker` and
`flask sync` refuse to start on a database that is behind, so no process ever creates or
alters tables at start-up.
"""

from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from sqlalchemy import Connection, Engine, text

import legacy_schema
from extensions import db

NOT_CURRENT = (
    "The database is not up to date with this release of Threadline. "
    "Run `flask --app app init-db` to upgrade it, then start again."
)
# pg_advisory_lock takes a number: this one is Threadline's migration lock.
_ADVISORY_LOCK_KEY = zlib.crc32(b"threadline migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    """Return the Alembic configuration of the app's migrations folder.

    With `connection`, migrations run on it (inside the caller's lock and transaction).
    """
    config = current_app.extensions["migrate"].migrate.get_config()
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_database() -> None:
    """Upgrade the app's database to the newest migration (idempotent).

    An empty database gets the whole schema; one made by a release from before migrations
    is first brought to the baseline and stamped (legacy_schema.py), keeping every row.
    Processes that run this at once take turns (migration_lock).
    """
    engine = db.engine
    with migration_lock(engine), engine.begin() as connection:
        if legacy_schema.needs_adoption(connection):
            legacy_schema.bring_to_baseline(connection, alembic_config)
            command.stamp(alembic_config(connection), legacy_schema.BASELINE_REVISION)
        command.upgrade(alembic_config(connection), "head")


def is_current(connection: Connection) -> bool:
    """Tell whether the database is at the newest migration."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return set(MigrationContext.configure(connection).get_current_heads()) == set(heads)


def require_current() -> None:
    """Raise RuntimeError(NOT_CURRENT) unless the app's database is at the newest migration."""
    with db.engine.connect() as connection:
        if not is_current(connection):
            raise RuntimeError(NOT_CURRENT)


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Hold the one lock that lets a single process at a time migrate this database.

    SQLite: an exclusive file lock beside the database file (released if the process dies).
    PostgreSQL: a session advisory lock, released with its connection.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                )
        return
    database = engine.url.database
    if not database or database == ":memory:" or engine.url.query.get("mode") == "memory":
        yield  # a private in-memory database: no other process can see it
        return
    if database.startswith("file:"):  # a URI filename (uri=true): the path before its query
        database = database[len("file:") :].split("?", 1)[0]
    with open(f"{database}.migrate-lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
