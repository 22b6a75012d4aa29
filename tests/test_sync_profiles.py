"""Sync against servers that are not a full Dovecot (issue 10.15-10.17).

Each test runs against Dovecot as each kind of server (tests/servers/dovecot.py PROFILES):
with every capability, without CONDSTORE/QRESYNC (flag changes must still arrive within one
pass), without MOVE/UIDPLUS (Threadline's own moves leave the original flagged \\Deleted), and
with a Courier-like "INBOX." namespace and no SPECIAL-USE. After each pass Threadline must
equal the server UID by UID and flag by flag.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from extensions import db
from models import MailFolder, Message, MessageLocation
from services.preferences import update_preferences
from tests.sync_helpers import raw_message, run_sync

pytestmark = pytest.mark.imap


@pytest.fixture
def dovecot(any_dovecot):
    return any_dovecot  # every test here runs against each kind of server


@pytest.fixture
def owner(make_user):
    return make_user()


@pytest.fixture
def account(owner, make_account, mail_user):
    return make_account(owner, mail_user)


def server_state(server, box, folder: str) -> dict[int, tuple[bool, bool]]:
    """{uid: (seen, flagged)} of the server's live (not \\Deleted) mail in `folder`."""
    name = server.profile.folder(folder)
    state = {}
    for uid in server.uids(box.email, name):
        flags = server.flags(box.email, name, uid)
        if "\\Deleted" not in flags:
            state[uid] = ("\\Seen" in flags, "\\Flagged" in flags)
    return state


def local_state(account_id: int, server, folder: str) -> dict[int, tuple[bool, bool]]:
    """{uid: (read, flagged)} of what Threadline shows for `folder`'s live locations."""
    rows = db.session.execute(
        select(MessageLocation.uid, MessageLocation.seen, MessageLocation.flagged, Message)
        .join(MailFolder, MailFolder.id == MessageLocation.folder_id)
        .join(Message, Message.id == MessageLocation.message_id)
        .where(
            MailFolder.account_id == account_id,
            MailFolder.name == server.profile.folder(folder),
            MessageLocation.stale.is_(False),
            MessageLocation.deleted.is_(False),
        )
    ).all()
    state = {}
    for uid, seen, flagged, message in rows:
        assert message.is_read == seen or len(message.locations) > 1, uid
        state[uid] = (seen, flagged)
    return state


def assert_in_step(account, server, box, folders=("INBOX", "Archive")) -> None:
    db.session.expire_all()
    for folder in folders:
        assert local_state(account.id, server, folder) == server_state(server, box, folder), (
            server.profile.name,
            folder,
        )
    # No duplicates: each live message of the account has a distinct identity.
    keys = db.session.scalars(select(Message.dedup_key).where(Message.deleted_at.is_(None)))
    keys = list(keys)
    assert len(keys) == len(set(keys))


def test_changes_made_elsewhere_arrive_in_one_pass(app, dovecot, mail_user, account):
    server, box = dovecot, mail_user
    inbox, archive = "INBOX", dovecot.profile.folder("Archive")
    for n in range(1, 9):
        server.deliver(box.email, raw_message(n, to=box.email))
    server.deliver(box.email, raw_message(20, to=box.email), archive)
    for uid in (1, 2, 3):
        server.add_flags(box.email, inbox, uid, "\\Seen")
    assert run_sync(app, account).ok
    assert_in_step(account, server, box)
    # Another client: clears \Seen and sets \Flagged on three mails, expunges one, moves
    # one, and a new mail arrives. One scheduled pass later Threadline shows all of it.
    for uid in (1, 2, 3):
        server.remove_flags(box.email, inbox, uid, "\\Seen")
        server.add_flags(box.email, inbox, uid, "\\Flagged")
    server.add_flags(box.email, inbox, 7, "\\Seen")
    server.expunge(box.email, inbox, 5)
    server.move(box.email, inbox, 6, archive)
    server.deliver(box.email, raw_message(30, to=box.email))
    result = run_sync(app, account, all_folders=False)  # a scheduled pass: INBOX and Sent
    assert result.ok, result.error
    assert_in_step(account, server, box, folders=("INBOX",))
    assert run_sync(app, account).ok  # "Sync now": every folder
    assert_in_step(account, server, box)


def test_mail_moved_away_without_move_comes_back_when_undeleted_elsewhere(
    app, dovecot, mail_user, account, owner, login, runner
):
    server, box = dovecot, mail_user
    update_preferences(owner, {"archive_in_mailbox": "True"})
    for n in range(1, 4):
        server.deliver(box.email, raw_message(n, to=box.email))
    assert run_sync(app, account).ok
    message = db.session.scalar(select(Message).order_by(Message.id))
    client = login(owner)
    client.post("/mail/threads/actions", data={"action": "archive", "thread_id": message.thread_id})
    assert run_sync(app, account).ok
    assert_in_step(account, server, box)
    leftover = [
        uid
        for uid in server.uids(box.email, "INBOX")
        if "\\Deleted" in server.flags(box.email, "INBOX", uid)
    ]
    if not leftover:
        return  # MOVE or UID EXPUNGE removed the original: nothing can come back
    # Without MOVE/UIDPLUS the original stays flagged \Deleted; the user's other client
    # clears the flag, so the mail is in the INBOX again and must show there again.
    server.remove_flags(box.email, "INBOX", leftover[0], "\\Deleted")
    assert run_sync(app, account).ok
    assert_in_step(account, server, box)
    status = json.loads(runner.invoke(args=["mail-status", "--json"]).output)
    inbox = next(f for f in status["accounts"][0]["folders"] if f["name"] == "INBOX")
    assert inbox["server_count"] == inbox["stored_count"] + (inbox["not_synced"] or 0)
