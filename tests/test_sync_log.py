"""The sync log (which messages each pass added, changed or removed, not only counts) and
the folder check (what the server has and Threadline lacks, and back; "fetch again")."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

import jobs
from extensions import db
from mailsync.store import RunLog
from models import MailFolder, Message, MessageLocation, SyncRun, SyncRunEntry
from tests.queue_helpers import run_pending_jobs
from tests.sync_helpers import raw_message


def entries(run_id: int) -> list[tuple[str, str, int, str]]:
    return [
        (e.kind, e.folder, e.uid, e.subject)
        for e in db.session.scalars(
            select(SyncRunEntry).where(SyncRunEntry.run_id == run_id).order_by(SyncRunEntry.id)
        )
    ]


def last_run(account_id: int) -> SyncRun:
    return db.session.scalar(
        select(SyncRun).where(SyncRun.account_id == account_id).order_by(SyncRun.id.desc())
    )


@pytest.mark.imap
def test_each_run_lists_the_messages_it_added_changed_and_removed(
    app, dovecot, mail_user, make_user, make_account, login
):
    for n in (1, 2, 3):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email, subject=f"Quote {n}"))
    user = make_user()
    account_id = make_account(user, mail_user).id
    assert jobs.run_account_sync(app, account_id).ok
    first = last_run(account_id)
    assert sorted(entries(first.id)) == [
        ("added", "INBOX", 1, "Quote 1"),
        ("added", "INBOX", 2, "Quote 2"),
        ("added", "INBOX", 3, "Quote 3"),
    ]

    dovecot.add_flags(mail_user.email, "INBOX", 2, "\\Flagged")  # changed in another client
    dovecot.expunge(mail_user.email, "INBOX", 3)
    assert jobs.run_account_sync(app, account_id).ok
    second = last_run(account_id)
    assert sorted(entries(second.id)) == [
        ("changed", "INBOX", 2, "Quote 2"),
        ("removed", "INBOX", 3, "Quote 3"),
    ]

    client = login(user)
    status = client.get(f"/settings/accounts/{account_id}").get_data(as_text=True)
    assert f"/settings/accounts/{account_id}/runs/{second.id}" in status
    page = client.get(f"/settings/accounts/{account_id}/runs/{second.id}")
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    rows = re.findall(r"<tr>\s*<td>([^<]+)</td>\s*<td>(.*?)</td>", body, re.S)
    assert [(what, re.sub(r"<[^>]+>", "", subject).strip()) for what, subject in rows] == [
        ("Flags changed", "Quote 2"),
        ("Removed from folder", "Quote 3"),
    ]
    assert "/mail/threads/" in rows[0][1]  # the changed mail opens its conversation


def test_a_run_keeps_its_first_entries_and_counts_the_rest(
    app, make_user, make_stored_account, login
):
    log = RunLog(limit=2)
    for uid in (1, 2, 3, 4, 5):
        log.add("added", 7, uid, uid)
    assert [uid for _kind, _folder, uid, _message in log.entries] == [1, 2] and log.more == 3

    user = make_user()
    account = make_stored_account(user)
    run = SyncRun(account_id=account.id, new_count=5000, entries_not_kept=4800)
    db.session.add(run)
    db.session.commit()
    body = login(user).get(f"/settings/accounts/{account.id}/runs/{run.id}").get_data(as_text=True)
    assert "5000 new" in body and "4800 more, not listed" in body


def test_another_users_run_is_not_found(app, make_user, make_stored_account, login):
    owner, other = make_user(), make_user()
    account = make_stored_account(owner)
    foreign = make_stored_account(other)
    run = SyncRun(account_id=foreign.id)
    db.session.add(run)
    db.session.commit()
    client = login(owner)
    # The run belongs to another account: not found, even under one's own account.
    assert client.get(f"/settings/accounts/{account.id}/runs/{run.id}").status_code == 404
    assert client.get(f"/settings/accounts/{foreign.id}/runs/{run.id}").status_code == 404


@pytest.mark.imap
def test_a_folder_compared_with_the_server_lists_lost_mail_and_fetches_it_again(
    app, dovecot, mail_user, make_user, make_account, login
):
    for n in (1, 2, 3, 4):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email, subject=f"Order {n}"))
    user = make_user()
    account_id = make_account(user, mail_user).id
    assert jobs.run_account_sync(app, account_id).ok
    inbox = db.session.scalar(
        select(MailFolder).where(MailFolder.account_id == account_id, MailFolder.name == "INBOX")
    )
    inbox_id = inbox.id
    # Silent loss, as a bug would cause: UID 2 vanished from Threadline's store...
    lost = db.session.scalar(
        select(MessageLocation).where(
            MessageLocation.folder_id == inbox_id, MessageLocation.uid == 2
        )
    )
    db.session.delete(db.session.get(Message, lost.message_id))
    db.session.commit()
    # ...and UID 4 left the server since the last sync.
    dovecot.expunge(mail_user.email, "INBOX", 4)

    client = login(user)
    check_url = f"/settings/accounts/{account_id}/folders/{inbox_id}/check"
    assert check_url in client.get(f"/settings/accounts/{account_id}").get_data(as_text=True)
    assert "not been compared" in client.get(check_url).get_data(as_text=True)
    queued = client.post(check_url, follow_redirects=True).get_data(as_text=True)
    assert "Comparing with the server" in queued and 'hx-trigger="every 2s"' in queued
    run_pending_jobs(app)

    page = client.get(check_url).get_data(as_text=True)
    assert "every 2s" not in page
    assert "On the server: 3 in range; in Threadline: 2 of them." in page
    assert "On the server, missing in Threadline (1)" in page
    assert re.search(r"<td>2</td><td>Order 2</td>", page)
    assert "In Threadline, gone from the server (1)" in page
    assert re.search(r"<td>4</td><td>Order 4</td>", page)

    again = client.post(f"{check_url.rsplit('/', 1)[0]}/fetch-again", follow_redirects=True)
    assert "1 messages will be fetched again" in again.get_data(as_text=True)
    run_pending_jobs(app)  # the sync it queued
    subjects = db.session.scalars(
        select(Message.subject)
        .join(MessageLocation, MessageLocation.message_id == Message.id)
        .where(MessageLocation.folder_id == inbox_id)
    ).all()
    assert sorted(subjects) == ["Order 1", "Order 2", "Order 3"]

    client.post(check_url)
    run_pending_jobs(app)
    page = client.get(check_url).get_data(as_text=True)
    assert "On the server: 3 in range; in Threadline: 3 of them." in page
    assert "Nothing: Threadline has every message of the synced range." in page
    assert "Nothing: every message Threadline keeps here is still on the server." in page


@pytest.mark.imap
def test_a_comparison_that_cannot_reach_the_server_says_so(
    app, dovecot, mail_user, make_user, make_account, login
):
    dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
    user = make_user()
    account = make_account(user, mail_user)
    account_id = account.id
    assert jobs.run_account_sync(app, account_id).ok
    folder_id = db.session.scalar(select(MailFolder.id).where(MailFolder.account_id == account_id))
    dovecot.set_password(mail_user.email, "changed-elsewhere-1")

    client = login(user)
    check_url = f"/settings/accounts/{account_id}/folders/{folder_id}/check"
    client.post(check_url)
    run_pending_jobs(app)
    page = client.get(check_url).get_data(as_text=True)
    failure = re.search(r"The comparison failed:[^<]*", page).group(0)
    assert "rejected the username or password" in failure and not failure.endswith("..")
    assert "Compare again" in page


@pytest.mark.imap
def test_a_comparison_with_a_renumbered_folder_says_so_instead_of_listing_everything(
    app, dovecot, mail_user, make_user, make_account, login
):
    for n in (1, 2):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))
    user = make_user()
    account_id = make_account(user, mail_user).id
    assert jobs.run_account_sync(app, account_id).ok
    folder_id = db.session.scalar(
        select(MailFolder.id).where(MailFolder.account_id == account_id, MailFolder.name == "INBOX")
    )
    dovecot.set_uidvalidity(mail_user.email, "INBOX", 4242)

    client = login(user)
    check_url = f"/settings/accounts/{account_id}/folders/{folder_id}/check"
    client.post(check_url)
    run_pending_jobs(app)
    page = client.get(check_url).get_data(as_text=True)
    assert "renumbered this folder" in page and "Compare again" in page
    assert "missing in Threadline" not in page
    assert jobs.run_account_sync(app, account_id).ok  # the pass takes the new numbering
    client.post(check_url)
    run_pending_jobs(app)
    page = client.get(check_url).get_data(as_text=True)
    assert "On the server: 2 in range; in Threadline: 2 of them." in page
