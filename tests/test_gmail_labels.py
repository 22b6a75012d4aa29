"""Gmail: labels are not folders (SYNC.md §4.5). All Mail is synced once, its X-GM-LABELS
become the Mail tab's label folders, and the inbox comes first; through the real sync
against the scripted IMAP server answering Gmail's extensions, and the Mail tab."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from sqlalchemy import select

from extensions import db
from models import MailFolder, Message
from services import mailbox
from tests.servers.fake_imap import FakeIMAPServer, FakeMessage, FakeState, Quirks
from tests.sync_helpers import command_log, raw_message, run_sync

ALL_MAIL = "[Gmail]/All Mail"


def gmail_message(uid: int, subject: str, labels: tuple[str, ...], *, seen=False):
    flags = ("\\Seen",) if seen else ()
    return FakeMessage(uid, raw_message(uid, subject=subject), flags, 9000 + uid, 500 + uid, labels)


@pytest.fixture
def gmail(dovecot):
    """A Gmail-like server: All Mail holds every message, labels are listed as folders."""
    all_mail = [
        gmail_message(1, "Acme order", ("\\Inbox", "Clients/Acme")),
        gmail_message(2, "Acme invoice", ("Clients/Acme",), seen=True),
        gmail_message(3, "Archived newsletter", ()),
        gmail_message(4, "Lunch?", ("\\Inbox",)),
        gmail_message(5, "Quote sent", ("\\Sent", "\\Important"), seen=True),
        gmail_message(6, "Old inbox mail", ("\\Inbox", "\\Starred")),
    ]
    state = FakeState(
        quirks=Quirks(capabilities="IMAP4rev1 ID X-GM-EXT-1"),
        folders={
            ALL_MAIL: ("\\All \\HasNoChildren", all_mail),
            "[Gmail]/Trash": ("\\Trash \\HasNoChildren", []),
            "[Gmail]/Spam": ("\\Junk \\HasNoChildren", []),
            "[Gmail]/Sent Mail": ("\\Sent \\HasNoChildren", []),
            "[Gmail]/Starred": ("\\Flagged \\HasNoChildren", []),
            "[Gmail]/Important": ("\\Important \\HasNoChildren", []),
            "Clients/Acme": ("\\HasNoChildren", []),
        },
    )
    # The LIST's INBOX (a label on Gmail) holds the \Inbox-labelled mail.
    state.messages = [m for m in all_mail if "\\Inbox" in m.gm_labels]
    server = FakeIMAPServer(state, dovecot.certs.cert_file, dovecot.certs.key_file)
    yield server
    server.stop()


@pytest.fixture
def me(make_user):
    return make_user(email="me@team.test", name="Me")


def subjects(client, url: str) -> list[str]:
    html = client.get(url).get_data(as_text=True)
    ids = [int(i) for i in re.findall(r'data-thread-id="(\d+)"', html)]
    found = {m.thread_id: m.subject for m in db.session.scalars(select(Message))}
    return sorted(found[i] for i in ids)


def body_fetches(log) -> list[list[int]]:
    """Return the UIDs of each BODY.PEEK[] FETCH sent, in order."""
    found = []
    for line in log.lines:
        if b"BODY.PEEK[]" not in line:
            continue
        spec = re.search(rb"FETCH ([\d:,]+) ", line).group(1).decode()
        uids = []
        for part in spec.split(","):
            low, _, high = part.partition(":")
            uids.extend(range(int(low), int(high or low) + 1))
        found.append(uids)
    return found


def folder_id(account_id: int, name: str) -> int:
    return db.session.scalar(
        select(MailFolder.id).where(MailFolder.account_id == account_id, MailFolder.name == name)
    )


def test_all_mail_is_downloaded_once_and_labels_show_as_folders(
    app, gmail, me, make_account, mail_user, login, monkeypatch
):
    account = make_account(me, mail_user, imap_port=gmail.port)
    with command_log(monkeypatch) as log:
        assert run_sync(app, account).ok
    # Each message once, whatever its labels: only All Mail's bodies were fetched.
    uids = sorted(uid for line in body_fetches(log) for uid in line)
    assert uids == [1, 2, 3, 4, 5, 6]
    examined = [line for line in log.lines if b"EXAMINE" in line or b"SELECT" in line]
    assert all(b"INBOX" not in line and b"Clients" not in line for line in examined)
    assert len(list(db.session.scalars(select(Message)))) == 6

    client = login(me)
    entries = mailbox.list_folders(db.session.merge(me))
    labels = [entry.label for entry in entries]
    assert labels[0] == "Inbox"  # \Inbox as Threadline's Inbox, first
    for label in ("Sent", "Clients/Acme", "Starred", "Important"):
        assert label in labels
    assert "INBOX" not in labels
    counts = {entry.label: entry.unread for entry in entries}
    assert counts["Inbox"] == 3 and counts["Clients/Acme"] == 1 and counts["Starred"] == 1
    assert counts["Sent"] == 0

    acme = folder_id(account.id, "Clients/Acme")
    assert subjects(client, f"/mail/?folder=f{acme}") == ["Acme invoice", "Acme order"]
    assert subjects(client, "/mail/") == ["Acme order", "Lunch?", "Old inbox mail"]
    assert subjects(client, "/mail/?folder=sent") == ["Quote sent"]
    important = folder_id(account.id, "[Gmail]/Important")
    assert subjects(client, f"/mail/?folder=f{important}") == ["Quote sent"]
    sidebar = client.get("/mail/folders", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "Clients/Acme" in sidebar and 'title="3 unread"' in sidebar


def test_first_sync_fetches_the_inbox_first(app, gmail, me, make_account, mail_user, monkeypatch):
    account = make_account(me, mail_user, imap_port=gmail.port)
    app.config["SYNC_BATCH_MESSAGES"] = 1  # one body FETCH per message: the order shows
    with command_log(monkeypatch) as log:
        assert run_sync(app, account).ok
    assert any(b"X-GM-LABELS" in line and b"SEARCH" in line for line in log.lines)
    order = [uid for line in body_fetches(log) for uid in line]
    # \Inbox-labelled first, newest first, then the rest of All Mail newest first.
    assert order == [6, 4, 1, 5, 3, 2]


def test_label_changes_made_elsewhere_show_after_the_next_pass(
    app, gmail, me, make_account, mail_user, login
):
    account = make_account(me, mail_user, imap_port=gmail.port)
    assert run_sync(app, account).ok
    client = login(me)
    acme = folder_id(account.id, "Clients/Acme")
    all_mail = gmail.state.folders[ALL_MAIL][1]
    # In Gmail's web UI: "Lunch?" labelled Clients/Acme; "Acme order" loses the label.
    all_mail[3].gm_labels = ("\\Inbox", "Clients/Acme")
    all_mail[0].gm_labels = ("\\Inbox",)
    assert run_sync(app, account).ok
    assert subjects(client, f"/mail/?folder=f{acme}") == ["Acme invoice", "Lunch?"]
    counts = {e.label: e.unread for e in mailbox.list_folders(db.session.merge(me))}
    assert counts["Clients/Acme"] == 1
    # Every label removed (archived elsewhere): the label folders let it go.
    all_mail[3].gm_labels = ()
    assert run_sync(app, account).ok
    assert subjects(client, f"/mail/?folder=f{acme}") == ["Acme invoice"]
    # A label deleted on the server disappears from the folder list.
    del gmail.state.folders["Clients/Acme"]
    assert run_sync(app, account).ok
    labels = [e.label for e in mailbox.list_folders(db.session.merge(me))]
    assert "Clients/Acme" not in labels


def test_archiving_on_gmail_removes_the_inbox_label(app, gmail, me, make_account, mail_user, login):
    from models import Job, Thread
    from services.preferences import update_preferences
    from tests.queue_helpers import run_pending_jobs

    account = make_account(me, mail_user, imap_port=gmail.port)
    assert run_sync(app, account).ok
    update_preferences(db.session.merge(me), {"archive_in_mailbox": "True"})
    client = login(me)
    lunch = db.session.scalar(select(Message).where(Message.subject == "Lunch?"))
    response = client.post(
        "/mail/threads/actions", data={"action": "archive", "thread_id": [lunch.thread_id]}
    )
    assert response.status_code in (200, 303)
    assert db.session.get(Thread, lunch.thread_id).archived
    assert run_pending_jobs(app) == 1
    assert all(job.state == "done" for job in db.session.scalars(select(Job)))
    # On the server: the \Inbox label is gone, the message stays in All Mail (not moved).
    all_mail = {m.uid: m for m in gmail.state.folders[ALL_MAIL][1]}
    assert all_mail[4].gm_labels == ()
    assert "\\Inbox" in all_mail[1].gm_labels  # others untouched
    assert subjects(client, "/mail/") == ["Acme order", "Old inbox mail"]
    # The next pass agrees, and the conversation stays archived.
    assert run_sync(app, account).ok
    assert db.session.get(Thread, lunch.thread_id).archived
    (location,) = db.session.get(Message, lunch.id).locations
    assert location.folder.name == ALL_MAIL and location.gm_labels == []
    assert subjects(client, "/mail/?folder=archive") == ["Lunch?"]


def test_moving_to_all_mail_on_gmail_removes_the_inbox_label(
    app, gmail, me, make_account, mail_user, login
):
    from models import Thread
    from tests.queue_helpers import run_pending_jobs

    account = make_account(me, mail_user, imap_port=gmail.port)
    assert run_sync(app, account).ok
    client = login(me)
    order = db.session.scalar(select(Message).where(Message.subject == "Acme order"))
    all_mail_id = folder_id(account.id, ALL_MAIL)
    client.post(
        "/mail/threads/actions",
        data={"action": "move", "thread_id": [order.thread_id], "destination": all_mail_id},
    )
    assert not db.session.get(Thread, order.thread_id).in_inbox
    assert run_pending_jobs(app) == 1
    first = next(m for m in gmail.state.folders[ALL_MAIL][1] if m.uid == 1)
    assert first.gm_labels == ("Clients/Acme",)  # still in All Mail, still labelled
    assert gmail.state.folders[ALL_MAIL][1][0] is first
    assert run_sync(app, account).ok
    assert subjects(client, "/mail/") == ["Lunch?", "Old inbox mail"]
    acme = folder_id(account.id, "Clients/Acme")
    assert subjects(client, f"/mail/?folder=f{acme}") == ["Acme invoice", "Acme order"]


def test_an_account_synced_before_label_folders_gets_its_labels_and_inbox(
    app, gmail, me, make_account, mail_user, login
):
    from sqlalchemy import delete, update

    from models import MessageLabel, Thread

    account = make_account(me, mail_user, imap_port=gmail.port)
    assert run_sync(app, account).ok
    # As the previous release left it: no label rows, label folders merely disabled, and
    # Threadline's Inbox empty (it knew no inbox folder on Gmail).
    db.session.execute(delete(MessageLabel))
    db.session.execute(
        update(MailFolder).where(MailFolder.sync_enabled.is_(False)).values(state="initial")
    )
    db.session.execute(update(Thread).values(in_inbox=False))
    db.session.commit()
    assert run_sync(app, account).ok
    client = login(me)
    assert subjects(client, "/mail/") == ["Acme order", "Lunch?", "Old inbox mail"]
    acme = folder_id(account.id, "Clients/Acme")
    assert subjects(client, f"/mail/?folder=f{acme}") == ["Acme invoice", "Acme order"]


def test_labels_with_accents_match_their_folders(app, gmail, me, make_account, mail_user):
    # IMAP sends both the folder name and the label in modified UTF-7 (RFC 3501 5.1.3).
    gmail.state.folders["Kunden/M&APw-ller"] = ("\\HasNoChildren", [])
    gmail.state.folders[ALL_MAIL][1][1].gm_labels = ("Kunden/M&APw-ller",)
    account = make_account(me, mail_user, imap_port=gmail.port)
    assert run_sync(app, account).ok
    entries = {e.label: e for e in mailbox.list_folders(db.session.merge(me))}
    mueller = folder_id(account.id, "Kunden/Müller")
    assert entries["Kunden/Müller"].folder_id == mueller
    query = mailbox.parse_query({"folder": f"f{mueller}"})
    rows = mailbox.list_threads(db.session.merge(me), query).rows
    assert [row.subject for row in rows] == ["Acme invoice"]


def test_the_inbox_label_comes_off_the_users_mail_after_all_mail_is_rebuilt(
    app, gmail, me, make_account, mail_user, login
):
    """All Mail is rebuilt (a new UIDVALIDITY, new UIDs) between archiving and the label
    write-back: the job must not take \\Inbox off the mail that now has the archived mail's
    old UID; it waits for a pass, then finds the archived mail again."""
    from services.preferences import update_preferences
    from tests.queue_helpers import run_pending_jobs

    app.config.update(JOB_BACKOFF_SECONDS=0)
    account = make_account(me, mail_user, imap_port=gmail.port)
    assert run_sync(app, account).ok
    update_preferences(db.session.merge(me), {"archive_in_mailbox": "True"})
    client = login(me)
    lunch = db.session.scalar(select(Message).where(Message.subject == "Lunch?"))
    client.post("/mail/threads/actions", data={"action": "archive", "thread_id": [lunch.thread_id]})
    # The server renumbers All Mail: "Old inbox mail" now has UID 4, "Lunch?" UID 6.
    old = {m.uid: m for m in gmail.state.folders[ALL_MAIL][1]}
    renumbered = [replace(old[uid], uid=new) for uid, new in ((1, 1), (2, 2), (3, 3), (6, 4))]
    renumbered += [replace(old[5], uid=5), replace(old[4], uid=6)]
    gmail.state.folders[ALL_MAIL] = (gmail.state.folders[ALL_MAIL][0], renumbered)
    gmail.state.uidvalidity = 78

    run_pending_jobs(app)
    all_mail = {m.raw: m for m in gmail.state.folders[ALL_MAIL][1]}
    assert "\\Inbox" not in all_mail[old[4].raw].gm_labels  # Lunch?: archived
    assert "\\Inbox" in all_mail[old[6].raw].gm_labels  # Old inbox mail: untouched
    assert run_sync(app, account).ok
    assert subjects(client, "/mail/") == ["Acme order", "Old inbox mail"]
