"""store.keep_pending_seen against the database alone: where a user's read/unread still on
its way goes when the locations holding it are deleted (the real-server cases are in
tests/test_mail_actions_imap.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from extensions import db
from mailsync import store
from models import MailFolder, Message, MessageLocation


def test_a_change_is_kept_on_the_mail_when_every_place_it_has_goes_at_once(
    make_user, make_stored_account, make_mailbox_message
):
    """The mail had a second place in the same folder, found after the user's change (so
    not pending): both go in one pass. That place must not take the change (it goes too);
    the message keeps it for wherever the mail turns up."""
    account = make_stored_account(make_user())
    folder = MailFolder(account_id=account.id, name="Projects")
    db.session.add(folder)
    db.session.flush()
    message = make_mailbox_message(folder, uid=1)
    wished_at = datetime.now(UTC) - timedelta(minutes=1)
    (first,) = db.session.scalars(
        select(MessageLocation).where(MessageLocation.message_id == message.id)
    ).all()
    first.seen, first.seen_pending, first.seen_changed_at = True, True, wished_at
    db.session.add(MessageLocation(folder_id=folder.id, uid=2, message_id=message.id, seen=False))
    db.session.commit()

    store.remove_locations(folder.id, {1, 2})
    db.session.commit()
    db.session.expire_all()
    assert db.session.get(Message, message.id).seen_wanted is True
