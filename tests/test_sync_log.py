"""The sync log: which messages each pass added, changed or removed, not only counts."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

import jobs
from extensions import db
from mailsync.store import RunLog
from models import SyncRun, SyncRunEntry
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
