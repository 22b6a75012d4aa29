"""Migrations (schema.py, legacy_schema.py, migrations/): init-db builds and upgrades the
schema, adopts a database made before migrations keeping every row, never races another
init-db, the migrations match the models, and serve/worker/sync refuse a database behind."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Index, text
from sqlalchemy.schema import CreateIndex

import schema
from app import create_app
from extensions import db
from models import NEWEST_LAST_DATE, PARSE_VERSION, Thread
from services.search import is_search_table
from tests.conftest import PASSWORD, CSRFClient

REPO = Path(__file__).resolve().parents[1]
PREVIOUS_RELEASE = Path(__file__).resolve().parent / "fixtures" / "previous_release.sql"


def _app(instance: Path):
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(instance),
            "SECRET_KEY": "test-secret",
            "SCHEDULER_ENABLED": False,
        }
    )
    app.test_client_class = CSRFClient
    return app


def _load_previous_release(instance: Path) -> Path:
    instance.mkdir(parents=True, exist_ok=True)
    database = instance / "threadline.db"
    connection = sqlite3.connect(database)
    connection.executescript(PREVIOUS_RELEASE.read_text())
    connection.close()
    return database


def _sql(database: Path, query: str) -> list[tuple]:
    connection = sqlite3.connect(database)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def _columns(database: Path) -> dict[str, list[str]]:
    return {
        name: [column for _cid, column, *_rest in _sql(database, f'PRAGMA table_info("{name}")')]
        for (name,) in _sql(database, "SELECT name FROM sqlite_master WHERE type = 'table'")
        if not name.startswith("sqlite_")
    }


def _rows_of_every_table(
    database: Path, columns: dict[str, list[str]] | None = None
) -> dict[str, list[tuple]]:
    """Every table's rows; with `columns`, only those columns of those tables (so columns a
    later migration added do not count as changed rows)."""
    rows = {}
    for name, names in (columns or _columns(database)).items():
        selected = ", ".join('"' + column + '"' for column in names)
        rows[name] = sorted(_sql(database, f'SELECT {selected} FROM "{name}"'), key=repr)
    return rows


# Rows a re-parse rewrites from the raw mail when PARSE_VERSION went up since the previous
# release (mailsync/reparse.py): there only the ids must all still be there.
REPARSED_TABLES = ("mail_account", "message", "thread_search")


def _kept(before: dict[str, list[tuple]], after: dict[str, list[tuple]], table: str) -> bool:
    if table in REPARSED_TABLES:
        return sorted(row[0] for row in after[table]) == sorted(row[0] for row in before[table])
    return after[table] == before[table]


def _head(app) -> str:
    with app.app_context():
        (head,) = ScriptDirectory.from_config(schema.alembic_config()).get_heads()
    return head


def _nulls_first_indexes() -> list[Index]:
    """The indexes built with `last_date NULLS FIRST` on PostgreSQL (models.NEWEST_LAST_DATE)."""
    return [
        index
        for index in Thread.__table__.indexes
        if index.dialect_options["postgresql"]["ops"] == NEWEST_LAST_DATE["postgresql_ops"]
    ]


def _drift(app) -> list:
    """What Alembic would change to make the database match the models (search tables aside).

    On PostgreSQL Alembic reads a `last_date NULLS FIRST` index as an expression index and
    calls it different from the model's; those are compared by _pg_index_definitions instead.
    """
    with app.app_context(), db.engine.connect() as connection:
        skipped = (
            {index.name for index in _nulls_first_indexes()}
            if connection.dialect.name == "postgresql"
            else set()
        )
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_server_default": True,
                "include_object": lambda obj, name, type_, *_: not (
                    (type_ == "table" and is_search_table(name))
                    or (type_ == "index" and name in skipped)
                ),
            },
        )
        return compare_metadata(context, db.metadata)


def _invoke(app, *args: str):
    with app.app_context():
        return app.test_cli_runner().invoke(args=list(args))


def _dispose(app) -> None:
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_init_db_adopts_a_previous_release_database_keeping_every_row(tmp_path):
    instance = tmp_path / "instance"
    database = _load_previous_release(instance)
    columns = _columns(database)
    before = _rows_of_every_table(database, columns)
    assert "alembic_version" not in before and before["message"] and before["thread_search"]

    app = _app(instance)
    result = _invoke(app, "init-db")
    assert result.exit_code == 0, result.output
    _dispose(app)

    after = _rows_of_every_table(database, columns)
    for table in before:
        assert _kept(before, after, table), table
    parsed_with = _sql(database, "SELECT DISTINCT parse_version FROM mail_account")
    assert parsed_with == [(PARSE_VERSION,)]  # its mail was parsed again
    assert _sql(database, "SELECT version_num FROM alembic_version") == [(_head(app),)]
    assert _drift(app) == []

    # The app's own checks: the fixture's user signs in and sees their records and mail.
    with app.app_context():
        client = app.test_client()
        response = client.post("/login", data={"email": "ada@team.test", "password": PASSWORD})
        assert response.status_code == 302
        assert "Renewal 2027" in client.get("/deals/").get_data(as_text=True)
        assert "Carla Diaz" in client.get("/persons/").get_data(as_text=True)
        mail = client.get("/mail/").get_data(as_text=True)
        assert "Renewal terms" in mail
        found = client.get("/mail/?q=pricing").get_data(as_text=True)
        assert "Renewal terms" in found
        thread = client.get("/mail/threads/1")
        assert thread.status_code == 200 and "The terms for next year" in thread.get_data(
            as_text=True
        )
    status = _invoke(app, "mail-status")
    assert status.exit_code == 0 and "ada@team.test" in status.output
    _dispose(app)


def test_upgrade_dates_conversations_by_the_mail_their_owner_can_see(tmp_path):
    """Migration 0014: a conversation whose newest mail the owner's blocks hide was dated by
    that mail; after the upgrade it is dated by its newest shown message."""
    instance = tmp_path / "instance"
    database = _load_previous_release(instance)
    (first, second) = _sql(database, "SELECT id FROM message WHERE thread_id = 1 ORDER BY id")
    connection = sqlite3.connect(database)
    connection.executescript(
        f"""
        UPDATE message SET date = '2026-12-01 08:00:00.000000', blocked = 1
          WHERE id = {second[0]};
        UPDATE thread SET last_date = '2026-12-01 08:00:00.000000' WHERE id = 1;
        """
    )
    connection.close()

    app = _app(instance)
    assert _invoke(app, "init-db").exit_code == 0
    _dispose(app)
    shown = _sql(database, f"SELECT date FROM message WHERE id = {first[0]}")
    assert _sql(database, "SELECT last_date FROM thread WHERE id = 1") == shown


def test_init_db_brings_an_older_schema_to_the_baseline(tmp_path):
    """Missing columns (with their defaults for existing rows) and indexes are added; indexes
    that better ones replaced are dropped, as start-up did before migrations."""
    instance = tmp_path / "instance"
    database = _load_previous_release(instance)
    connection = sqlite3.connect(database)
    connection.executescript(
        """
        DROP INDEX ix_message_unread;
        DROP INDEX ix_thread_reply_later;
        ALTER TABLE thread DROP COLUMN reply_later;
        CREATE INDEX ix_message_account_read ON message (account_id, is_read);
        """
    )
    connection.close()

    app = _app(instance)
    assert _invoke(app, "init-db").exit_code == 0
    _dispose(app)

    indexes = {name for (name,) in _sql(database, "SELECT name FROM sqlite_master")}
    assert {"ix_message_unread", "ix_thread_reply_later"} <= indexes
    assert "ix_message_account_read" not in indexes
    assert _sql(database, "SELECT id, reply_later FROM thread") == [(1, 0)]
    assert _drift(app) == []


def test_migrations_match_the_models(tmp_path):
    """A database upgraded from empty has exactly the models' tables, columns, defaults and
    indexes (partial ones included): a model change without its migration fails here."""
    empty = tmp_path / "instance"
    app = _app(empty)
    with app.app_context():
        schema.upgrade_database()
    assert _drift(app) == []
    # Alembic does not compare an index's WHERE term: every index, partial ones included, is
    # the one the models would create, to the letter.
    with app.app_context():
        for table in db.metadata.sorted_tables:
            for index in table.indexes:
                stored = _sql(
                    empty / "threadline.db",
                    f"SELECT sql FROM sqlite_master WHERE name = '{index.name}'",
                )
                expected = str(CreateIndex(index).compile(dialect=db.engine.dialect))
                assert [" ".join(row[0].split()) for row in stored] == [" ".join(expected.split())]
    _dispose(app)

    # The comparison can fail: a database missing an index and a column is reported.
    database = empty / "threadline.db"
    connection = sqlite3.connect(database)
    # (The unread-count trigger reading reply_later goes first: SQLite checks triggers.)
    connection.executescript(
        "DROP INDEX ix_message_unread; DROP INDEX ix_thread_reply_later; "
        "DROP TRIGGER thread_unread_thread_update; ALTER TABLE thread DROP COLUMN reply_later;"
    )
    connection.close()
    kinds = {change[0] if isinstance(change, tuple) else change[0][0] for change in _drift(app)}
    assert {"add_index", "add_column"} <= kinds
    _dispose(app)


def test_init_db_is_idempotent_and_flask_db_upgrade_agrees(tmp_path):
    app = _app(tmp_path / "instance")
    assert _invoke(app, "init-db").exit_code == 0
    assert _invoke(app, "init-db").exit_code == 0
    assert _invoke(app, "db", "upgrade").exit_code == 0
    _dispose(app)
    database = tmp_path / "instance" / "threadline.db"
    assert _sql(database, "SELECT version_num FROM alembic_version") == [(_head(app),)]


def _flask(instance: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "THREADLINE_INSTANCE_PATH": str(instance), "FLASK_APP": "app"}
    return subprocess.Popen(
        [sys.executable, "-m", "flask", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _processes_waiting_for(lock: Path) -> int:
    """How many processes are blocked on a flock of `lock` (the kernel lists them)."""
    inode = lock.stat().st_ino
    return sum(
        1
        for line in Path("/proc/locks").read_text().splitlines()
        if " -> " in f" {line} " and line.split()[-3].endswith(f":{inode}")
    )


@pytest.mark.parametrize("start", ["empty", "previous_release"])
def test_two_init_db_processes_at_once_take_turns(tmp_path, start):
    instance = tmp_path / "instance"
    instance.mkdir()
    if start == "previous_release":
        _load_previous_release(instance)
        messages = _sql(instance / "threadline.db", "SELECT * FROM message")
    database = instance / "threadline.db"
    tables_before = _sql(database, "SELECT name FROM sqlite_master") if database.exists() else []
    lock = instance / "threadline.db.migrate-lock"
    with open(lock, "a") as held:
        # While this test holds the migration lock, both processes wait and change nothing.
        fcntl.flock(held, fcntl.LOCK_EX)
        processes = [_flask(instance, "init-db") for _ in range(2)]
        deadline = time.monotonic() + 120
        while _processes_waiting_for(lock) < 2:
            assert time.monotonic() < deadline, "the init-db processes never waited for the lock"
            assert all(process.poll() is None for process in processes), [
                process.communicate()[0] for process in processes
            ]
            time.sleep(0.05)
        if database.exists():
            assert _sql(database, "SELECT name FROM sqlite_master") == tables_before
        fcntl.flock(held, fcntl.LOCK_UN)
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    head = _head(_app(tmp_path / "other"))
    assert _sql(database, "SELECT version_num FROM alembic_version") == [(head,)]
    if start == "previous_release":
        assert [row[0] for row in _sql(database, "SELECT * FROM message")] == [
            row[0] for row in messages
        ]


@pytest.mark.parametrize("command", [["serve"], ["sync-worker"], ["sync", "--all"]])
@pytest.mark.parametrize("start", ["empty", "previous_release"])
def test_serve_worker_and_sync_refuse_a_database_that_is_not_migrated(tmp_path, command, start):
    instance = tmp_path / "instance"
    if start == "previous_release":
        _load_previous_release(instance)
    process = _flask(instance, *command)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 1, output
    assert "Run `flask --app app init-db`" in output and "Traceback" not in output


def test_start_up_creates_no_tables(tmp_path):
    app = _app(tmp_path / "instance")
    _dispose(app)
    database = tmp_path / "instance" / "threadline.db"
    assert not database.exists() or _sql(database, "SELECT name FROM sqlite_master") == []


def test_flask_db_upgrade_leaves_a_previous_release_database_to_init_db(tmp_path):
    instance = tmp_path / "instance"
    database = _load_previous_release(instance)
    before = _rows_of_every_table(database)
    app = _app(instance)
    result = _invoke(app, "db", "upgrade")
    _dispose(app)
    assert result.exit_code != 0
    assert _rows_of_every_table(database) == before  # nothing created, nothing stamped


def test_migrations_match_the_models_on_postgresql(tmp_path, postgres_template):
    """The same migrations build the models' schema on PostgreSQL (the template every
    PostgreSQL test database is copied from is migrated by schema.upgrade_database)."""
    server, template = postgres_template
    name = server.create_database(template=template)
    try:
        app = create_app(
            {
                "TESTING": True,
                "INSTANCE_PATH": str(tmp_path / "instance"),
                "SQLALCHEMY_DATABASE_URI": server.url(name),
                "SECRET_KEY": "test-secret",
                "SCHEDULER_ENABLED": False,
            }
        )
        with app.app_context(), db.engine.connect() as connection:
            assert schema.is_current(connection)
        assert _drift(app) == []
        # The indexes Alembic cannot compare: exactly what the models would create there.
        with app.app_context(), db.engine.connect() as connection:
            for index in _nulls_first_indexes():
                stored = connection.execute(
                    text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                    {"name": index.name},
                ).scalar_one()
                assert "last_date NULLS FIRST, id)" in stored, stored
                created = str(CreateIndex(index).compile(dialect=connection.dialect))
                assert created.split(" ON ")[0] == stored.split(" ON ")[0]
                assert ("WHERE" in created) == ("WHERE" in stored), (created, stored)
        # The comparison can fail here too: a missing index and column are reported.
        with app.app_context(), db.engine.begin() as connection:
            connection.exec_driver_sql(
                "DROP INDEX ix_message_unread; "
                "DROP TRIGGER thread_unread_thread_update ON thread; "
                "ALTER TABLE thread DROP COLUMN reply_later"
            )
        kinds = {change[0] if isinstance(change, tuple) else change[0][0] for change in _drift(app)}
        assert {"add_index", "add_column"} <= kinds
        _dispose(app)
    finally:
        server.drop_database(name)
