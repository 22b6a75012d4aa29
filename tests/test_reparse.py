"""Mail stored by an older release is parsed again at upgrade (issue 10: "existing databases
are repaired at upgrade, re-parsed from the stored raw mail")."""

from __future__ import annotations

import base64

from sqlalchemy import update

from extensions import db
from models import PARSE_VERSION, MailAccount, Message
from services import mailbox
from tests.mail_fixtures import build_message

# An Apple Mail-style alternative whose text part is a named attachment: the previous parser
# dropped it and stored has_attachments False.
RAW = (
    b"From: Carla <carla@customer.test>\r\nTo: me@team.test\r\nSubject: Zanzibar terms\r\n"
    b"Message-ID: <alt@customer.test>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\nPlease find the quokka terms.\r\n"
    b"--B\r\nContent-Type: text/plain; name=terms.txt\r\n"
    b"Content-Disposition: attachment; filename=terms.txt\r\n\r\nterms\r\n--B--\r\n"
)


def test_init_db_parses_older_mail_again(
    app, runner, make_user, make_stored_account, make_raw_message
):
    user = make_user()
    account = make_stored_account(user)
    message = make_raw_message(account, RAW)
    message.thread.in_inbox = True
    untouched = make_raw_message(account, build_message(subject="Plain"), is_placeholder=True)
    # What the previous release left: no attachment mark, a garbled subject, an old key.
    db.session.execute(
        update(Message)
        .where(Message.id == message.id)
        .values(has_attachments=False, subject="Zanzibar ???", dedup_key="old", header_key=None)
    )
    db.session.execute(update(MailAccount).values(parse_version=1))
    db.session.commit()

    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert "1 stored messages parsed again" in result.output
    db.session.expire_all()
    fixed = db.session.get(Message, message.id)
    assert fixed.has_attachments and fixed.subject == "Zanzibar terms"
    assert fixed.dedup_key != "old" and fixed.header_key
    assert db.session.get(Message, untouched.id).subject == "Plain"  # a placeholder: kept
    assert db.session.get(MailAccount, account.id).parse_version == PARSE_VERSION
    page = mailbox.list_threads(user, mailbox.MailboxQuery(q="quokka"))
    assert [row.id for row in page.rows] == [fixed.thread_id]
    # Attachment names are searchable, older mail included ("txt" is only in terms.txt).
    page = mailbox.list_threads(user, mailbox.MailboxQuery(q="txt"))
    assert [row.id for row in page.rows] == [fixed.thread_id]
    # Once is enough: a second init-db parses nothing.
    assert "parsed again" not in runner.invoke(args=["init-db"]).output


def test_text_cut_short_by_padded_base64_is_read_whole_at_upgrade(
    app, runner, make_user, make_stored_account, make_raw_message
):
    # Release 3 stopped decoding at the first padding: the second chunk was never searchable.
    chunks = base64.b64encode(b"Hello Carla,\r\n") + b"\r\n" + base64.b64encode(b"marmalade")
    raw = (
        b"From: Carla <carla@customer.test>\r\nTo: me@team.test\r\nSubject: Chunks\r\n"
        b"Message-ID: <chunks@customer.test>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + chunks + b"\r\n"
    )
    user = make_user()
    message = make_raw_message(make_stored_account(user), raw)
    message.thread.in_inbox = True
    db.session.execute(update(MailAccount).values(parse_version=3))
    db.session.commit()

    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert "1 stored messages parsed again" in result.output
    page = mailbox.list_threads(user, mailbox.MailboxQuery(q="marmalade"))
    assert [row.id for row in page.rows] == [message.thread_id]
