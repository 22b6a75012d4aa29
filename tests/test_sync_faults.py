"""Sync under faults: auth failure, dropped connections, concurrent runs; CLI and corpus."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select, text, update

import jobs
from extensions import db
from mailsync.blobstore import BlobStore
from mailsync.parse import parse_message
from mailsync.sync import CONNECTION_RETRIES
from models import (
    SYNC_NEEDS_REAUTH,
    SYNC_RUNNING,
    MailAccount,
    Message,
    MessageLocation,
    SyncLease,
    SyncRun,
    User,
)
from services.credentials import secret_box
from tests.as_nobody import NOBODY, needs_root, run_cli_as_nobody
from tests.conftest import ON_POSTGRESQL
from tests.queue_helpers import run_scheduled_passes
from tests.servers.proxy import CuttingProxy
from tests.sync_helpers import (
    command_log,
    folder_named,
    locations,
    message_count,
    raw_message,
    run_sync,
)

pytestmark = pytest.mark.imap


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


def deliver(dovecot, mail_user, numbers, **kwargs):
    kwargs.setdefault("to", mail_user.email)
    for n in numbers:
        dovecot.deliver(mail_user.email, raw_message(n, **kwargs))


def test_auth_failure_stops_sync_until_new_password(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, range(1, 4))
    assert jobs.run_account_sync(app, account.id).ok
    dovecot.set_password(mail_user.email, "changed-password-2")
    deliver(dovecot, mail_user, range(4, 6))
    result = jobs.run_account_sync(app, account.id)
    assert result.error and result.error_kind == "auth_failed"
    db.session.expire_all()
    account = db.session.get(MailAccount, account.id)
    assert account.sync_state == SYNC_NEEDS_REAUTH
    assert "password" in account.last_error
    assert account.id not in jobs.due_account_ids()
    runs = db.session.scalar(select(func.count()).select_from(SyncRun))
    run_scheduled_passes(app)  # the scheduled tick skips it: no login attempt, no run
    assert db.session.scalar(select(func.count()).select_from(SyncRun)) == runs

    account.password_encrypted = secret_box(app).encrypt("changed-password-2")
    account.sync_state = SYNC_RUNNING
    db.session.commit()
    run_scheduled_passes(app)
    db.session.expire_all()
    account = db.session.get(MailAccount, account.id)
    assert account.sync_state == SYNC_RUNNING and account.last_success_at is not None
    assert message_count(account.id) == 5


def test_unreadable_stored_password_asks_to_enter_it_again(app, account, login):
    """R29: a corrupted token (or a dropped key) is a password to re-enter, not a retry loop."""
    token = bytearray(account.password_encrypted)
    token[20] ^= 0x01
    account.password_encrypted = bytes(token)
    db.session.commit()
    result = jobs.run_account_sync(app, account.id)
    assert result.error_kind == "auth_failed"
    db.session.expire_all()
    account = db.session.get(MailAccount, account.id)
    assert account.sync_state == SYNC_NEEDS_REAUTH
    assert "Enter the password again" in account.last_error
    assert account.id not in jobs.due_account_ids()
    page = login(db.session.get(User, account.user_id)).get(f"/settings/accounts/{account.id}")
    assert page.status_code == 200
    assert f"/settings/accounts/{account.id}/reauth" in page.get_data(as_text=True)


def test_transient_failure_backs_off(app, account):
    account.imap_port = 1  # nothing listens there
    db.session.commit()
    result = jobs.run_account_sync(app, account.id)
    assert result.error
    db.session.expire_all()
    account = db.session.get(MailAccount, account.id)
    assert account.sync_state == SYNC_RUNNING
    assert account.consecutive_failures == 1 and account.backoff_until is not None
    assert account.id not in jobs.due_account_ids()
    run = db.session.scalar(select(SyncRun))
    assert run.finished_at and run.error
    assert 30 <= jobs.backoff_seconds(1) <= 41 and jobs.backoff_seconds(20) <= 30 * 60 + 10


def test_connection_cut_mid_fetch_is_retried_without_loss(
    app, dovecot, mail_user, account, monkeypatch
):
    padding = "x" * 60 + "\r\n"
    for n in range(1, 41):
        dovecot.deliver(
            mail_user.email, raw_message(n, to=mail_user.email, body=padding * 800)
        )  # ~50 KB each, so the cut lands inside a body FETCH
    proxy = CuttingProxy(dovecot.host, dovecot.ssl_port, cut_after=600_000)
    try:
        account.imap_port = proxy.port
        db.session.commit()
        with command_log(monkeypatch) as log:
            result = run_sync(app, account)
        assert proxy.cut_count == 1
        assert result.ok, result.error
        assert log.count("LOGIN") == 2  # the broken connection was discarded, not reused
    finally:
        proxy.close()
    assert message_count(account.id) == 40
    assert len(locations(account.id)) == 40
    assert db.session.scalar(select(func.count()).select_from(MessageLocation)) == 40


def test_a_mail_server_restart_mid_pass_is_waited_out_within_the_pass(
    app, dovecot, mail_user, account, monkeypatch
):
    """The server closes the connection mid-FETCH, then refuses connections for 2.5 s (it
    is restarting): the pass reconnects after growing pauses and finishes."""
    padding = "x" * 60 + "\r\n"
    for n in range(1, 41):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email, body=padding * 800))
    proxy = CuttingProxy(dovecot.host, dovecot.ssl_port, cut_after=600_000, refuse_for=2.5)
    try:
        account.imap_port = proxy.port
        db.session.commit()
        with command_log(monkeypatch) as log:
            result = jobs.run_account_sync(app, account.id)
        assert proxy.cut_count == 1
        assert result.ok, result.error
        assert log.count("LOGIN") == 2
    finally:
        proxy.close()
    assert message_count(account.id) == 40
    assert len(locations(account.id)) == 40


# Bytes the server has sent (TLS included) by each step of connecting to the test Dovecot:
# the handshake ends near 900, the greeting near 1300, LOGIN's answer near 2100.
CONNECT_CUTS = {"tls-handshake": 300, "greeting": 1100, "login": 1900}


@pytest.mark.parametrize("cut_after", CONNECT_CUTS.values(), ids=CONNECT_CUTS.keys())
def test_a_connection_cut_while_connecting_is_retried_within_the_pass(
    app, dovecot, mail_user, account, cut_after
):
    deliver(dovecot, mail_user, range(1, 4))
    proxy = CuttingProxy(dovecot.host, dovecot.ssl_port, cut_after=cut_after)
    try:
        account.imap_port = proxy.port
        db.session.commit()
        result = jobs.run_account_sync(app, account.id)
        assert proxy.cut_count == 1
    finally:
        proxy.close()
    assert result.ok, result.error
    assert message_count(account.id) == 3
    db.session.expire_all()
    assert db.session.get(MailAccount, account.id).sync_state == SYNC_RUNNING


@pytest.mark.parametrize("cut_after", CONNECT_CUTS.values(), ids=CONNECT_CUTS.keys())
def test_a_network_that_keeps_cutting_is_reported_as_network_trouble(
    app, dovecot, mail_user, account, cut_after
):
    deliver(dovecot, mail_user, range(1, 4))
    proxy = CuttingProxy(dovecot.host, dovecot.ssl_port, cut_after=cut_after, cuts=100)
    try:
        account.imap_port = proxy.port
        db.session.commit()
        result = jobs.run_account_sync(app, account.id)
        assert proxy.cut_count > 1  # retried within the pass
    finally:
        proxy.close()
    assert result.error_kind == "network" and not result.needs_user_action
    assert "network" in result.error and "Check" not in result.error, result.error
    db.session.expire_all()
    account = db.session.get(MailAccount, account.id)
    # Not a credentials or settings problem: scheduled sync goes on, after a backoff.
    assert account.sync_state == SYNC_RUNNING and account.backoff_until is not None
    assert account.last_error == result.error

    account.imap_port = dovecot.ssl_port
    db.session.commit()
    assert jobs.run_account_sync(app, account.id).ok
    db.session.expire_all()
    account = db.session.get(MailAccount, account.id)
    assert account.last_error is None  # a successful pass clears the last error
    assert message_count(account.id) == 3


def test_cut_during_poll_never_moves_watermark_past_committed_data(
    app, dovecot, mail_user, account
):
    deliver(dovecot, mail_user, range(1, 3))
    assert run_sync(app, account).ok
    padding = "y" * 60 + "\r\n"
    for n in range(3, 33):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email, body=padding * 800))
    proxy = CuttingProxy(
        dovecot.host, dovecot.ssl_port, cut_after=400_000, cuts=CONNECTION_RETRIES + 1
    )
    try:
        account.imap_port = proxy.port
        db.session.commit()
        result = run_sync(app, account)  # every connection dies: the run gives up
        assert result.error
        inbox = folder_named(account.id, "INBOX")
        stored = {row.uid for row in locations(account.id)}
        assert all(uid in stored for uid in range(1, inbox.last_seen_uid + 1))
    finally:
        proxy.close()
    account.imap_port = dovecot.ssl_port
    db.session.commit()
    assert run_sync(app, account).ok
    assert message_count(account.id) == 32


def test_lease_lets_only_one_sync_run(app, dovecot, mail_user, account):
    deliver(dovecot, mail_user, range(1, 4))
    account_id = account.id
    results: list = []

    def slow(folder, done, total):
        time.sleep(0.3)

    def worker():
        results.append(jobs.run_account_sync(app, account_id, progress=slow))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r is None for r in results) == [False, True]
    assert message_count(account_id) == 3
    # A live lease held elsewhere blocks; an expired one is taken over.
    assert jobs.acquire_lease(account_id, "other-worker", seconds=60)
    assert jobs.run_account_sync(app, account_id) is None
    assert jobs.acquire_lease(account_id, "other-worker", seconds=-1)
    assert jobs.run_account_sync(app, account_id) is not None


def _lease(account_id):
    """Return (owner, expires_at) of the account's lease, read on a connection of its own."""
    table = SyncLease.__table__
    with db.engine.connect() as connection:
        return connection.execute(
            select(table.c.owner, table.c.expires_at).where(table.c.account_id == account_id)
        ).one()


@pytest.mark.timing  # a 1.5 s lease must be renewed in time
def test_a_pass_longer_than_its_lease_keeps_renewing_it(
    app, dovecot, mail_user, account, monkeypatch
):
    app.config["SYNC_LEASE_SECONDS"] = 1.5
    deliver(dovecot, mail_user, range(1, 121))
    account_id = account.id
    seen: list[tuple[datetime, datetime]] = []

    def slow(folder, done, total):
        time.sleep(0.4)
        seen.append((datetime.now(UTC), _lease(account_id)[1]))

    started = time.monotonic()
    result = jobs.run_account_sync(app, account_id, progress=slow)
    assert result.ok and result.complete and message_count(account_id) == 120
    assert time.monotonic() - started > 3  # twice the lease
    # At every moment of the pass the lease was still live, so no other worker could take it.
    assert all(expires > now for now, expires in seen)
    assert seen[-1][1] > seen[0][1] + timedelta(seconds=1)
    assert db.session.scalar(select(func.count()).select_from(SyncLease)) == 0  # released


@pytest.mark.timing  # a 1.5 s lease must be renewed in time
def test_the_lease_stays_live_through_a_step_longer_than_the_lease(
    app, dovecot, mail_user, account
):
    """One slow step (a FETCH from a sluggish server) never reaches a renewal point; the
    lease's own thread keeps it live meanwhile."""
    app.config["SYNC_LEASE_SECONDS"] = 1.5
    deliver(dovecot, mail_user, range(1, 4))
    account_id = account.id
    seen: list[tuple[datetime, datetime]] = []

    def one_slow_step(folder, done, total):
        if not seen:
            time.sleep(4)
        seen.append((datetime.now(UTC), _lease(account_id)[1]))

    result = jobs.run_account_sync(app, account_id, progress=one_slow_step)
    assert result.ok and result.complete
    now, expires = seen[0]
    assert expires > now  # no other worker could have taken the account meanwhile


def test_a_pass_stops_when_another_worker_took_its_lease(
    app, dovecot, mail_user, account, monkeypatch
):
    app.config["SYNC_LEASE_SECONDS"] = 1.5
    deliver(dovecot, mail_user, range(1, 121))
    account_id = account.id
    table = SyncLease.__table__

    def taken_over(folder, done, total):
        time.sleep(0.6)  # the renewal is due
        with db.engine.begin() as connection:  # the lease ran out and another worker took it
            connection.execute(update(table).values(owner="other-worker"))

    result = jobs.run_account_sync(app, account_id, progress=taken_over)
    assert result.ok and not result.complete
    assert message_count(account_id) < 120
    assert _lease(account_id)[0] == "other-worker"  # not released by the stopped pass


def test_cli_sync_and_mail_status(app, runner, dovecot, mail_user, account):
    deliver(dovecot, mail_user, range(1, 6))
    dovecot.deliver(mail_user.email, raw_message(9, to="x@example.com"), "Sent")
    result = runner.invoke(args=["sync", "--account", str(account.id)])
    assert result.exit_code == 0, result.output
    assert "account" in result.output and "6 new" in result.output
    status = runner.invoke(args=["mail-status", "--json"])
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    (entry,) = data["accounts"]
    assert entry["state"] == "running" and entry["last_success_at"]
    folders = {f["name"]: f for f in entry["folders"] if f["sync_enabled"]}
    assert folders["INBOX"]["server_count"] == folders["INBOX"]["stored_count"] == 5
    assert folders["Sent"]["server_count"] == folders["Sent"]["stored_count"] == 1
    assert all(f["server_count"] == f["stored_count"] for f in folders.values())
    text = runner.invoke(args=["mail-status"])
    assert "INBOX: server 5, stored 5" in text.output


def test_cli_sync_fails_with_nonzero_exit(app, runner, account):
    account.imap_port = 1
    db.session.commit()
    result = runner.invoke(args=["sync", "--account", str(account.id)])
    assert result.exit_code != 0


def _corpus_dir() -> Path:
    shared = os.environ.get("THREADLINE_SHARED")
    base = Path(shared) if shared else Path(__file__).resolve().parents[1].parent / "shared"
    return base / "corpus" / "emails"


def _strip_mbox_from(raw: bytes) -> bytes:
    if raw.startswith(b"From "):
        return raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return raw


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.slow
def test_corpus_ingest(app, dovecot, mail_user, account):
    corpus = _corpus_dir()
    listing = corpus / "CORE_SUBSET.txt"
    if not listing.exists():
        pytest.skip(f"mail corpus not found at {corpus} (set THREADLINE_SHARED)")
    delivered: list[bytes] = []
    for name in listing.read_text().split():
        raw = _strip_mbox_from((corpus / name).read_bytes())
        if b"\x00" in raw:
            assert parse_message(raw) is not None  # refused by APPEND, still parses
            continue
        try:
            dovecot.deliver(mail_user.email, raw)
        except RuntimeError:
            assert parse_message(raw) is not None
            continue
        delivered.append(raw)
    assert len(delivered) > 100
    result = run_sync(app, account)
    assert result.ok, result.error
    rows = locations(account.id)
    assert len(rows) == len(delivered)
    # Identical copies share one message row; nothing else is merged.
    assert db.session.scalar(select(func.count()).select_from(Message)) <= len(delivered)
    blobs = BlobStore(Path(app.instance_path) / "blobs")
    for row, raw in zip(rows, delivered, strict=True):
        stored = blobs.get(row.message.raw_sha256)
        if (
            db.session.scalar(
                select(func.count())
                .select_from(MessageLocation)
                .where(MessageLocation.message_id == row.message_id)
            )
            == 1
        ):
            # Dovecot stores LF and serves CRLF, so compare line-ending-normalized bytes.
            assert _crlf(stored) == _crlf(raw)


def test_schedule_sync_jobs_adds_the_sync_and_garbage_collection_jobs(app):
    from apscheduler.schedulers.background import BackgroundScheduler

    app.config["SYNC_INTERVAL_SECONDS"] = 45
    app.config["GC_INTERVAL_SECONDS"] = 240
    scheduler = BackgroundScheduler(timezone="UTC")
    jobs.schedule_sync_jobs(scheduler, app)
    by_id = {job.id: job for job in scheduler.get_jobs()}
    assert set(by_id) == {
        jobs.SYNC_JOB_ID,
        jobs.GC_JOB_ID,
        jobs.BLOB_SWEEP_JOB_ID,
        jobs.JOB_CLEANUP_JOB_ID,
    }
    assert by_id[jobs.BLOB_SWEEP_JOB_ID].func is jobs.sweep_blobs
    assert by_id[jobs.JOB_CLEANUP_JOB_ID].func is jobs.forget_finished_jobs
    sync, gc = by_id[jobs.SYNC_JOB_ID], by_id[jobs.GC_JOB_ID]
    assert sync.func is jobs.queue_due_syncs and sync.trigger.interval.total_seconds() == 45
    assert gc.func is jobs.collect_garbage and gc.trigger.interval.total_seconds() == 240
    assert gc.args == (app,)


def test_sync_requests_coalesce_into_one_queued_pass(app, account):
    from models import Job
    from services.accounts import request_sync

    jobs.queue_due_syncs(app)  # the scheduled pass: INBOX and Sent
    first = request_sync(account.id)  # "Sync now" widens it to every folder
    assert request_sync(account.id) == first
    (job,) = db.session.scalars(select(Job)).all()
    assert job.kind == "account.sync" and job.payload == {"all_folders": True}


def test_a_folder_deleted_on_the_server_shows_as_gone_and_comes_back_whole(
    app, runner, dovecot, mail_user, account
):
    """mail-status must not keep the last server count of a folder the server deleted."""
    dovecot.doveadm("mailbox", "create", "-u", mail_user.email, "Clients")
    for n in (1, 2, 3):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email), "Clients")
    assert run_sync(app, account).ok
    dovecot.doveadm("mailbox", "rename", "-u", mail_user.email, "Clients", "Clients-old")
    assert run_sync(app, account).ok
    data = json.loads(runner.invoke(args=["mail-status", "--json"]).output)
    folders = {f["name"]: f for f in data["accounts"][0]["folders"]}
    assert folders["Clients"]["gone"] and folders["Clients"]["server_count"] is None
    assert folders["Clients"]["stored_count"] == 0
    assert folders["Clients-old"]["server_count"] == folders["Clients-old"]["stored_count"] == 3
    assert "Clients: gone from the server" in runner.invoke(args=["mail-status"]).output
    # Renamed back: synced from scratch, every message located again.
    dovecot.doveadm("mailbox", "rename", "-u", mail_user.email, "Clients-old", "Clients")
    assert run_sync(app, account).ok
    data = json.loads(runner.invoke(args=["mail-status", "--json"]).output)
    folders = {f["name"]: f for f in data["accounts"][0]["folders"]}
    assert not folders["Clients"]["gone"]
    assert folders["Clients"]["server_count"] == folders["Clients"]["stored_count"] == 3
    assert message_count(account.id) == 3


# Disk trouble is simulated by patching the one write that hits it (blob store or database):
# no root, loop mount or tmpfs needed, so it runs on any CI machine. Root ignores file modes,
# so a chmod'ed folder would not fail here; a PermissionError naming the file is what a
# non-root service gets from such a folder (tests/test_cli.py runs a real one as nobody).
def _blob_write_fails(monkeypatch, error: OSError, *, after: int) -> None:
    """Make the blob store fail with `error` once `after` blobs were written."""
    original = BlobStore.put
    written = []

    def put(self, raw):
        if len(written) >= after:
            raise error
        written.append(1)
        return original(self, raw)

    monkeypatch.setattr(BlobStore, "put", put)


def _database_write_fails(monkeypatch, message: str | Exception, *, after: int) -> None:
    """Make a batch's database write fail (as SQLite does, or with a driver error) once
    `after` batches committed; the failing batch's rows are added first, so the test sees
    that none of them stay."""
    from sqlalchemy.exc import OperationalError

    cause = sqlite3.OperationalError(message) if isinstance(message, str) else message

    from mailsync import store

    original = store.store_batch
    calls = []

    def store_batch(*args, **kwargs):
        stored = original(*args, **kwargs)
        calls.append(1)
        if len(calls) > after:
            db.session.flush()
            raise OperationalError("INSERT INTO message ...", {}, cause)
        return stored

    monkeypatch.setattr(store, "store_batch", store_batch)


DISK_FAULTS = {
    "blob-disk-full": (
        lambda mp: _blob_write_fails(
            mp, OSError(errno.ENOSPC, "No space left on device"), after=25
        ),
        "The disk holding Threadline's data is full",
    ),
    "blob-folder-read-only": (
        lambda mp: _blob_write_fails(
            mp, PermissionError(errno.EACCES, "Permission denied", "/data/blobs/ab"), after=25
        ),
        "Threadline cannot write to its data folder {instance}",
    ),
    "database-full": (
        lambda mp: _database_write_fails(mp, "database or disk is full", after=2),
        "The disk holding Threadline's data is full",
    ),
    "database-read-only": (
        lambda mp: _database_write_fails(mp, "attempt to write a readonly database", after=2),
        "Threadline cannot write to its data folder {instance}",
    ),
    "postgresql-disk-full": (
        lambda mp: _database_write_fails(
            mp, psycopg.errors.DiskFull("could not extend file: No space left"), after=2
        ),
        "The database server's disk is full (PostgreSQL)",
    ),
}


def _stored_consistently(app, account_id: int) -> int:
    """Assert that every stored message has its blob, a location and a counted thread;
    return how many are stored."""
    from models import Thread

    blobs = BlobStore(Path(app.instance_path) / "blobs")
    messages = db.session.scalars(select(Message).where(Message.account_id == account_id)).all()
    for message in messages:
        assert blobs.exists(message.raw_sha256)
        assert message.locations
    for thread in db.session.scalars(select(Thread).where(Thread.account_id == account_id)):
        assert thread.message_count == sum(1 for m in messages if m.thread_id == thread.id)
    assert len(locations(account_id)) == len(messages)
    return len(messages)


@pytest.mark.timing  # the pass must end within 5 s
@pytest.mark.parametrize("fault", DISK_FAULTS.values(), ids=DISK_FAULTS.keys())
def test_a_full_or_read_only_disk_ends_the_pass_in_plain_words_and_it_resumes(
    app, dovecot, mail_user, account, monkeypatch, fault
):
    make_fault, expected = fault
    expected = expected.format(instance=app.instance_path)
    app.config.update(SYNC_BATCH_MESSAGES=10, SYNC_DB_BATCH_MESSAGES=10)
    deliver(dovecot, mail_user, range(1, 61))
    account_id = account.id
    make_fault(monkeypatch)

    started = time.monotonic()
    result = jobs.run_account_sync(app, account_id)
    assert result.error and result.error.startswith(expected), result.error
    assert time.monotonic() - started < 5  # no reconnecting: the server is not the problem
    db.session.expire_all()
    account = db.session.get(MailAccount, account_id)
    assert account.last_error == result.error and account.sync_state == SYNC_RUNNING
    assert db.session.scalar(select(SyncRun)).error == result.error
    assert db.session.scalar(select(func.count()).select_from(SyncLease)) == 0
    assert 0 < _stored_consistently(app, account_id) < 60

    monkeypatch.undo()  # space is back
    account.backoff_until = datetime.now(UTC) - timedelta(seconds=1)  # its backoff is over
    db.session.commit()
    run_scheduled_passes(app)  # the next scheduled pass just works
    db.session.expire_all()
    account = db.session.get(MailAccount, account_id)
    assert account.last_error is None and account.last_success_at is not None
    assert _stored_consistently(app, account_id) == 60


def test_a_database_that_cannot_be_written_is_reported_before_the_pass(app, account, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def read_only(*args, **kwargs):
        raise OperationalError(
            "UPDATE sync_lease ...",
            {},
            sqlite3.OperationalError("attempt to write a readonly database"),
        )

    monkeypatch.setattr(jobs, "acquire_lease", read_only)
    result = jobs.run_account_sync(app, account.id)
    assert (
        result.error == f"Threadline cannot write to its data folder {app.instance_path}. "
        "Make it writable for the user Threadline runs as; syncing resumes by itself."
    )
    assert result.error_kind == "data_not_writable"


@pytest.mark.skipif(not ON_POSTGRESQL, reason="a real read-only PostgreSQL database")
def test_a_read_only_postgresql_database_is_reported_in_plain_words(app, account):
    account_id, database = account.id, db.engine.url.database
    db.session.execute(text(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'))
    db.session.commit()
    db.session.remove()
    db.engine.dispose()  # new connections start read-only

    result = jobs.run_account_sync(app, account_id)

    assert result.error.startswith("The database (PostgreSQL) refuses to store anything")
    assert result.error_kind == "data_not_writable"


def test_a_disk_that_also_refuses_to_record_the_pass_still_releases_the_lease(
    app, make_user, make_stored_account, monkeypatch
):
    """On a full disk the pass's record may fail too: no traceback, the lease is given back."""
    from sqlalchemy.exc import OperationalError

    from mailsync.sync import SyncResult

    account_id = make_stored_account(make_user()).id
    monkeypatch.setattr(jobs, "sync_account", lambda *args, **kwargs: SyncResult(account_id))

    def disk_full(*args, **kwargs):
        raise OperationalError(
            "UPDATE mail_account ...", {}, sqlite3.OperationalError("database or disk is full")
        )

    monkeypatch.setattr(jobs, "_record", disk_full)
    result = jobs.run_account_sync(app, account_id)
    assert result.error.startswith("The disk holding Threadline's data is full")
    assert db.session.scalar(select(func.count()).select_from(SyncLease)) == 0


@needs_root
def test_a_read_only_blob_folder_for_real(dovecot, mail_user, new_database):
    """`flask sync` run as a non-root user whose blob folder is 0500: the same plain words,
    recorded on the account, and no traceback."""
    from app import create_app
    from mailsync.blobstore import blob_root
    from services import users

    deliver(dovecot, mail_user, range(1, 4))
    base = Path(tempfile.mkdtemp(prefix="threadline-ro-blobs-"))
    try:
        base.chmod(0o755)
        instance = base / "instance"
        new_database(instance / "threadline.db")
        other = create_app({"INSTANCE_PATH": str(instance), "SCHEDULER_ENABLED": False})
        (instance / "config.py").write_text("MAIL_ALLOWED_PORTS = None\n")
        with other.app_context():
            user = users.create_user(email="ro@team.test", name="Ro", password="pw-123456789")
            account = MailAccount(
                user_id=user.id,
                email_address=mail_user.email,
                username=mail_user.email,
                password_encrypted=secret_box(other).encrypt(mail_user.password),
                imap_host=dovecot.host,
                imap_port=dovecot.ssl_port,
                ca_cert_pem=dovecot.ca_file.read_text(),
                since="all",
            )
            db.session.add(account)
            db.session.commit()
            account_id = account.id
            db.session.remove()
            db.engine.dispose()
        blob_root(other).mkdir()
        for path in (instance, *instance.rglob("*")):
            os.chown(path, NOBODY, NOBODY)
        blob_root(other).chmod(0o500)

        sync = run_cli_as_nobody("sync", "--account", str(account_id), instance=instance)
        expected = f"Threadline cannot write to its data folder {instance}."
        assert sync.returncode == 1 and expected in sync.stderr, sync.stdout + sync.stderr
        assert "Traceback" not in sync.stderr, sync.stderr
        with other.app_context():
            assert db.session.get(MailAccount, account_id).last_error.startswith(expected)
            db.session.remove()
            db.engine.dispose()
    finally:
        shutil.rmtree(base)
