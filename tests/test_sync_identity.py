"""Message identity against the real Dovecot (issue 10.4, mailsync/IDENTITY.md).

The same mail in two folders is one message; different mails that share Message-ID, Date,
From, Subject and To are two; a database from before content-based identity is re-keyed and
its wrongly merged mails come back at the next sync.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from extensions import db
from models import PARSE_VERSION, MailAccount, MailFolder, Message, MessageLocation
from tests.sync_helpers import command_log, locations, message_count, raw_message, run_sync

pytestmark = pytest.mark.imap


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


def bodies(account_id: int) -> list[str]:
    from services.conversations import load_raw

    messages = db.session.scalars(
        select(Message).where(Message.account_id == account_id).order_by(Message.id)
    )
    return sorted(load_raw(m).split(b"\r\n\r\n", 1)[1].decode() for m in messages)


def test_mails_sharing_every_header_but_not_content_stay_apart(app, dovecot, mail_user, account):
    """Forwarded copies, list resends and tools that reuse Message-IDs: each one is kept."""
    for body in ("First version.\r\n", "Second version, resent.\r\n", "First version.\r\n"):
        dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email, body=body))
    assert run_sync(app, account).ok
    # The third is the first delivered again (same content): one message, two locations.
    assert message_count(account.id) == 2
    assert bodies(account.id) == ["First version.\r\n", "Second version, resent.\r\n"]
    assert len(locations(account.id)) == 3


def test_a_copy_in_another_folder_is_one_message_and_is_not_downloaded_again(
    app, dovecot, mail_user, account, monkeypatch
):
    raw = raw_message(2, to=mail_user.email)
    dovecot.deliver(mail_user.email, raw)
    assert run_sync(app, account).ok
    dovecot.deliver(mail_user.email, raw, "Archive")
    with command_log(monkeypatch) as log:
        assert run_sync(app, account).ok
    assert message_count(account.id) == 1
    assert len(locations(account.id, "Archive")) == 1
    assert log.body_fetches() == 0


def test_a_copy_a_server_added_a_header_to_is_downloaded_and_still_one_message(
    app, dovecot, mail_user, account
):
    raw = raw_message(3, to=mail_user.email)
    dovecot.deliver(mail_user.email, raw)
    dovecot.deliver(mail_user.email, b"X-Spam-Score: 0.1\r\n" + raw, "Archive")
    assert run_sync(app, account).ok
    assert message_count(account.id) == 1
    assert len(locations(account.id)) == len(locations(account.id, "Archive")) == 1


def test_an_upgraded_database_is_rekeyed_and_gets_its_merged_mails_back(
    app, dovecot, mail_user, account
):
    for body in ("Original.\r\n", "A different mail with the same headers!\r\n"):
        dovecot.deliver(mail_user.email, raw_message(4, to=mail_user.email, body=body))
    assert run_sync(app, account).ok
    first, second = db.session.scalars(select(Message).order_by(Message.id)).all()
    # Make the database look like the previous release left it: one header-keyed message
    # holding both UIDs, the second mail invisible.
    header_key = first.header_key
    db.session.execute(
        update(MessageLocation)
        .where(MessageLocation.message_id == second.id)
        .values(message_id=first.id)
    )
    db.session.delete(second)
    db.session.execute(
        update(Message).where(Message.id == first.id).values(dedup_key=header_key, header_key=None)
    )
    db.session.execute(update(MailAccount).values(parse_version=1))
    db.session.execute(update(MailFolder).values(identity_checked=False))
    db.session.commit()
    assert message_count(account.id) == 1

    assert run_sync(app, account).ok
    assert message_count(account.id) == 2
    assert bodies(account.id) == [
        "A different mail with the same headers!\r\n",
        "Original.\r\n",
    ]
    db.session.expire_all()
    assert db.session.get(Message, first.id).header_key == header_key
    assert db.session.get(MailAccount, account.id).parse_version == PARSE_VERSION
    assert all(f.identity_checked for f in db.session.scalars(select(MailFolder)))
    # Each UID now points at its own message.
    assert len({row.message_id for row in locations(account.id)}) == 2
