"""The sync engine against the real Dovecot: backfill, poll, flags, moves, expunges, threads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from extensions import db
from mailsync import sync as sync_module
from mailsync import threading as jwz
from mailsync.actions import set_seen
from mailsync.blobstore import BlobStore
from mailsync.sync import uid_ranges
from models import Message, MessagePerson, Thread
from tests.queue_helpers import run_pending_jobs, run_scheduled_passes, run_sync_now
from tests.sync_helpers import (
    append_received_at,
    command_log,
    folder_named,
    locations,
    message_by_msgid,
    message_count,
    raw_message,
    run_sync,
)

pytestmark = pytest.mark.imap


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    user = make_user()
    return make_account(user, mail_user)


def deliver(dovecot, mail_user, numbers, folder="INBOX", **kwargs):
    kwargs.setdefault("to", mail_user.email)
    for n in numbers:
        dovecot.deliver(mail_user.email, raw_message(n, **kwargs), folder)


def test_uid_ranges_are_compact_and_ascending():
    assert uid_ranges([9, 1, 2, 3, 5, 12, 13, 14, 3]) == "1:3,5,9,12:14"
    assert uid_ranges([]) == ""


def test_fresh_sync_stores_every_message_once_and_never_sets_seen(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, range(1, 41))
    dovecot.add_flags(mail_user.email, "INBOX", 3, "\\Seen")
    result = run_sync(app, account)
    assert result.ok, result.error
    assert result.new == 40
    assert message_count(account.id) == 40
    rows = locations(account.id)
    assert [row.uid for row in rows] == dovecot.uids(mail_user.email)
    # BODY.PEEK never sets \Seen: the server flags are what they were.
    assert dovecot.flags(mail_user.email, "INBOX", 1) - {"\\Recent"} == set()
    assert dovecot.flags(mail_user.email, "INBOX", 3) - {"\\Recent"} == {"\\Seen"}
    assert [row.uid for row in rows if row.seen] == [3]
    message = rows[2].message
    assert message.is_read and not rows[0].message.is_read
    blob = BlobStore(f"{app.instance_path}/blobs").get(message.raw_sha256)
    assert b"Body of message 3." in blob
    inbox = folder_named(account.id, "INBOX")
    assert inbox.initial_sync_complete and inbox.backfill_done == inbox.backfill_total == 40

    again = run_sync(app, account)
    assert again.ok and again.new == 0 and again.deleted == 0
    assert message_count(account.id) == 40


def test_sent_folder_role_and_is_sent(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, [1], folder="Sent", sender=mail_user.email, to="bob@example.com")
    assert run_sync(app, account).ok
    assert folder_named(account.id, "Sent").role == "sent"
    assert folder_named(account.id, "INBOX").role == "inbox"
    assert db.session.scalar(select(Message)).is_sent


def test_no_change_tick_is_one_status_per_folder(app, dovecot, mail_user, account, monkeypatch):
    deliver(dovecot, mail_user, range(1, 4))
    assert run_sync(app, account).ok
    enabled = [f for f in folder_named(account.id, "INBOX").account.folders if f.sync_enabled]
    with command_log(monkeypatch) as log:
        assert run_sync(app, account).ok
    names = log.names()
    assert log.count("STATUS") == len(enabled)
    assert not {"SELECT", "EXAMINE", "UID FETCH", "UID SEARCH"} & set(names), names


def test_new_mail_is_fetched_incrementally_without_refetching(
    app, dovecot, mail_user, account, monkeypatch
):
    deliver(dovecot, mail_user, range(1, 6))
    assert run_sync(app, account).ok
    deliver(dovecot, mail_user, range(6, 9))
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.new == 3
    assert message_count(account.id) == 8
    assert folder_named(account.id, "INBOX").last_seen_uid == 8
    assert any(b"UID FETCH 6:*" in line for line in log.lines)
    # The N:* quirk: with nothing new, `9:*` returns UID 8, which is not re-inserted.
    account_id = account.id
    dovecot.add_flags(mail_user.email, "INBOX", 1, "\\Flagged")  # force a non-trivial tick
    with command_log(monkeypatch) as log:
        result = run_sync(app, account_id)
    assert result.new == 0 and log.body_fetches() == 0
    assert message_count(account_id) == 8


def _stored(account_id, n) -> bool:
    db.session.expire_all()
    return message_by_msgid(account_id, f"m{n}@example.com") is not None


def test_scheduled_passes_sync_other_folders_less_often(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, [1])
    deliver(dovecot, mail_user, [2], folder="Archive")
    run_scheduled_passes(app)  # the interval job; Archive's first backfill is due
    assert _stored(account.id, 1) and _stored(account.id, 2)

    deliver(dovecot, mail_user, [3])
    deliver(dovecot, mail_user, [4], folder="Archive")
    deliver(dovecot, mail_user, [5], folder="Sent", sender=mail_user.email, to="bob@example.com")
    dovecot.create_folder(mail_user.email, "Projects")
    deliver(dovecot, mail_user, [6], folder="Projects")
    run_scheduled_passes(app)
    # INBOX and Sent every pass, a new folder until its first backfill is done; Archive was
    # synced less than OTHER_FOLDERS_INTERVAL_SECONDS ago.
    assert _stored(account.id, 3) and _stored(account.id, 5) and _stored(account.id, 6)
    assert not _stored(account.id, 4)

    archive = folder_named(account.id, "Archive")
    archive.last_polled_at -= timedelta(seconds=app.config["OTHER_FOLDERS_INTERVAL_SECONDS"])
    db.session.commit()  # as if the interval had passed
    run_scheduled_passes(app)
    assert _stored(account.id, 4)

    deliver(dovecot, mail_user, [7], folder="Archive")
    deliver(dovecot, mail_user, [8], folder="Projects")
    run_scheduled_passes(app)
    assert not _stored(account.id, 7) and not _stored(account.id, 8)
    run_sync_now(app, account.id)  # what "Sync now" runs: every folder
    assert _stored(account.id, 7) and _stored(account.id, 8)


def test_interrupted_backfill_resumes_to_exactly_n(app, dovecot, mail_user, account, monkeypatch):
    deliver(dovecot, mail_user, range(1, 81))
    app.config["SYNC_BATCH_MESSAGES"] = 10
    app.config["SYNC_DB_BATCH_MESSAGES"] = 10  # one transaction per FETCH here
    original = sync_module.AccountSync._persist
    calls = {"n": 0}

    def crash_after_three(self, folder_id, batch, prepared, failed):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return original(self, folder_id, batch, prepared, failed)

    monkeypatch.setattr(sync_module.AccountSync, "_persist", crash_after_three)
    result = run_sync(app, account)
    assert result.error
    stored = message_count(account.id)
    assert 0 < stored < 80
    # Newest first: what is stored is the top of the mailbox.
    assert min(row.uid for row in locations(account.id)) > 80 - stored
    deliver(dovecot, mail_user, range(81, 84))  # new mail during backfill
    monkeypatch.setattr(sync_module.AccountSync, "_persist", original)
    result = run_sync(app, account)
    assert result.ok, result.error
    assert message_count(account.id) == 83
    assert len(locations(account.id)) == 83
    assert db.session.scalar(select(func.count(func.distinct(Message.dedup_key)))) == 83


def test_budget_exhaustion_is_partial_and_resumable(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, range(1, 31))
    result = run_sync(app, account, budget_seconds=0)
    assert result.ok and not result.complete
    result = run_sync(app, account)
    assert result.ok and result.complete and message_count(account.id) == 30


def test_expunge_soft_deletes(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, range(1, 6))
    assert run_sync(app, account).ok
    dovecot.expunge(mail_user.email, "INBOX", 2)
    result = run_sync(app, account)
    assert result.deleted == 1
    assert message_count(account.id) == 4
    assert message_count(account.id, deleted=True) == 1
    assert [row.uid for row in locations(account.id)] == [1, 3, 4, 5]


def test_move_keeps_one_message_and_its_links(
    app, dovecot, mail_user, account, make_person, monkeypatch
):
    person = make_person(account.user, emails=("alice@example.com",))
    deliver(dovecot, mail_user, range(1, 4))
    assert run_sync(app, account).ok
    moved = message_by_msgid(account.id, "m2@example.com")
    moved_id = moved.id
    assert db.session.scalar(select(MessagePerson).where(MessagePerson.message_id == moved_id))
    dovecot.move(mail_user.email, "INBOX", 2, "Archive")
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.ok
    assert log.body_fetches() == 0  # re-linked by the header dedup key
    assert message_count(account.id) == 3
    message = db.session.get(Message, moved_id)
    assert message.deleted_at is None
    assert [loc.folder.name for loc in message.locations] == ["Archive"]
    link = db.session.scalar(select(MessagePerson).where(MessagePerson.message_id == moved_id))
    assert link.person_id == person.id


def test_deleted_in_threadline_stays_deleted_when_the_server_changes_flags(
    app, dovecot, mail_user, account
):
    """Deleting only in Threadline keeps the mail on the server; a later flag change there
    must not bring it back."""
    from services import mailbox

    deliver(dovecot, mail_user, range(1, 3))
    assert run_sync(app, account).ok
    gone = message_by_msgid(account.id, "m1@example.com")
    gone_id = gone.id
    mailbox.delete_threads(account.user, [gone.thread])
    dovecot.add_flags(mail_user.email, "INBOX", 1, "\\Seen")
    assert run_sync(app, account).changed == 1
    db.session.expire_all()
    message = db.session.get(Message, gone_id)
    assert message.deleted_at is not None and message.is_read  # flags follow, still deleted
    assert [
        m.subject
        for m in db.session.scalars(
            select(Message).where(Message.account_id == account.id, Message.deleted_at.is_(None))
        )
    ] == ["Message 2"]


def inbox_subjects(user) -> list[str]:
    from services import mailbox

    db.session.expire_all()
    rows = mailbox.list_threads(user, mailbox.MailboxQuery()).rows
    return sorted(row.subject for row in rows)


@pytest.mark.parametrize("action", ["archive", "delete"])
def test_a_new_reply_brings_an_archived_or_deleted_conversation_back(
    app, dovecot, mail_user, account, action
):
    """A customer's reply must never land out of sight: new inbox mail revives the thread;
    older mail of it (backfill) does not, and deleted messages stay deleted."""
    from services import mailbox

    deliver(dovecot, mail_user, [1])
    assert run_sync(app, account).ok
    first = message_by_msgid(account.id, "m1@example.com")
    first_id, thread_id = first.id, first.thread_id
    handle = mailbox.archive_threads if action == "archive" else mailbox.delete_threads
    handle(account.user, [first.thread])
    assert "Message 1" not in inbox_subjects(account.user)

    # An older message of the conversation turns up (e.g. backfill, or copied in by another
    # program with its original date): the choice stands.
    old = datetime(2026, 10, 1, tzinfo=UTC)
    older = raw_message(0, subject="Re: Message 1", msgid="m0@example.com",
                        references="<m1@example.com>", date=old)  # fmt: skip
    append_received_at(dovecot, mail_user, older, old)
    assert run_sync(app, account).ok
    assert inbox_subjects(account.user) == []

    # A new reply: the conversation is back in the Inbox, in the same thread.
    dovecot.deliver(
        mail_user.email,
        raw_message(2, subject="Re: Message 1", msgid="m2@example.com",
                    references="<m1@example.com>", date=datetime.now(UTC)),
    )  # fmt: skip
    assert run_sync(app, account).ok
    assert inbox_subjects(account.user) == ["Message 1"]
    assert message_by_msgid(account.id, "m2@example.com").thread_id == thread_id
    if action == "delete":
        # What the user deleted stays deleted, even after a flag change on the server.
        dovecot.add_flags(mail_user.email, "INBOX", 1, "\\Flagged")
        assert run_sync(app, account).ok
        db.session.expire_all()
        assert db.session.get(Message, first_id).deleted_at is not None
        assert db.session.get(Thread, thread_id).message_count == 2  # the older one, the new one


def test_flags_both_ways(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, range(1, 4))
    assert run_sync(app, account).ok
    dovecot.add_flags(mail_user.email, "INBOX", 1, "\\Seen", "\\Flagged")
    result = run_sync(app, account)
    assert result.changed == 1
    first = message_by_msgid(account.id, "m1@example.com")
    assert first.is_read and first.is_flagged
    dovecot.remove_flags(mail_user.email, "INBOX", 1, "\\Seen")
    assert run_sync(app, account).changed == 1
    assert not message_by_msgid(account.id, "m1@example.com").is_read

    # Threadline's write-back (the Mail tab's read/unread) reaches the server with
    # +FLAGS.SILENT/-FLAGS.SILENT, and the next sync agrees with it.
    second_id = message_by_msgid(account.id, "m2@example.com").id
    set_seen(app, account.id, [("INBOX", 2)], True)
    assert "\\Seen" in dovecot.flags(mail_user.email, "INBOX", 2)
    assert run_sync(app, account).changed == 1
    db.session.expire_all()
    assert db.session.get(Message, second_id).is_read
    set_seen(app, account.id, [("INBOX", 2)], False)
    assert "\\Seen" not in dovecot.flags(mail_user.email, "INBOX", 2)


def _flag_on_the_server_before(monkeypatch, method, dovecot, mail_user, uid):
    """Set \\Flagged on `uid` from another session just before the engine's first call of
    AccountSync.`method`, while Threadline has the folder selected: Dovecot then tells
    Threadline with an unsolicited `* <seq> FETCH (MODSEQ (..) FLAGS (..))`, no UID."""
    original = getattr(sync_module.AccountSync, method)
    done = []

    def wrapped(self, *args, **kwargs):
        if not done:
            done.append(True)
            dovecot.add_flags(mail_user.email, "INBOX", uid, "\\Flagged")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sync_module.AccountSync, method, wrapped)


def _flagged_uids(account_id) -> list[int]:
    db.session.expire_all()
    return [row.uid for row in locations(account_id) if row.flagged]


@pytest.mark.parametrize("qresync", [False, True])
def test_unsolicited_flag_update_during_the_flag_poll_changes_only_its_message(
    app, dovecot, mail_user, account, monkeypatch, qresync
):
    app.config["SYNC_QRESYNC"] = qresync
    deliver(dovecot, mail_user, range(1, 7))
    assert run_sync(app, account).ok
    for uid in (1, 2):  # now UID 5 is message 3, so sequence numbers and UIDs differ
        dovecot.expunge(mail_user.email, "INBOX", uid)
    _flag_on_the_server_before(monkeypatch, "sync_flags", dovecot, mail_user, 5)
    assert run_sync(app, account).ok
    # CHANGEDSINCE reads the flags after the change; QRESYNC read them with the EXAMINE
    # before it, so there the change comes with the next pass (its modseq is above the one
    # stored). Either way no other message is flagged.
    assert _flagged_uids(account.id) == ([] if qresync else [5])
    assert run_sync(app, account).ok
    assert _flagged_uids(account.id) == [5]
    assert run_sync(app, account).ok  # CHANGEDSINCE would never correct a wrong flag
    assert _flagged_uids(account.id) == [5]


def test_unsolicited_flag_update_during_backfill_changes_only_its_message(
    app, dovecot, mail_user, account, monkeypatch
):
    deliver(dovecot, mail_user, range(1, 9))
    for uid in (1, 2):
        dovecot.expunge(mail_user.email, "INBOX", uid)
    _flag_on_the_server_before(monkeypatch, "fetch_meta", dovecot, mail_user, 5)
    assert run_sync(app, account).ok
    assert [row.uid for row in locations(account.id)] == [3, 4, 5, 6, 7, 8]
    assert _flagged_uids(account.id) == [5]


def _placement(account_id, folder="INBOX"):
    """Return {uid: (location id, message id)} of a folder."""
    return {loc.uid: (loc.id, loc.message_id) for loc in locations(account_id, folder)}


def test_spurious_uidvalidity_change_is_accepted_without_a_rebuild(
    app, dovecot, mail_user, account, make_person, monkeypatch
):
    make_person(account.user, emails=("alice@example.com",))
    deliver(dovecot, mail_user, range(1, 6))
    assert run_sync(app, account).ok
    placed = _placement(account.id)
    links = db.session.scalar(select(func.count()).select_from(MessagePerson))
    old = folder_named(account.id, "INBOX").uidvalidity
    # Same mailbox, same UIDs, new UIDVALIDITY: the check finds every sampled UID unchanged.
    dovecot.set_uidvalidity(mail_user.email, "INBOX", old + 1000)
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.ok, result.error
    inbox = folder_named(account.id, "INBOX")
    assert inbox.uidvalidity == old + 1000 and inbox.uidinvalid_streak == 0
    assert inbox.last_seen_uid == 5 and inbox.initial_sync_complete
    # No rebuild: no UID SEARCH, and the only metadata FETCH is the usual one for new mail
    # (`UID FETCH 6:*`); besides it, only the sample's headers and FLAGS are read.
    fetches = [line.split(b" ", 1)[1] for line in log.lines if b"UID FETCH" in line]
    assert log.count("UID SEARCH") == 0 and log.body_fetches() == 0
    assert [f.split(b" (")[0] for f in fetches] == [
        b"UID FETCH 1:5",  # the sample: dedup headers and size only
        b"UID FETCH 6:*",  # new mail above the kept watermark
        b"UID FETCH 1:5",  # flags, read again in full
    ]
    assert b"HEADER.FIELDS" in fetches[0] and b"RFC822.SIZE" in fetches[0]
    assert b"FLAGS" not in fetches[0] and b"BODY.PEEK[]" not in fetches[0]
    assert fetches[2].endswith(b"(FLAGS)\r\n")
    assert _placement(account.id) == placed  # the very same location rows
    assert message_count(account.id) == 5
    assert db.session.scalar(select(func.count()).select_from(MessagePerson)) == links
    # Polling goes on from the watermark.
    deliver(dovecot, mail_user, [6])
    with command_log(monkeypatch) as log:
        result = run_sync(app, account.id)
    assert result.new == 1 and any(b"UID FETCH 6:*" in line for line in log.lines)


def test_uidvalidity_change_with_reassigned_uids_rebuilds_without_body_downloads(
    app, dovecot, mail_user, account, make_person, monkeypatch
):
    make_person(account.user, emails=("alice@example.com",))
    deliver(dovecot, mail_user, range(1, 6), folder="Archive")
    assert run_sync(app, account).ok
    before = {m.message_id_header: m.id for m in db.session.scalars(select(Message))}
    links = db.session.scalar(select(func.count()).select_from(MessagePerson))
    old = folder_named(account.id, "Archive").uidvalidity
    # The mailbox is re-created with the same mail in reverse order: UID 1 is now m5.
    dovecot.delete_folder(mail_user.email, "Archive")
    deliver(dovecot, mail_user, range(5, 0, -1), folder="Archive")
    dovecot.set_uidvalidity(mail_user.email, "Archive", old + 7)
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.ok, result.error
    archive = folder_named(account.id, "Archive")
    assert archive.uidvalidity == old + 7 and archive.uidinvalid_streak == 1
    assert log.count("UID SEARCH") >= 1  # the folder was listed again
    assert log.body_fetches() == 0  # re-linked by the header dedup key
    after = {m.message_id_header: m.id for m in db.session.scalars(select(Message))}
    assert after == before
    placed = {
        uid: message_id for uid, (_loc, message_id) in _placement(account.id, "Archive").items()
    }
    assert placed == {uid: before[f"m{6 - uid}@example.com"] for uid in range(1, 6)}
    assert message_count(account.id) == 5 and message_count(account.id, deleted=True) == 0
    assert db.session.scalar(select(func.count()).select_from(MessagePerson)) == links


def test_persons_matched_by_address_but_never_the_account_itself(
    app, dovecot, mail_user, account, make_person
):
    alice = make_person(account.user, emails=("alice@example.com",))
    make_person(account.user, emails=(mail_user.email,))  # the user's own address
    carol = make_person(account.user, emails=("carol@example.com",))
    raw = raw_message(1, to=mail_user.email, extra_headers="Cc: Carol <CAROL@example.com>\r\n")
    dovecot.deliver(mail_user.email, raw)
    assert run_sync(app, account).ok
    persons = set(db.session.scalars(select(MessagePerson.person_id)))
    assert persons == {alice.id, carol.id}


def test_reply_before_parent_converges(app, dovecot, mail_user, account):
    deliver(
        dovecot,
        mail_user,
        [2],
        subject="Re: Offer",
        msgid="reply@example.com",
        references="<parent@example.com>",
        in_reply_to="<parent@example.com>",
    )
    assert run_sync(app, account).ok
    deliver(dovecot, mail_user, [1], subject="Offer", msgid="parent@example.com")
    deliver(
        dovecot,
        mail_user,
        [3],
        subject="Re: Offer",
        msgid="reply2@example.com",
        references="<parent@example.com> <reply@example.com>",
    )
    assert run_sync(app, account).ok
    threads = {m.thread_id for m in db.session.scalars(select(Message))}
    assert len(threads) == 1
    thread = db.session.get(Thread, threads.pop())
    assert thread.message_count == 3


def test_unrelated_invoices_stay_separate(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, [1], subject="Invoice", sender="a@one.example")
    deliver(dovecot, mail_user, [2], subject="Invoice", sender="b@two.example")
    deliver(dovecot, mail_user, [3], subject="Re: Invoice", sender="c@three.example")
    assert run_sync(app, account).ok
    assert len({m.thread_id for m in db.session.scalars(select(Message))}) == 3


def test_outlook_original_message_id_threads(app, dovecot, mail_user, account):
    sent = raw_message(
        1,
        subject="Proposal",
        sender=mail_user.email,
        to="bob@example.com",
        msgid="rewritten@outlook.example",
        extra_headers="X-Microsoft-Original-Message-ID: <original@client.example>\r\n",
    )
    dovecot.deliver(mail_user.email, sent, "Sent")
    reply = raw_message(
        2,
        subject="RE: Proposal",
        sender="bob@example.com",
        to=mail_user.email,
        msgid="bobs-reply@example.com",
        in_reply_to="<original@client.example>",
    )
    dovecot.deliver(mail_user.email, reply)
    assert run_sync(app, account).ok
    assert len({m.thread_id for m in db.session.scalars(select(Message))}) == 1


def test_shared_default_comes_from_preference(app, dovecot, mail_user, account):
    from services.preferences import update_preferences

    update_preferences(account.user, {"default_email_sharing": "shared"})
    deliver(dovecot, mail_user, [1])
    assert run_sync(app, account).ok
    assert db.session.scalar(select(Thread)).shared


def test_subject_fallback_joins_reply_without_references(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, [1], subject="Quarterly plan", sender="bob@example.com")
    deliver(
        dovecot,
        mail_user,
        [2],
        subject="Re: Quarterly plan",
        sender="bob@example.com",
        msgid="no-refs@example.com",
    )
    deliver(
        dovecot,
        mail_user,
        [3],
        subject="Re: Quarterly plan",
        sender="eve@other.example",
        to="mallory@other.example",
        msgid="stranger@example.com",
    )
    assert run_sync(app, account).ok
    first = message_by_msgid(account.id, "m1@example.com")
    assert message_by_msgid(account.id, "no-refs@example.com").thread_id == first.thread_id
    assert message_by_msgid(account.id, "stranger@example.com").thread_id != first.thread_id


def test_chosen_folders_always_include_sent(app, dovecot, mail_user, make_user, make_account):
    account = make_account(make_user(), mail_user, folder_mode="chosen", chosen_folders=["INBOX"])
    deliver(dovecot, mail_user, [1])
    deliver(dovecot, mail_user, [2], folder="Sent")
    deliver(dovecot, mail_user, [3], folder="Archive")
    assert run_sync(app, account).ok
    enabled = {f.name for f in folder_named(account.id, "INBOX").account.folders if f.sync_enabled}
    assert enabled == {"INBOX", "Sent"}
    assert message_count(account.id) == 2


def test_horizon_limits_backfill(app, dovecot, mail_user, make_user, make_account):
    import datetime as dt

    account = make_account(make_user(), mail_user, since="1m")
    deliver(dovecot, mail_user, [1, 2])
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=90)
    append_received_at(dovecot, mail_user, raw_message(3, to=mail_user.email, date=old), old)
    assert run_sync(app, account).ok
    inbox = folder_named(account.id, "INBOX")
    assert inbox.backfill_total == 2 and message_count(account.id) == 2
    assert inbox.last_seen_uid == 3  # older mail below the horizon never blocks the watermark


def test_roles_from_attributes_then_unique_names():
    from mailsync.sync import assign_roles, horizon_date

    roles = assign_roles(
        [
            ((b"\\HasNoChildren",), "INBOX"),
            ((b"\\HasNoChildren",), "Sent Items"),
            ((b"\\Trash",), "Bin"),
            ((), "Deleted Items"),  # \Trash is taken by an attribute: no name guess
            ((), "Junk"),
            ((), "Spam"),  # two junk candidates: Nylas guesses only a unique match
            ((b"\\All",), "[Google Mail]/All Mail"),
        ]
    )
    assert roles == {
        "INBOX": "inbox",
        "Sent Items": "sent",
        "Bin": "trash",
        "Deleted Items": None,
        "Junk": None,
        "Spam": None,
        "[Google Mail]/All Mail": "all",
    }
    import datetime as dt

    today = dt.date(2026, 11, 28)
    assert horizon_date("all", today) is None
    assert horizon_date("1m", today) == dt.date(2026, 10, 27)


def test_message_referencing_two_threads_merges_them(app, dovecot, mail_user, account, make_deal):
    deliver(dovecot, mail_user, [1], subject="Alpha", msgid="a@example.com")
    deliver(dovecot, mail_user, [2], subject="Beta", msgid="b@example.com")
    assert run_sync(app, account).ok
    alpha = message_by_msgid(account.id, "a@example.com")
    beta = message_by_msgid(account.id, "b@example.com")
    assert alpha.thread_id != beta.thread_id
    deal = make_deal(account.user)
    db.session.get(Thread, max(alpha.thread_id, beta.thread_id)).deal_id = deal.id
    db.session.commit()
    deliver(
        dovecot,
        mail_user,
        [3],
        subject="Re: both",
        msgid="c@example.com",
        references="<a@example.com> <b@example.com>",
    )
    assert run_sync(app, account).ok
    db.session.expire_all()
    thread_ids = {m.thread_id for m in db.session.scalars(select(Message))}
    assert len(thread_ids) == 1
    thread = db.session.get(Thread, thread_ids.pop())
    assert thread.message_count == 3 and thread.deal_id == deal.id  # the link survives
    assert db.session.scalar(select(func.count()).select_from(Thread)) == 1


def _reply_chain(dovecot, mail_user, numbers):
    """Deliver "Plan" and replies to it, each referencing every earlier message."""
    for n in numbers:
        refs = " ".join(f"<m{i}@example.com>" for i in range(1, n))
        deliver(
            dovecot,
            mail_user,
            [n],
            subject="Plan" if n == 1 else "Re: Plan",
            references=refs or None,
            in_reply_to=f"<m{n - 1}@example.com>" if n > 1 else None,
        )


def _thread_of(account_id, n):
    return message_by_msgid(account_id, f"m{n}@example.com").thread_id


def test_a_full_thread_takes_no_more_messages(app, dovecot, mail_user, account, monkeypatch):
    monkeypatch.setattr(jwz, "MAX_THREAD_LENGTH", 3)
    _reply_chain(dovecot, mail_user, range(1, 4))
    assert run_sync(app, account).ok
    full = _thread_of(account.id, 1)
    assert {_thread_of(account.id, n) for n in (1, 2, 3)} == {full}
    _reply_chain(dovecot, mail_user, [4, 5])
    assert run_sync(app, account).ok
    # Reply 4 would join the full thread, so it starts a new one; reply 5 references both
    # threads and joins the one with room instead of merging them.
    overflow = _thread_of(account.id, 4)
    assert overflow != full and _thread_of(account.id, 5) == overflow
    assert db.session.get(Thread, full).message_count == 3
    assert db.session.get(Thread, overflow).message_count == 2
    assert message_count(account.id) == 5


def test_the_cap_holds_within_one_backfill_batch(app, dovecot, mail_user, account, monkeypatch):
    monkeypatch.setattr(jwz, "MAX_THREAD_LENGTH", 3)
    _reply_chain(dovecot, mail_user, range(1, 8))
    assert run_sync(app, account).ok
    sizes = [t.message_count for t in db.session.scalars(select(Thread))]
    assert sum(sizes) == 7 and max(sizes) == 3
    # Newest first: the latest three replies fill the first thread.
    assert len({_thread_of(account.id, n) for n in (5, 6, 7)}) == 1


def test_oversized_message_is_a_header_only_placeholder(
    app, dovecot, mail_user, account, monkeypatch
):
    app.config["MAX_FULL_SIZE"] = 2000
    deliver(dovecot, mail_user, [1], subject="Big one", body="z" * 5000 + "\r\n")
    deliver(dovecot, mail_user, [2])
    with command_log(monkeypatch) as log:
        assert run_sync(app, account).ok
    big = message_by_msgid(account.id, "m1@example.com")
    assert big.is_placeholder and big.raw_sha256 is None and big.subject == "Big one"
    assert big.size > 5000
    assert not message_by_msgid(account.id, "m2@example.com").is_placeholder
    assert not any(b"BODY.PEEK[]" in line and b" 1 " in line for line in log.lines)


def test_placeholder_body_is_fetched_on_demand_from_the_conversation(
    app, dovecot, mail_user, account, login
):
    app.config["MAX_FULL_SIZE"] = 2000
    deliver(dovecot, mail_user, [1], subject="Big one", body="tangerine " * 600 + "\r\n")
    assert run_sync(app, account).ok
    big = message_by_msgid(account.id, "m1@example.com")
    client = login(account.user)
    page = client.get(f"/mail/threads/{big.thread_id}").get_data(as_text=True)
    assert "only its headers were synced" in page and "Download the full message now" in page
    response = client.post(f"/mail/messages/{big.id}/full", follow_redirects=True)
    assert "Downloading the full message" in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Message, big.id).is_placeholder  # the request only queued it
    assert run_pending_jobs(app) == 1  # the worker downloads it
    big = db.session.get(Message, big.id)
    assert not big.is_placeholder and big.raw_sha256
    assert b"tangerine" in BlobStore(f"{app.instance_path}/blobs").get(big.raw_sha256)
    assert "\\Seen" not in dovecot.flags(mail_user.email, "INBOX", 1)  # BODY.PEEK
    page = client.get(f"/mail/threads/{big.thread_id}").get_data(as_text=True)
    assert "only its headers were synced" not in page
