"""Scheduler wiring and thin job functions that take ids and call mailsync/services."""

from __future__ import annotations

import logging
import os

from flask import Flask

log = logging.getLogger("threadline.jobs")


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
    scheduler.start()
    log.info("scheduler started")
    return scheduler
