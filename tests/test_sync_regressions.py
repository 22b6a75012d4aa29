"""Engine bugs the soak test (tests/test_sync_soak.py) ran into, each pinned down on its own
against the real Dovecot."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from extensions import db
from mailsync import sync as sync_module
from models import FailedUid, Message, MessageLocation
from tests.sync_helpers import command_log, folder_named, locations, raw_message, run_sync

pytestmark = pytest.mark.imap


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


def stored_sizes(account_id: int, folder: str) -> dict[int, int]:
    """{uid: size of the stored message} of a folder's locations."""
    f = folder_named(account_id, folder)
    rows = db.session.execute(
        select(MessageLocation.uid, Message.size)
        .join(Message, Message.id == MessageLocation.message_id)
        .where(MessageLocation.folder_id == f.id)
    )
    return dict(rows.all())


def server_sizes(dovecot, mail_user, folder: str) -> dict[int, int]:
    out = dovecot.doveadm(
        "-f", "tab", "fetch", "-u", mail_user.email, "uid size.virtual", "mailbox", folder, "ALL"
    )
    return {int(u): int(s) for u, s in (line.split("\t") for line in out.splitlines()[1:])}


def test_a_reset_that_puts_other_mail_with_the_same_headers_at_the_same_uids_is_real(
    app, dovecot, mail_user, account
):
    """A folder rebuilt with edited copies of its mail (same headers, other content) at the
    same UIDs under a new UIDVALIDITY is a real reset: the sample check compares sizes too."""
    for n in range(1, 6):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email), "Archive")
    assert run_sync(app, account).ok
    dovecot.delete_folder(mail_user.email, "Archive")
    dovecot.create_folder(mail_user.email, "Archive")
    dovecot.set_uidvalidity(mail_user.email, "Archive", 4242)
    for n in range(1, 6):
        edited = raw_message(n, to=mail_user.email, body=f"Edited copy of {n}, longer.\r\n")
        dovecot.deliver(mail_user.email, edited, "Archive")
    assert run_sync(app, account).ok
    assert stored_sizes(account.id, "Archive") == server_sizes(dovecot, mail_user, "Archive")


def expunge_before_body_fetch(monkeypatch, dovecot, mail_user, folder: str, uid: int) -> None:
    """Expunge `uid` (as another client would) between the metadata and the body FETCH, so
    the server has no body for it and the pass records it as a failed UID."""
    original = sync_module._fetch_bodies

    def fetch_bodies(conn, batch):
        if any(meta.uid == uid for meta in batch):
            dovecot.expunge(mail_user.email, folder, uid)
        return original(conn, batch)

    monkeypatch.setattr(sync_module, "_fetch_bodies", fetch_bodies)


@pytest.mark.parametrize("how", ["uidvalidity-reset", "folder-gone"])
def test_new_mail_at_a_uid_that_failed_before_a_reset_is_fetched(
    app, dovecot, mail_user, account, monkeypatch, how
):
    dovecot.create_folder(mail_user.email, "Projects")  # not auto-created, unlike Archive
    for n in range(1, 6):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email), "Projects")
    with monkeypatch.context() as patch:
        expunge_before_body_fetch(patch, dovecot, mail_user, "Projects", 3)
        assert run_sync(app, account).ok
    projects = folder_named(account.id, "Projects")
    assert db.session.scalar(select(FailedUid.uid).where(FailedUid.folder_id == projects.id)) == 3
    dovecot.delete_folder(mail_user.email, "Projects")
    if how == "folder-gone":
        assert run_sync(app, account).ok  # the pass sees the folder gone
    dovecot.create_folder(mail_user.email, "Projects")
    dovecot.set_uidvalidity(mail_user.email, "Projects", 4343)
    for n in range(11, 16):  # UIDs 1 to 5 again, other mail
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email), "Projects")
    assert run_sync(app, account).ok
    assert [loc.uid for loc in locations(account.id, "Projects")] == [1, 2, 3, 4, 5]
    assert stored_sizes(account.id, "Projects") == server_sizes(dovecot, mail_user, "Projects")


def test_mail_arriving_after_the_poll_snapshot_needs_no_reconcile(
    app, dovecot, mail_user, account, monkeypatch
):
    """Mail delivered between EXAMINE and the fetch of new UIDs is fetched with the rest; the
    count check must expect it, not take it for an unexplained change (a needless UID SEARCH
    of the whole folder) nor leave a stale server count that costs the next pass one too."""
    for n in range(1, 4):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))
    assert run_sync(app, account).ok
    dovecot.deliver(mail_user.email, raw_message(4, to=mail_user.email))  # before the pass
    original = sync_module.AccountSync.fetch_new

    def fetch_new(self, folder_id, last_seen):
        if folder_named(account.id, "INBOX").id == folder_id:
            dovecot.deliver(mail_user.email, raw_message(5, to=mail_user.email))  # after EXAMINE
            self.connect().noop()  # Dovecot shows the session new mail at its next sync point
        return original(self, folder_id, last_seen)

    with monkeypatch.context() as patch:
        patch.setattr(sync_module.AccountSync, "fetch_new", fetch_new)
        with command_log(monkeypatch) as log:
            assert run_sync(app, account).ok
    assert log.count("UID SEARCH") == 0
    assert [loc.uid for loc in locations(account.id)] == [1, 2, 3, 4, 5]
    assert folder_named(account.id, "INBOX").server_message_count == 5
    with command_log(monkeypatch) as log:
        assert run_sync(app, account).ok
    assert log.count("UID SEARCH") == 0


def test_mail_arriving_during_the_first_sync_needs_no_reconcile_after_it(
    app, dovecot, mail_user, account, monkeypatch
):
    for n in range(1, 4):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))
    original = sync_module.AccountSync.backfill

    def backfill(self, folder_id, snapshot):
        if folder_named(account.id, "INBOX").id == folder_id:
            dovecot.deliver(mail_user.email, raw_message(4, to=mail_user.email))  # after EXAMINE
        return original(self, folder_id, snapshot)

    with monkeypatch.context() as patch:
        patch.setattr(sync_module.AccountSync, "backfill", backfill)
        assert run_sync(app, account).ok
    inbox = folder_named(account.id, "INBOX")
    assert [loc.uid for loc in locations(account.id)] == [1, 2, 3, 4]
    assert inbox.server_message_count == 4 and inbox.server_not_stored == 0
    with command_log(monkeypatch) as log:
        assert run_sync(app, account).ok
    assert log.count("UID SEARCH") == 0


def test_a_poll_stopped_after_storing_a_move_keeps_its_count_in_step_with_the_watermark(
    app, dovecot, mail_user, account, monkeypatch
):
    """A pass that stops (budget, cut, kill) after the watermark passed some new UIDs: the
    folder's count checkpoint must have moved with it, or the next pass finds the count off
    by those UIDs and reconciles the whole folder for nothing."""
    dovecot.create_folder(mail_user.email, "Projects")
    for n in range(1, 4):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))
    dovecot.deliver(mail_user.email, raw_message(10, to=mail_user.email), "Projects")
    assert run_sync(app, account).ok
    dovecot.move(mail_user.email, "INBOX", 1, "Projects")  # Projects UID 2: a stored mail
    dovecot.deliver(mail_user.email, raw_message(11, to=mail_user.email), "Projects")  # UID 3
    projects_id = folder_named(account.id, "Projects").id
    original_download = sync_module.AccountSync._download

    def download(self, folder_id, metas, on_committed):
        if folder_id == projects_id and metas:
            raise sync_module.BudgetExceeded()  # the move is linked; the new mail never comes
        return original_download(self, folder_id, metas, on_committed)

    with monkeypatch.context() as patch:
        patch.setattr(sync_module.AccountSync, "_download", download)
        assert not run_sync(app, account).complete
    assert folder_named(account.id, "Projects").last_seen_uid == 2
    reconciled = []
    original_reconcile = sync_module.AccountSync.reconcile

    def reconcile(self, folder_id, guard, snapshot):
        reconciled.append(folder_id)
        return original_reconcile(self, folder_id, guard, snapshot)

    with monkeypatch.context() as patch:
        patch.setattr(sync_module.AccountSync, "reconcile", reconcile)
        assert run_sync(app, account).complete
    assert projects_id not in reconciled
    assert [loc.uid for loc in locations(account.id, "Projects")] == [1, 2, 3]
    assert stored_sizes(account.id, "Projects") == server_sizes(dovecot, mail_user, "Projects")
