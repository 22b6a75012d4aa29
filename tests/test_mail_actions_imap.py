"""Mail tab write-backs against the real Dovecot: \\Seen flags, archive and delete moves.

A request only changes the database and queues the write-back; the worker's job loop
(run_pending_jobs here, worker.run_one_job) applies it to the server.
"""

import socket

import pytest
from imapclient import IMAPClient
from sqlalchemy import select

from extensions import db
from mailsync import actions
from mailsync.blobstore import BlobStore
from models import JOB_DONE, Job, MailAccount, MailFolder, Message, MessageLocation, Thread
from services.credentials import secret_box
from services.mailbox import WRITEBACK_MOVE
from services.preferences import update_preferences
from tests.mail_fixtures import build_message
from tests.queue_helpers import run_pending_jobs

pytestmark = pytest.mark.imap
ACTIONS_URL = "/mail/threads/actions"


@pytest.fixture
def me(make_user):
    return make_user(email="me@team.test", name="Me")


@pytest.fixture
def server_account(app, me, dovecot, mail_user):
    """A MailAccount pointing at the real Dovecot, with folder rows for its standard folders."""
    app.config["MAIL_ALLOWED_PORTS"] = None  # Dovecot listens on random ports
    account = MailAccount(
        user_id=me.id,
        email_address=mail_user.email,
        username=mail_user.email,
        password_encrypted=secret_box(app).encrypt(mail_user.password),
        imap_host=dovecot.host,
        imap_port=dovecot.ssl_port,
        imap_security="ssl",
        ca_cert_pem=dovecot.ca_file.read_text(),
    )
    db.session.add(account)
    db.session.flush()
    for name, role in (("INBOX", "inbox"), ("Archive", "archive"), ("Trash", "trash")):
        db.session.add(MailFolder(account_id=account.id, name=name, role=role))
    db.session.commit()
    return account


@pytest.fixture
def deliver(dovecot, mail_user, server_account, make_mailbox_message):
    """Deliver `count` messages to INBOX and store rows pointing at their real UIDs."""

    def do_deliver(count: int = 1, **fields) -> list[Message]:
        inbox = db.session.scalar(
            select(MailFolder).where(
                MailFolder.account_id == server_account.id, MailFolder.name == "INBOX"
            )
        )
        before = set(dovecot.uids(mail_user.email))
        for index in range(count):
            dovecot.deliver(mail_user.email, build_message(subject=f"Message {index}"))
        new_uids = sorted(set(dovecot.uids(mail_user.email)) - before)
        return [
            make_mailbox_message(inbox, uid=uid, subject=f"Message {index}", **fields)
            for index, uid in enumerate(new_uids)
        ]

    return do_deliver


@pytest.fixture
def client_me(me, login):
    return login(me)


def locations(message_id):
    db.session.expire_all()
    return db.session.scalars(
        select(MessageLocation).where(MessageLocation.message_id == message_id)
    ).all()


def test_mark_read_and_unread_write_seen_back(client_me, dovecot, mail_user, deliver):
    first, second = deliver(2)
    uids = dovecot.uids(mail_user.email)
    client_me.post(ACTIONS_URL, data={"action": "read", "thread_id": [first.thread_id]})
    # The request did not talk to the server: the mailbox changes when the job runs.
    assert "\\Seen" not in dovecot.flags(mail_user.email, "INBOX", uids[0])
    assert all(location.seen_pending for location in locations(first.id))
    assert run_pending_jobs(client_me.application) == 1
    assert not any(location.seen_pending for location in locations(first.id))
    assert "\\Seen" in dovecot.flags(mail_user.email, "INBOX", uids[0])
    assert "\\Seen" not in dovecot.flags(mail_user.email, "INBOX", uids[1])
    dovecot.add_flags(mail_user.email, "INBOX", uids[0], "\\Flagged")
    client_me.post(ACTIONS_URL, data={"action": "unread", "thread_id": [first.thread_id]})
    run_pending_jobs(client_me.application)
    flags = dovecot.flags(mail_user.email, "INBOX", uids[0])
    # -FLAGS removes only \Seen: the user's other flags survive (never a FLAGS replace).
    assert "\\Seen" not in flags and "\\Flagged" in flags
    assert not any(location.seen for location in locations(first.id))


def test_archive_with_setting_moves_to_archive_on_server(
    client_me, me, dovecot, mail_user, deliver
):
    update_preferences(me, {"archive_in_mailbox": "True"})
    message, kept = deliver(2)
    client_me.post(ACTIONS_URL, data={"action": "archive", "thread_id": [message.thread_id]})
    assert db.session.get(Thread, message.thread_id).archived  # at once, in Threadline
    assert len(dovecot.uids(mail_user.email, "INBOX")) == 2
    run_pending_jobs(client_me.application)
    assert len(dovecot.uids(mail_user.email, "INBOX")) == 1
    archive_uids = dovecot.uids(mail_user.email, "Archive")
    assert len(archive_uids) == 1
    (location,) = locations(message.id)
    assert location.folder.name == "Archive" and location.uid == archive_uids[0]
    assert db.session.get(Thread, message.thread_id).archived
    assert [loc.folder.name for loc in locations(kept.id)] == ["INBOX"]


def test_delete_with_setting_moves_to_trash_on_server(client_me, me, dovecot, mail_user, deliver):
    update_preferences(me, {"delete_in_mailbox": "True"})
    (message,) = deliver(1)
    client_me.post(ACTIONS_URL, data={"action": "delete", "thread_id": [message.thread_id]})
    run_pending_jobs(client_me.application)
    assert dovecot.uids(mail_user.email, "INBOX") == []
    assert len(dovecot.uids(mail_user.email, "Trash")) == 1
    db.session.expire_all()
    assert db.session.get(Thread, message.thread_id).deleted_at is not None


def test_settings_off_leave_the_server_untouched(client_me, dovecot, mail_user, deliver):
    archived, deleted = deliver(2)
    before = dovecot.uids(mail_user.email, "INBOX")
    client_me.post(ACTIONS_URL, data={"action": "archive", "thread_id": [archived.thread_id]})
    client_me.post(ACTIONS_URL, data={"action": "delete", "thread_id": [deleted.thread_id]})
    assert run_pending_jobs(client_me.application) == 0  # nothing was queued
    assert dovecot.uids(mail_user.email, "INBOX") == before
    assert dovecot.uids(mail_user.email, "Trash") == []
    assert [loc.folder.name for loc in locations(archived.id)] == ["INBOX"]


@pytest.mark.parametrize("missing", [("MOVE",), ("MOVE", "UIDPLUS")])
def test_move_without_move_capability_copies_and_learns_the_new_uid(
    app, monkeypatch, dovecot, mail_user, server_account, deliver, missing
):
    """COPY + \\Deleted (+ UID EXPUNGE with UIDPLUS). The new UID is known at once, from
    COPYUID or else by the mail's header fields and size, so a move or read/unread queued
    right after this one finds the mail where it went (it used to wait for the next sync,
    and such a change was lost)."""
    original = IMAPClient.has_capability
    monkeypatch.setattr(
        IMAPClient,
        "has_capability",
        lambda self, name: False if name in missing else original(self, name),
    )
    (message,) = deliver(1)
    uid = dovecot.uids(mail_user.email)[0]
    moved = actions.move_locations(app, server_account.id, [("INBOX", uid)], "trash").moved
    (new_uid,) = dovecot.uids(mail_user.email, "Trash")
    assert moved == {("INBOX", uid): new_uid}
    if "UIDPLUS" in missing:  # the original waits, flagged, for the user's own client
        assert "\\Deleted" in dovecot.flags(mail_user.email, "INBOX", uid)
    else:
        assert dovecot.uids(mail_user.email, "INBOX") == []


def test_read_unread_read_is_one_write_back_of_read(client_me, dovecot, mail_user, deliver):
    (message,) = deliver(1)
    uid = dovecot.uids(mail_user.email)[0]
    for action in ("read", "unread", "read"):
        client_me.post(ACTIONS_URL, data={"action": action, "thread_id": [message.thread_id]})
    assert db.session.scalar(select(db.func.count()).select_from(Job)) == 1
    assert run_pending_jobs(client_me.application) == 1
    assert "\\Seen" in dovecot.flags(mail_user.email, "INBOX", uid)


def test_read_then_archive_run_in_order(client_me, me, dovecot, mail_user, deliver):
    """The \\Seen write-back runs before the move, so it lands on the mail, not on a UID
    that has left the folder; the move then carries the flag to Archive."""
    update_preferences(me, {"archive_in_mailbox": "True"})
    (message,) = deliver(1)
    client_me.post(ACTIONS_URL, data={"action": "read", "thread_id": [message.thread_id]})
    client_me.post(ACTIONS_URL, data={"action": "archive", "thread_id": [message.thread_id]})
    assert run_pending_jobs(client_me.application) == 2
    (archived,) = dovecot.uids(mail_user.email, "Archive")
    assert "\\Seen" in dovecot.flags(mail_user.email, "Archive", archived)
    (location,) = locations(message.id)
    assert location.folder.name == "Archive" and location.seen and not location.seen_pending


def test_opening_shows_saving_until_the_write_back_lands(client_me, dovecot, mail_user, deliver):
    (message,) = deliver(1)
    page = client_me.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert "Saving to mailbox" not in page
    response = client_me.post(f"/mail/threads/{message.thread_id}/read")
    assert response.status_code == 204 and response.headers["HX-Trigger"] == "mailbox-saving"
    saving = client_me.get(f"/mail/saving?thread={message.thread_id}")
    assert "Saving to mailbox…" in saving.get_data(as_text=True)
    assert "every 2s" in saving.get_data(as_text=True)  # it polls until the job lands
    listing = client_me.get("/mail/").get_data(as_text=True)
    assert "Saving to mailbox…" in listing
    run_pending_jobs(client_me.application)
    saving = client_me.get(f"/mail/saving?thread={message.thread_id}")
    assert "Saving to mailbox" not in saving.get_data(as_text=True)
    assert saving.headers["HX-Trigger"] == "mail-changed"
    uid = dovecot.uids(mail_user.email)[0]
    assert "\\Seen" in dovecot.flags(mail_user.email, "INBOX", uid)


def test_unreachable_server_keeps_threadline_state_and_says_so_after_retries(
    app, client_me, me, dovecot, mail_user, server_account, deliver
):
    app.config.update(JOB_MAX_ATTEMPTS=3, JOB_BACKOFF_SECONDS=0)  # retry at once, 3 times
    update_preferences(me, {"archive_in_mailbox": "True"})
    message, other = deliver(2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    account = db.session.get(MailAccount, server_account.id)
    account.imap_port = closed_port
    db.session.commit()
    response = client_me.post(
        ACTIONS_URL,
        data={"action": "read", "thread_id": [message.thread_id]},
        follow_redirects=True,
    )
    assert "Marked 1 conversation read." in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Message, message.id).is_read
    client_me.post(ACTIONS_URL, data={"action": "archive", "thread_id": [other.thread_id]})
    assert run_pending_jobs(app) == 6  # each job three times, the read first
    jobs = db.session.scalars(select(Job).order_by(Job.id)).all()
    assert [(job.kind, job.state, job.attempts) for job in jobs] == [
        ("mailbox.seen", "failed", 3),
        ("mailbox.move", "failed", 3),
    ]
    assert "refused the connection" in jobs[1].last_error
    text = client_me.get("/mail/").get_data(as_text=True)
    assert "Some changes could not be saved to your mailbox" in text
    assert "refused the connection" in text
    # Nothing is lost in Threadline meanwhile.
    assert db.session.get(Thread, other.thread_id).archived
    assert [loc.folder.name for loc in locations(other.id)] == ["INBOX"]
    assert len(dovecot.uids(mail_user.email, "INBOX")) == 2
    # Once the server answers again a later write-back lands and the error goes away.
    account = db.session.get(MailAccount, server_account.id)
    account.imap_port = dovecot.ssl_port
    db.session.commit()
    client_me.post(ACTIONS_URL, data={"action": "read", "thread_id": [message.thread_id]})
    assert run_pending_jobs(app) == 1
    assert "\\Seen" in dovecot.flags(mail_user.email, "INBOX", dovecot.uids(mail_user.email)[0])
    assert "could not be saved" not in client_me.get("/mail/").get_data(as_text=True)


def test_copyuid_ranges_map_old_to_new_uids():
    parsed = actions._parse_copyuid([b"[COPYUID 38505 304,319:320 3956:3958] Done"])
    assert parsed == {304: 3956, 319: 3957, 320: 3958}


def test_a_change_made_while_a_sync_retries_a_write_back_is_not_lost(
    app, client_me, dovecot, mail_user, deliver, server_account, monkeypatch
):
    """A sync pass retries pending \\Seen writes; the user marking the mail unread while that
    write is on its way must stay pending for its own job (the sync used to clear it, so the
    server kept \\Seen while Threadline showed the mail unread)."""
    from mailsync.sync import AccountSync

    (message,) = deliver(1)
    uid = dovecot.uids(mail_user.email)[0]
    client_me.post(ACTIONS_URL, data={"action": "read", "thread_id": [message.thread_id]})
    original = actions.set_seen

    def write_then_user_marks_unread(*args, **kwargs):
        written = original(*args, **kwargs)
        monkeypatch.setattr(actions, "set_seen", original)
        client_me.post(ACTIONS_URL, data={"action": "unread", "thread_id": [message.thread_id]})
        return written

    monkeypatch.setattr(actions, "set_seen", write_then_user_marks_unread)
    AccountSync(app, server_account.id, 60, None).push_pending_seen()
    assert "\\Seen" in dovecot.flags(mail_user.email, "INBOX", uid)  # the sync's write landed

    run_pending_jobs(app)
    (location,) = locations(message.id)
    assert not location.seen and not location.seen_pending
    assert "\\Seen" not in dovecot.flags(mail_user.email, "INBOX", uid)


def test_marking_read_just_as_the_unread_write_back_lands_reaches_the_mailbox(
    app, client_me, me, dovecot, mail_user, deliver
):
    """Read, unread, read: the unread's write-back lands (its job clears `seen_pending`)
    after the request marking the mail read again loaded the location and before it wrote
    it. The read must still be written to the mailbox. The ORM used to leave `seen_pending`
    out of its UPDATE (loaded as True, set to True), so the read stayed in Threadline only
    (found by test_multi_process on PostgreSQL)."""
    from services import mailbox
    from worker import run_one_job

    (message,) = deliver(1)
    uid = dovecot.uids(mail_user.email)[0]
    client_me.post(ACTIONS_URL, data={"action": "read", "thread_id": [message.thread_id]})
    client_me.post(ACTIONS_URL, data={"action": "unread", "thread_id": [message.thread_id]})
    assert run_pending_jobs(app) == 1  # read and unread folded into one job
    client_me.post(ACTIONS_URL, data={"action": "read", "thread_id": [message.thread_id]})
    client_me.post(ACTIONS_URL, data={"action": "unread", "thread_id": [message.thread_id]})
    assert "\\Seen" not in dovecot.flags(mail_user.email, "INBOX", uid)

    # The request's view of the mail: loaded while the unread is still pending.
    db.session.expire_all()
    thread = db.session.get(Thread, message.thread_id)
    (location,) = db.session.get(Message, message.id).locations
    assert (location.seen, location.seen_pending) == (False, True)
    # Meanwhile the worker writes the unread and clears seen_pending (its own session).
    assert run_one_job(app, "test-worker")
    mailbox.mark_read(db.session.get(type(me), me.id), [thread], read=True)

    db.session.expire_all()
    (location,) = locations(message.id)
    assert (location.seen, location.seen_pending) == (True, True)  # still to be written
    run_pending_jobs(app)
    assert "\\Seen" in dovecot.flags(mail_user.email, "INBOX", uid)
    (location,) = locations(message.id)
    assert location.seen and not location.seen_pending
    assert db.session.get(Message, message.id).is_read


def server_folder(dovecot, mail_user, account, name):
    """Create a folder on the server and its row, as a sync would find it."""
    dovecot.create_folder(mail_user.email, name)
    folder = MailFolder(account_id=account.id, name=name)
    db.session.add(folder)
    db.session.commit()
    return folder


@pytest.mark.parametrize("first", ["archive", "move"])
def test_moving_back_to_the_inbox_before_the_worker_runs_lands_in_the_inbox(
    client_me, me, dovecot, mail_user, server_account, deliver, first
):
    """Archive (or move elsewhere), then move back to the inbox, both before the worker
    runs: the mail must end in the inbox. The move back used to be left out of its job, as
    the mail was still in the inbox in Threadline when the user asked, so the first move won
    (found by tests/test_writeback_soak.py)."""
    update_preferences(me, {"archive_in_mailbox": "True"})
    projects = server_folder(dovecot, mail_user, server_account, "Projects")
    inbox = db.session.scalar(select(MailFolder).where(MailFolder.name == "INBOX"))
    (message,) = deliver(1)
    away = {"action": "move", "destination": projects.id} if first == "move" else {"action": first}
    client_me.post(ACTIONS_URL, data={**away, "thread_id": [message.thread_id]})
    client_me.post(
        ACTIONS_URL,
        data={"action": "move", "destination": inbox.id, "thread_id": [message.thread_id]},
    )
    run_pending_jobs(client_me.application)
    (uid,) = dovecot.uids(mail_user.email, "INBOX")
    assert dovecot.uids(mail_user.email, "Archive") == []
    assert dovecot.uids(mail_user.email, "Projects") == []
    (location,) = locations(message.id)
    assert (location.folder.name, location.uid) == ("INBOX", uid)


def test_archiving_after_a_move_out_of_the_inbox_leaves_the_mail_where_it_was_moved(
    client_me, me, dovecot, mail_user, server_account, deliver
):
    """Archive moves the inbox copies only: mail the user moved to another folder just
    before (the move still queued) stays there. The archive used to move it on from there,
    as it was still in the inbox when the user archived (found by test_writeback_soak)."""
    update_preferences(me, {"archive_in_mailbox": "True"})
    projects = server_folder(dovecot, mail_user, server_account, "Projects")
    (message,) = deliver(1)
    client_me.post(
        ACTIONS_URL,
        data={"action": "move", "destination": projects.id, "thread_id": [message.thread_id]},
    )
    client_me.post(ACTIONS_URL, data={"action": "archive", "thread_id": [message.thread_id]})
    run_pending_jobs(client_me.application)
    assert dovecot.uids(mail_user.email, "Archive") == []
    (uid,) = dovecot.uids(mail_user.email, "Projects")
    (location,) = locations(message.id)
    assert (location.folder.name, location.uid) == ("Projects", uid)


def test_marking_read_while_a_pass_stores_a_moved_mail_reaches_the_mailbox(
    app, client_me, me, dovecot, mail_user, server_account, monkeypatch
):
    """The user marks mail read that a write-back just moved, while a sync pass, having
    fetched its flags at the new UID (unread), is about to store them. The pass must not
    write that older \\Seen over the user's change: the pass used to store it with the new
    location (an upsert without the guard flag updates have), and the job then wrote
    "unread" to the mailbox (found by tests/test_writeback_soak.py)."""
    from mailsync.sync import AccountSync
    from tests.sync_helpers import run_sync

    update_preferences(me, {"archive_in_mailbox": "True"})
    dovecot.deliver(mail_user.email, build_message(subject="Moved"))
    run_sync(app, server_account.id)
    message = db.session.scalar(select(Message))
    client_me.post(ACTIONS_URL, data={"action": "archive", "thread_id": [message.thread_id]})
    run_pending_jobs(app)
    (archived,) = dovecot.uids(mail_user.email, "Archive")
    original = AccountSync.fetch_meta

    def fetch_then_user_marks_read(self, uid_set, wanted, **kwargs):
        metas = original(self, uid_set, wanted, **kwargs)
        if archived in metas:
            monkeypatch.setattr(AccountSync, "fetch_meta", original)
            client_me.post(ACTIONS_URL, data={"action": "read", "thread_id": [message.thread_id]})
        return metas

    monkeypatch.setattr(AccountSync, "fetch_meta", fetch_then_user_marks_read)
    run_sync(app, server_account.id)
    assert AccountSync.fetch_meta is original  # the pass did fetch the moved mail
    run_pending_jobs(app)
    assert "\\Seen" in dovecot.flags(mail_user.email, "Archive", archived)
    (location,) = locations(message.id)
    assert (location.folder.name, location.uid) == ("Archive", archived)
    assert location.seen and not location.seen_pending


@pytest.mark.parametrize("action", ["read", "move"])
def test_a_write_back_never_lands_on_other_mail_after_a_uidvalidity_change(
    app, client_me, me, dovecot, mail_user, server_account, action
):
    """The folder is rebuilt on the server (a new UIDVALIDITY) between the user's action
    and its write-back, with other mail at the same UID: the write-back must not mark or
    move that mail. It used to, as it trusted the stored UID without looking at the folder's
    UIDVALIDITY, and a location taken over by the other mail kept the pending \\Seen."""
    from tests.sync_helpers import raw_message, run_sync

    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.deliver(mail_user.email, raw_message(1, msgid="first@soak.test"), "Projects")
    run_sync(app, server_account.id)
    message = db.session.scalar(select(Message))
    archive = db.session.scalar(select(MailFolder).where(MailFolder.name == "Archive"))
    data = {"action": action, "thread_id": [message.thread_id]}
    client_me.post(
        ACTIONS_URL, data=data if action == "read" else {**data, "destination": archive.id}
    )
    dovecot.delete_folder(mail_user.email, "Projects")
    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.set_uidvalidity(mail_user.email, "Projects", 4242)
    dovecot.deliver(mail_user.email, raw_message(2, msgid="other@soak.test"), "Projects")

    run_pending_jobs(app)
    run_sync(app, server_account.id)  # reads the rebuilt folder
    dovecot.add_flags(mail_user.email, "Projects", 1, "\\Seen")  # another client reads it
    run_pending_jobs(app)
    run_sync(app, server_account.id)
    assert dovecot.uids(mail_user.email, "Projects") == [1]
    assert dovecot.flags(mail_user.email, "Projects", 1) == {"\\Seen"}
    assert dovecot.uids(mail_user.email, "Archive") == []
    db.session.expire_all()
    (location,) = db.session.scalars(select(MessageLocation)).all()
    assert location.message.message_id_header == "other@soak.test"
    assert location.seen and not location.seen_pending


def acted_on_in_projects(app, client_me, dovecot, mail_user, server_account, **action):
    """A mail synced in Projects on which the user has just taken `action` (the form's
    fields besides the conversation; the write-back queued, retried at once when it fails)."""
    from tests.sync_helpers import raw_message, run_sync

    app.config.update(JOB_BACKOFF_SECONDS=0)
    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.deliver(mail_user.email, raw_message(1, msgid="first@soak.test"), "Projects")
    run_sync(app, server_account.id)
    message = db.session.scalar(select(Message))
    client_me.post(ACTIONS_URL, data={"thread_id": [message.thread_id], **action})
    return message


def moved_out_of_projects(app, client_me, dovecot, mail_user, server_account) -> Message:
    """A mail synced in Projects that the user has just moved to Archive."""
    archive = db.session.scalar(select(MailFolder).where(MailFolder.name == "Archive"))
    return acted_on_in_projects(
        app, client_me, dovecot, mail_user, server_account, action="move", destination=archive.id
    )


def test_a_move_made_just_before_a_harmless_uidvalidity_change_still_lands(
    app, client_me, dovecot, mail_user, server_account
):
    """The server gives a folder a new UIDVALIDITY but keeps its UIDs (a restore, a server
    move) between the user's move and its write-back. The write-back must not land on a
    folder whose UIDs it cannot trust, but it must not be dropped either: it used to end as
    done, and the mail stayed in the folder the user had moved it out of."""
    message = moved_out_of_projects(app, client_me, dovecot, mail_user, server_account)
    dovecot.set_uidvalidity(mail_user.email, "Projects", 4242)

    run_pending_jobs(app)  # the move waits, asks for a pass, and lands after it
    assert dovecot.uids(mail_user.email, "Projects") == []
    assert len(dovecot.uids(mail_user.email, "Archive")) == 1
    job = db.session.scalar(select(Job).where(Job.kind == WRITEBACK_MOVE))
    assert job.state == JOB_DONE
    (location,) = locations(message.id)
    assert location.folder.name == "Archive"


def rebuild_projects(dovecot, mail_user) -> None:
    """Projects rebuilt on the server (a new UIDVALIDITY): other mail at the user's mail's old
    UID 1, the user's mail ("first@soak.test") at UID 2."""
    from tests.sync_helpers import raw_message

    dovecot.delete_folder(mail_user.email, "Projects")
    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.set_uidvalidity(mail_user.email, "Projects", 4242)
    dovecot.deliver(mail_user.email, raw_message(2, msgid="other@soak.test"), "Projects")
    dovecot.deliver(mail_user.email, raw_message(1, msgid="first@soak.test"), "Projects")


def test_a_move_finds_the_users_mail_again_in_a_rebuilt_folder(
    app, client_me, dovecot, mail_user, server_account
):
    """The folder is rebuilt on the server between the move and its write-back: other mail
    now has the user's mail's old UID, and the user's mail another one. The write-back moves
    the user's mail, found again once a pass has read the folder, and leaves the other."""
    from tests.sync_helpers import run_sync

    moved_out_of_projects(app, client_me, dovecot, mail_user, server_account)
    rebuild_projects(dovecot, mail_user)

    run_pending_jobs(app)
    run_sync(app, server_account.id)
    assert dovecot.uids(mail_user.email, "Projects") == [1]
    assert len(dovecot.uids(mail_user.email, "Archive")) == 1
    db.session.expire_all()
    where = {
        location.message.message_id_header: location.folder.name
        for location in db.session.scalars(select(MessageLocation))
    }
    assert where == {"first@soak.test": "Archive", "other@soak.test": "Projects"}


def test_a_large_mails_body_is_never_taken_from_other_mail_at_its_old_uid(
    app, client_me, dovecot, mail_user, server_account
):
    """The folder of a mail stored as headers only is rebuilt before the user asks for its
    body: the download must not store the mail now at its old UID as its body (the page
    would show another mail's text); it waits for a pass, then fetches the right one."""
    from services.conversations import request_full_message
    from tests.sync_helpers import raw_message, run_sync

    app.config.update(MAX_FULL_SIZE=2000, JOB_BACKOFF_SECONDS=0)
    big = raw_message(1, subject="Big one", msgid="big@soak.test", body="tangerine " * 600)
    other = raw_message(2, subject="Other", msgid="other@soak.test", body="pomelo " * 600)
    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.deliver(mail_user.email, big, "Projects")
    run_sync(app, server_account.id)
    (message,) = db.session.scalars(select(Message)).all()
    assert message.is_placeholder
    dovecot.delete_folder(mail_user.email, "Projects")
    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.set_uidvalidity(mail_user.email, "Projects", 4242)
    dovecot.deliver(mail_user.email, other, "Projects")  # now UID 1
    dovecot.deliver(mail_user.email, big, "Projects")  # now UID 2

    request_full_message(message)
    run_pending_jobs(app)  # waits, a pass reads the folder again, then the body comes
    db.session.expire_all()
    message = db.session.get(Message, message.id)
    assert not message.is_placeholder
    raw = BlobStore(f"{app.instance_path}/blobs").get(message.raw_sha256)
    assert b"tangerine" in raw and b"pomelo" not in raw


def read_in_projects(app, client_me, dovecot, mail_user, server_account) -> Message:
    """A mail synced in Projects that the user has just marked read in Threadline."""
    return acted_on_in_projects(app, client_me, dovecot, mail_user, server_account, action="read")


def read_on_the_server(dovecot, mail_user, folder: str, message_id_header: str) -> bool:
    db.session.expire_all()
    (location,) = [
        location
        for location in db.session.scalars(select(MessageLocation))
        if location.message.message_id_header == message_id_header
    ]
    assert location.folder.name == folder
    return "\\Seen" in dovecot.flags(mail_user.email, folder, location.uid)


def test_a_mail_read_here_and_moved_by_another_mail_program_before_the_write_back_stays_read(
    app, client_me, dovecot, mail_user, server_account
):
    """Another mail program moves the mail between the user's "read" and its write-back.
    STORE on the UID it no longer has is an OK that changes nothing: the write-back used to
    count it as written, and the next pass found the mail in its new folder unread."""
    from tests.sync_helpers import run_sync

    message = read_in_projects(app, client_me, dovecot, mail_user, server_account)
    dovecot.move(mail_user.email, "Projects", 1, "Archive")

    run_pending_jobs(app)  # the mail is not where the write-back looks: it waits
    run_sync(app, server_account.id)  # finds it in Archive, with the user's change
    run_sync(app, server_account.id)  # writes the change
    assert read_on_the_server(dovecot, mail_user, "Archive", "first@soak.test")
    db.session.expire_all()
    assert db.session.get(Message, message.id).is_read


def test_a_mail_read_here_stays_read_when_its_folder_is_rebuilt_before_the_write_back(
    app, client_me, dovecot, mail_user, server_account
):
    """The folder is rebuilt on the server (a new UIDVALIDITY, the mail at another UID)
    between the user's "read" and its write-back: the pass replaces the mail's location, and
    used to drop the pending change with the old one (the mail turned unread again)."""
    from tests.sync_helpers import run_sync

    read_in_projects(app, client_me, dovecot, mail_user, server_account)
    rebuild_projects(dovecot, mail_user)

    run_pending_jobs(app)
    run_sync(app, server_account.id)
    run_pending_jobs(app)
    run_sync(app, server_account.id)
    assert read_on_the_server(dovecot, mail_user, "Projects", "first@soak.test")
    assert not read_on_the_server(dovecot, mail_user, "Projects", "other@soak.test")


def test_a_mail_read_here_and_gone_for_a_while_is_read_when_it_comes_back(
    app, client_me, dovecot, mail_user, server_account
):
    """Another mail program takes the mail away (expunged) before the write-back, then puts
    it back elsewhere (restored from a backup, moved back): the user's change was kept with
    the mail in between, and reaches the server with it."""
    from tests.sync_helpers import raw_message, run_sync

    message = read_in_projects(app, client_me, dovecot, mail_user, server_account)
    dovecot.expunge(mail_user.email, "Projects", 1)
    run_pending_jobs(app)
    run_sync(app, server_account.id)
    db.session.expire_all()
    assert db.session.get(Message, message.id).deleted_at is not None  # gone for now
    dovecot.deliver(mail_user.email, raw_message(1, msgid="first@soak.test"), "Archive")
    run_sync(app, server_account.id)
    run_sync(app, server_account.id)
    assert read_on_the_server(dovecot, mail_user, "Archive", "first@soak.test")
    db.session.expire_all()
    back = db.session.get(Message, message.id)
    assert back.is_read and back.deleted_at is None and back.seen_wanted is None


def test_a_move_whose_source_folder_was_deleted_on_the_server_moves_the_rest(
    app, client_me, dovecot, mail_user, server_account
):
    """A conversation with mail in Projects and in INBOX is moved to Archive; Projects is
    deleted in another mail program before the write-back. The whole move used to fail on
    Projects (nothing recorded, the INBOX mail moved on the server but not in Threadline, and
    the error in the server's words); now the rest moves and the gone folder waits for the
    pass that lets its mail go."""
    from tests.sync_helpers import raw_message, run_sync

    app.config.update(JOB_BACKOFF_SECONDS=0)
    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.deliver(mail_user.email, raw_message(1, msgid="first@soak.test"), "Projects")
    reply = raw_message(2, msgid="reply@soak.test", in_reply_to="<first@soak.test>")
    dovecot.deliver(mail_user.email, reply, "INBOX")
    run_sync(app, server_account.id)
    (thread_id,) = set(db.session.scalars(select(Message.thread_id)))
    archive = db.session.scalar(select(MailFolder).where(MailFolder.name == "Archive"))
    client_me.post(
        ACTIONS_URL, data={"action": "move", "thread_id": [thread_id], "destination": archive.id}
    )
    dovecot.delete_folder(mail_user.email, "Projects")

    run_pending_jobs(app)
    assert dovecot.uids(mail_user.email, "INBOX") == []
    assert len(dovecot.uids(mail_user.email, "Archive")) == 1
    assert [
        (loc.folder.name)
        for loc in locations(
            db.session.scalar(
                select(Message.id).where(Message.message_id_header == "reply@soak.test")
            )
        )
    ] == ["Archive"]
    run_sync(app, server_account.id)  # Projects is gone, and its mail with it
    run_pending_jobs(app)
    job = db.session.scalar(select(Job).where(Job.kind == WRITEBACK_MOVE))
    assert job.state == JOB_DONE
    # Threadline and the server agree: the conversation is out of the Inbox on both.
    assert f'data-thread-id="{thread_id}"' not in client_me.get("/mail/").get_data(as_text=True)
    assert dovecot.uids(mail_user.email, "INBOX") == []


@pytest.mark.parametrize(
    "answer",
    [
        "select failed: [NONEXISTENT] Mailbox doesn't exist: Projects",
        "MOVE failed: [TRYCREATE] Mailbox doesn't exist: Archive",
        "SELECT failed: No such mailbox",
    ],
)
def test_a_folder_deleted_on_the_server_is_said_in_plain_words(answer):
    from imapclient.exceptions import IMAPClientError

    words = actions.describe_failure(IMAPClientError(answer))
    assert "no longer exists on the mail server" in words and "failed" not in words


def test_a_read_queued_behind_a_move_whose_new_uid_is_unknown_reaches_the_mail(
    app, monkeypatch, client_me, dovecot, mail_user, server_account
):
    """Without MOVE and UIDPLUS, mail without a Message-ID cannot be found in the folder it
    was copied to until a pass reads it: a read queued behind the move used to be lost."""
    from tests.sync_helpers import run_sync

    original = IMAPClient.has_capability
    monkeypatch.setattr(
        IMAPClient,
        "has_capability",
        lambda self, name: False if name in ("MOVE", "UIDPLUS") else original(self, name),
    )
    app.config.update(JOB_BACKOFF_SECONDS=0)
    dovecot.create_folder(mail_user.email, "Projects")
    raw = b"From: a@b.test\r\nTo: box@mail.test\r\nSubject: No id\r\n\r\nbody\r\n"
    dovecot.deliver(mail_user.email, raw, "INBOX")
    run_sync(app, server_account.id)
    message = db.session.scalar(select(Message))
    projects = db.session.scalar(select(MailFolder).where(MailFolder.name == "Projects"))
    data = {"thread_id": [message.thread_id]}
    client_me.post(ACTIONS_URL, data={**data, "action": "move", "destination": projects.id})
    client_me.post(ACTIONS_URL, data={**data, "action": "read"})

    run_pending_jobs(app)
    run_sync(app, server_account.id)  # finds the mail in Projects, with the user's change
    run_sync(app, server_account.id)  # writes it
    (uid,) = dovecot.uids(mail_user.email, "Projects")
    assert "\\Seen" in dovecot.flags(mail_user.email, "Projects", uid)
    db.session.expire_all()
    assert db.session.get(Message, message.id).is_read


def test_a_read_that_meets_mail_being_moved_by_copy_and_delete_follows_the_copy(
    app, client_me, dovecot, mail_user, server_account
):
    """Another mail program without MOVE copies the mail, marks the original \\Deleted and
    expunges it a moment later: a write-back landing in between reached the original only."""
    from tests.sync_helpers import run_sync

    message = read_in_projects(app, client_me, dovecot, mail_user, server_account)
    dovecot.doveadm("copy", "-u", mail_user.email, "Archive", "mailbox", "Projects", "uid", "1")
    dovecot.add_flags(mail_user.email, "Projects", 1, "\\Deleted")
    run_pending_jobs(app)  # meets the original, marked \Deleted: not written
    dovecot.expunge(mail_user.email, "Projects", 1)
    run_sync(app, server_account.id)
    run_sync(app, server_account.id)
    assert read_on_the_server(dovecot, mail_user, "Archive", "first@soak.test")
    db.session.expire_all()
    assert db.session.get(Message, message.id).is_read


def test_a_change_carried_for_a_gone_copy_never_overrides_a_later_one_made_elsewhere(
    app, monkeypatch, client_me, dovecot, mail_user, server_account
):
    """The mail is in INBOX and, copied, in Projects. The user marks it read; the INBOX copy
    gets it, but the Projects copy is expunged elsewhere first. Then another mail program
    marks the INBOX copy unread. When the pass lets the Projects copy go, its read must not
    be carried to the INBOX copy: that one was there before the user's change, and its
    unread is the newer change."""
    from mailsync import store
    from tests.sync_helpers import raw_message, run_sync

    monkeypatch.setattr(store, "LOCAL_CHANGE_GUARD_SECONDS", 0)
    dovecot.create_folder(mail_user.email, "Projects")
    raw = raw_message(1, msgid="first@soak.test")
    dovecot.deliver(mail_user.email, raw, "INBOX")
    dovecot.deliver(mail_user.email, raw, "Projects")
    run_sync(app, server_account.id)
    message = db.session.scalar(select(Message))
    assert len(locations(message.id)) == 2
    client_me.post(ACTIONS_URL, data={"action": "read", "thread_id": [message.thread_id]})
    dovecot.expunge(mail_user.email, "Projects", 1)
    # The write-back: INBOX written; Projects has no such mail any more (the job asks for a
    # pass, which runs later).
    assert run_pending_jobs(app, limit=1) == 1
    assert "\\Seen" in dovecot.flags(mail_user.email, "INBOX", 1)
    dovecot.remove_flags(mail_user.email, "INBOX", 1, "\\Seen")  # another mail program
    run_sync(app, server_account.id, all_folders=False)  # INBOX: Threadline sees it unread
    assert sorted((loc.folder.name, loc.seen_pending) for loc in locations(message.id)) == [
        ("INBOX", False),
        ("Projects", True),
    ]
    run_pending_jobs(app)  # the pass: the Projects copy is gone
    run_sync(app, server_account.id)
    assert "\\Seen" not in dovecot.flags(mail_user.email, "INBOX", 1)
    (location,) = locations(message.id)
    assert not location.seen and not location.seen_pending


def test_a_read_waiting_for_a_rebuilt_folder_lands_when_the_mail_keeps_its_uid(
    app, client_me, dovecot, mail_user, server_account
):
    """Projects is rebuilt before the write-back (a new UIDVALIDITY; other mail changed, so
    the pass reads it all again) and the user's mail is back at its old UID: the pass takes
    its location over in place and used to overwrite the user's read with the server's flags
    (then "wrote" that unread back)."""
    from tests.sync_helpers import raw_message, run_sync

    app.config.update(JOB_BACKOFF_SECONDS=0)
    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.deliver(mail_user.email, raw_message(1, msgid="first@soak.test"), "Projects")
    dovecot.deliver(mail_user.email, raw_message(2, msgid="second@soak.test"), "Projects")
    run_sync(app, server_account.id)
    message = db.session.scalar(
        select(Message).where(Message.message_id_header == "first@soak.test")
    )
    client_me.post(ACTIONS_URL, data={"action": "read", "thread_id": [message.thread_id]})
    dovecot.delete_folder(mail_user.email, "Projects")
    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.set_uidvalidity(mail_user.email, "Projects", 4242)
    dovecot.deliver(mail_user.email, raw_message(1, msgid="first@soak.test"), "Projects")
    dovecot.deliver(mail_user.email, raw_message(3, msgid="third@soak.test"), "Projects")

    run_pending_jobs(app)  # waits for the pass, which reads the folder again
    run_sync(app, server_account.id)
    run_pending_jobs(app)
    run_sync(app, server_account.id)
    assert dovecot.uids(mail_user.email, "Projects") == [1, 2]
    assert read_on_the_server(dovecot, mail_user, "Projects", "first@soak.test")
    assert not read_on_the_server(dovecot, mail_user, "Projects", "third@soak.test")
