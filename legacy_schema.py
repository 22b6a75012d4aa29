"""Adopt a database made by a release from before migrations (used only by schema.py).

Those releases built the schema at start-up: create_all() for missing tables, then
upgrade_schema() added missing columns and indexes and dropped replaced indexes. Such a
database has no alembic_version table. Here it is brought to the baseline revision the same
way, keeping every row, and schema.py then stamps it with that revision and upgrades it.

The baseline is what migration 0001 builds, not today's models (later migrations change
those): it is built in a scratch in-memory database and what the old database lacks is
copied from there. Those releases ran on SQLite only, so this module is SQLite-only.
"""

from __future__ import annotations

from collections.abc import Callable

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, inspect, text

from services.search import ensure_search_index, is_search_table

BASELINE_REVISION = "0001"
# Indexes that better ones replaced before migrations began; old databases may have them.
OBSOLETE_INDEXES = (
    "ix_message_account_read",
    "ix_message_location_message_id",
    "ix_message_location_folder_id",
)


def needs_adoption(connection: Connection) -> bool:
    """Tell whether the database was made by a release from before migrations."""
    existing = inspect(connection)
    return not existing.has_table("alembic_version") and existing.has_table("user")


def bring_to_baseline(connection: Connection, alembic_config: Callable[..., Config]) -> None:
    """Add the baseline's missing tables, columns and indexes; drop replaced indexes.

    Idempotent. `alembic_config(connection)` gives the migrations' configuration.
    """
    if connection.dialect.name != "sqlite":
        raise RuntimeError("Releases from before migrations ran on SQLite only.")
    scratch = create_engine("sqlite://")
    with scratch.begin() as baseline:
        command.upgrade(alembic_config(baseline), BASELINE_REVISION)
        _add_missing_schema(baseline, connection)
    scratch.dispose()
    for name in OBSOLETE_INDEXES:
        connection.execute(text(f'DROP INDEX IF EXISTS "{name}"'))
    # The search tables of older releases (e.g. per-message message_search) are rebuilt here.
    ensure_search_index(connection)


def _add_missing_schema(baseline: Connection, connection: Connection) -> None:
    wanted = inspect(baseline)
    existing = inspect(connection)
    tables = [
        name
        for name in wanted.get_table_names()
        if name != "alembic_version" and not is_search_table(name)
    ]
    present_tables = set(existing.get_table_names())
    for table in tables:
        if table not in present_tables:
            connection.execute(text(_create_sql(baseline, "table", table)))
            continue
        present = {column["name"] for column in existing.get_columns(table)}
        for column in wanted.get_columns(table):
            if column["name"] not in present:
                connection.execute(text(_add_column_sql(connection, table, column)))
    present_indexes = {row[0] for row in connection.execute(text("SELECT name FROM sqlite_master"))}
    for table in tables:
        for index in wanted.get_indexes(table):
            if index["name"] not in present_indexes:
                connection.execute(text(_create_sql(baseline, "index", index["name"])))


def _create_sql(baseline: Connection, type_: str, name: str) -> str:
    # The baseline's own DDL, as SQLite stored it: partial-index WHERE terms included.
    return baseline.execute(
        text("SELECT sql FROM sqlite_master WHERE type = :type AND name = :name"),
        {"type": type_, "name": name},
    ).scalar_one()


def _add_column_sql(connection: Connection, table: str, column: dict) -> str:
    # Existing rows get the column's server default, so a NOT NULL column needs one.
    if not column["nullable"] and column["default"] is None:
        raise RuntimeError(f"{table}.{column['name']} cannot be added to existing rows.")
    ddl = f'ALTER TABLE "{table}" ADD COLUMN "{column["name"]}" '
    ddl += column["type"].compile(dialect=connection.dialect)
    if not column["nullable"]:
        ddl += " NOT NULL"
    if column["default"] is not None:
        ddl += f" DEFAULT {column['default']}"
    return ddl
