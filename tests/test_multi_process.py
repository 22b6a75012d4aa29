"""Several web processes and one worker on one PostgreSQL database (issue 11).

The layout the README describes for a team: `flask init-db`, two `flask serve` processes
with THREADLINE_SCHEDULER_ENABLED=0 (web only) and one `flask worker`, all real processes
sharing one PostgreSQL database and one instance folder, with a real Dovecot. One browser
presses "Sync now" on web process 1 while another marks conversations read, unread and
archived on web process 2; the worker is killed (SIGKILL) midway and a new one started.
Afterwards every job ran exactly once, nothing is left queued, no write is lost and no
message is stored twice.

Always PostgreSQL, whatever THREADLINE_TEST_DATABASE says: the module's `app` fixture does
not use `database_uri`, so the PostgreSQL pass of `make test` deselects it
(conftest.pytest_collection_modifyitems) and it runs once, in the SQLite pass.
"""

from __future__ import annotations

import http.cookiejar
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import create_app
from extensions import db
from models import JOB_DONE, Job, Message, MessageLocation, SyncRun, Thread
from tests.conftest import CHEAP_PASSWORD_HASH, PASSWORD
from tests.servers.dovecot import free_port
from tests.sync_helpers import raw_message
from tests.test_jobs import _answers, children, flask_process, stop, wait_for

pytestmark = [pytest.mark.imap, pytest.mark.timing]  # wall-clock bounds: run alone

REPO = Path(__file__).resolve().parents[1]
CONVERSATIONS = 12
SYNC_PRESSES = 6
ACTIONS = 60


@pytest.fixture
def layout(postgres, tmp_path):
    """(environment of the Threadline processes, database URL): a fresh, empty PostgreSQL
    database migrated by `flask init-db`, and an instance folder they all share."""
    name = postgres.create_database()
    url = postgres.url(name)
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o700)
    settings = {
        "MAIL_ALLOWED_PORTS": None,  # Dovecot listens on a random port
        "JOB_POLL_SECONDS": 0.2,
        "JOB_LEASE_SECONDS": 3,  # a killed worker's job is taken again soon
        "SYNC_START_DELAY_SECONDS": 3600,  # only "Sync now" syncs during the test
        "SYNC_LEASE_SECONDS": 6,  # a killed pass's account is free again soon
    }
    (instance / "config.py").write_text(
        "".join(f"{key} = {value!r}\n" for key, value in settings.items())
    )
    env = {
        **os.environ,
        "THREADLINE_INSTANCE_PATH": str(instance),
        "THREADLINE_SQLALCHEMY_DATABASE_URI": url,
    }
    # No secret key from the environment: every process reads the instance's secret.key,
    # as a real install does, so a session cookie of one web process is good on the other.
    env.pop("THREADLINE_SECRET_KEY", None)
    # One environment for all, as the README's env file: web processes serve pages only
    # (no worker child), and `flask worker` runs the schedule and the queue all the same.
    env["THREADLINE_SCHEDULER_ENABLED"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "init-db"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield env, url
    postgres.drop_database(name)


@pytest.fixture
def app(layout):
    """This test's own app (on the layout's database and instance), for setup and checks."""
    env, url = layout
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": env["THREADLINE_INSTANCE_PATH"],
            "SQLALCHEMY_DATABASE_URI": url,
            "SCHEDULER_ENABLED": False,
            "PASSWORD_HASH_METHOD": CHEAP_PASSWORD_HASH,
        }
    )
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


class Browser:
    """A signed-in HTTP client of one web process: a cookie jar, no redirects followed."""

    def __init__(self, port: int, cookies: http.cookiejar.CookieJar | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.cookies = cookies if cookies is not None else http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), NoRedirect()
        )

    def request(self, path: str, form: dict | None = None) -> tuple[int, str]:
        data = urllib.parse.urlencode(form, doseq=True).encode() if form is not None else None
        try:
            with self.opener.open(self.base + path, data=data, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:  # 3xx (not followed) and errors
            return exc.code, exc.read().decode()

    def csrf_token(self, path: str) -> str:
        status, page = self.request(path)
        assert status == 200, (status, path, page[:500])
        return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    def sign_in(self, email: str) -> None:
        token = self.csrf_token("/login")
        status, page = self.request(
            "/login", {"email": email, "password": PASSWORD, "csrf_token": token}
        )
        assert status == 302, (status, page[:500])

    def post(self, path: str, form: dict, *, token: str) -> None:
        status, page = self.request(path, {**form, "csrf_token": token})
        assert status in (302, 303), (status, path, page[:500])


def deliver(dovecot, mail_user, numbers) -> None:
    for n in numbers:
        dovecot.deliver(mail_user.email, raw_message(n, to=mail_user.email))


def seen_on_server(dovecot, mail_user) -> dict[str, bool]:
    """{Message-ID: whether its INBOX copy has \\Seen}, read with doveadm."""
    out = dovecot.doveadm(
        "-f",
        "flow",
        "fetch",
        "-u",
        mail_user.email,
        "flags hdr.message-id",
        "mailbox",
        "INBOX",
        "ALL",
    )
    seen = {}
    for line in out.splitlines():
        flags = re.search(r"flags=(.*?) hdr\.message-id=", line).group(1)
        message_id = re.search(r"hdr\.message-id=<([^>]+)>", line).group(1)
        seen[message_id] = "\\Seen" in flags.split()
    return seen


def unfinished_jobs() -> list[Job]:
    db.session.rollback()  # a fresh snapshot: other processes wrote the rows
    return list(db.session.scalars(select(Job).where(Job.state != JOB_DONE)))


def job_running() -> bool:
    return any(job.state == "running" for job in unfinished_jobs())


def start_web(env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    return flask_process(env, "serve", "--host", "127.0.0.1", "--port", str(port)), port


def _story(message: Message, jobs: list[Job], runs: list[SyncRun], killed: str) -> str:
    """What a lost \\Seen write needs to be understood: the message's locations, the jobs
    that named them, the sync runs and when the worker was killed (the failure is rare)."""
    lines = [f"{message.subject}: server and database disagree; worker killed at {killed}"]
    for location in message.locations:
        lines.append(
            f"location {location.id} uid {location.uid} seen {location.seen} "
            f"pending {location.seen_pending} changed {location.seen_changed_at}"
        )
        lines += [
            f"  job {job.id} {job.kind} {job.state} attempts {job.attempts} "
            f"created {job.created_at} finished {job.finished_at}"
            for job in jobs
            if location.id in (job.payload or {}).get("location_ids", [])
        ]
    lines += [f"sync job {j.id} {j.state} attempts {j.attempts}" for j in jobs if "sync" in j.kind]
    lines += [f"run {r.id} {r.started_at}..{r.finished_at} {r.error}" for r in runs]
    return "\n".join(lines)


def test_two_web_processes_and_one_worker_lose_nothing_and_run_nothing_twice(
    app, layout, make_user, make_account, dovecot, mail_user
):
    env, _url = layout
    user = make_user()  # archive_in_mailbox is off: archiving is Threadline's own
    account = make_account(user, mail_user)
    account_id = account.id
    deliver(dovecot, mail_user, range(1, CONVERSATIONS + 1))
    delivered = CONVERSATIONS

    processes: list[subprocess.Popen] = []
    try:
        (web1, port1), (web2, port2) = start_web(env), start_web(env)
        worker = flask_process(env, "worker")
        processes += [web1, web2, worker]
        wait_for(lambda: _answers(port1) and _answers(port2), seconds=60)
        assert children(web1.pid) == children(web2.pid) == []  # web only: no worker child

        syncer, reader = Browser(port1), Browser(port2)
        syncer.sign_in(user.email)
        reader.sign_in(user.email)
        # Sessions live in signed cookies and the key is the instance's: web process 2
        # takes web process 1's session as its own (one reverse proxy in front of both).
        status, _page = Browser(port2, syncer.cookies).request("/mail/")
        assert status == 200

        sync_token = syncer.csrf_token(f"/settings/accounts/{account_id}")
        syncer.post(f"/settings/accounts/{account_id}/sync", {}, token=sync_token)
        wait_for(lambda: len(unfinished_jobs()) == 0, seconds=90)
        db.session.rollback()
        threads = list(db.session.scalars(select(Thread.id).order_by(Thread.id)))
        assert len(threads) == CONVERSATIONS

        # The last read/unread each conversation was given, and the archived ones.
        wanted: dict[int, bool] = {}
        archived: set[int] = set()
        errors: list[BaseException] = []

        def press_sync_now() -> None:
            nonlocal delivered
            try:
                for _ in range(SYNC_PRESSES):
                    deliver(dovecot, mail_user, [delivered + 1, delivered + 2])  # new mail
                    delivered += 2
                    syncer.post(f"/settings/accounts/{account_id}/sync", {}, token=sync_token)
                    time.sleep(0.4)
            except BaseException as exc:
                errors.append(exc)

        def mark_conversations(tab: Browser, own: list[int], seed: int) -> None:
            # Each tab marks its own conversations, so "the last write" of each is known.
            try:
                chance = random.Random(seed)
                token = tab.csrf_token("/mail/")
                for n in range(ACTIONS):
                    chosen = chance.sample(own, chance.randint(1, 3))
                    action = "archive" if n % 10 == 9 else chance.choice(["read", "unread"])
                    tab.post(
                        "/mail/threads/actions",
                        {"action": action, "thread_id": [str(i) for i in chosen]},
                        token=token,
                    )
                    for thread_id in chosen:
                        if action == "archive":
                            archived.add(thread_id)
                        else:
                            wanted[thread_id] = action == "read"
                    time.sleep(0.02)
            except BaseException as exc:
                errors.append(exc)

        # Two tabs on web process 2 at once: their changes to one account's write-back
        # job meet in the database (folded into one queued job), as they would from two
        # web processes.
        second_tab = Browser(port2)
        second_tab.sign_in(user.email)
        half = len(threads) // 2
        clients = [
            threading.Thread(target=press_sync_now),
            threading.Thread(target=mark_conversations, args=(reader, threads[:half], 1)),
            threading.Thread(target=mark_conversations, args=(second_tab, threads[half:], 2)),
        ]
        for client in clients:
            client.start()
        # Kill the worker while it holds a job, then start another: the job's lease runs
        # out and the new worker takes it again.
        wait_for(job_running, seconds=60)
        worker.send_signal(signal.SIGKILL)
        killed_during = [(job.id, job.kind) for job in unfinished_jobs() if job.state == "running"]
        worker.wait()
        killed_at = time.time()
        worker = flask_process(env, "worker")
        processes.append(worker)
        for client in clients:
            client.join(timeout=120)
        assert not errors, errors

        wait_for(lambda: len(unfinished_jobs()) == 0, seconds=120)
        assert worker.poll() is None
        assert web1.poll() is None and web2.poll() is None

        db.session.rollback()
        jobs = list(db.session.scalars(select(Job).order_by(Job.id)))
        assert all(job.state == JOB_DONE for job in jobs), [(j.id, j.state) for j in jobs]
        # Only the job the kill cut short was claimed twice.
        assert sum(job.attempts > 1 for job in jobs) <= 1, [(j.id, j.attempts) for j in jobs]

        # One completed sync run per sync job ("Sync now" presses folded into a queued
        # one are not jobs of their own); a run the kill cut short is closed as
        # interrupted, and no two runs of the account overlapped.
        sync_jobs = [job for job in jobs if job.kind == "account.sync"]
        runs = list(
            db.session.scalars(
                select(SyncRun).where(SyncRun.account_id == account_id).order_by(SyncRun.id)
            )
        )
        completed = [run for run in runs if run.error is None]
        assert len(completed) == len(sync_jobs), (len(sync_jobs), runs)
        cut_short = [run for run in runs if run.error is not None]
        assert len(cut_short) <= 1 and all("interrupted" in run.error for run in cut_short)
        assert all(run.started_at.timestamp() < killed_at for run in cut_short)
        for earlier, later in zip(completed, completed[1:], strict=False):
            assert earlier.finished_at <= later.started_at, (earlier.id, later.id)

        # Every delivered message stored once, and all of them (the last "Sync now" came
        # after the last delivery).
        message_ids = list(db.session.scalars(select(Message.message_id_header)))
        assert len(message_ids) == len(set(message_ids)) == delivered
        locations = db.session.scalar(select(func.count()).select_from(MessageLocation))
        assert locations == delivered

        # No write lost: the database and the mailbox both have each conversation's last
        # read/unread, and nothing waits to be written.
        on_server = seen_on_server(dovecot, mail_user)
        for thread_id, read in wanted.items():
            for message in db.session.scalars(
                select(Message).where(Message.thread_id == thread_id)
            ):
                assert message.is_read is read, (thread_id, message.subject)
                assert on_server[message.message_id_header.strip("<>")] is read, _story(
                    message, jobs, runs, f"{killed_at} during {killed_during}"
                )
                assert not any(location.seen_pending for location in message.locations)
        for thread_id in archived:
            assert db.session.get(Thread, thread_id).archived
    finally:
        for process in processes:
            if process.poll() is None:
                output = stop(process)
            else:
                output = process.communicate()[0]
            if output and "Traceback" in output:
                print(output)
