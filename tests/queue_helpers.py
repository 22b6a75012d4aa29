"""Run queued jobs in the test process, as the worker's loop does (worker.run_one_job)."""

from __future__ import annotations

import contextlib
import threading

from extensions import db
from worker import run_one_job

TEST_WORKER = "test-worker"


def run_pending_jobs(app, *, limit: int = 200) -> int:
    """Run every job that is runnable now, one at a time; return how many ran."""
    ran = 0
    while ran < limit and run_one_job(app, TEST_WORKER):
        ran += 1
    db.session.expire_all()  # the jobs wrote through sessions of their own
    return ran


def run_scheduled_passes(app) -> int:
    """Run the worker's interval job (queue a pass per due account), then the queued jobs."""
    import jobs

    jobs.queue_due_syncs(app)
    return run_pending_jobs(app)


def run_sync_now(app, account_id: int) -> int:
    """Press "Sync now" for the account and let the worker run it."""
    from services.accounts import request_sync

    request_sync(account_id)
    return run_pending_jobs(app)


@contextlib.contextmanager
def running_worker(app, *, poll_seconds: float = 0.1):
    """Run the worker's job loop (worker.run_one_job) in a thread while the block runs, as
    the worker process would beside a live server."""
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.is_set():
            if not run_one_job(app, TEST_WORKER):
                stopped.wait(poll_seconds)

    thread = threading.Thread(target=loop, name="test-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join(timeout=120)
