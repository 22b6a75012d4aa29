"""A large backfill leaves the planner fresh statistics on either database, so the first
pages after a first sync are planned with them (bench/RESULTS.md: on PostgreSQL, without
them the inbox took 138 ms instead of 29 ms at 3,000 messages)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

import jobs
from extensions import db
from mailsync import store
from mailsync.sync import SyncResult
from services.search_postgres import DOCUMENT_INDEX, PENDING_LIST_KB
from tests.conftest import ON_POSTGRESQL
from tests.sync_helpers import raw_message, run_sync


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


def _pending_pages_merged_now() -> int:
    """Merge the search index's pending list now; return how many pages it had."""
    merged = db.session.scalar(text(f"SELECT gin_clean_pending_list('{DOCUMENT_INDEX}'::regclass)"))
    db.session.commit()
    return merged


@pytest.mark.skipif(not ON_POSTGRESQL, reason="PostgreSQL's GIN index only")
def test_after_a_run_that_stored_mail_searches_read_no_pending_index_entries(
    app, dovecot, mail_user, make_user, make_account
):
    """GIN queues new entries in a pending list every search reads through (300 pages after
    a sync of 1,500 conversations: 25 ms a search word instead of 2); the worker merges it
    into the index after a run that stored mail."""
    account = make_account(make_user(), mail_user)
    _pending_pages_merged_now()
    for n in range(1, 31):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))
    assert run_sync(app, account).new == 30  # the pass alone, without the run's end
    assert _pending_pages_merged_now() > 0  # what the run's end is there for
    for n in range(31, 61):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))
    assert jobs.run_account_sync(app, account.id).new == 30
    assert _pending_pages_merged_now() == 0


@pytest.mark.skipif(not ON_POSTGRESQL, reason="PostgreSQL's GIN index only")
def test_the_search_index_keeps_a_short_pending_list(app):
    options = db.session.scalar(
        text("SELECT reloptions FROM pg_class WHERE relname = :name"), {"name": DOCUMENT_INDEX}
    )
    assert f"gin_pending_list_limit={PENDING_LIST_KB}" in options


def test_a_failed_search_merge_keeps_the_fresh_statistics(
    app, make_user, make_stored_account, monkeypatch, caplog
):
    """Merging new search entries may fail (on PostgreSQL only the index's owner may merge):
    it is logged, and the statistics the run refreshed stay."""

    def refuse(connection):
        raise RuntimeError("must be owner of index ix_thread_search_document")

    account = make_stored_account(make_user())
    monkeypatch.setattr(jobs.search, "merge_pending_entries", refuse)
    jobs._refresh_statistics(SyncResult(account_id=account.id, new=store.ANALYZE_AFTER_NEW))
    assert "merging new search entries failed: must be owner" in caplog.text
    if db.engine.dialect.name == "sqlite":
        assert db.session.scalar(text("SELECT count(*) FROM sqlite_stat1")) > 0
    else:
        last = db.session.scalar(
            text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'mail_account'")
        )
        assert last is not None
