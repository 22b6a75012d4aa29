"""Scheduler wiring and thin job functions that take ids and call mailsync/services."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta

from flask import Flask, current_app
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from extensions import db
from mailsync import imap, store
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

log = logging.getLogger("threadline.jobs")

BACKOFF_BASE_SECONDS = 30
BACKOFF_CAP_SECONDS = 30 * 60
SYNC_JOB_ID = "mail-sync"

# Credential problems stop scheduled sync until the user enters new credentials (§6).
STATE_FOR_KIND = {
    imap.AUTH_FAILED: SYNC_NEEDS_REAUTH,
    imap.OAUTH_REQUIRED: SYNC_NEEDS_REAUTH,
    imap.APP_PASSWORD_REQUIRED: SYNC_NEEDS_APP_PASSWORD,
    imap.IMAP_DISABLED: SYNC_IMAP_DISABLED,
}

_WORKER = f"{socket.gethostname()}:{os.getpid()}"


def start_scheduler(app: Flask):
    """Start the one in-process scheduler (never twice under the reloader)."""
    # Under `flask run --reload` the parent process only watches files; skip it.
    if app.debug and os.environ.get("WERKZEUG_RUN_MAIN") != "true":
        return None
    if app.extensions.get("threadline_scheduler"):
        return app.extensions["threadline_scheduler"]
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 60},
        timezone="UTC",
    )
    app.extensions["threadline_scheduler"] = scheduler
    schedule_sync_jobs(scheduler, app)
    scheduler.start()
    log.info("scheduler started")
    return scheduler


def schedule_sync_jobs(scheduler, app: Flask) -> None:
    """Add the periodic mail sync job (every SYNC_INTERVAL_SECONDS)."""
    scheduler.add_job(
        sync_due_accounts,
        "interval",
        seconds=int(app.config.get("SYNC_INTERVAL_SECONDS", 120)),
        args=[app],
        id=SYNC_JOB_ID,
        replace_existing=True,
        next_run_time=datetime.now(UTC) + timedelta(seconds=5),
    )


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
    """Sync every due account once, one after another (the interval job)."""
    with app.app_context():
        ids = due_account_ids()
        db.session.remove()
    for account_id in ids:
        try:
            run_account_sync(app, account_id)
        except Exception:
            log.exception("sync of account %s failed", account_id)


def sync_now(account_id: int, *, app: Flask | None = None) -> None:
    """Queue an immediate sync of one account (the "Sync now" button); returns at once."""
    app = app or current_app._get_current_object()
    scheduler = app.extensions.get("threadline_scheduler")
    if scheduler is not None:
        scheduler.add_job(
            run_account_sync,
            args=[app, account_id],
            id=f"sync-now-{account_id}",
            replace_existing=True,
        )
    else:
        threading.Thread(target=run_account_sync, args=(app, account_id), daemon=True).start()


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
) -> SyncResult | None:
    """Sync one account under its lease, record a SyncRun and update the account state.

    Returns None when another worker holds the lease (nothing ran).
    """
    budget = budget_seconds or float(app.config.get("SYNC_BUDGET_SECONDS", 90))
    owner = f"{_WORKER}:{uuid.uuid4().hex[:8]}"
    with app.app_context():
        if not acquire_lease(account_id, owner, seconds=budget * 2 + 120):
            log.info("account %s is already being synced; skipped", account_id)
            db.session.remove()
            return None
        run = SyncRun(account_id=account_id, started_at=datetime.now(UTC))
        db.session.add(run)
        db.session.commit()
        run_id = run.id
        db.session.remove()
    try:
        result = sync_account(account_id, app=app, budget_seconds=budget, progress=progress)
    except Exception as exc:  # sync_account reports errors itself; this is a last resort
        log.exception("account %s: sync crashed", account_id)
        result = SyncResult(account_id=account_id, error=str(exc), error_kind="internal")
    with app.app_context():
        try:
            _record(account_id, run_id, result)
            _refresh_statistics(result)
        finally:
            release_lease(account_id, owner)
            db.session.remove()
    return result


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
