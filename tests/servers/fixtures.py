"""Pytest fixtures for the real servers: `dovecot`, `mail_user`, `smtp_server`,
`live_server`, `browser` and `page`."""

from __future__ import annotations

import itertools
import shutil
import threading

import pytest

from tests.servers.browser import CHROMIUM_ARGS, LiveServer, ServerThread, chromium_path
from tests.servers.dovecot import PROFILES, DovecotServer, MailUser
from tests.servers.postgres import PostgresServer, postgres_bin_dir
from tests.servers.smtp import SMTPServer

_mail_users = itertools.count(1)


@pytest.fixture(scope="session")
def _session_dovecot():
    if not (shutil.which("dovecot") and shutil.which("doveadm")):
        pytest.fail("Dovecot is not installed: run `make test`, which installs dovecot-imapd")
    server = DovecotServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dovecot(_session_dovecot):
    """A Dovecot IMAP server for the whole session (users are per test).

    A test module that should run against every kind of server overrides it:
    `@pytest.fixture def dovecot(any_dovecot): return any_dovecot`.
    """
    return _session_dovecot


@pytest.fixture
def mail_user(dovecot) -> MailUser:
    """A fresh mailbox on the session's Dovecot."""
    return dovecot.add_user(f"box{next(_mail_users)}@mail.test", "mail-password-1")


@pytest.fixture(scope="session")
def _profile_servers(_session_dovecot):
    """Dovecots imitating other servers, started on first use and kept for the session."""
    servers = {"standard": _session_dovecot}
    yield servers
    # At once: a Dovecot takes 3 s or more to stop, and a worker of the suite has up to
    # three of these (its session's teardown waited for each in turn).
    stopping = [
        threading.Thread(target=server.stop)
        for name, server in servers.items()
        if name != "standard"
    ]
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join()


@pytest.fixture(params=sorted(PROFILES))
def any_dovecot(request, _profile_servers) -> DovecotServer:
    """The test Dovecot as each kind of server (tests/servers/dovecot.py PROFILES): all
    capabilities, no CONDSTORE/QRESYNC, no MOVE/UIDPLUS, a Courier-like namespace."""
    name = request.param
    if name not in _profile_servers:
        _profile_servers[name] = DovecotServer(PROFILES[name]).start()
    return _profile_servers[name]


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the whole session (databases are per test)."""
    if postgres_bin_dir() is None:
        pytest.fail("PostgreSQL is not installed: run `make test`, which installs postgresql")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_template(postgres, tmp_path_factory):
    """(server, name of a database migrated to the newest schema): tests copy it, which is
    much faster than migrating each test's database."""
    import schema
    from app import create_app
    from extensions import db

    name = postgres.create_database(name="threadline_template")
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path_factory.mktemp("template") / "instance"),
            "SQLALCHEMY_DATABASE_URI": postgres.url(name),
            "SECRET_KEY": "test-secret",
            "SCHEDULER_ENABLED": False,
        }
    )
    with app.app_context():
        schema.upgrade_database()
        db.engine.dispose()  # CREATE DATABASE ... TEMPLATE needs no session open on it
    return postgres, name


@pytest.fixture
def smtp_server():
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def live_server(app):
    """The test app served over HTTP on loopback (same database as the `app` fixture)."""
    thread = ServerThread(app)
    thread.start()
    yield LiveServer(app=app, url=f"http://127.0.0.1:{thread.port}")
    thread.stop()


@pytest.fixture(scope="session")
def browser():
    path = chromium_path()
    if path is None:
        pytest.fail("Chromium is not installed: run `make test`, which installs chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()
