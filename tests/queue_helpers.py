"""Run queued jobs in the test process, as the worker's loop does (worker.run_one_job)."""

from __future__ import annotations

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
