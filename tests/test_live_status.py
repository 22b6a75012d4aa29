"""The account status page keeps itself current while a sync runs, then stops polling."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select

import jobs
from extensions import db
from models import SyncRun
from services.accounts import Progress, time_left_label
from tests.mail_fixtures import build_message
from tests.queue_helpers import run_pending_jobs
from tests.sync_helpers import raw_message, split_backfills


@pytest.mark.parametrize(
    ("progress", "start_done", "start_at", "now", "label"),
    [
        (Progress(done=100, total=1000), 0, 0.0, 10.0, "About 2 minutes left."),  # 900 at 10/s
        (Progress(done=500, total=1000), 400, 0.0, 10.0, "About a minute left."),  # 50 s
        (Progress(done=990, total=1000), 900, 0.0, 10.0, "About a minute left."),
        (Progress(done=10, total=100_000), 0, 0.0, 10.0, "About 27.8 hours left."),
        (Progress(done=100, total=1000), 100, 0.0, 10.0, None),  # no progress seen yet
        (Progress(done=100, total=1000), 50, 0.0, 2.0, None),  # too soon to tell
        (Progress(done=1000, total=1000), 0, 0.0, 10.0, None),  # done
        (Progress(done=0, total=0, pending=True), 0, 0.0, 10.0, None),  # totals not known yet
    ],
)
def test_time_left_is_estimated_from_the_rate_seen(progress, start_done, start_at, now, label):
    assert time_left_label(progress, start_done, start_at, now) == label


@pytest.mark.imap
def test_the_status_page_polls_while_syncing_and_stops_when_idle(
    app, dovecot, mail_user, make_user, make_account, login
):
    app.config["MAIL_ALLOWED_PORTS"] = None
    for n in range(3):
        dovecot.deliver(mail_user.email, build_message(subject=f"Mail {n}", to=mail_user.email))
    user = make_user()
    account = make_account(user, mail_user)
    client = login(user)

    client.post(f"/settings/accounts/{account.id}/sync")  # queued: the page goes live
    page = client.get(f"/settings/accounts/{account.id}").get_data(as_text=True)
    assert 'id="account-status"' in page and 'hx-trigger="every 2s"' in page
    fragment = client.get(f"/settings/accounts/{account.id}/status")
    assert fragment.status_code == 200 and "<html" not in fragment.get_data(as_text=True)

    assert run_pending_jobs(app) >= 1  # the worker runs the sync
    fragment = html.unescape(
        client.get(f"/settings/accounts/{account.id}/status").get_data(as_text=True)
    )
    assert 'hx-trigger="every 2s"' not in fragment  # idle: polling stops
    assert "Up to date" in fragment or "up to date" in fragment.lower()
    assert "Last successful sync</dt><dd><time" in fragment  # no longer "never"
    assert "INBOX" in fragment and "<td>3</td>" in fragment  # the folder table is current


def test_the_poll_url_carries_where_progress_started(app, make_user, make_stored_account, login):
    user = make_user()
    account = make_stored_account(user)
    client = login(user)
    bad = client.get(f"/settings/accounts/{account.id}/status?start_done=x&start_at=nan")
    assert bad.status_code == 200  # junk parameters are ignored, never a 500


@pytest.mark.imap
def test_the_accounts_list_shows_a_live_bar_per_account(
    app, dovecot, mail_user, make_user, make_account, login
):
    app.config["MAIL_ALLOWED_PORTS"] = None
    user = make_user()
    account = make_account(user, mail_user)
    client = login(user)
    client.post(f"/settings/accounts/{account.id}/sync")
    page = client.get("/settings/accounts/").get_data(as_text=True)
    bar = f'id="sync-progress-{account.id}"'
    assert bar in page and f"/settings/accounts/{account.id}/progress?bar=1" in page
    polled = client.get(f"/settings/accounts/{account.id}/progress?bar=1").get_data(as_text=True)
    assert bar in polled and "bar=1" in polled  # the bar keeps its place and its poll
    run_pending_jobs(app)
    polled = client.get(f"/settings/accounts/{account.id}/progress?bar=1").get_data(as_text=True)
    assert "every 2s" not in polled  # idle: it stops


@pytest.mark.imap
def test_the_run_log_counts_every_pass_of_a_split_first_sync(
    app, dovecot, mail_user, make_user, make_account, login
):
    """The first, newest-first pass stores mail too: the log says how many, and all passes
    together add up to the mailbox."""
    for n in range(1, 46):
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))
    user = make_user()
    account = make_account(user, mail_user)
    account_id = account.id
    with split_backfills(batches=2):
        while True:
            result = jobs.run_account_sync(app, account_id)
            assert result.ok, result.error
            if result.complete and result.new == 0:
                break
    runs = db.session.scalars(
        select(SyncRun).where(SyncRun.account_id == account_id).order_by(SyncRun.id)
    ).all()
    assert runs[0].new_count == 20  # two batches of the newest mail, counted at once
    assert sum(run.new_count for run in runs) == 45

    page = login(user).get(f"/settings/accounts/{account_id}").get_data(as_text=True)
    log = page[page.index("Recent sync runs") :]
    new_column = re.findall(r"</td>\s*<td>(\d+)</td><td>\d+</td><td>\d+</td>", log)
    assert new_column[-1] == "20"  # the oldest run shown: the first pass
    assert sum(map(int, new_column)) == 45
