"""`flask sync` stopped mid-pass for real: kill -9, SIGTERM and Ctrl-C of the process.

The pass runs as a subprocess against the real Dovecot, with a mailbox big enough that it
is still backfilling (with its MIME parse workers running) when the signal arrives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

import jobs
from extensions import db
from mailsync import imap
from models import SyncLease, SyncRun
from tests.sync_helpers import folder_named, imap_client, raw_message

pytestmark = [pytest.mark.imap, pytest.mark.timing]  # wall-clock bounds: run alone

REPO = Path(__file__).resolve().parents[1]
LEASE_SECONDS = 4
MAILBOX_SIZE = 1500  # enough that the backfill takes several seconds
BODY = ("z" * 70 + "\r\n") * 60  # about 4 KB each


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


@pytest.fixture
def big_mailbox(dovecot, mail_user):
    """Fill INBOX with MAILBOX_SIZE messages over one IMAP connection (APPEND is fast)."""
    client = imap_client(dovecot, mail_user)
    try:
        for n in range(1, MAILBOX_SIZE + 1):
            client.append("INBOX", raw_message(n, to=mail_user.email, body=BODY))
    finally:
        imap.safe_logout(client)


def start_cli_sync(app, account_id: int) -> subprocess.Popen:
    """Start `flask sync --account ID` as its own process, with a LEASE_SECONDS lease."""
    instance = Path(app.instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    (instance / "config.py").write_text("MAIL_ALLOWED_PORTS = None\n")
    env = {
        **os.environ,
        "THREADLINE_INSTANCE_PATH": str(instance),
        "THREADLINE_SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
        "THREADLINE_SECRET_KEY": "test-secret",
        "THREADLINE_SYNC_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "sync", "--account", str(account_id)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )


def _as_from_a_terminal() -> None:
    """Start the CLI with Ctrl-C delivered and handled, as a shell in a terminal does.

    An ignored or blocked SIGINT is inherited through exec, and Python then never raises
    KeyboardInterrupt: in the full suite the SIGINT case saw the pass run to its end.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def wait_for(condition, *, seconds: float = 60, what: str = "the condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def backfilled(account_id: int) -> int:
    """Return how many INBOX messages the running pass has stored so far."""
    db.session.rollback()  # a fresh snapshot: the subprocess writes the rows
    folder = folder_named(account_id, "INBOX")
    done = folder.backfill_done if folder is not None else 0
    db.session.rollback()
    return done or 0


def children(pid: int) -> list[int]:
    """Return the ids of live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def lease_row(account_id: int):
    db.session.rollback()
    lease = db.session.get(SyncLease, account_id)
    db.session.rollback()
    return lease


def last_run(account_id: int) -> SyncRun:
    db.session.rollback()
    return db.session.scalar(
        select(SyncRun).where(SyncRun.account_id == account_id).order_by(SyncRun.id.desc())
    )


def test_a_killed_cli_sync_leaves_no_parse_workers_and_its_lease_soon_expires(
    app, account, big_mailbox
):
    account_id = account.id
    process = start_cli_sync(app, account_id)
    try:
        # Mid-backfill, with the parse worker pool started (it starts past the first batch).
        wait_for(lambda: backfilled(account_id) > 100, what="the backfill to be under way")
        # Two parse workers and multiprocessing's resource tracker.
        wait_for(lambda: len(children(process.pid)) >= 3, seconds=30, what="parse workers")
        spawned = children(process.pid)
        assert backfilled(account_id) < MAILBOX_SIZE, "the pass ended before the kill"
        process.kill()
        killed_at = time.monotonic()
        process.wait()
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    wait_for(lambda: not any(alive(pid) for pid in spawned), seconds=5, what="orphans to exit")

    # The dead pass's lease runs out within LEASE_SECONDS of its last renewal; then a new
    # pass runs (and finishes the backfill).
    result = jobs.run_account_sync(app, account_id)
    while result is None:
        assert time.monotonic() - killed_at < LEASE_SECONDS + 5, "the lease outlived its owner"
        time.sleep(0.2)
        result = jobs.run_account_sync(app, account_id)
    assert result.ok and result.complete, result.error
    assert backfilled(account_id) == MAILBOX_SIZE
    db.session.rollback()
    killed_run, new_run = db.session.scalars(select(SyncRun).order_by(SyncRun.id)).all()
    assert killed_run.finished_at is not None and "interrupted" in killed_run.error
    assert new_run.finished_at is not None and new_run.error is None


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_cli_sync_releases_its_lease_and_says_interrupted(
    app, account, big_mailbox, stop_signal
):
    account_id = account.id
    process = start_cli_sync(app, account_id)
    try:
        wait_for(lambda: backfilled(account_id) > 100, what="the backfill to be under way")
        assert lease_row(account_id) is not None
        process.send_signal(stop_signal)
        signalled = time.monotonic()
        output, _ = process.communicate(timeout=15)
        assert time.monotonic() - signalled < 5, "the pass did not stop promptly"
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    assert lease_row(account_id) is None, "the lease was not released"
    run = last_run(account_id)
    assert run.finished_at is not None and "interrupted" in (run.error or "").lower(), output
    assert process.returncode == 128 + stop_signal, output
    assert "interrupted" in output.lower(), output
    assert backfilled(account_id) < MAILBOX_SIZE
    # The next pass starts at once and completes the backfill.
    result = jobs.run_account_sync(app, account_id)
    assert result is not None and result.ok and result.complete
