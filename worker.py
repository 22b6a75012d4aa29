"""The one worker process: the sync schedule plus the loop that runs queued jobs.

`flask --app app worker` runs it in the foreground; `flask serve` starts one as a child and
restarts it if it dies (Supervisor). Its APScheduler queues scheduled sync passes, runs the
send tick (due outgoing mail, mailsync/send.py) and the short maintenance jobs (jobs.py); the job loop, in the main thread, claims one job at a
time from the database queue (services/job_queue.py) and runs it: sync passes ("Sync now"
and scheduled), and the Mail tab's IMAP write-backs (mailsync/writeback.py). A lease,
renewed while the job runs, lets another worker take the job again only once this one is
gone. IMAP IDLE watchers (mailsync/idle.py), threads beside the loop, queue a pass of an
account the moment its server reports a change in INBOX, and wake the loop. SIGTERM ends the
running job where it is (it is queued again), closes the IDLE connections and stops the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from flask import Flask

import jobs
from extensions import db
from mailsync import actions, audit, idle, writeback
from mailsync.sync import SyncResult
from services import accounts, conversations, job_queue, mailbox

log = logging.getLogger("threadline.worker")

# A sync job whose account another pass is syncing waits this long before trying again.
BUSY_RETRY_SECONDS = 15


def _run_sync(
    app: Flask, account_id: int, payload: dict, *, yield_to: Callable[[], bool] | None = None
) -> bool:
    all_folders = bool(payload.get("all_folders", True))
    result = jobs.run_account_sync(app, account_id, all_folders=all_folders, yield_to=yield_to)
    if result is not None and goes_on_at_once(result):
        with app.app_context():
            try:
                accounts.request_sync(account_id, all_folders=all_folders)
            finally:
                db.session.remove()
    # A pass's own errors are recorded on the account (its state and backoff), not retried
    # here; None means another pass holds the account, so this one waits its turn.
    return result is not None


def _run_seen(app: Flask, account_id: int, payload: dict) -> bool:
    with _pass_asked_for_changed_folders(app, account_id):
        writeback.write_seen(app, account_id, payload)
    return True


def _run_move(app: Flask, account_id: int, payload: dict) -> bool:
    with _pass_asked_for_changed_folders(app, account_id):
        writeback.move(app, account_id, payload)
    return True


@contextlib.contextmanager
def _pass_asked_for_changed_folders(app: Flask, account_id: int):
    """A write-back that waits for a folder with a new UIDVALIDITY fails this attempt (it is
    retried with backoff); a pass is queued so the folder is read again soon."""
    try:
        yield
    except actions.FolderChangedError:
        with app.app_context():
            try:
                accounts.request_sync(account_id)
            finally:
                db.session.remove()
        raise


def _run_labels(app: Flask, account_id: int, payload: dict) -> bool:
    with _pass_asked_for_changed_folders(app, account_id):
        writeback.change_labels(app, account_id, payload)
    return True


def _run_fetch_body(app: Flask, account_id: int, payload: dict) -> bool:
    with _pass_asked_for_changed_folders(app, account_id):
        actions.fetch_full_message(app, int(payload["message_id"]))
    return True


def _run_folder_check(app: Flask, account_id: int, payload: dict) -> bool:
    audit.compare_folder(app, int(payload["folder_id"]))
    return True


# kind -> handler(app, account_id, payload); True when done, False to run again later.
HANDLERS: dict[str, Callable[[Flask, int, dict], bool]] = {
    accounts.SYNC_JOB: _run_sync,
    mailbox.WRITEBACK_SEEN: _run_seen,
    mailbox.WRITEBACK_MOVE: _run_move,
    mailbox.WRITEBACK_LABELS: _run_labels,
    conversations.FETCH_BODY_JOB: _run_fetch_body,
    accounts.FOLDER_CHECK_JOB: _run_folder_check,
}


class Stopping(BaseException):
    """Raised in the job loop by SIGTERM: ends the running job where it is.

    A BaseException, so the handlers' "any error" clauses let it through (like
    jobs.SyncInterrupted, which run_account_sync understands: it marks the run interrupted
    and releases the account's lease).
    """


def goes_on_at_once(result: SyncResult) -> bool:
    """Tell whether a pass that stopped early is queued again at once, behind what is queued
    now, rather than at the next scheduled tick: one that made way for pushed mail, or a
    first sync longer than one budget that is getting somewhere. One that spent its whole
    budget without storing anything (a server too slow to answer) waits for the tick, or
    it would be retried back to back."""
    if not result.out_of_time or result.error is not None:
        return False
    return result.made_way or bool(result.new or result.changed or result.deleted)


class Pushes:
    """Accounts whose IDLE watcher saw a change and whose pushed pass has not started yet.

    The job loop claims their sync jobs before any other job, and a running pass of another
    account stops at its next batch boundary (it is queued again at once), so pushed mail
    shows within seconds even while a long first sync runs.
    """

    def __init__(self) -> None:
        self._accounts: set[int] = set()
        self._lock = threading.Lock()

    def add(self, account_id: int) -> None:
        with self._lock:
            self._accounts.add(account_id)

    def waiting(self) -> list[int]:
        with self._lock:
            return sorted(self._accounts)

    def waiting_besides(self, account_id: int | None) -> bool:
        with self._lock:
            return bool(self._accounts - {account_id})

    def forget(self, account_ids) -> None:
        with self._lock:
            self._accounts.difference_update(account_ids)


class LeaseRenewal:
    """A thread that renews a running job's lease every third of the lease."""

    def __init__(self, app: Flask, job: job_queue.ClaimedJob, seconds: float) -> None:
        self.app, self.job, self.seconds = app, job, seconds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._renew, name=f"job-{job.id}", daemon=True)

    def __enter__(self) -> LeaseRenewal:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.thread.join()

    def _renew(self) -> None:
        while not self.stopped.wait(self.seconds / 3):
            try:
                with self.app.app_context():
                    job_queue.renew(self.job.id, self.job.owner, lease_seconds=self.seconds)
                    db.session.remove()
            except Exception:
                # A busy database: the next renewal, a third of a lease later, tries again.
                log.exception("job %s: renewing the lease failed", self.job.id)


def run_one_job(app: Flask, owner: str, pushes: Pushes | None = None) -> bool:
    """Claim and run one job, pushed passes first; return False when none was waiting."""
    lease = float(app.config.get("JOB_LEASE_SECONDS", job_queue.DEFAULT_LEASE_SECONDS))
    pushed = pushes.waiting() if pushes is not None else []
    with app.app_context():
        job = None
        if pushed:
            keys = [accounts.sync_job_key(account_id) for account_id in pushed]
            job = job_queue.claim(owner, lease_seconds=lease, kinds=[accounts.SYNC_JOB], keys=keys)
            # Claimed, or not claimable now (its account's earlier job runs elsewhere): either
            # way it no longer holds up other work; its queued job runs in its turn.
            pushes.forget([job.account_id] if job is not None else pushed)
        if job is None:
            job = job_queue.claim(owner, lease_seconds=lease)
        db.session.remove()
    if job is None:
        return False
    # Only a pass that was not itself pushed makes way for pushed ones.
    yield_to = None
    if pushes is not None and job.account_id not in pushed:
        account_id = job.account_id
        yield_to = lambda: pushes.waiting_besides(account_id)  # noqa: E731
    handler = HANDLERS.get(job.kind)
    error = None
    done = False
    try:
        with LeaseRenewal(app, job, lease):
            if handler is None:
                error = f"unknown job kind {job.kind!r}"
            elif job.kind == accounts.SYNC_JOB:
                done = _run_sync(app, job.account_id, job.payload, yield_to=yield_to)
            else:
                done = handler(app, job.account_id, job.payload)
    except actions.MailActionError as exc:
        error = exc.message
    except (Stopping, jobs.SyncInterrupted, KeyboardInterrupt):
        _settle(app, lambda: job_queue.postpone(job.id, owner, seconds=0))
        raise
    except Exception as exc:
        log.exception("job %s (%s) failed", job.id, job.kind)
        error = f"internal error: {exc}"[:500]
    backoff = float(app.config.get("JOB_BACKOFF_SECONDS", job_queue.DEFAULT_BACKOFF_SECONDS))
    if error is not None:
        log.warning("job %s (%s) attempt %s failed: %s", job.id, job.kind, job.attempts, error)
        _settle(app, lambda: job_queue.fail(job.id, owner, error, backoff_base=backoff))
    elif done:
        _settle(app, lambda: job_queue.complete(job.id, owner))
    else:
        _settle(app, lambda: job_queue.postpone(job.id, owner, seconds=BUSY_RETRY_SECONDS))
    return True


def _settle(app: Flask, write) -> None:
    with app.app_context():
        try:
            write()
        finally:
            db.session.remove()


def start_scheduler(app: Flask):
    """Start the worker's APScheduler: the sync schedule, the send tick, maintenance jobs."""
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 60},
        timezone="UTC",
    )
    jobs.schedule_sync_jobs(scheduler, app)
    jobs.schedule_send_job(scheduler, app)
    scheduler.start()
    log.info("scheduler started")
    return scheduler


def run_worker(app: Flask, *, stopped: threading.Event | None = None) -> None:
    """Run the schedule and the job loop until SIGTERM, Ctrl-C or `stopped` is set.

    Call from the main thread (it installs the SIGTERM handler).
    """
    stopped = stopped or threading.Event()
    owner = f"{jobs.worker_name()}:{uuid.uuid4().hex[:8]}"
    in_job = threading.Event()

    _follow_parent_out()
    nice = int(app.config.get("WORKER_NICE", 0))
    if nice:
        os.nice(nice)  # sync passes are CPU-bound; pages in other processes come first
    poll = float(app.config.get("JOB_POLL_SECONDS", 1.0))
    # Set when an IDLE watcher queued a pass (or on SIGTERM): the loop looks at once instead
    # of finishing its poll wait, so pushed mail is not held up by it.
    wake = threading.Event()

    def on_sigterm(_signum, _frame) -> None:
        stopped.set()
        wake.set()
        if in_job.is_set():
            raise Stopping()

    signal.signal(signal.SIGTERM, on_sigterm)
    scheduler = start_scheduler(app)
    pushes = Pushes()
    watchers = start_idle_watchers(app, wake, pushes)
    try:
        while not stopped.is_set():
            in_job.set()
            try:
                wake.clear()
                ran = run_one_job(app, owner, pushes)
            finally:
                in_job.clear()
            if not ran:
                wake.wait(poll)
    except (Stopping, KeyboardInterrupt):
        pass
    finally:
        scheduler.shutdown(wait=False)
        if watchers is not None:
            watchers.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_idle_watchers(
    app: Flask, wake: threading.Event, pushes: Pushes
) -> idle.IdleWatchers | None:
    """Start the IMAP IDLE watchers (mailsync/idle.py) unless IDLE_ENABLED is off.

    A change a watcher sees queues the account's scheduled kind of pass (INBOX and Sent),
    folded into one already queued (services.accounts.request_sync), marks it pushed (run
    first; see Pushes) and wakes the job loop.
    """
    if not idle.IdleSettings.from_config(app.config).enabled:
        return None

    def on_change(account_id: int) -> None:
        with app.app_context():
            try:
                accounts.request_sync(account_id, all_folders=False)
            finally:
                db.session.remove()
        pushes.add(account_id)  # after the commit: the loop finds the queued job
        wake.set()

    return idle.IdleWatchers(app, on_change).start()


# --------------------------------------------------------------------------- supervision

# Set by Supervisor for its child: the server's pid, which the worker follows out.
PARENT_ENV = "THREADLINE_WORKER_PARENT_PID"


def _follow_parent_out() -> None:
    """Stop this worker (SIGTERM to itself) once the server that started it is gone.

    A server killed without clean-up (SIGKILL) cannot stop its worker, and a second server
    started later would then run a second worker beside the orphan.
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(0.5)
        log.warning("the server that started this worker is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Supervisor:
    """Keep one `flask worker` child running beside the web server (`flask serve`).

    The child runs the same code with the same environment; if it dies it is started again
    (after RESTART_DELAY_SECONDS, so a worker that cannot start does not spin). stop() sends
    SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS.
    """

    RESTART_DELAY_SECONDS = 1.0
    STOP_TIMEOUT_SECONDS = 10.0

    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "flask", "--app", "app", "worker"]
        self.process: subprocess.Popen | None = None
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        """Start the worker and the thread that restarts it."""
        self._spawn()
        self.thread.start()

    def _spawn(self) -> None:
        with self.lock:
            if self.stopped.is_set():
                return
            # Its own process group: Ctrl-C in a terminal reaches the server, which then
            # stops the worker itself (SIGTERM), so a running job is put back in order.
            env = {**os.environ, PARENT_ENV: str(os.getpid())}
            self.process = subprocess.Popen(
                self.command, env=env, cwd=Path(__file__).resolve().parent, process_group=0
            )
            log.info("worker started (pid %s)", self.process.pid)

    def _watch(self) -> None:
        while not self.stopped.is_set():
            process = self.process
            if process is not None and process.poll() is not None:
                if self.stopped.is_set():
                    return
                log.warning(
                    "worker %s exited (%s); starting it again", process.pid, process.returncode
                )
                time.sleep(self.RESTART_DELAY_SECONDS)
                self._spawn()
            self.stopped.wait(0.2)

    def stop(self) -> None:
        """Stop the worker: SIGTERM, then SIGKILL if it has not ended in time."""
        with self.lock:
            self.stopped.set()
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
