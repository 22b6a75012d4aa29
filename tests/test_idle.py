"""Push with IMAP IDLE (mailsync/idle.py): the worker's watchers on a real Dovecot.

The worker runs as a real process with its scheduled polling set to once an hour, so mail
that shows within 5 s came through IDLE. The watchers' own behaviour (servers without IDLE,
a rejected IDLE, dropped connections, re-issuing, following the account list) is tested on
Watcher / IdleWatchers in this process.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from sqlalchemy import select

from extensions import db
from mailsync import idle
from models import SYNC_PAUSED, SYNC_RUNNING, MailAccount, Message
from services import accounts as account_service
from services.credentials import secret_box
from tests.servers.dovecot import DovecotServer, ServerProfile, make_certificates
from tests.servers.fake_imap import FakeIMAPServer, FakeState, Quirks
from tests.servers.proxy import CuttingProxy
from tests.sync_helpers import raw_message
from tests.test_jobs import environment, flask_process, runs, stop, subjects, wait_for

pytestmark = [pytest.mark.imap, pytest.mark.timing]  # push within 5 s: wall-clock bounds, run alone

PUSH_SECONDS = 5  # the product's promise: changes made elsewhere show within 5 s


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


@pytest.fixture(scope="module")
def dovecot_without_idle():
    """A Dovecot that does not advertise IDLE (like some providers' servers)."""
    server = DovecotServer(ServerProfile("no-idle", without=("IDLE",))).start()
    yield server
    server.stop()


def fresh(account_id: int) -> MailAccount:
    db.session.rollback()  # a fresh snapshot: the worker wrote the rows
    return db.session.get(MailAccount, account_id)


def pushing(account_id: int) -> bool:
    return fresh(account_id).idle_seen_at is not None


def message(account_id: int, subject: str) -> Message | None:
    db.session.rollback()
    return db.session.scalar(
        select(Message).where(Message.account_id == account_id, Message.subject == subject)
    )


def seconds_until(condition, *, limit: float = 30) -> float:
    """Return how long `condition` took to hold (polled every 20 ms)."""
    began = time.monotonic()
    wait_for(condition, seconds=limit)
    return time.monotonic() - began


class Changes:
    """An on_change callback that counts the calls per account."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, account_id: int) -> None:
        with self.lock:
            self.calls.append(account_id)

    def count(self) -> int:
        with self.lock:
            return len(self.calls)


def settings(**overrides) -> idle.IdleSettings:
    values = dict(
        enabled=True, max_connections=50, renew_seconds=600, timeout_seconds=10, refresh_seconds=1
    )
    values.update(overrides)
    return idle.IdleSettings(**values)


def watcher(app, account, changes, **overrides) -> idle.Watcher:
    return idle.Watcher(
        app, account.id, idle.account_fingerprint(account), settings(**overrides), changes
    ).start()


def with_idle_capability(account: MailAccount) -> None:
    """Record the capabilities a first sync would have (the watchers read them)."""
    account.capabilities = ["IMAP4rev1", "IDLE", "CONDSTORE"]
    db.session.commit()


# --------------------------------------------------------------------------- the worker


@pytest.mark.slow(seconds=25)
def test_worker_pushes_new_mail_expunges_and_flag_changes_within_five_seconds(
    app, account, dovecot, mail_user, login
):
    dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
    env = environment(
        app, SYNC_START_DELAY_SECONDS=0, SYNC_INTERVAL_SECONDS=3600, IDLE_REFRESH_SECONDS=0.5
    )
    worker = flask_process(env, "worker")
    try:
        # The first (scheduled) pass records the capabilities; the watcher then connects.
        wait_for(lambda: subjects(account.id) == ["Message 1"], seconds=60)
        wait_for(lambda: pushing(account.id), seconds=30)
        client = login(account.user)
        page = client.get(f"/settings/accounts/{account.id}").get_data(as_text=True)
        assert "Pushed by the server (IMAP IDLE)" in page
        assert "1 live IMAP IDLE connection held by the worker" in page

        # New mail: from `doveadm save` to the row, and to the Mail tab.
        dovecot.deliver(mail_user.email, raw_message(2, to=mail_user.email))
        assert seconds_until(lambda: message(account.id, "Message 2")) < PUSH_SECONDS
        assert "Message 2" in client.get("/mail/").get_data(as_text=True)

        # A flag change made in another client.
        uid = dovecot.uids(mail_user.email)[-1]
        dovecot.add_flags(mail_user.email, "INBOX", uid, "\\Flagged")
        assert seconds_until(lambda: message(account.id, "Message 2").is_flagged) < PUSH_SECONDS

        # An expunge made in another client.
        dovecot.expunge(mail_user.email, "INBOX", uid)
        assert (
            seconds_until(lambda: message(account.id, "Message 2").deleted_at is not None)
            < PUSH_SECONDS
        )
        assert "Message 2" not in client.get("/mail/").get_data(as_text=True)

        # SIGTERM closes the IDLE connection and clears its record.
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=20)
        assert worker.returncode == 0, output
        assert not pushing(account.id)
        page = client.get(f"/settings/accounts/{account.id}").get_data(as_text=True)
        assert "0 live IMAP IDLE connections" in page
    finally:
        stop(worker)


def stored_count(account_id: int) -> int:
    db.session.rollback()
    return len(subjects(account_id))


@pytest.fixture
def slow_big_mailbox(app, make_user, make_account, dovecot):
    """An account whose first sync takes a while: 120 messages, one per FETCH, each answer
    held back 0.1 s by a slow link (so >= 12 s however fast the machine is)."""
    mail_user = dovecot.add_user("big-and-slow@mail.test")
    dovecot.fill_inbox(
        mail_user.email, [raw_message(1000 + n, to=mail_user.email) for n in range(120)]
    )
    proxy = CuttingProxy(dovecot.host, dovecot.ssl_port, cut_after=10**12, cuts=0, delay_down=0.1)
    yield make_account(make_user(), mail_user, imap_port=proxy.port)
    proxy.close()


@pytest.mark.slow(seconds=40)
def test_pushed_mail_does_not_wait_for_another_accounts_long_first_sync(
    app, account, dovecot, mail_user, slow_big_mailbox
):
    """The worker has one job loop: a push for one account stops another account's long
    pass at its next batch (that pass is queued again and goes on afterwards)."""
    env = environment(
        app,
        SYNC_START_DELAY_SECONDS=0,
        SYNC_INTERVAL_SECONDS=3600,
        IDLE_REFRESH_SECONDS=0.5,
        SYNC_BATCH_MESSAGES=1,
        SYNC_PARSE_WORKERS=0,
    )
    worker = flask_process(env, "worker")
    try:
        # Both first passes are queued at start, this account's (lower id) first.
        wait_for(lambda: pushing(account.id), seconds=60)
        wait_for(lambda: stored_count(slow_big_mailbox.id) > 0, seconds=60)
        dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
        assert seconds_until(lambda: message(account.id, "Message 1")) < PUSH_SECONDS
        assert stored_count(slow_big_mailbox.id) < 120  # the long pass was still going
        # The pass that made way goes on at once, not at the next (hourly) scheduled tick.
        wait_for(lambda: stored_count(slow_big_mailbox.id) == 120, seconds=90)
    finally:
        stop(worker)


@pytest.mark.slow(seconds=30)
def test_a_first_sync_longer_than_one_pass_goes_on_without_waiting_for_the_schedule(
    app, slow_big_mailbox
):
    env = environment(
        app,
        SYNC_START_DELAY_SECONDS=0,
        SYNC_INTERVAL_SECONDS=3600,
        SYNC_BUDGET_SECONDS=3,
        SYNC_BATCH_MESSAGES=1,
        SYNC_PARSE_WORKERS=0,
    )
    worker = flask_process(env, "worker")
    try:
        wait_for(lambda: stored_count(slow_big_mailbox.id) == 120, seconds=90)
        assert len(runs(slow_big_mailbox.id)) >= 4  # several 3-second passes, back to back
    finally:
        stop(worker)


@pytest.mark.slow(seconds=20)
def test_a_server_without_idle_is_polled_and_nothing_looks_wrong(
    app, make_user, make_account, dovecot_without_idle, login
):
    mail_user = dovecot_without_idle.add_user("noidle@mail.test")
    account = make_account(
        make_user(),
        mail_user,
        imap_port=dovecot_without_idle.ssl_port,
        ca_cert_pem=dovecot_without_idle.ca_file.read_text(),
    )
    env = environment(
        app, SYNC_START_DELAY_SECONDS=0, SYNC_INTERVAL_SECONDS=2, IDLE_REFRESH_SECONDS=0.5
    )
    worker = flask_process(env, "worker")
    try:
        wait_for(lambda: fresh(account.id).last_success_at is not None, seconds=60)
        assert "IDLE" not in fresh(account.id).capabilities
        dovecot_without_idle.deliver(mail_user.email, raw_message(1, to=mail_user.email))
        wait_for(lambda: message(account.id, "Message 1"), seconds=30)  # the polling
        assert not pushing(account.id)
        page = login(account.user).get(f"/settings/accounts/{account.id}").get_data(as_text=True)
        assert "Checked by the regular sync" in page
        assert "0 live IMAP IDLE connections" in page
        assert fresh(account.id).last_error is None
        assert "Last error" not in page
    finally:
        stop(worker)


# --------------------------------------------------------------------------- one watcher


def test_a_watcher_reports_each_kind_of_change(app, account, dovecot, mail_user):
    with_idle_capability(account)
    changes = Changes()
    watching = watcher(app, account, changes)
    try:
        wait_for(watching.live.is_set, seconds=15)
        assert pushing(account.id)
        dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
        wait_for(lambda: changes.count() >= 1, seconds=PUSH_SECONDS)
        (uid,) = dovecot.uids(mail_user.email)
        before = changes.count()
        dovecot.add_flags(mail_user.email, "INBOX", uid, "\\Seen")
        wait_for(lambda: changes.count() > before, seconds=PUSH_SECONDS)
        before = changes.count()
        dovecot.expunge(mail_user.email, "INBOX", uid)
        wait_for(lambda: changes.count() > before, seconds=PUSH_SECONDS)
        assert set(changes.calls) == {account.id}
    finally:
        watching.stop()
        watching.join(10)
    assert not watching.thread.is_alive()


def test_idle_is_reissued_on_the_same_connection_at_the_configured_interval(
    app, account, dovecot, mail_user
):
    with_idle_capability(account)
    changes = Changes()
    watching = watcher(app, account, changes, renew_seconds=1)
    try:
        wait_for(watching.live.is_set, seconds=15)
        began = time.monotonic()
        wait_for(lambda: watching.renewals >= 3, seconds=15)
        elapsed = time.monotonic() - began
        assert 2.0 <= elapsed < 6.0, elapsed  # about one a second, not more often
        assert watching.connections == 1  # renewed, not reconnected
        # Still listening after the renewals.
        dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
        wait_for(lambda: changes.count() >= 1, seconds=PUSH_SECONDS)
    finally:
        watching.stop()
        watching.join(10)


def test_a_kicked_connection_reconnects_and_catches_up(
    app, account, dovecot, mail_user, monkeypatch
):
    monkeypatch.setattr(idle, "BACKOFF_BASE_SECONDS", 0.2)
    with_idle_capability(account)
    changes = Changes()
    watching = watcher(app, account, changes)
    try:
        wait_for(watching.live.is_set, seconds=15)
        dovecot.doveadm("kick", mail_user.email)  # the server says BYE and hangs up
        wait_for(lambda: watching.connections == 2 and watching.live.is_set(), seconds=15)
        # A pass is queued after reconnecting, for what changed while it was down.
        assert changes.count() == 1
        assert pushing(account.id)
        dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
        wait_for(lambda: changes.count() >= 2, seconds=PUSH_SECONDS)
    finally:
        watching.stop()
        watching.join(10)


def test_a_connection_cut_without_goodbye_reconnects(app, account, dovecot, mail_user, monkeypatch):
    monkeypatch.setattr(idle, "BACKOFF_BASE_SECONDS", 0.2)
    proxy = CuttingProxy(dovecot.host, dovecot.ssl_port, cut_after=10**9, cuts=0)
    account.imap_port = proxy.port
    with_idle_capability(account)
    changes = Changes()
    watching = watcher(app, account, changes)
    try:
        wait_for(watching.live.is_set, seconds=15)
        proxy.cut_all()  # the network drops: no BYE, the socket just ends
        wait_for(lambda: watching.connections == 2 and watching.live.is_set(), seconds=15)
        dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
        wait_for(lambda: changes.count() >= 2, seconds=PUSH_SECONDS)
    finally:
        watching.stop()
        watching.join(10)
        proxy.close()


def test_a_server_that_rejects_idle_gets_no_push_and_no_error(app, account, tmp_path):
    certs = make_certificates(tmp_path)
    # The fake server advertises IDLE but answers it with a tagged OK at once (SYNC.md §4.7:
    # "some servers reject IDLE with an unexpected response").
    state = FakeState(quirks=Quirks(capabilities="IMAP4rev1 ID UIDPLUS IDLE"))
    server = FakeIMAPServer(state, certs.cert_file, certs.key_file)
    account.imap_host, account.imap_port = "127.0.0.1", server.port
    account.ca_cert_pem = certs.ca_file.read_text()
    with_idle_capability(account)
    changes = Changes()
    watching = watcher(app, account, changes)
    try:
        wait_for(lambda: any(" IDLE" in command for command in state.commands), seconds=15)
        time.sleep(0.5)  # what it does next: nothing that a user sees
        assert not watching.live.is_set() and watching.connections == 0
        assert watching.thread.is_alive()  # waiting to look again, not crashed
        assert not pushing(account.id) and fresh(account.id).last_error is None
        assert changes.count() == 0
    finally:
        watching.stop()
        watching.join(10)
        server.stop()


def test_a_rejected_password_is_not_tried_again_and_again(app, account, monkeypatch):
    """Logging in with a wrong password in a loop can lock a mailbox (SYNC.md §6): the watcher
    waits a long while, and the sync pass is what tells the user."""
    monkeypatch.setattr(idle, "BACKOFF_BASE_SECONDS", 0.05)
    attempts = []
    real_connect = idle.imap.connect

    def counting_connect(*args, **kwargs):
        attempts.append(time.monotonic())
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(idle.imap, "connect", counting_connect)
    account.password_encrypted = secret_box(app).encrypt("not the password")
    with_idle_capability(account)
    watching = watcher(app, account, Changes())
    try:
        wait_for(lambda: len(attempts) == 1, seconds=10)
        time.sleep(1.5)  # a network-error backoff would have tried 4-5 times by now
        assert len(attempts) == 1 and not watching.live.is_set()
        assert fresh(account.id).last_error is None  # the watcher never writes account state
    finally:
        watching.stop()
        watching.join(10)


# --------------------------------------------------------------------------- the account list


def test_watchers_follow_the_accounts_state_credentials_and_the_limit(
    app, make_user, make_account, dovecot, login
):
    user = make_user()
    first = make_account(user, dovecot.add_user("watch-a@mail.test"))
    second = make_account(user, dovecot.add_user("watch-b@mail.test"))
    never_synced = make_account(user, dovecot.add_user("watch-c@mail.test"))  # no capabilities
    with_idle_capability(first)
    with_idle_capability(second)
    app.config["IDLE_MAX_CONNECTIONS"] = 1
    watchers = idle.IdleWatchers(app, Changes())
    try:
        watchers.refresh()
        assert set(watchers.watchers) == {first.id}  # the limit
        wait_for(lambda: watchers.live_count() == 1, seconds=15)

        watchers.settings = settings(max_connections=50)
        watchers.refresh()
        assert set(watchers.watchers) == {first.id, second.id}
        assert never_synced.id not in watchers.watchers
        wait_for(lambda: watchers.live_count() == 2, seconds=15)
        watchers.refresh()  # renews the live ones' record
        page = login(user).get(f"/settings/accounts/{first.id}").get_data(as_text=True)
        assert "2 live IMAP IDLE connections held by the worker" in page

        # Paused: the watcher goes, and so does its record.
        account_service.pause_account(user, fresh(second.id))
        watchers.refresh()
        assert set(watchers.watchers) == {first.id}
        wait_for(lambda: not pushing(second.id), seconds=10)
        account = fresh(second.id)
        account.sync_state = SYNC_RUNNING
        db.session.commit()

        # New credentials: the old watcher is replaced by one with the new password.
        old = watchers.watchers[first.id]
        account = fresh(first.id)
        account.password_encrypted = secret_box(app).encrypt("mail-password-1")  # a new token
        db.session.commit()
        watchers.refresh()
        assert watchers.watchers[first.id] is not old and old.stopped.is_set()

        # Needs re-authentication, or removed: no watcher.
        account = fresh(first.id)
        account.sync_state = "needs_reauth"
        db.session.commit()
        account_service.remove_account(user, fresh(second.id), keep_mail=True, app=app)
        watchers.refresh()
        assert watchers.watchers == {}
    finally:
        watchers.stop()
    assert fresh(first.id).idle_seen_at is None and fresh(second.id).idle_seen_at is None
    assert all(not w.thread.is_alive() for w in watchers.retired)
    assert fresh(second.id).sync_state == SYNC_PAUSED  # removed accounts stay paused


def test_a_dead_workers_connections_are_not_counted(app, account):
    """The record is renewed by the worker; one it stopped renewing is not shown as live."""
    from datetime import UTC, datetime, timedelta

    account.idle_seen_at = datetime.now(UTC) - timedelta(seconds=5 * 30)
    db.session.commit()
    assert account_service.idle_connection_count(refresh_seconds=30) == 0
    account.idle_seen_at = datetime.now(UTC)
    db.session.commit()
    assert account_service.idle_connection_count(refresh_seconds=30) == 1
    assert account_service.push_status(account, refresh_seconds=30)["live"]


def test_mailbox_changed_ignores_keepalives():
    assert not idle.mailbox_changed([(b"OK", b"Still here")])
    assert idle.mailbox_changed([(3, b"EXISTS")])
    assert idle.mailbox_changed([(2, b"EXPUNGE")])
    assert idle.mailbox_changed([(1, b"FETCH", (b"FLAGS", (b"\\Seen",)))])
    assert idle.said_bye([(b"BYE", b"Server shutting down")])


def test_a_renewed_oauth2_token_keeps_the_watcher_a_new_password_replaces_it():
    def account(auth_type: str, secret: bytes) -> MailAccount:
        return MailAccount(
            imap_host="imap.example.com",
            imap_port=993,
            imap_security="ssl",
            username="ann@example.com",
            auth_type=auth_type,
            password_encrypted=secret,
        )

    renewed = idle.account_fingerprint(account("xoauth2", b"token-2"))
    assert idle.account_fingerprint(account("xoauth2", b"token-1")) == renewed
    changed = idle.account_fingerprint(account("password", b"password-2"))
    assert idle.account_fingerprint(account("password", b"password-1")) != changed
