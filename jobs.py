"""Background work the worker runs (worker.py): sync passes, maintenance, and the schedule.

The worker's APScheduler queues a scheduled pass for each due account every
SYNC_INTERVAL_SECONDS (`queue_due_syncs`), beside "Sync now" jobs from the web side; the
worker's job loop runs both through `run_account_sync`, in the worker process itself.
Per-account leases (SyncLease) keep any two processes from syncing one account at once; the
CLI (`flask sync`) calls `run_account_sync` in the foreground. Scheduled passes sync folders
other than INBOX and Sent only every OTHER_FOLDERS_INTERVAL_SECONDS; "Sync now" and the CLI
sync every folder. Two more interval jobs run in the scheduler's own thread: `collect_garbage`
removes mail that left the server (mailsync.gc) and old finished jobs, `sweep_blobs` removes
unreferenced raw mail. The send tick (`send_due_mail`, every SEND_POLL_SECONDS) sends due
outgoing mail (mailsync.send) in the scheduler's thread, so a long sync never delays it.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from extensions import db
from mailsync import gc, imap, send, store
from mailsync.blobstore import app_blob_store
from mailsync.storage_errors import storage_problem
from mailsync.sync import Progress, SyncResult, YieldTo, sync_account
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
from services import job_queue, search

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
JOB_CLEANUP_JOB_ID = "job-cleanup"
SEND_JOB_ID = "mail-send"
# A mail "sending" this long is taken for one a stopped worker left behind (a send gives up
# after a few minutes of SMTP timeouts).
SEND_STUCK_SECONDS = 600

# Credential problems stop scheduled sync until the user enters new credentials (§6).
STATE_FOR_KIND = {
    imap.AUTH_FAILED: SYNC_NEEDS_REAUTH,
    imap.OAUTH_REQUIRED: SYNC_NEEDS_REAUTH,
    imap.APP_PASSWORD_REQUIRED: SYNC_NEEDS_APP_PASSWORD,
    imap.IMAP_DISABLED: SYNC_IMAP_DISABLED,
}


def worker_name() -> str:
    """Name this process in lease owners ("host:pid"), for logs and troubleshooting."""
    return f"{socket.gethostname()}:{os.getpid()}"


def schedule_sync_jobs(scheduler, app: Flask) -> None:
    """Add the periodic jobs: mail sync (every SYNC_INTERVAL_SECONDS), garbage collection and
    the blob sweep."""
    scheduler.add_job(
        queue_due_syncs,
        "interval",
        seconds=int(app.config.get("SYNC_INTERVAL_SECONDS", 120)),
        args=[app],
        id=SYNC_JOB_ID,
        replace_existing=True,
        # Soon after the worker starts, so a restart never delays mail by a whole interval.
        next_run_time=datetime.now(UTC)
        + timedelta(seconds=float(app.config.get("SYNC_START_DELAY_SECONDS", 5))),
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
    scheduler.add_job(
        forget_finished_jobs,
        "interval",
        seconds=int(app.config.get("GC_INTERVAL_SECONDS", 300)),
        args=[app],
        id=JOB_CLEANUP_JOB_ID,
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


def schedule_send_job(scheduler, app: Flask, *, started_at: datetime | None = None) -> None:
    """Add the send tick: due mail is sent within SEND_POLL_SECONDS (default 5)."""
    started_at = started_at or datetime.now(UTC)
    scheduler.add_job(
        send_due_mail,
        "interval",
        seconds=float(app.config.get("SEND_POLL_SECONDS", 5)),
        args=[app],
        kwargs={"started_at": started_at},
        id=SEND_JOB_ID,
        replace_existing=True,
        next_run_time=datetime.now(UTC),
    )


def send_due_mail(app: Flask, *, started_at: datetime) -> dict[int, str | None]:
    """The send tick: settle mail a stopped worker left "sending", then send what is due.

    Runs in the scheduler's thread (max_instances=1), so a long sync in the job loop never
    delays a send. Mail this worker claimed is never taken for left behind: only mail
    claimed before the worker started, or stuck for SEND_STUCK_SECONDS, is recovered.
    """
    stuck = datetime.now(UTC) - timedelta(seconds=SEND_STUCK_SECONDS)
    results: dict[int, str | None] = {}
    try:
        results.update(send.recover_interrupted(app, before=max(started_at, stuck)))
        results.update(send.send_due(app))
    except Exception:
        log.exception("the send tick failed")
    return results


def forget_finished_jobs(app: Flask) -> int | None:
    """Delete done and failed jobs older than JOB_KEEP_SECONDS; None when that failed."""
    keep = timedelta(seconds=float(app.config.get("JOB_KEEP_SECONDS", 7 * 24 * 3600)))
    return _maintenance(
        app, "job cleanup", lambda: job_queue.delete_finished(before=datetime.now(UTC) - keep)
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


def queue_due_syncs(app: Flask) -> None:
    """Queue a scheduled pass of every due account (the interval job; the job loop runs them).

    These passes take INBOX and Sent every time, other folders every
    OTHER_FOLDERS_INTERVAL_SECONDS (SYNC.md §1).
    """
    from services.accounts import request_sync

    with app.app_context():
        try:
            for account_id in due_account_ids():
                request_sync(account_id, all_folders=False)
        except Exception:
            db.session.rollback()
            log.exception("queueing the scheduled sync passes failed")
        finally:
            db.session.remove()


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
    base = job_queue.backoff_seconds(failures, BACKOFF_BASE_SECONDS, cap=BACKOFF_CAP_SECONDS)
    return base + random.uniform(1, 10)


# --------------------------------------------------------------------------- the job


def run_account_sync(
    app: Flask,
    account_id: int,
    *,
    budget_seconds: float | None = None,
    progress: Progress | None = None,
    all_folders: bool = True,
    yield_to: YieldTo | None = None,
) -> SyncResult | None:
    """Sync one account under its lease, record a SyncRun and update the account state.

    all_folders=False is the scheduled pass and `yield_to` stops it early for more urgent
    work (see mailsync.sync.sync_account). Returns None when another worker holds the lease
    (nothing ran).
    """
    budget = budget_seconds or float(app.config.get("SYNC_BUDGET_SECONDS", 90))
    owner = f"{worker_name()}:{uuid.uuid4().hex[:8]}"
    lease = lease_seconds(app)
    leased, run_id = False, None
    try:
        with app.app_context():
            try:
                if not acquire_lease(account_id, owner, seconds=lease):
                    log.info("account %s is already being synced; skipped", account_id)
                    return None
                leased = True
                # With the lease held no other pass of this account runs, so an unfinished
                # run is one whose process died (kill -9, power loss) and left it behind.
                db.session.execute(
                    update(SyncRun)
                    .where(SyncRun.account_id == account_id, SyncRun.finished_at.is_(None))
                    .values(finished_at=datetime.now(UTC), error=SYNC_INTERRUPTED)
                )
                run = SyncRun(account_id=account_id, started_at=datetime.now(UTC))
                db.session.add(run)
                db.session.flush()
                # Known before the commit: reading run.id after it reloads the row, and a
                # SIGTERM landing in that reload left the run unfinished (seen in a full run).
                run_id = run.id
                db.session.commit()
                keeper = LeaseKeeper(account_id, owner, lease)
            except Exception as exc:
                # A database that cannot be written (disk full, read-only) cannot record the
                # problem either: it is reported to the caller (the CLI prints it) and logged.
                db.session.rollback()
                problem = storage_problem(exc, app.instance_path)
                if problem is None:
                    raise
                log.error("account %s: not synced: %s (%s)", account_id, problem.message, exc)
                return SyncResult(
                    account_id=account_id, error=problem.message, error_kind=problem.kind
                )
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
                    yield_to=yield_to,
                )
        except Exception as exc:  # sync_account reports errors itself; this is a last resort
            log.exception("account %s: sync crashed", account_id)
            result = SyncResult(account_id=account_id, error=str(exc), error_kind="internal")
    except BaseException:
        # Ctrl-C or SIGTERM (the CLI turns it into SyncInterrupted), wherever it lands once
        # the lease is held, even between recording the run and starting the pass: give the
        # lease back now, so the next pass need not wait for it to expire, and say so on the
        # run.
        if leased:
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


def _finish_interrupted(app: Flask, account_id: int, run_id: int | None, owner: str) -> None:
    """Mark a pass stopped by a signal as interrupted and release its lease.

    The account's state and backoff stay as they are: an operator stopped the pass, the
    mail server did nothing wrong.
    """
    with app.app_context():
        try:
            db.session.rollback()
            run = db.session.get(SyncRun, run_id) if run_id is not None else None
            if run is not None:
                run.finished_at = datetime.now(UTC)
                run.error = SYNC_INTERRUPTED
            db.session.commit()
        finally:
            release_lease(account_id, owner)
            db.session.remove()


def _refresh_statistics(result: SyncResult) -> None:
    """Keep the query planner's statistics and the search index current after a run (a
    failure is only logged)."""
    try:
        store.refresh_statistics(result.new)
        db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception("account %s: refreshing planner statistics failed", result.account_id)
    if not result.new:
        return
    try:
        # Apart from the statistics: on PostgreSQL only the index's owner may merge.
        search.merge_pending_entries(db.session.connection())
        db.session.commit()
    except Exception as exc:
        db.session.rollback()
        log.warning("account %s: merging new search entries failed: %s", result.account_id, exc)


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
    run.entries_not_kept = result.log.more
    run.error = result.error
    store.save_run_log(run_id, result.log)
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
