"""Scheduler wiring and thin job functions that take ids and call mailsync/services.

How background sync runs: `flask serve` calls `start_scheduler`, so the one APScheduler
BackgroundScheduler lives in the serving process (DESIGN: one Flask process runs it). Its
interval job `sync_due_accounts` and the "Sync now" jobs queued by `sync_now` both call
`run_scheduled_sync`. With SYNC_PROCESS on (the default) that hands the pass to a
`SyncProcess`: one long-lived child started with `spawn`, niced by SYNC_PROCESS_NICE, that
builds its own app from the overrides `create_app` was given and runs `run_account_sync`
there, so the CPU-heavy pass never competes for the serving process's GIL. The child's own
MIME parse workers (mailsync.sync) inherit its niceness. With SYNC_PROCESS off, the pass runs
in the scheduler's thread. Per-account leases (SyncLease) keep any two processes from syncing
one account at once; the CLI (`flask sync`) calls `run_account_sync` in the foreground.
Interval passes sync folders other than INBOX and Sent only every
OTHER_FOLDERS_INTERVAL_SECONDS; "Sync now" and the CLI sync every folder. A second interval
job, `collect_garbage`, removes mail that left the server (mailsync.gc) in the scheduler's
own thread.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import socket
import threading
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from flask import Flask, current_app
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

import config
from extensions import db
from mailsync import gc, imap, store
from mailsync.blobstore import app_blob_store
from mailsync.storage_errors import storage_problem
from mailsync.sync import Progress, SyncResult, sync_account
from models import (
    SYNC_ERROR,
    SYNC_IMAP_DISABLED,
    SYNC_NEEDS_APP_PASSWORD,
    SYNC_NEEDS_REAUTH,
    SYNC_RUNNING,
    MailAccount,
    SyncLease,
    SyncRun,
)

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

log = logging.getLogger("threadline.jobs")

BACKOFF_BASE_SECONDS = 30
BACKOFF_CAP_SECONDS = 30 * 60
# A pass's lease lasts this long past its last renewal (a thread renews it every third of
# that), so a killed pass blocks its account for about a minute at most (SYNC_LEASE_SECONDS).
DEFAULT_LEASE_SECONDS = 60
SYNC_INTERRUPTED = "interrupted: the sync was stopped before it finished"
SYNC_JOB_ID = "mail-sync"
GC_JOB_ID = "mail-gc"
BLOB_SWEEP_JOB_ID = "mail-blob-sweep"

# Credential problems stop scheduled sync until the user enters new credentials (§6).
STATE_FOR_KIND = {
    imap.AUTH_FAILED: SYNC_NEEDS_REAUTH,
    imap.OAUTH_REQUIRED: SYNC_NEEDS_REAUTH,
    imap.APP_PASSWORD_REQUIRED: SYNC_NEEDS_APP_PASSWORD,
    imap.IMAP_DISABLED: SYNC_IMAP_DISABLED,
}


def _worker_id(pid: int) -> str:
    """Name a process in lease owners ("host:pid:<run>"), so its leases can be found."""
    return f"{socket.gethostname()}:{pid}"


_WORKER = _worker_id(os.getpid())


def start_scheduler(app: Flask):
    """Start the one in-process scheduler (never twice under the reloader)."""
    # Under `flask run --reload` the parent process only watches files; skip it.
    if app.debug and os.environ.get("WERKZEUG_RUN_MAIN") != "true":
        return None
    if app.extensions.get("threadline_scheduler"):
        return app.extensions["threadline_scheduler"]
    from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 60},
        timezone="UTC",
    )
    app.extensions["threadline_scheduler"] = scheduler
    scheduler.add_listener(lambda _event: stop_sync_process(app), EVENT_SCHEDULER_SHUTDOWN)
    schedule_sync_jobs(scheduler, app)
    scheduler.start()
    if app.config.get("SYNC_PROCESS"):
        # Started now, so a new mailbox's first sync does not wait ~1 s for it to boot.
        sync_process(app).warm()
    log.info("scheduler started")
    return scheduler


def schedule_sync_jobs(scheduler, app: Flask) -> None:
    """Add the periodic jobs: mail sync (every SYNC_INTERVAL_SECONDS), garbage collection and
    the blob sweep."""
    scheduler.add_job(
        sync_due_accounts,
        "interval",
        seconds=int(app.config.get("SYNC_INTERVAL_SECONDS", 120)),
        args=[app],
        id=SYNC_JOB_ID,
        replace_existing=True,
        next_run_time=datetime.now(UTC) + timedelta(seconds=5),
    )
    # Short SQL work in small batches, so it runs in the scheduler's thread (SYNC.md §1).
    scheduler.add_job(
        collect_garbage,
        "interval",
        seconds=int(app.config.get("GC_INTERVAL_SECONDS", 300)),
        args=[app],
        id=GC_JOB_ID,
        replace_existing=True,
    )
    # Walks the blob store: hourly is enough for a removed account's mail to leave the disk.
    scheduler.add_job(
        sweep_blobs,
        "interval",
        seconds=int(app.config.get("BLOB_SWEEP_INTERVAL_SECONDS", 3600)),
        args=[app],
        id=BLOB_SWEEP_JOB_ID,
        replace_existing=True,
    )


def sweep_blobs(app: Flask) -> int | None:
    """Delete stored mail no message references any more, e.g. a removed account's (the
    blob sweep job). Returns how many blobs went, or None when the sweep failed (logged)."""
    removed = _maintenance(
        app, "blob sweep", lambda: gc.sweep_unreferenced_blobs(app_blob_store(app))
    )
    if removed:
        log.info("blob sweep removed %s unreferenced blobs", removed)
    return removed


def collect_garbage(app: Flask) -> gc.Collected | None:
    """Hard-delete long-orphaned messages, their blobs and old empty threads (the GC job).

    Returns what was removed, or None when the collection failed (logged; the next run
    retries, since every step is idempotent).
    """
    collected = _maintenance(
        app,
        "garbage collection",
        lambda: gc.collect_garbage(
            app_blob_store(app),
            message_ttl_seconds=float(
                app.config.get("MESSAGE_GC_TTL_SECONDS", gc.MESSAGE_TTL_SECONDS)
            ),
            thread_ttl_seconds=float(
                app.config.get("THREAD_GC_TTL_SECONDS", gc.THREAD_TTL_SECONDS)
            ),
        ),
    )
    if collected and (collected.messages or collected.threads):
        log.info(
            "garbage collection removed %s messages, %s blobs, %s threads",
            collected.messages,
            collected.blobs,
            collected.threads,
        )
    return collected


def _maintenance(app: Flask, name: str, work):
    """Run a maintenance job's work in an app context; log and return None if it fails (the
    next run retries: the work is idempotent)."""
    with app.app_context():
        try:
            return work()
        except Exception:
            db.session.rollback()
            log.exception("%s failed", name)
            return None
        finally:
            db.session.remove()


def due_account_ids(now: datetime | None = None) -> list[int]:
    """Return ids of accounts to sync now: state running and not backing off."""
    now = now or datetime.now(UTC)
    return list(
        db.session.scalars(
            select(MailAccount.id)
            .where(
                MailAccount.sync_state == SYNC_RUNNING,
                or_(MailAccount.backoff_until.is_(None), MailAccount.backoff_until <= now),
            )
            .order_by(MailAccount.id)
        )
    )


def sync_due_accounts(app: Flask) -> None:
    """Sync every due account once, one after another (the interval job).

    These passes take INBOX and Sent every time, other folders every
    OTHER_FOLDERS_INTERVAL_SECONDS (SYNC.md §1).
    """
    with app.app_context():
        ids = due_account_ids()
        db.session.remove()
    for account_id in ids:
        try:
            run_scheduled_sync(app, account_id, all_folders=False)
        except Exception:
            log.exception("sync of account %s failed", account_id)


def sync_now(account_id: int, *, app: Flask | None = None) -> None:
    """Queue an immediate sync of all the account's folders ("Sync now"); returns at once."""
    app = app or current_app._get_current_object()
    scheduler = app.extensions.get("threadline_scheduler")
    if scheduler is not None:
        scheduler.add_job(
            run_scheduled_sync,
            args=[app, account_id],
            id=f"sync-now-{account_id}",
            replace_existing=True,
        )
    else:
        threading.Thread(target=run_scheduled_sync, args=(app, account_id), daemon=True).start()


def run_scheduled_sync(
    app: Flask, account_id: int, *, budget_seconds: float | None = None, all_folders: bool = True
) -> SyncResult | None:
    """Run one background sync pass of the account and wait for it to end.

    With SYNC_PROCESS set the pass runs in the app's sync process, else in this thread.
    Returns what run_account_sync returns (None when another worker holds the lease); if the
    sync process dies mid-pass, an "internal" error result instead of raising.
    """
    if not app.config.get("SYNC_PROCESS"):
        return run_account_sync(
            app, account_id, budget_seconds=budget_seconds, all_folders=all_folders
        )
    result = sync_process(app).run(
        account_id, budget_seconds=budget_seconds, all_folders=all_folders
    )
    if isinstance(result, InterruptedPass):
        _close_interrupted_pass(app, account_id, result)
    return result


@dataclass
class InterruptedPass(SyncResult):
    """The result of a pass whose sync process died; `died_pid` was that process."""

    died_pid: int = 0


def _close_interrupted_pass(app: Flask, account_id: int, result: InterruptedPass) -> None:
    """Finish what a dead sync process left: its unfinished run (so the account page stops
    saying "syncing" and backoff applies) and its lease (so the next tick may sync)."""
    died_pid = result.died_pid
    with app.app_context():
        try:
            run = db.session.scalar(
                select(SyncRun)
                .where(SyncRun.account_id == account_id, SyncRun.finished_at.is_(None))
                .order_by(SyncRun.id.desc())
                .limit(1)
            )
            if run is not None:
                _record(account_id, run.id, result)
            if died_pid:
                table = SyncLease.__table__
                db.session.execute(
                    delete(table).where(
                        table.c.account_id == account_id,
                        table.c.owner.startswith(f"{_worker_id(died_pid)}:"),
                    )
                )
                db.session.commit()
        except Exception:
            db.session.rollback()
            log.exception("account %s: closing the interrupted sync pass failed", account_id)
        finally:
            db.session.remove()


# --------------------------------------------------------------------------- sync process

SYNC_PROCESS_STOPPED = "the sync process stopped unexpectedly"
_SYNC_PROCESS_KEY = "threadline_sync_process"
_registry_lock = threading.Lock()
_started: set[SyncProcess] = set()  # processes with a live pool, stopped at interpreter exit
_exiting = False
_child_app: Flask | None = None  # the app of this process when it is a sync process


class SyncProcess:
    """One long-lived child process, started on first use, that runs an app's sync passes.

    The child lowers its CPU priority, builds the app once from the parent's create_app
    overrides and then runs one pass per `run` call; concurrent calls queue (one worker).
    A child that dies is replaced on the next call.
    """

    def __init__(self, overrides: dict, *, nice: int) -> None:
        self.overrides = dict(overrides)
        self.nice = nice
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._pid: Synchronized[int] | None = None  # the child writes its pid here

    @property
    def pid(self) -> int | None:
        """Return the running child's process id, or None before it has started."""
        slot = self._pid
        return (slot.value or None) if slot is not None else None

    def run(
        self, account_id: int, *, budget_seconds: float | None = None, all_folders: bool = True
    ) -> SyncResult | None:
        """Run run_account_sync for the account in the child and return its result.

        When the child dies mid-pass, the result says so and `died_pid` is its process id.
        """
        pool = self._pool_or_start()
        slot = self._pid
        try:
            return pool.submit(_sync_in_child, account_id, budget_seconds, all_folders).result()
        except BrokenProcessPool:
            if self._discard(pool):  # else stop() ended it on purpose
                log.error("account %s: the sync process stopped unexpectedly", account_id)
            return InterruptedPass(
                account_id=account_id,
                error=SYNC_PROCESS_STOPPED,
                error_kind="internal",
                died_pid=slot.value if slot is not None else 0,
            )

    def warm(self) -> None:
        """Start the child in the background (if it is not running) without waiting for it."""
        self._pool_or_start().submit(_ready)

    def stop(self, *, wait: bool = False) -> None:
        """End the child now: a running pass stops mid-way, queued ones fail.

        Safe at any point: every sync step is idempotent and the cut pass's lease expires.
        With wait, return only once the child has exited. The next `run` starts a new child.
        """
        with self._lock:
            pool, slot, self._pool, self._pid = self._pool, self._pid, None, None
        with _registry_lock:
            _started.discard(self)
        if pool is None:
            return
        # Kill first: shutting down alone would wait for a running pass to finish.
        if slot is not None and slot.value:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.value, signal.SIGTERM)
        pool.shutdown(wait=wait, cancel_futures=True)

    def _pool_or_start(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                with _registry_lock:
                    if _exiting:
                        raise RuntimeError("the interpreter is exiting")
                    _register_exit_hook()
                    _started.add(self)
                context = multiprocessing.get_context("spawn")
                self._pid = context.Value("i", 0)
                root = logging.getLogger()
                log_level = root.getEffectiveLevel() if root.handlers else None
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=context,
                    initializer=_start_child,
                    initargs=(self.overrides, self.nice, self._pid, log_level),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> bool:
        """Drop a broken pool so the next run starts a fresh child; False if already dropped."""
        with self._lock:
            current = self._pool is pool
            if current:
                self._pool, self._pid = None, None
        pool.shutdown(wait=False, cancel_futures=True)
        return current


def sync_process(app: Flask) -> SyncProcess:
    """Return the app's sync process (created on first use; its child starts on first run)."""
    with _registry_lock:
        process = app.extensions.get(_SYNC_PROCESS_KEY)
        if process is None:
            process = SyncProcess(
                app.extensions.get("threadline_config_overrides", {}),
                nice=int(app.config.get("SYNC_PROCESS_NICE", 10)),
            )
            app.extensions[_SYNC_PROCESS_KEY] = process
    return process


def stop_sync_process(app: Flask, *, wait: bool = False) -> None:
    """Stop the app's sync process if it runs (the scheduler's shutdown does this)."""
    process = app.extensions.get(_SYNC_PROCESS_KEY)
    if process is not None:
        process.stop(wait=wait)


_exit_hook_registered = False


def _register_exit_hook() -> None:
    # atexit would run too late: the interpreter first joins ProcessPoolExecutor's manager
    # threads, and that join waits for a running pass (up to its budget). threading's exit
    # hooks run before that join, newest first; concurrent.futures registers its own there.
    global _exit_hook_registered
    if not _exit_hook_registered:
        threading._register_atexit(_stop_all)
        _exit_hook_registered = True


def _stop_all() -> None:
    global _exiting
    with _registry_lock:
        _exiting = True
        processes = list(_started)
    for process in processes:
        process.stop()


def _start_child(
    overrides: dict, nice: int, pid_slot: Synchronized[int], log_level: int | None
) -> None:
    """Set up the sync process: lower its priority, build its app once."""
    global _child_app
    pid_slot.value = os.getpid()
    os.nice(nice)
    # Ctrl-C in a terminal reaches the whole process group; the serving process handles it
    # and stops this child with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: _end_child())
    # A serving process killed without clean-up (SIGKILL, or SIGTERM's default action) cannot
    # stop this child, and an idle child would wait for work forever: follow the parent out.
    threading.Thread(target=_end_child_with_parent, name="parent-watch", daemon=True).start()
    if log_level is not None:
        logging.basicConfig(level=log_level, format=config.LOG_FORMAT)
    from app import create_app  # this is a process entry point, like `flask --app app`

    _child_app = create_app({**overrides, "SCHEDULER_ENABLED": False, "SYNC_PROCESS": False})


def _end_child_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        _end_child()


def _end_child() -> None:
    """End the sync process now, with its MIME parse workers (left alone they would linger)."""
    for worker in multiprocessing.active_children():
        worker.terminate()
    os._exit(1)


def _ready() -> None:
    """Nothing: submitted by SyncProcess.warm so the child starts and builds its app."""


def _sync_in_child(
    account_id: int, budget_seconds: float | None, all_folders: bool
) -> SyncResult | None:
    """Run one sync pass in the sync process (submitted by SyncProcess.run)."""
    assert _child_app is not None, "called outside the sync process"
    return run_account_sync(
        _child_app, account_id, budget_seconds=budget_seconds, all_folders=all_folders
    )


# --------------------------------------------------------------------------- lease


def acquire_lease(account_id: int, owner: str, *, seconds: float) -> bool:
    """Take the account's sync lease if free or expired (conditional UPDATE, then INSERT)."""
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=seconds)
    table = SyncLease.__table__
    taken = db.session.execute(
        update(table)
        .where(
            table.c.account_id == account_id,
            or_(table.c.expires_at < now, table.c.owner == owner),
        )
        .values(owner=owner, expires_at=expires)
    ).rowcount
    if taken:
        db.session.commit()
        return True
    try:
        db.session.execute(
            insert(table).values(account_id=account_id, owner=owner, expires_at=expires)
        )
        db.session.commit()
        return True
    except IntegrityError:
        db.session.rollback()  # someone else holds a live lease
        return False


def lease_seconds(app: Flask) -> float:
    """Return how long a pass's lease lasts from its last renewal (SYNC_LEASE_SECONDS)."""
    return float(app.config.get("SYNC_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))


class LeaseKeeper:
    """The heartbeat of one pass: a thread that renews its lease every third of the lease.

    The lease is short, so a pass whose process died (kill -9, power loss) blocks the
    account for one lease at most. A thread renews it because the pass itself can spend
    longer than that between safe points (one slow FETCH, a big transaction); it uses
    connections of its own from the engine's pool, never the pass's session. Calling the
    keeper is the pass's cheap check at its safe points: False once another worker holds
    the lease (renewal found it taken), and the pass then stops.
    """

    def __init__(self, account_id: int, owner: str, seconds: float) -> None:
        self.engine = db.engine  # read in the caller's app context; the thread has none
        self.account_id = account_id
        self.owner = owner
        self.seconds = seconds
        self.lost = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self._renew_until_stopped, name=f"lease-{account_id}", daemon=True
        )

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.thread.join()

    def __call__(self) -> bool:
        """Return False once another worker holds the lease."""
        return not self.lost.is_set()

    def _renew_until_stopped(self) -> None:
        while not self.stopped.wait(self.seconds / 3):
            try:
                if not self._renew():
                    self.lost.set()
                    return
            except Exception:
                # A locked or busy database: the next renewal, a third of a lease later,
                # tries again before the lease can run out.
                log.exception("account %s: renewing the sync lease failed", self.account_id)

    def _renew(self) -> bool:
        table = SyncLease.__table__
        expires = datetime.now(UTC) + timedelta(seconds=self.seconds)
        with self.engine.begin() as connection:
            renewed = connection.execute(
                update(table)
                .where(table.c.account_id == self.account_id, table.c.owner == self.owner)
                .values(expires_at=expires)
            ).rowcount
        return bool(renewed)


def release_lease(account_id: int, owner: str) -> None:
    """Give the lease back (only if we still hold it)."""
    table = SyncLease.__table__
    db.session.execute(
        delete(table).where(table.c.account_id == account_id, table.c.owner == owner)
    )
    db.session.commit()


def backoff_seconds(failures: int) -> float:
    """Return the wait after `failures` consecutive transient failures (exp. + jitter)."""
    base = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1))
    return base + random.uniform(1, 10)


# --------------------------------------------------------------------------- the job


def run_account_sync(
    app: Flask,
    account_id: int,
    *,
    budget_seconds: float | None = None,
    progress: Progress | None = None,
    all_folders: bool = True,
) -> SyncResult | None:
    """Sync one account under its lease, record a SyncRun and update the account state.

    all_folders=False is the scheduled pass (see mailsync.sync.sync_account). Returns None
    when another worker holds the lease (nothing ran).
    """
    budget = budget_seconds or float(app.config.get("SYNC_BUDGET_SECONDS", 90))
    owner = f"{_WORKER}:{uuid.uuid4().hex[:8]}"
    lease = lease_seconds(app)
    with app.app_context():
        try:
            if not acquire_lease(account_id, owner, seconds=lease):
                log.info("account %s is already being synced; skipped", account_id)
                return None
            # With the lease held no other pass of this account runs, so an unfinished run
            # is one whose process died (kill -9, power loss) and left it behind.
            db.session.execute(
                update(SyncRun)
                .where(SyncRun.account_id == account_id, SyncRun.finished_at.is_(None))
                .values(finished_at=datetime.now(UTC), error=SYNC_INTERRUPTED)
            )
            run = SyncRun(account_id=account_id, started_at=datetime.now(UTC))
            db.session.add(run)
            db.session.commit()
            run_id = run.id
            keeper = LeaseKeeper(account_id, owner, lease)
        except Exception as exc:
            # A database that cannot be written (disk full, read-only) cannot record the
            # problem either: it is reported to the caller (the CLI prints it) and logged.
            db.session.rollback()
            problem = storage_problem(exc, app.instance_path)
            if problem is None:
                raise
            log.error("account %s: not synced: %s (%s)", account_id, problem.message, exc)
            return SyncResult(account_id=account_id, error=problem.message, error_kind=problem.kind)
        finally:
            db.session.remove()
    try:
        with keeper:
            result = sync_account(
                account_id,
                app=app,
                budget_seconds=budget,
                progress=progress,
                all_folders=all_folders,
                heartbeat=keeper,
            )
    except Exception as exc:  # sync_account reports errors itself; this is a last resort
        log.exception("account %s: sync crashed", account_id)
        result = SyncResult(account_id=account_id, error=str(exc), error_kind="internal")
    except BaseException:
        # Ctrl-C or SIGTERM (the CLI turns it into SyncInterrupted): give the lease back now,
        # so the next pass need not wait for it to expire, and say so on the run.
        _finish_interrupted(app, account_id, run_id, owner)
        raise
    with app.app_context():
        try:
            _record(account_id, run_id, result)
            _refresh_statistics(result)
        except Exception as exc:
            # The pass's own failure may be a full disk, which these writes then hit too.
            db.session.rollback()
            problem = storage_problem(exc, app.instance_path)
            if problem is None:
                raise
            log.error("account %s: the pass was not recorded: %s", account_id, problem.message)
            if result.error is None:
                result.error, result.error_kind = problem.message, problem.kind
        finally:
            _release_lease_if_possible(app, account_id, owner)
            db.session.remove()
    return result


def _release_lease_if_possible(app: Flask, account_id: int, owner: str) -> None:
    """Give the lease back; on a disk that refuses the write it runs out by itself."""
    try:
        release_lease(account_id, owner)
    except Exception as exc:
        db.session.rollback()
        if storage_problem(exc, app.instance_path) is None:
            raise
        log.error("account %s: the lease ends within SYNC_LEASE_SECONDS (disk)", account_id)


class SyncInterrupted(BaseException):
    """Raised in a foreground pass (`flask sync`) when SIGTERM asks it to stop.

    A BaseException like KeyboardInterrupt, so the engine's "any error" handlers let it
    through and it ends the pass where it is; every sync step is idempotent.
    """


def _finish_interrupted(app: Flask, account_id: int, run_id: int, owner: str) -> None:
    """Mark a pass stopped by a signal as interrupted and release its lease.

    The account's state and backoff stay as they are: an operator stopped the pass, the
    mail server did nothing wrong.
    """
    with app.app_context():
        try:
            db.session.rollback()
            run = db.session.get(SyncRun, run_id)
            if run is not None:
                run.finished_at = datetime.now(UTC)
                run.error = SYNC_INTERRUPTED
            db.session.commit()
        finally:
            release_lease(account_id, owner)
            db.session.remove()


def _refresh_statistics(result: SyncResult) -> None:
    """Keep the query planner's statistics current after a run (a failure is only logged)."""
    try:
        store.refresh_statistics(result.new)
        db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception("account %s: refreshing planner statistics failed", result.account_id)


def _record(account_id: int, run_id: int, result: SyncResult) -> None:
    now = datetime.now(UTC)
    run = db.session.get(SyncRun, run_id)
    account = db.session.get(MailAccount, account_id)
    if run is None or account is None:  # the account was deleted while syncing
        db.session.commit()
        return
    run.finished_at = now
    run.new_count = result.new
    run.changed_count = result.changed
    run.deleted_count = result.deleted
    run.error = result.error
    if result.error is None:
        account.last_error = None  # the trouble is over; last_error_at keeps when it was
        account.consecutive_failures = 0
        account.backoff_until = None
        account.last_success_at = now
        if account.sync_state == SYNC_ERROR:
            account.sync_state = SYNC_RUNNING  # paused and credential states stay as they are
    else:
        account.last_error = result.error
        account.last_error_at = now
        state = STATE_FOR_KIND.get(result.error_kind or "")
        if state is None and result.needs_user_action:
            state = SYNC_ERROR  # e.g. untrusted certificate: retrying cannot help
        if state is not None:
            account.sync_state = state  # stop scheduling: retrying bad passwords locks accounts
        else:
            account.consecutive_failures += 1
            account.backoff_until = now + timedelta(
                seconds=backoff_seconds(account.consecutive_failures)
            )
    db.session.commit()
