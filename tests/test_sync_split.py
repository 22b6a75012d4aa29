"""A first sync split over several passes loses nothing that changes between them (issue 10.13).

The scheduler's 90 s budget, `--budget` and interrupted passes all split the first sync of a big
mailbox. Flags changed, mail expunged or moved on the server between passes, on mail an earlier
pass already stored, must reach Threadline, and stay right at the polls after it.
"""

from __future__ import annotations

import contextlib

import pytest
from sqlalchemy import select

from extensions import db
from models import Message, MessageLocation
from tests.sync_helpers import folder_named, locations, raw_message, run_sync, split_backfills

pytestmark = pytest.mark.imap


@pytest.fixture
def dovecot(any_dovecot):
    return any_dovecot  # every test here runs against each kind of server


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


@pytest.fixture
def split_after():
    """Make each pass stop (as its budget would) after `batches` metadata batches of 10."""
    with contextlib.ExitStack() as stack:
        yield lambda batches: stack.enter_context(split_backfills(batches))


def server_state(dovecot, mail_user) -> dict[int, bool]:
    """{uid: seen} of the INBOX on the server."""
    return {
        uid: "\\Seen" in dovecot.flags(mail_user.email, "INBOX", uid)
        for uid in dovecot.uids(mail_user.email)
    }


def local_state(account_id: int) -> dict[int, bool]:
    """{uid: read} of the INBOX in Threadline."""
    folder = folder_named(account_id, "INBOX")
    rows = db.session.execute(
        select(MessageLocation.uid, Message.is_read)
        .join(Message, Message.id == MessageLocation.message_id)
        .where(MessageLocation.folder_id == folder.id, Message.deleted_at.is_(None))
    )
    return dict(rows.all())


def test_changes_between_the_passes_of_a_split_first_sync_are_kept(
    app, dovecot, mail_user, account, split_after
):
    for n in range(1, 61):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))
    for uid in (50, 51, 52):
        dovecot.add_flags(mail_user.email, "INBOX", uid, "\\Seen")
    split_after(2)
    first = run_sync(app, account)
    assert not first.complete
    stored = {row.uid for row in locations(account.id)}
    assert stored and max(stored) == 60 and len(stored) < 60  # the newest came first
    # Between the passes, on mail the first pass stored: a "mark unread" made in another
    # client, new \\Seen flags, an expunge and a move to another folder.
    dovecot.remove_flags(mail_user.email, "INBOX", 51, "\\Seen")
    dovecot.add_flags(mail_user.email, "INBOX", 58, "\\Seen")
    dovecot.add_flags(mail_user.email, "INBOX", 59, "\\Seen")
    dovecot.expunge(mail_user.email, "INBOX", 57)
    dovecot.move(mail_user.email, "INBOX", 56, dovecot.profile.folder("Archive"))
    for _ in range(10):
        result = run_sync(app, account)
        if result.complete:
            break
    assert result.complete
    assert local_state(account.id) == server_state(dovecot, mail_user)
    # And the polls after it keep agreeing (the checkpoint covers what was stored).
    dovecot.remove_flags(mail_user.email, "INBOX", 58, "\\Seen")
    assert run_sync(app, account).ok
    assert local_state(account.id) == server_state(dovecot, mail_user)
    archived = locations(account.id, dovecot.profile.folder("Archive"))
    assert len(archived) == 1
