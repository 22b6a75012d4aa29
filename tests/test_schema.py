"""Start-up brings an existing database up to date: columns and indexes (models.upgrade_schema)."""

import pytest
from sqlalchemy import text

from app import create_app
from extensions import db

pytestmark = pytest.mark.sqlite_only("the SQLite schema upgrade")


def _config(tmp_path) -> dict:
    return {
        "TESTING": True,
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'threadline.db'}",
        "SECRET_KEY": "test",
        "SCHEDULER_ENABLED": False,
    }


def _indexes(app) -> set[str]:
    with app.app_context():
        rows = db.session.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))
        names = {row[0] for row in rows}
        db.session.remove()
        db.engine.dispose()
    return names


def test_start_up_adds_new_indexes_and_drops_replaced_ones(tmp_path):
    config = _config(tmp_path)
    first = create_app(config)
    with first.app_context():
        with db.engine.begin() as connection:  # the schema of an earlier release
            connection.execute(text("DROP INDEX ix_message_unread"))
            connection.execute(
                text("CREATE INDEX ix_message_account_read ON message (account_id, is_read)")
            )
        db.engine.dispose()
    assert "ix_message_unread" not in _indexes(first)

    names = _indexes(create_app(config))
    assert "ix_message_unread" in names and "ix_message_location_message" in names
    assert "ix_message_account_read" not in names


def test_start_up_adds_a_new_column_with_its_default_to_existing_rows(tmp_path):
    config = _config(tmp_path)
    old = create_app(config)
    with old.app_context():
        with db.engine.begin() as connection:  # a database from before Thread.reply_later
            connection.execute(text("DROP INDEX ix_thread_reply_later"))
            connection.execute(text("ALTER TABLE thread DROP COLUMN reply_later"))
            connection.execute(text("PRAGMA foreign_keys=OFF"))
            connection.execute(
                text(
                    "INSERT INTO thread (id, account_id, subject, normalized_subject, "
                    "message_count, shared, in_inbox, archived, needs_link_choice, blocked) "
                    "VALUES (7, 1, 'Old', 'old', 1, 0, 1, 0, 0, 0)"
                )
            )
        db.engine.dispose()

    new = create_app(config)
    with new.app_context():
        value = db.session.scalar(text("SELECT reply_later FROM thread WHERE id = 7"))
        assert value == 0  # the existing conversation is not on the Reply later list
        assert "ix_thread_reply_later" in {
            row[0] for row in db.session.execute(text("SELECT name FROM sqlite_master"))
        }
        db.session.remove()
        db.engine.dispose()
