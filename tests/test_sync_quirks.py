"""Server quirks Dovecot cannot produce, through the scripted fake IMAP server."""

from __future__ import annotations

import pytest

from tests.servers.fake_imap import FakeIMAPServer, FakeMessage, FakeState, Quirks
from tests.sync_helpers import folder_named, message_count, raw_message, run_sync


@pytest.fixture
def fake(dovecot):
    servers = []

    def start(quirks: Quirks, count: int = 3) -> FakeIMAPServer:
        state = FakeState(
            messages=[FakeMessage(uid=n, raw=raw_message(n)) for n in range(1, count + 1)],
            quirks=quirks,
        )
        server = FakeIMAPServer(state, dovecot.certs.cert_file, dovecot.certs.key_file)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def user(make_user):
    return make_user()


def test_netease_unsafe_login_is_avoided_by_sending_id(app, fake, user, make_account, mail_user):
    server = fake(Quirks(require_id=True, capabilities="IMAP4rev1 ID"))
    account = make_account(user, mail_user, imap_port=server.port)
    result = run_sync(app, account)
    assert result.ok, result.error
    assert message_count(account.id) == 3
    commands = [c.split(" ", 1)[1].split(" ")[0].upper() for c in server.state.commands]
    assert commands.index("ID") < commands.index("EXAMINE")


def test_missing_uidnext_and_empty_status_are_handled(app, fake, user, make_account, mail_user):
    server = fake(Quirks(omit_uidnext=True, empty_status=True))
    account = make_account(user, mail_user, imap_port=server.port)
    assert run_sync(app, account).ok
    assert message_count(account.id) == 3
    inbox = folder_named(account.id, "INBOX")
    assert inbox.initial_sync_complete and inbox.uidnext == 4 and inbox.last_seen_uid == 3
    assert run_sync(app, account).new == 0
    server.state.messages.append(FakeMessage(uid=9, raw=raw_message(9)))
    result = run_sync(app, account)
    assert result.ok and result.new == 1
    assert folder_named(account.id, "INBOX").last_seen_uid == 9


def test_gmail_all_mail_labels_thrid_and_move_to_trash(
    app, dovecot, user, make_account, mail_user, monkeypatch
):
    from sqlalchemy import select

    from extensions import db
    from models import Message
    from tests.sync_helpers import command_log, locations

    first = FakeMessage(
        1,
        raw_message(1, subject="Pricing"),
        ("\\Seen",),
        1001,
        500,
        ("\\Inbox", "Work", "\\Important"),
    )
    second = FakeMessage(
        2, raw_message(2, subject="Totally different"), (), 1002, 500, ("\\Inbox",)
    )
    state = FakeState(
        messages=[FakeMessage(7, raw_message(1, subject="Pricing"), (), 1001, 500)],
        quirks=Quirks(capabilities="IMAP4rev1 ID X-GM-EXT-1"),
        folders={
            "[Gmail]/All Mail": ("\\All \\HasNoChildren", [first, second]),
            "[Gmail]/Trash": ("\\Trash \\HasNoChildren", []),
            "[Gmail]/Spam": ("\\Junk \\HasNoChildren", []),
            "[Gmail]/Sent Mail": ("\\Sent \\HasNoChildren", []),
        },
    )
    server = FakeIMAPServer(state, dovecot.certs.cert_file, dovecot.certs.key_file)
    try:
        account = make_account(user, mail_user, imap_port=server.port)
        assert run_sync(app, account).ok
        enabled = {f.name for f in account.folders if f.sync_enabled}
        assert enabled == {"[Gmail]/All Mail", "[Gmail]/Trash", "[Gmail]/Spam"}
        messages = list(db.session.scalars(select(Message).order_by(Message.gm_msgid)))
        assert [m.gm_msgid for m in messages] == [1001, 1002]
        assert messages[0].thread_id == messages[1].thread_id  # X-GM-THRID, not subjects
        (location,) = messages[0].locations
        assert set(location.gm_labels) == {"\\Inbox", "Work", "\\Important"}
        assert messages[0].is_read

        # Move to Trash: a new Trash UID with the same X-GM-MSGID, gone from All Mail.
        state.folders["[Gmail]/Trash"][1].append(
            FakeMessage(3, first.raw, ("\\Seen",), 1001, 500, ("\\Trash",))
        )
        state.folders["[Gmail]/All Mail"][1].remove(first)
        with command_log(monkeypatch) as log:
            assert run_sync(app, account).ok
        assert log.body_fetches() == 0
        db.session.expire_all()
        moved = db.session.get(Message, messages[0].id)
        assert moved.deleted_at is None
        assert [loc.folder.name for loc in moved.locations] == ["[Gmail]/Trash"]
        assert len(locations(account.id, "[Gmail]/All Mail")) == 1
    finally:
        server.stop()


def test_uid_without_body_goes_to_failed_uid_and_never_blocks(
    app, fake, user, make_account, mail_user
):
    from sqlalchemy import select

    from extensions import db
    from models import FailedUid

    server = fake(Quirks(no_body_uids=frozenset({2})), count=4)
    account = make_account(user, mail_user, imap_port=server.port)
    result = run_sync(app, account)
    assert result.ok, result.error
    assert message_count(account.id) == 3
    failed = db.session.scalar(select(FailedUid))
    assert failed.uid == 2 and failed.attempts == 1 and "no message body" in failed.last_error
    assert folder_named(account.id, "INBOX").last_seen_uid == 4  # the watermark moved on
    server.state.messages.append(FakeMessage(uid=5, raw=raw_message(5)))
    assert run_sync(app, account).new == 1
    # Once the server delivers the body, the retry stores it and forgets the failure.
    server.state.quirks.no_body_uids = frozenset()
    failed.next_retry_at = failed.next_retry_at.replace(year=2000)
    db.session.commit()
    assert run_sync(app, account).new == 1
    assert message_count(account.id) == 5
    assert db.session.scalar(select(FailedUid)) is None


def test_gmail_thread_over_the_length_cap_continues_in_a_new_thread(
    app, dovecot, user, make_account, mail_user, monkeypatch
):
    from sqlalchemy import select

    from extensions import db
    from mailsync import threading as jwz
    from models import Message, Thread

    monkeypatch.setattr(jwz, "MAX_THREAD_LENGTH", 3)

    def gmail_message(n: int) -> FakeMessage:
        # One X-GM-THRID; distinct subjects and no References, so only the thrid joins them.
        return FakeMessage(n, raw_message(n, subject=f"Topic {n}"), (), 1000 + n, 500)

    all_mail = [gmail_message(n) for n in range(1, 6)]
    state = FakeState(
        quirks=Quirks(capabilities="IMAP4rev1 ID X-GM-EXT-1"),
        folders={"[Gmail]/All Mail": ("\\All \\HasNoChildren", all_mail)},
    )
    server = FakeIMAPServer(state, dovecot.certs.cert_file, dovecot.certs.key_file)
    try:
        account = make_account(user, mail_user, imap_port=server.port)
        assert run_sync(app, account).ok
        sizes = sorted(t.message_count for t in db.session.scalars(select(Thread)))
        assert sizes == [2, 3]
        all_mail.append(gmail_message(6))
        assert run_sync(app, account).ok
        db.session.expire_all()
        threads = list(db.session.scalars(select(Thread).order_by(Thread.id)))
        assert [t.message_count for t in threads] == [3, 3]  # the newer thread took it
        newest = db.session.scalar(select(Message).where(Message.gm_msgid == 1006))
        assert newest.thread_id == threads[1].id
        assert {t.gm_thrid for t in threads} == {500}
    finally:
        server.stop()


def test_uidvalidity_changing_on_every_check_stops_the_folder_after_five_rebuilds(
    app, fake, user, make_account, mail_user
):
    from sqlalchemy import select

    from extensions import db
    from models import Message

    server = fake(Quirks(), count=3)
    state = server.state
    account = make_account(user, mail_user, imap_port=server.port)
    assert run_sync(app, account).ok
    ids = set(db.session.scalars(select(Message.id)))
    for rebuild in range(1, 7):
        # A real change: new UIDVALIDITY and every UID now names another message.
        state.uidvalidity += 1
        raws = [message.raw for message in state.messages]
        state.messages[:] = [
            FakeMessage(uid=n, raw=raw) for n, raw in enumerate(raws[1:] + raws[:1], start=1)
        ]
        result = run_sync(app, account)
        inbox = folder_named(account.id, "INBOX")
        if rebuild <= 5:
            assert result.ok and not result.folder_errors
            assert inbox.state == "poll" and inbox.uidinvalid_streak == rebuild
            assert set(db.session.scalars(select(Message.id))) == ids  # mail is kept
    assert inbox.state == "error"
    assert "UIDVALIDITY changed on every check" in result.folder_errors["INBOX"]
    assert message_count(account.id) == 3


def test_uidvalidity_changing_while_uids_stay_never_stops_the_folder(
    app, fake, user, make_account, mail_user
):
    server = fake(Quirks(), count=3)
    account = make_account(user, mail_user, imap_port=server.port)
    assert run_sync(app, account).ok
    for _ in range(7):
        server.state.uidvalidity += 1
        result = run_sync(app, account)
        assert result.ok and not result.folder_errors
    inbox = folder_named(account.id, "INBOX")
    assert inbox.state == "poll" and inbox.uidinvalid_streak == 0
    assert inbox.uidvalidity == server.state.uidvalidity
    assert message_count(account.id) == 3
