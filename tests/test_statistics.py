"""A large backfill leaves the planner fresh statistics on either database, so the first
pages after a first sync are planned with them (bench/RESULTS.md: on PostgreSQL, without
them the inbox took 138 ms instead of 29 ms at 3,000 messages)."""

from __future__ import annotations

from sqlalchemy import text

from extensions import db
from mailsync import store


def test_a_large_backfill_analyzes_the_tables(app, make_user, make_stored_account):
    make_stored_account(make_user())
    store.refresh_statistics(store.ANALYZE_AFTER_NEW)
    db.session.commit()
    if db.engine.dialect.name == "sqlite":
        analyzed = db.session.scalar(text("SELECT count(*) FROM sqlite_stat1"))
        assert analyzed > 0
    else:
        last = db.session.scalar(
            text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'mail_account'")
        )
        assert last is not None


def test_a_small_pass_does_not_analyze_everything_on_postgresql(app):
    store.refresh_statistics(1)
    db.session.commit()
    if db.engine.dialect.name != "sqlite":
        last = db.session.scalar(
            text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'message'")
        )
        assert last is None  # autovacuum's job, not ours
