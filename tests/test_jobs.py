"""Background sync in its own lower-priority process: jobs.run_scheduled_sync, SyncProcess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

import jobs
from app import create_app
from extensions import db
from models import MailAccount, Message, SyncLease, SyncRun
from tests.sync_helpers import raw_message

pytestmark = pytest.mark.imap

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def app(tmp_path, new_database):
    """The conftest app with the sync process on; the process is stopped at the end."""
    overrides = {
        "TESTING": True,
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SQLALCHEMY_DATABASE_URI": new_database(tmp_path / "threadline.db"),
        "SECRET_KEY": "test-secret",
        "SCHEDULER_ENABLED": False,
        "SYNC_PROCESS": True,
        "MAIL_ALLOWED_PORTS": None,  # Dovecot listens on random ports; the child needs it too
    }
    app = create_app(overrides)
    with app.app_context():
        yield app
        jobs.stop_sync_process(app, wait=True)
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a hung IMAP server)."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def no_sync_here(monkeypatch):
    """Make any sync pass in this (the serving) process fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a sync pass ran in the serving process")

    monkeypatch.setattr(jobs, "run_account_sync", refuse)


def deliver(dovecot, mail_user, numbers) -> None:
    for n in numbers:
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))


def subjects(account_id: int) -> list[str]:
    db.session.rollback()  # a fresh snapshot: the sync process wrote the rows
    return list(
        db.session.scalars(
            select(Message.subject)
            .where(Message.account_id == account_id)
            .order_by(Message.subject)
        )
    )


def wait_for(condition, *, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def runs_started(account_id: int) -> int:
    db.session.rollback()
    return db.session.scalar(
        select(func.count()).select_from(SyncRun).where(SyncRun.account_id == account_id)
    )


def gone(pid: int) -> bool:
    """Return whether the process has exited (a zombie nobody has reaped yet counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_scheduled_sync_runs_in_a_long_lived_niced_process(
    app, dovecot, mail_user, account, no_sync_here
):
    deliver(dovecot, mail_user, range(1, 4))
    result = jobs.run_scheduled_sync(app, account.id)
    assert result is not None and result.ok, result
    assert result.new == 3
    assert subjects(account.id) == ["Message 1", "Message 2", "Message 3"]

    pid = jobs.sync_process(app).pid
    assert pid is not None and pid != os.getpid()
    niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + app.config["SYNC_PROCESS_NICE"])
    assert os.getpriority(os.PRIO_PROCESS, pid) == niceness

    deliver(dovecot, mail_user, [4])
    result = jobs.run_scheduled_sync(app, account.id)
    assert result.ok and result.new == 1
    assert subjects(account.id)[-1] == "Message 4"
    assert jobs.sync_process(app).pid == pid  # the same process serves every pass


def test_a_sync_process_that_dies_mid_pass_gives_an_error_and_is_replaced(
    app, dovecot, mail_user, account, silent_server
):
    account_id = account.id
    account.imap_port = silent_server  # the pass hangs in the TLS handshake
    db.session.commit()
    outcome: dict = {}
    worker = threading.Thread(
        target=lambda: outcome.update(result=jobs.run_scheduled_sync(app, account_id))
    )
    worker.start()
    wait_for(lambda: runs_started(account_id) == 1)  # the child holds the lease, mid-pass
    first_pid = jobs.sync_process(app).pid
    os.kill(first_pid, signal.SIGKILL)
    worker.join(timeout=30)
    assert not worker.is_alive()
    result = outcome["result"]
    assert result.error == "the sync process stopped unexpectedly"
    assert result.error_kind == "internal" and not result.ok

    # The parent closes what the dead process left: its run (with the error, so the account
    # page does not say "syncing" forever, and backoff applies) and its lease.
    db.session.expire_all()
    run = db.session.scalar(select(SyncRun).where(SyncRun.account_id == account_id))
    assert run.finished_at is not None and run.error == result.error
    assert db.session.get(MailAccount, account_id).backoff_until is not None
    assert db.session.scalar(select(SyncLease).where(SyncLease.account_id == account_id)) is None
    account = db.session.get(MailAccount, account_id)
    account.imap_port = dovecot.ssl_port
    db.session.commit()
    deliver(dovecot, mail_user, [1, 2])
    result = jobs.run_scheduled_sync(app, account.id)
    assert result.ok, result.error
    assert subjects(account.id) == ["Message 1", "Message 2"]
    assert jobs.sync_process(app).pid not in (None, first_pid)


def test_without_the_sync_process_the_pass_runs_in_the_calling_thread(
    app, dovecot, mail_user, account, monkeypatch
):
    app.config["SYNC_PROCESS"] = False
    calls = []
    real = jobs.run_account_sync

    def spy(app, account_id, **kwargs):
        calls.append((threading.get_ident(), kwargs))
        return real(app, account_id, **kwargs)

    monkeypatch.setattr(jobs, "run_account_sync", spy)
    deliver(dovecot, mail_user, [1])
    result = jobs.run_scheduled_sync(app, account.id, budget_seconds=600)
    assert result.ok and result.new == 1
    assert calls == [(threading.get_ident(), {"budget_seconds": 600, "all_folders": True})]
    assert subjects(account.id) == ["Message 1"]
    assert jobs.sync_process(app).pid is None  # no process was started


def test_the_scheduler_syncs_through_the_sync_process(
    app, dovecot, mail_user, account, no_sync_here
):
    deliver(dovecot, mail_user, range(1, 3))
    scheduler = jobs.start_scheduler(app)
    try:
        scheduler.get_job(jobs.SYNC_JOB_ID).modify(next_run_time=datetime.now(UTC))
        wait_for(lambda: len(subjects(account.id)) == 2)  # the interval job
        deliver(dovecot, mail_user, [3])
        jobs.sync_now(account.id, app=app)  # the "Sync now" button
        wait_for(lambda: len(subjects(account.id)) == 3)
        pid = jobs.sync_process(app).pid
        assert pid is not None and pid != os.getpid()
    finally:
        scheduler.shutdown(wait=True)
        del app.extensions["threadline_scheduler"]
    wait_for(lambda: gone(pid), seconds=10)  # the scheduler's shutdown stopped the process


def test_warming_starts_the_sync_process_without_a_pass(app, account):
    """start_scheduler warms the process, so a new mailbox's first sync does not wait for it."""
    process = jobs.sync_process(app)
    assert process.pid is None
    process.warm()
    wait_for(lambda: process.pid is not None, seconds=30)
    assert runs_started(account.id) == 0


SERVING = """
import sys, threading, time
sys.path.insert(0, {repo!r})
import jobs
from app import create_app

app = create_app({overrides!r})
threading.Thread(target=jobs.run_scheduled_sync, args=(app, {account_id}), daemon=True).start()
while jobs.sync_process(app).pid is None:
    time.sleep(0.05)
print(jobs.sync_process(app).pid, flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_the_sync_process_ends_with_the_serving_process(app, account, silent_server, ending):
    """A clean exit stops a running pass at once; a killed server's child follows it out."""
    account.imap_port = silent_server  # the pass would hang for the IMAP timeout (30 s)
    db.session.commit()
    script = SERVING.format(
        repo=str(REPO),
        overrides=app.extensions["threadline_config_overrides"],
        account_id=account.id,
    )
    serving = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child_pid = int(serving.stdout.readline())
        wait_for(lambda: runs_started(account.id) == 1)  # the child is mid-pass
        if ending == "exit":
            serving.communicate("\n", timeout=10)  # the pass would take 30 s or more
            assert serving.returncode == 0
        else:
            serving.kill()
            serving.wait()
        wait_for(lambda: gone(child_pid), seconds=10)
    finally:
        serving.kill()
        serving.wait()
        serving.stdout.close()
        serving.stdin.close()


def test_sync_worker_command_runs_the_jobs_until_stopped(app, account, dovecot, mail_user):
    """`flask sync-worker` (the scheduler process of a multi-process layout) syncs mail and
    stops cleanly on SIGTERM, taking its sync process with it."""
    instance = Path(app.instance_path)
    (instance / "config.py").write_text("MAIL_ALLOWED_PORTS = None\n")
    deliver(dovecot, mail_user, [1, 2])
    env = {
        **os.environ,
        "THREADLINE_INSTANCE_PATH": str(instance),
        "THREADLINE_SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
        "THREADLINE_SECRET_KEY": "test-secret",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "sync-worker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: subjects(account.id) == ["Message 1", "Message 2"], seconds=90)
        children = _children(worker.pid)
        assert children  # the sync process (and multiprocessing's helper) run beside it
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=20)
        assert worker.returncode == 0, output
        assert "sync worker stopped" in output
        wait_for(lambda: all(gone(pid) for pid in children), seconds=10)
    finally:
        worker.kill()
        worker.wait()


def _children(pid: int) -> list[int]:
    """Return the ids of the processes whose parent is `pid` (from /proc, no procps needed)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children
