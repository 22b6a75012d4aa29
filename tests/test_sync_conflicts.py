"""Read/unread conflicts between Threadline and other mail clients (issue 10.8, SYNC.md §4.3).

For a short guard window after the user changes read/unread in Threadline a sync keeps that
value (flags fetched before the write-back landed are stale). After the window the server is
the truth, including changes another client made inside it. A write-back that failed is
retried by each sync until it lands, and the conversation says so meanwhile.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from extensions import db
from mailsync import actions, store
from models import Job, Message, MessageLocation
from tests.conftest import ON_POSTGRESQL
from tests.queue_helpers import run_pending_jobs
from tests.sync_helpers import raw_message, run_sync

pytestmark = pytest.mark.imap


@pytest.fixture
def dovecot(any_dovecot):
    return any_dovecot  # every test here runs against each kind of server


@pytest.fixture
def owner(make_user):
    return make_user()


@pytest.fixture
def account(app, owner, make_account, mail_user):
    return make_account(owner, mail_user)


def is_read() -> bool:
    db.session.expire_all()
    return db.session.scalar(select(Message.is_read))


def server_seen(dovecot, mail_user) -> bool:
    return "\\Seen" in dovecot.flags(mail_user.email, "INBOX", 1)


def test_after_the_guard_window_the_servers_later_change_wins(
    app, dovecot, mail_user, account, owner, login, monkeypatch
):
    dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
    assert run_sync(app, account).ok
    thread_id = db.session.scalar(select(Message.thread_id))
    client = login(owner)
    assert client.post(f"/mail/threads/{thread_id}/read").status_code == 204
    assert run_pending_jobs(app) == 1  # the worker writes it back
    assert server_seen(dovecot, mail_user) and is_read()
    # A second later, another client marks it unread again.
    dovecot.remove_flags(mail_user.email, "INBOX", 1, "\\Seen")
    assert run_sync(app, account).ok
    assert is_read()  # inside the guard window Threadline keeps the user's change
    monkeypatch.setattr(store, "LOCAL_CHANGE_GUARD_SECONDS", 0)  # the window is over
    assert run_sync(app, account).ok
    assert not is_read()  # the server's later change wins
    assert run_sync(app, account).ok
    assert not is_read() and not server_seen(dovecot, mail_user)  # and stays


def test_a_failed_write_back_is_retried_by_sync_and_shown_meanwhile(
    app, dovecot, mail_user, account, owner, login, monkeypatch
):
    dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
    assert run_sync(app, account).ok
    thread_id = db.session.scalar(select(Message.thread_id))
    client = login(owner)
    real_set_seen = actions.set_seen

    def unreachable(*args, **kwargs):
        raise actions.MailActionError("the mail server could not be reached")

    monkeypatch.setattr(actions, "set_seen", unreachable)
    app.config["JOB_MAX_ATTEMPTS"] = 2
    assert client.post(f"/mail/threads/{thread_id}/read").status_code == 204
    assert run_pending_jobs(app) == 1  # the worker's first attempt fails; the job backs off
    page = client.get(f"/mail/threads/{thread_id}").get_data(as_text=True)
    assert "Saving to mailbox…" in page and "not yet saved to the mailbox" not in page
    db.session.execute(update(Job).values(run_after=datetime.now(UTC)))  # backoff over
    db.session.commit()
    assert run_pending_jobs(app) == 1  # the last attempt fails too
    assert is_read() and not server_seen(dovecot, mail_user)
    page = client.get(f"/mail/threads/{thread_id}").get_data(as_text=True)
    assert "not yet saved to the mailbox" in page and "Saving to mailbox" not in page
    assert "the mail server could not be reached" in page  # the job's plain-words error
    # Still unreachable at the next sync, past the guard window: Threadline keeps the change.
    monkeypatch.setattr(store, "LOCAL_CHANGE_GUARD_SECONDS", 0)
    assert run_sync(app, account).ok
    assert is_read() and not server_seen(dovecot, mail_user)
    # The server is back: the next sync writes it.
    monkeypatch.setattr(actions, "set_seen", real_set_seen)
    assert run_sync(app, account).ok
    assert is_read() and server_seen(dovecot, mail_user)
    db.session.expire_all()
    assert not db.session.scalar(select(MessageLocation.seen_pending))
    page = client.get(f"/mail/threads/{thread_id}").get_data(as_text=True)
    assert "not yet saved to the mailbox" not in page


@pytest.mark.skipif(not ON_POSTGRESQL, reason="SQLite has one writer at a time: no lock order")
def test_writers_of_shared_rows_take_them_lowest_id_first(app, make_user):
    """A request marking mail read, the worker's write-back and a sync pass update some of
    the same rows; each takes them lowest id first (dialect.lock_rows_in_order), so none
    holds a row another waits for while waiting for one the other holds (PostgreSQL aborted
    a write-back as a deadlock in CI). Shown with two connections: while the first holds
    the higher row, the second, locking both, already holds the lower one as it waits."""
    import threading

    from psycopg.errors import LockNotAvailable
    from sqlalchemy.exc import OperationalError

    from dialect import lock_rows_in_order
    from models import User

    low, high = sorted([make_user().id, make_user().id])
    table = User.__table__
    holder, locker = db.engine.connect(), db.engine.connect()
    try:
        holder.begin()
        holder.execute(select(table.c.id).where(table.c.id == high).with_for_update()).all()

        def lock_both() -> None:
            with locker.begin():
                lock_rows_in_order(locker, table, [high, low])

        waiting = threading.Thread(target=lock_both)
        waiting.start()
        low_taken = False
        deadline = time.monotonic() + 10
        while not low_taken and time.monotonic() < deadline:
            savepoint = holder.begin_nested()
            try:
                holder.execute(
                    select(table.c.id).where(table.c.id == low).with_for_update(nowait=True)
                ).all()
                savepoint.rollback()
                time.sleep(0.05)
            except OperationalError as exc:
                assert isinstance(exc.orig, LockNotAvailable)
                savepoint.rollback()
                low_taken = True
        assert waiting.is_alive()  # it waits for the higher row
        holder.rollback()
        waiting.join(timeout=10)
        assert not waiting.is_alive()
        assert low_taken
    finally:
        holder.close()
        locker.close()
