"""Garbage collection of mail that left the server (mailsync.gc via jobs.collect_garbage)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

import jobs
from extensions import db
from mailsync.blobstore import BlobStore
from models import (
    SYNC_PAUSED,
    Message,
    MessageIdIndex,
    MessagePerson,
    OutgoingAttachment,
    OutgoingMail,
    Thread,
)
from services.mailbox import delete_threads
from tests.queue_helpers import run_scheduled_passes
from tests.sync_helpers import (
    folder_named,
    message_by_msgid,
    message_count,
    raw_message,
    run_sync,
)

pytestmark = pytest.mark.imap


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


@pytest.fixture
def blobs(app) -> BlobStore:
    return BlobStore(Path(app.instance_path) / "blobs")


def deliver(dovecot, mail_user, numbers, folder="INBOX", **kwargs):
    kwargs.setdefault("to", mail_user.email)
    for n in numbers:
        dovecot.deliver(mail_user.email, raw_message(n, **kwargs), folder)


def collect(app, *, message_ttl=None, thread_ttl=None):
    """Run the GC job, with TTLs overridden (0 stands for "the TTL has passed")."""
    if message_ttl is not None:
        app.config["MESSAGE_GC_TTL_SECONDS"] = message_ttl
        if message_ttl == 0:
            # As after a real TTL, the blobs were last written long ago (the GC keeps blobs
            # put within the last few minutes: their rows may not be committed yet).
            hour_ago = time.time() - 3600
            for path in (Path(app.instance_path) / "blobs").rglob("*"):
                if path.is_file():
                    os.utime(path, (hour_ago, hour_ago))
    if thread_ttl is not None:
        app.config["THREAD_GC_TTL_SECONDS"] = thread_ttl
    collected = jobs.collect_garbage(app)
    db.session.expire_all()
    return collected


def in_search_index(message_id: int) -> bool:
    row = db.session.execute(
        text("SELECT 1 FROM message_text WHERE message_id = :id"), {"id": message_id}
    ).first()
    return row is not None


def person_links(message_id: int) -> list[int]:
    return list(
        db.session.scalars(
            select(MessagePerson.person_id).where(MessagePerson.message_id == message_id)
        )
    )


def test_expunged_message_is_removed_after_the_ttl_with_blob_index_and_links(
    app, dovecot, mail_user, account, make_person, make_deal, blobs
):
    alice = make_person(account.user, emails=("alice@example.com",))
    deliver(dovecot, mail_user, range(1, 4))
    assert run_sync(app, account).ok
    gone = message_by_msgid(account.id, "m2@example.com")
    gone_id, sha, thread_id = gone.id, gone.raw_sha256, gone.thread_id
    deal = make_deal(account.user)
    db.session.get(Thread, thread_id).deal_id = deal.id
    db.session.commit()
    dovecot.expunge(mail_user.email, "INBOX", 2)
    assert run_sync(app, account).deleted == 1
    assert db.session.get(Message, gone_id).orphaned_at is not None

    # Within the TTL nothing is removed.
    assert collect(app).messages == 0
    assert db.session.get(Message, gone_id) is not None and blobs.exists(sha)

    collected = collect(app, message_ttl=0)
    assert (collected.messages, collected.blobs, collected.threads) == (1, 1, 0)
    assert db.session.get(Message, gone_id) is None
    assert not blobs.exists(sha)
    assert not in_search_index(gone_id)
    assert person_links(gone_id) == []
    # The other mail is untouched.
    assert message_count(account.id) == 2
    kept = message_by_msgid(account.id, "m1@example.com")
    assert blobs.exists(kept.raw_sha256) and in_search_index(kept.id)
    assert person_links(kept.id) == [alice.id]
    # The emptied thread keeps its deal link for a week, in case the mail comes back.
    thread = db.session.get(Thread, thread_id)
    assert thread.emptied_at is not None and thread.deal_id == deal.id
    assert collect(app).threads == 0

    assert collect(app, thread_ttl=0).threads == 1
    assert db.session.get(Thread, thread_id) is None
    assert not db.session.scalar(
        select(func.count())
        .select_from(MessageIdIndex)
        .where(MessageIdIndex.thread_id == thread_id)
    )
    assert db.session.scalar(select(func.count()).select_from(Thread)) == 2


def test_a_move_within_the_ttl_keeps_the_message_its_id_and_links(
    app, dovecot, mail_user, account, make_person, make_deal
):
    alice = make_person(account.user, emails=("alice@example.com",))
    deliver(dovecot, mail_user, range(1, 3))
    assert run_sync(app, account).ok
    moved = message_by_msgid(account.id, "m2@example.com")
    moved_id, thread_id = moved.id, moved.thread_id
    deal = make_deal(account.user)
    db.session.get(Thread, thread_id).deal_id = deal.id
    db.session.commit()
    # Scheduled passes see the move in two steps: it leaves INBOX (synced every pass) ...
    dovecot.move(mail_user.email, "INBOX", 2, "Archive")
    run_scheduled_passes(app)
    db.session.expire_all()
    assert db.session.get(Message, moved_id).deleted_at is not None
    assert collect(app).messages == 0  # within the TTL
    # ... and arrives in Archive when Archive is due (OTHER_FOLDERS_INTERVAL_SECONDS later),
    # which re-links the stored message.
    archive = folder_named(account.id, "Archive")
    archive.last_polled_at -= timedelta(seconds=app.config["OTHER_FOLDERS_INTERVAL_SECONDS"])
    db.session.commit()
    run_scheduled_passes(app)
    assert db.session.scalar(select(func.count()).select_from(Message)) == 2  # nothing new

    assert collect(app, message_ttl=0, thread_ttl=0).messages == 0
    message = db.session.get(Message, moved_id)
    assert message.deleted_at is None and message.orphaned_at is None
    assert [loc.folder.name for loc in message.locations] == ["Archive"]
    assert person_links(moved_id) == [alice.id]
    assert message.thread_id == thread_id
    assert db.session.get(Thread, thread_id).deal_id == deal.id


def test_mail_deleted_in_threadline_but_kept_on_the_server_is_never_collected(
    app, dovecot, mail_user, account
):
    deliver(dovecot, mail_user, [1])
    assert run_sync(app, account).ok
    message = message_by_msgid(account.id, "m1@example.com")
    message_id, thread = message.id, message.thread
    delete_threads(account.user, [thread])  # "delete in my mailbox too" is off
    assert collect(app, message_ttl=0, thread_ttl=0).messages == 0
    assert db.session.get(Message, message_id).deleted_at is not None
    # So the next sync does not download it again: it stays deleted.
    assert run_sync(app, account).new == 0
    assert message_count(account.id) == 0
    assert db.session.get(Thread, thread.id).deleted_at is not None

    # Once it leaves the server too, it is collected.
    dovecot.expunge(mail_user.email, "INBOX", 1)
    assert run_sync(app, account).ok
    assert collect(app, message_ttl=0).messages == 1
    assert db.session.get(Message, message_id) is None


def test_a_blob_another_account_uses_stays(
    app, dovecot, mail_user, account, make_user, make_account, blobs
):
    other_box = dovecot.add_user(f"other-{mail_user.email}", "mail-password-1")
    other = make_account(make_user(), other_box)
    raw = raw_message(1, to="team@example.com")  # the same bytes in both mailboxes
    dovecot.deliver(mail_user.email, raw)
    dovecot.deliver(other_box.email, raw)
    assert run_sync(app, account).ok and run_sync(app, other).ok
    mine = message_by_msgid(account.id, "m1@example.com")
    theirs = message_by_msgid(other.id, "m1@example.com")
    assert mine.raw_sha256 == theirs.raw_sha256
    sha, theirs_id = mine.raw_sha256, theirs.id

    dovecot.expunge(mail_user.email, "INBOX", 1)
    assert run_sync(app, account).ok
    collected = collect(app, message_ttl=0)
    assert (collected.messages, collected.blobs) == (1, 0)
    assert blobs.exists(sha) and db.session.get(Message, theirs_id) is not None

    dovecot.expunge(other_box.email, "INBOX", 1)
    assert run_sync(app, other).ok
    assert collect(app, message_ttl=0).blobs == 1
    assert not blobs.exists(sha)


def test_a_paused_account_keeps_its_orphans_until_it_syncs_again(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, range(1, 3))
    assert run_sync(app, account).ok
    dovecot.expunge(mail_user.email, "INBOX", 1)
    assert run_sync(app, account).deleted == 1
    account.sync_state = SYNC_PAUSED  # where the mail went cannot be seen while paused
    db.session.commit()
    assert collect(app, message_ttl=0).messages == 0
    assert message_count(account.id, deleted=True) == 1


def test_removing_an_account_with_its_mail_takes_the_stored_files_too(
    app, dovecot, mail_user, account, make_user, make_account, blobs, login
):
    other_box = dovecot.add_user(f"keeps-{mail_user.email}", "mail-password-1")
    other = make_account(make_user(), other_box)
    shared_raw = raw_message(1, to="team@example.com")  # in both mailboxes
    dovecot.deliver(mail_user.email, shared_raw)
    dovecot.deliver(other_box.email, shared_raw)
    deliver(dovecot, mail_user, [2, 3])
    assert run_sync(app, account).ok and run_sync(app, other).ok
    mine = {
        m.raw_sha256
        for m in db.session.scalars(select(Message).where(Message.account_id == account.id))
    }
    shared = message_by_msgid(other.id, "m1@example.com").raw_sha256
    assert len(mine) == 3 and shared in mine and all(blobs.exists(sha) for sha in mine)

    client = login(account.user)
    response = client.post(f"/settings/accounts/{account.id}/remove", data={"keep_mail": "0"})
    assert response.status_code in (302, 303)
    # As some time after the sync: the sweep keeps blobs written in the last few minutes.
    hour_ago = time.time() - 3600
    for path in blobs.root.rglob("*"):
        if path.is_file():
            os.utime(path, (hour_ago, hour_ago))
    assert jobs.sweep_blobs(app) == 2
    assert [sha for sha in mine if blobs.exists(sha)] == [shared]  # the other account's stays
    assert jobs.sweep_blobs(app) == 0


def test_the_sweep_keeps_the_files_of_drafts_and_outgoing_mail(app, account, blobs):
    kept = blobs.put(b"%PDF-1.4 a quote the user attached to a draft")
    orphan = blobs.put(b"an upload whose draft was discarded")
    draft = OutgoingMail(user_id=account.user_id, account_id=account.id, subject="Quote")
    draft.attachments.append(
        OutgoingAttachment(filename="quote.pdf", content_type="application/pdf", blob_sha256=kept)
    )
    db.session.add(draft)
    db.session.commit()
    hour_ago = time.time() - 3600
    for path in blobs.root.rglob("*"):
        if path.is_file():
            os.utime(path, (hour_ago, hour_ago))

    assert jobs.sweep_blobs(app) == 1
    assert blobs.exists(kept) and not blobs.exists(orphan)


def test_the_sweep_and_the_collector_keep_the_files_of_templates(app, make_user, blobs):
    from mailsync.gc import _blob_in_use
    from models import MailTemplate, TemplateAttachment

    kept = blobs.put(b"%PDF-1.4 the price list of a template")
    template = MailTemplate(owner_id=make_user().id, name="Prices")
    template.attachments.append(
        TemplateAttachment(filename="prices.pdf", content_type="application/pdf", blob_sha256=kept)
    )
    db.session.add(template)
    db.session.commit()
    hour_ago = time.time() - 3600
    for path in blobs.root.rglob("*"):
        if path.is_file():
            os.utime(path, (hour_ago, hour_ago))

    assert _blob_in_use(kept)
    assert jobs.sweep_blobs(app) == 0
    assert blobs.exists(kept)
    db.session.delete(template)  # deleting the template leaves its file to the sweep
    db.session.commit()
    assert jobs.sweep_blobs(app) == 1
    assert not blobs.exists(kept)
