"""Shared fixtures: app with a temp instance folder, CSRF-aware clients, factories.

Real-server fixtures (Dovecot, SMTP, browser) live in tests/servers/ and are loaded as
plugins below, so every test module can ask for them by name.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import shutil
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import flask
import jinja2
import jinja2.bccache
import pytest
from flask.testing import FlaskClient
from itsdangerous import URLSafeTimedSerializer
from werkzeug.routing import Rule

import schema
from app import create_app
from extensions import db
from models import (
    Deal,
    Lead,
    MailAccount,
    Message,
    MessagePerson,
    Organization,
    Person,
    PersonEmail,
    Project,
    Thread,
    User,
)
from services import users as user_service
from views.auth import start_session

pytest_plugins = ["tests.servers.fixtures", "tests.parallel"]

PASSWORD = "correct horse battery"
CHEAP_PASSWORD_HASH = "pbkdf2:sha256:1"
_counter = itertools.count(1)
# THREADLINE_TEST_DATABASE=postgresql runs the tests on a fresh database of a throwaway
# PostgreSQL (tests/servers/postgres.py) instead of SQLite; `make test` runs both.
TEST_DATABASE = os.environ.get("THREADLINE_TEST_DATABASE", "sqlite")
ON_POSTGRESQL = TEST_DATABASE == "postgresql"


def pytest_collection_modifyitems(config, items):
    """On PostgreSQL, run only the tests that use the app's database, browser tests aside
    (they run on SQLite; what they drive is the same code), and skip SQLite-only ones."""
    if not ON_POSTGRESQL:
        return
    kept, deselected = [], []
    for item in items:
        uses_database = "database_uri" in getattr(item, "fixturenames", ())
        if uses_database and item.get_closest_marker("browser") is None:
            kept.append(item)
        else:
            deselected.append(item)
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else "SQLite only"
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


class CSRFClient(FlaskClient):
    """A test client that sends a valid CSRF token on unsafe methods unless csrf=False."""

    def csrf_token(self) -> str:
        with self.session_transaction() as session:
            raw = session.get("csrf_token")
            if raw is None:
                raw = hashlib.sha1(os.urandom(64)).hexdigest()
                session["csrf_token"] = raw
        serializer = URLSafeTimedSerializer(self.application.secret_key, salt="wtf-csrf-token")
        return serializer.dumps(raw)

    def open(self, *args, **kwargs):
        send_token = kwargs.pop("csrf", True)
        method = (kwargs.get("method") or "GET").upper()
        if send_token and method in ("POST", "PUT", "PATCH", "DELETE"):
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("X-CSRFToken", self.csrf_token())
            kwargs["headers"] = headers
        # A fresh app context per request, as in production: the fixture's outer context
        # would otherwise share `g` (Flask-Login's cached user) and the db session.
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory) -> Path:
    """A database file at the newest migration, built once per session (copy it, never use it)."""
    folder = tmp_path_factory.mktemp("migrated")
    template = folder / "threadline.db"
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(folder / "instance"),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{template}",
            "SECRET_KEY": "template",
            "SCHEDULER_ENABLED": False,
        }
    )
    with app.app_context():
        schema.upgrade_database()
        db.engine.dispose()  # the last connection closed: the WAL is folded into the file
    return template


@pytest.fixture
def new_database(migrated_database):
    """Return a function that puts a migrated database at a path and returns its URI."""

    def put(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_database, path)
        return f"sqlite:///{path}"

    return put


@pytest.fixture
def database_uri(request, tmp_path, new_database):
    """The app's database: a migrated file in tmp_path, or a fresh PostgreSQL database copied
    from a migrated template (see above)."""
    if not ON_POSTGRESQL:
        yield new_database(tmp_path / "threadline.db")
        return
    server, template = request.getfixturevalue("postgres_template")
    name = server.create_database(template=template)
    before = set(threading.enumerate())
    yield server.url(name)
    # A "Sync now" thread may outlive its test: on SQLite it writes to a file nobody reads
    # again, but dropping its database under it would fail it (a thread exception).
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=60)
    server.drop_database(name)


class _TemplateBytecode(jinja2.BytecodeCache):
    """Compiled templates kept in memory for the whole session (per process): each test's
    app would otherwise compile every template it renders again (about 13 ms each). Jinja
    checks each entry against the template source, so an edited template is compiled anew."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_template_bytecode = _TemplateBytecode()


def _share_url_builders() -> None:
    """Let every test's app reuse the URL builders werkzeug made for the first one.

    Each app compiles its ~750 URL rules, and for each rule werkzeug writes and compiles two
    Python functions that build its URLs: about 60 ms of every test. Such a function depends
    only on the rule's parts and defaults (it reaches the rule's converters through `self`
    when called), so one copy per process serves every app.
    """
    compile_builder = Rule._compile_builder
    builders: dict[tuple, object] = {}

    @functools.wraps(compile_builder)
    def shared(self: Rule, append_unknown: bool = True):
        key = (
            self.rule,
            self.subdomain,
            self.host,
            tuple(self._trace),
            repr(sorted((self.defaults or {}).items())),
            append_unknown,
        )
        builder = builders.get(key)
        if builder is None:
            builder = builders[key] = compile_builder(self, append_unknown)
        return builder

    Rule._compile_builder = shared


_share_url_builders()


@pytest.fixture
def app(tmp_path, database_uri):
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "SQLALCHEMY_DATABASE_URI": database_uri,
            "SECRET_KEY": "test-secret",
            "SCHEDULER_ENABLED": False,
            # One round instead of scrypt's ~190 ms; test_auth.py signs in with the real one.
            "PASSWORD_HASH_METHOD": CHEAP_PASSWORD_HASH,
        }
    )
    app.test_client_class = CSRFClient
    app.jinja_env.bytecode_cache = _template_bytecode
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app) -> CSRFClient:
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_user(app):
    def factory(
        *,
        email: str | None = None,
        name: str | None = None,
        is_admin: bool = False,
        password: str = PASSWORD,
    ) -> User:
        n = next(_counter)
        return user_service.create_user(
            email=email or f"user{n}@team.test",
            name=name or f"User {n}",
            password=password,
            is_admin=is_admin,
        )

    return factory


def signed_in_client(app, user: User, *, user_agent: str | None = None) -> CSRFClient:
    """Return a fresh client whose session is signed in as `user`, set directly.

    The session holds what a real sign-in stores (views.auth.start_session), for this
    client's address and user agent, without the form's password check.
    """
    client = app.test_client()
    if user_agent is not None:
        client.environ_base["HTTP_USER_AGENT"] = user_agent
    with app.test_request_context(environ_base=client.environ_base):
        start_session(user)
        fields, permanent = dict(flask.session), flask.session.permanent
    with client.session_transaction() as session:
        session.update(fields)
        session.permanent = permanent
    return client


@pytest.fixture
def login(app):
    """Return a function giving a client signed in as a user (tests of signing in use
    `login_with_form`, tests/test_auth.py)."""
    return functools.partial(signed_in_client, app)


@pytest.fixture
def login_with_form(app):
    """Return a fresh client signed in as the given user through the real login form."""

    def do_login(user: User, password: str = PASSWORD) -> CSRFClient:
        client = app.test_client()
        response = client.post("/login", data={"email": user.email, "password": password})
        assert response.status_code == 302, response.data
        return client

    return do_login


@pytest.fixture
def admin(make_user):
    return make_user(email="admin@team.test", name="Ada Admin", is_admin=True)


@pytest.fixture
def admin_client(admin, login):
    return login(admin)


def _owned(model, owner: User, visibility: str, **fields):
    record = model(owner_id=owner.id, visibility=visibility, **fields)
    db.session.add(record)
    db.session.commit()
    return record


@pytest.fixture
def make_organization(app):
    def factory(
        owner: User, *, name: str | None = None, visibility: str = "everyone", **fields
    ) -> Organization:
        return _owned(
            Organization, owner, visibility, name=name or f"Org {next(_counter)}", **fields
        )

    return factory


@pytest.fixture
def make_person(app):
    def factory(
        owner: User,
        *,
        name: str | None = None,
        emails: tuple[str, ...] = (),
        visibility: str = "everyone",
        **fields,
    ) -> Person:
        person = Person(
            owner_id=owner.id,
            visibility=visibility,
            name=name or f"Person {next(_counter)}",
            **fields,
        )
        for index, address in enumerate(emails):
            person.emails.append(PersonEmail(email=address.lower(), is_primary=index == 0))
        db.session.add(person)
        db.session.commit()
        return person

    return factory


@pytest.fixture
def make_deal(app):
    def factory(
        owner: User,
        *,
        title: str | None = None,
        visibility: str = "everyone",
        value: Decimal = Decimal("1000"),
        **fields,
    ) -> Deal:
        return _owned(
            Deal, owner, visibility, title=title or f"Deal {next(_counter)}", value=value, **fields
        )

    return factory


@pytest.fixture
def make_lead(app):
    def factory(
        owner: User, *, title: str | None = None, visibility: str = "everyone", **fields
    ) -> Lead:
        return _owned(Lead, owner, visibility, title=title or f"Lead {next(_counter)}", **fields)

    return factory


@pytest.fixture
def make_group_send(app):
    """A group email stored directly: its GroupSend and one OutgoingMail per
    (state, name, address, error) in `mails` (a queued one is due in an hour)."""
    from datetime import UTC, datetime, timedelta

    from models import GroupSend, OutgoingMail

    def factory(
        user: User, account: MailAccount, *, subject: str = "Spring offer", mails=()
    ) -> GroupSend:
        group = GroupSend(
            user_id=user.id,
            account_id=account.id,
            subject=subject,
            body_html="<p>Hi</p>",
            total=len(mails),
        )
        db.session.add(group)
        db.session.flush()
        for state, name, address, error in mails:
            db.session.add(
                OutgoingMail(
                    user_id=user.id,
                    account_id=account.id,
                    group_send_id=group.id,
                    state=state,
                    send_at=datetime.now(UTC) + timedelta(hours=1),
                    to=[[name, address]],
                    subject=subject,
                    error=error,
                )
            )
        db.session.commit()
        return group

    return factory


@pytest.fixture
def make_project(app):
    def factory(
        owner: User, *, title: str | None = None, visibility: str = "everyone", **fields
    ) -> Project:
        return _owned(
            Project, owner, visibility, title=title or f"Project {next(_counter)}", **fields
        )

    return factory


@pytest.fixture
def make_stored_account(app):
    """A mail account row with no server behind it, for tests of stored mail."""

    def factory(user: User, *, email_address: str | None = None) -> MailAccount:
        account = MailAccount(
            user_id=user.id,
            email_address=email_address or user.email,
            username=email_address or user.email,
            password_encrypted=b"unused",
            imap_host="imap.invalid",
        )
        db.session.add(account)
        db.session.commit()
        return account

    return factory


@pytest.fixture
def make_stored_message(app):
    """A thread with one message stored directly (no sync), linked to persons by address."""

    def factory(
        account: MailAccount,
        *,
        subject: str = "Hello",
        sender: tuple[str, str] = ("Carla Diaz", "carla@customer.test"),
        to: tuple[tuple[str, str], ...] = (("Me", "me@team.test"),),
        cc: tuple[tuple[str, str], ...] = (),
        thread: Thread | None = None,
        shared: bool = False,
    ) -> Message:
        from services.linking import persons_for_addresses

        n = next(_counter)
        if thread is None:
            thread = Thread(
                account_id=account.id,
                subject=subject,
                shared=shared,
                last_date=datetime.now(UTC),
                message_count=0,
            )
            db.session.add(thread)
            db.session.flush()
        message = Message(
            account_id=account.id,
            thread_id=thread.id,
            dedup_key=f"key-{n}",
            subject=subject,
            from_name=sender[0],
            from_address=sender[1],
            to=[list(p) for p in to],
            cc=[list(p) for p in cc],
            date=datetime.now(UTC),
            snippet=subject,
        )
        db.session.add(message)
        thread.message_count += 1
        db.session.flush()
        addresses = [sender[1], *(p[1] for p in to), *(p[1] for p in cc)]
        for person_id in set(persons_for_addresses(addresses).values()):
            db.session.add(MessagePerson(message_id=message.id, person_id=person_id))
        db.session.commit()
        return message

    return factory


@pytest.fixture
def make_account(app, dovecot):
    """Create a MailAccount pointing at the session Dovecot (implicit TLS, private CA)."""
    from services.credentials import secret_box

    app.config["MAIL_ALLOWED_PORTS"] = None  # Dovecot listens on random ports

    def factory(user: User, mail_user, **overrides) -> MailAccount:
        values = dict(
            user_id=user.id,
            email_address=mail_user.email,
            username=mail_user.email,
            password_encrypted=secret_box(app).encrypt(mail_user.password),
            imap_host=dovecot.host,
            imap_port=dovecot.ssl_port,
            imap_security="ssl",
            ca_cert_pem=dovecot.ca_file.read_text(),
            since="all",
        )
        values.update(overrides)
        account = MailAccount(**values)
        db.session.add(account)
        db.session.commit()
        return account

    return factory


@pytest.fixture
def make_stored_folder(app):
    """A MailFolder row of a stored account (no server behind it)."""

    def factory(account: MailAccount, name: str = "INBOX", *, role: str | None = "inbox"):
        from models import MailFolder

        folder = MailFolder(account_id=account.id, name=name, role=role)
        db.session.add(folder)
        db.session.commit()
        return folder

    return factory


@pytest.fixture
def make_mailbox_message(app, make_stored_message):
    """A stored message placed in a folder (a MessageLocation) and in the search index.

    Extra keyword arguments of make_stored_message pass through; `date` sets both the
    message and thread dates.
    """
    uids = itertools.count(1)

    def factory(
        folder,
        *,
        date: datetime | None = None,
        is_read: bool = False,
        has_attachments: bool = False,
        body: str = "",
        uid: int | None = None,
        **fields,
    ) -> Message:
        from models import MessageLocation
        from services.search import SearchDocument, index_messages

        message = make_stored_message(folder.account, **fields)
        message.date = date or message.date
        message.is_read = is_read
        message.has_attachments = has_attachments
        thread = message.thread
        if folder.role == "inbox":
            thread.in_inbox = True  # as sync does for mail that lands in an inbox folder
        if thread.last_date is None or thread.message_count == 1 or message.date > thread.last_date:
            thread.last_date = message.date
        db.session.add(
            MessageLocation(
                folder_id=folder.id, uid=uid or next(uids), message_id=message.id, seen=is_read
            )
        )
        participants = " ".join(
            [message.from_name, message.from_address]
            + [" ".join(pair) for pair in message.to + message.cc]
        )
        index_messages(
            db.session.connection(),
            [SearchDocument(message.id, message.subject, participants, body)],
        )
        db.session.commit()
        return message

    return factory


@pytest.fixture
def make_raw_message(app):
    """Store raw MIME like the sync does (blob first, then parsed rows); returns the Message.

    A new thread is created unless `thread` is given; persons are matched by address. With
    `internaldate`, a missing Date header stays missing (date None), as the sync stores it.
    """

    def factory(
        account: MailAccount,
        raw: bytes,
        *,
        shared: bool = False,
        thread: Thread | None = None,
        is_placeholder: bool = False,
        store_raw: bool = True,
        internaldate: datetime | None = None,
    ) -> Message:
        from pathlib import Path

        from mailsync.blobstore import BlobStore
        from mailsync.parse import parse_message
        from services.linking import message_participants, persons_for_addresses

        sha = BlobStore(Path(app.instance_path) / "blobs").put(raw) if store_raw else None
        parsed = parse_message(raw)
        # As the sync stores it: the Date header as is, the server's arrival time beside it.
        date = parsed.date or internaldate or datetime.now(UTC)
        if thread is None:
            thread = Thread(
                account_id=account.id,
                subject=parsed.subject[:255],
                shared=shared,
                first_date=date,
                last_date=date,
                message_count=0,
            )
            db.session.add(thread)
            db.session.flush()
        message = Message(
            account_id=account.id,
            thread_id=thread.id,
            dedup_key=f"raw-{next(_counter)}",
            message_id_header=(parsed.message_id or "")[:998] or None,
            subject=parsed.subject[:255],
            from_name=parsed.from_name[:255],
            from_address=parsed.from_address[:320].lower(),
            to=[list(pair) for pair in parsed.to],
            cc=[list(pair) for pair in parsed.cc],
            reply_to=[list(pair) for pair in parsed.reply_to],
            date=parsed.date if internaldate else date,
            internaldate=internaldate,
            size=len(raw),
            raw_sha256=sha if store_raw else "0" * 64,
            is_placeholder=is_placeholder,
            snippet=parsed.snippet[:300],
            has_attachments=parsed.has_attachments,
            parse_error=parsed.parse_error,
        )
        db.session.add(message)
        thread.message_count += 1
        thread.last_date = max(thread.last_date or date, date)
        db.session.flush()
        for person_id in set(persons_for_addresses(message_participants(message)).values()):
            db.session.add(MessagePerson(message_id=message.id, person_id=person_id))
        db.session.commit()
        return message

    return factory
