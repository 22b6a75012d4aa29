"""CLI commands: init-db, create-user, seed-demo, serve, and --help for each."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from extensions import db
from models import Deal, Lead, Organization, Person, Project, User
from services import users
from services.search import ensure_search_index
from services.throttle import ThrottlePolicy
from services.users import authenticate
from tests.as_nobody import needs_root, run_cli_as_nobody
from tests.conftest import PASSWORD


def count(model) -> int:
    return db.session.scalar(select(func.count(model.id)))


@pytest.mark.parametrize(
    "command",
    [
        "init-db",
        "create-user",
        "seed-demo",
        "serve",
        "worker",
        "sync-worker",
        "add-account",
        "sync",
        "mail-status",
    ],
)
def test_help_works_for_each_command(runner, command):
    result = runner.invoke(args=[command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_init_db_is_idempotent(runner, make_user):
    make_user(email="keep@team.test")
    for _ in range(2):
        result = runner.invoke(args=["init-db"])
        assert result.exit_code == 0 and "Database ready" in result.output
    assert count(User) == 1


def test_create_user_with_env_password_and_admin_flag(app, runner, monkeypatch):
    monkeypatch.setenv("THREADLINE_PASSWORD", PASSWORD)
    result = runner.invoke(args=["create-user", "Boss@Team.test", "--name", "Boss", "--admin"])
    assert result.exit_code == 0, result.output
    assert "Created admin boss@team.test" in result.output
    user = db.session.scalar(select(User))
    assert (
        user.is_admin
        and authenticate(
            email=user.email,
            password=PASSWORD,
            ip="127.0.0.1",
            secret_key=app.secret_key,
            policy=ThrottlePolicy.from_config(app.config),
        )
        is not None
    )
    plain = runner.invoke(args=["create-user", "member@team.test", "--name", "Member"])
    assert plain.exit_code == 0 and "Created user member@team.test" in plain.output


def test_create_user_duplicate_email_is_a_clear_error(runner, monkeypatch, make_user):
    make_user(email="taken@team.test")
    monkeypatch.setenv("THREADLINE_PASSWORD", PASSWORD)
    result = runner.invoke(args=["create-user", "TAKEN@team.test", "--name", "Again"])
    assert result.exit_code != 0
    assert "Error:" in result.output and "Traceback" not in result.output
    assert count(User) == 1


def test_seed_demo_fills_a_fresh_database(runner):
    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    assert "maya@northwind-sales.test" in result.output and "Password" in result.output
    users = db.session.scalars(select(User)).all()
    assert len(users) == 3 and sum(user.is_admin for user in users) == 1
    assert count(Person) == 40 and count(Organization) == 12 and count(Deal) == 25
    assert count(Lead) > 0 and count(Project) > 0
    stages = set(db.session.scalars(select(Deal.stage)))
    statuses = set(db.session.scalars(select(Deal.status)))
    assert len(stages) == 5 and statuses == {"open", "won", "lost"}
    private = db.session.scalar(select(func.count(Deal.id)).where(Deal.visibility == "owner"))
    assert private > 0
    assert "demo mailbox of 6 conversations" in result.output


def test_seed_demo_fills_a_demo_mailbox_that_links_and_shares(runner, app, login):
    """The demo mailbox went through the normal ingest path: threads, persons, deal links,
    sharing, search; and its account is paused (no server to reach)."""
    from models import MailAccount, Message, MessagePerson, Thread

    assert runner.invoke(args=["seed-demo"]).exit_code == 0
    maya = db.session.scalar(select(User).where(User.email == "maya@northwind-sales.test"))
    lucas = db.session.scalar(select(User).where(User.email == "lucas@northwind-sales.test"))
    account = db.session.scalar(select(MailAccount))
    assert account.user_id == maya.id and account.sync_state == "paused"
    assert count(Thread) == 6 and count(Message) == 9  # six conversations, three answered
    assert count(MessagePerson) >= 6  # matched to the demo customers by address
    linked = db.session.scalars(select(Thread).where(Thread.deal_id.is_not(None))).all()
    assert linked, "conversations link to their customers' deals"

    mail = login(maya).get("/mail/").get_data(as_text=True)
    assert "Renewal terms for next year" in mail and "Connect your mailbox" not in mail
    found = login(maya).get("/mail/?q=invoice").get_data(as_text=True)
    assert "Invoice 4471" in found and "Pricing question" not in found
    # A teammate sees a shared conversation on a deal page they can access, never the others.
    public = set(db.session.scalars(select(Deal.id).where(Deal.visibility == "everyone")))
    shared = [t for t in linked if t.shared and t.deal_id in public]
    assert shared, "some demo conversations are shared on deals the team can see"
    private = [t for t in linked if not t.shared]
    teammate = login(lucas)
    for thread in shared:
        panel = teammate.get(f"/mail/records/deal/{thread.deal_id}/conversations")
        assert f"/mail/threads/{thread.id}" in panel.get_data(as_text=True)
    for thread in private:
        assert teammate.get(f"/mail/threads/{thread.id}").status_code == 404


def test_seed_demo_is_deterministic(runner, app):
    assert runner.invoke(args=["seed-demo"]).exit_code == 0
    first = db.session.scalars(select(Person.name).order_by(Person.id)).all()
    db.session.remove()
    with db.engine.begin() as connection:  # it refers to message (PostgreSQL enforces that)
        connection.execute(text("DROP TABLE message_text"))
    db.drop_all()
    db.create_all()
    with db.engine.begin() as connection:
        ensure_search_index(connection)
    assert runner.invoke(args=["seed-demo"]).exit_code == 0
    assert db.session.scalars(select(Person.name).order_by(Person.id)).all() == first


def test_seed_demo_refuses_a_database_with_users(runner, make_user):
    make_user()
    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code != 0
    assert "already has users" in result.output
    assert count(Person) == 0


def test_demo_pages_render(runner, login_with_form):
    runner.invoke(args=["seed-demo"])
    user = db.session.scalar(select(User).where(User.email == "lucas@northwind-sales.test"))
    client = login_with_form(user, password="threadline-demo")  # the documented password
    for path in (
        "/deals/",
        "/deals/board",
        "/persons/",
        "/organizations/",
        "/leads/",
        "/projects/",
        "/persons/1",
        "/organizations/1",
        "/deals/?page=2",
    ):
        assert client.get(path).status_code in (200, 404), path


def test_serve_runs_the_app_in_a_real_process(app, make_user, tmp_path):
    """`flask serve` (what `make run` starts) answers over HTTP, signs a user in and shows
    the Mail tab."""
    make_user(email="serve@team.test")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "THREADLINE_INSTANCE_PATH": app.instance_path,
        "THREADLINE_SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
        "THREADLINE_SECRET_KEY": "test-secret",
        "THREADLINE_SCHEDULER_ENABLED": "0",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "app",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = opener.open(base + "/login", timeout=5).read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
        form = {"csrf_token": token, "email": "serve@team.test", "password": PASSWORD}
        signed_in = opener.open(base + "/login", urllib.parse.urlencode(form).encode(), timeout=5)
        assert signed_in.status == 200
        mail = opener.open(base + "/mail/?q=anything", timeout=5)
        assert mail.status == 200 and "mail-results" in mail.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()


@needs_root
def test_mail_status_reads_a_read_only_instance(new_database):
    """An instance folder this user may read but not change (another user's, or a read-only
    mount): `flask mail-status` prints the status and writes nothing."""
    from app import create_app
    from mailsync.blobstore import blob_root
    from models import MailAccount

    base = Path(tempfile.mkdtemp(prefix="threadline-ro-"))
    try:
        instance = base / "instance"
        new_database(instance / "threadline.db")
        app = create_app({"INSTANCE_PATH": str(instance), "SCHEDULER_ENABLED": False})
        with app.app_context():
            user = users.create_user(email="ro@team.test", name="Ro", password=PASSWORD)
            db.session.add(
                MailAccount(
                    user_id=user.id,
                    email_address="box@mail.test",
                    username="box@mail.test",
                    password_encrypted=b"unused",
                    imap_host="imap.invalid",
                    last_error="The server rejected the username or password.",
                )
            )
            db.session.commit()
            blob_root(app).mkdir()
            db.session.remove()
            db.engine.dispose()
        # Owned by root, readable by everyone, writable by no one else.
        for path in (base, instance, *instance.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        before = {path: path.stat().st_mtime_ns for path in instance.rglob("*")}

        status = run_cli_as_nobody("mail-status", instance=instance)
        assert status.returncode == 0, status.stderr
        assert "box@mail.test: running" in status.stdout, status.stdout
        assert "last error: The server rejected the username" in status.stdout
        assert "Traceback" not in status.stderr, status.stderr
        assert {path: path.stat().st_mtime_ns for path in instance.rglob("*")} == before
    finally:
        shutil.rmtree(base)


def test_sync_all_says_which_accounts_it_skipped_and_why(runner, make_user, make_stored_account):
    from models import SYNC_NEEDS_REAUTH, SYNC_PAUSED

    user = make_user()
    backing_off = make_stored_account(user, email_address="box@x.test")
    backing_off.backoff_until = datetime(2030, 1, 2, 14, 5, tzinfo=UTC)
    backing_off.last_error = "imap.x.test refused the connection."
    make_stored_account(user, email_address="reauth@x.test").sync_state = SYNC_NEEDS_REAUTH
    make_stored_account(user, email_address="paused@x.test").sync_state = SYNC_PAUSED
    db.session.commit()

    result = runner.invoke(args=["sync", "--all"])
    assert (
        "(box@x.test): skipped, retrying after a failure until 14:05 UTC "
        "(imap.x.test refused the connection.)" in result.output
    ), result.output
    assert "(reauth@x.test): skipped, needs re-authentication: The password" in result.output
    assert "(paused@x.test): skipped, paused: Press Resume" in result.output
    assert result.exit_code == 1  # two accounts are held back by a failure


def test_sync_all_with_only_paused_accounts_succeeds(runner, make_user, make_stored_account):
    from models import SYNC_PAUSED

    make_stored_account(make_user(), email_address="paused@x.test").sync_state = SYNC_PAUSED
    db.session.commit()
    result = runner.invoke(args=["sync", "--all"])
    assert result.exit_code == 0, result.output
    assert "(paused@x.test): skipped, paused" in result.output
