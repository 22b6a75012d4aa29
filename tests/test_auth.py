"""Setup, sign-in, sign-out, throttling, password change, sessions, CSRF."""

import base64
import json
import logging
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import func, select
from werkzeug.security import check_password_hash

from app import create_app
from extensions import db
from models import LoginFailure, User
from services import throttle, users
from tests.conftest import PASSWORD, CSRFClient, signed_in_client


@pytest.fixture
def app_with(tmp_path, new_database):
    """Return a context manager giving an app of its own with extra settings (the `app`
    fixture's are fixed)."""
    return lambda **settings: _app_with(tmp_path, new_database(tmp_path / "other.db"), settings)


@contextmanager
def _app_with(tmp_path, database_uri: str, settings: dict):
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path / "other-instance"),
            "SQLALCHEMY_DATABASE_URI": database_uri,
            "SECRET_KEY": "test-secret",
            "SCHEDULER_ENABLED": False,
            **settings,
        }
    )
    app.test_client_class = CSRFClient
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def login(login_with_form):
    """Signing in is under test here: the shared `login` fixture goes through the real form."""
    return login_with_form


def test_login_fixture_session_is_the_one_the_form_starts(app, make_user, login_with_form):
    """conftest's `login` sets the session directly; it must hold what the form stores."""
    user = make_user()
    by_form = login_with_form(user)
    direct = signed_in_client(app, user)
    with by_form.session_transaction() as form_session:
        expected = sorted(form_session)
    with direct.session_transaction() as direct_session:
        assert sorted(direct_session) == expected
        assert direct_session.permanent and direct_session["_fresh"] is True
    for client in (by_form, direct):
        assert client.get("/settings/").status_code == 200
    # As with a form sign-in, another browser with this cookie is refused (R26).
    direct.environ_base["HTTP_USER_AGENT"] = "Other/1.0"
    assert direct.get("/settings/").status_code == 302


def test_fresh_install_redirects_everything_to_setup(client):
    for path in ("/", "/deals/", "/settings/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].endswith("/setup")


def test_setup_creates_first_admin_once(client, app):
    response = client.post(
        "/setup", data={"name": "Ana", "email": "Ana@Example.com", "password": PASSWORD}
    )
    assert response.status_code == 302
    user = db.session.scalar(select(User))
    assert user.email == "ana@example.com" and user.is_admin
    assert (
        user.password_hash.startswith(("scrypt:", "pbkdf2:")) and PASSWORD not in user.password_hash
    )
    # the form is gone afterwards: a late submission is sent to sign in, no second admin
    assert client.get("/setup").status_code == 302
    late = app.test_client().post(
        "/setup", data={"name": "Eve", "email": "eve@example.com", "password": PASSWORD}
    )
    assert late.status_code == 303 and late.headers["Location"].endswith("/login")
    assert db.session.scalar(select(func.count(User.id))) == 1


def test_setup_invalid_input_returns_422_with_field_errors(client):
    response = client.post("/setup", data={"name": "", "email": "nope", "password": "short"})
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert "Enter a valid email address" in body and "at least 10 characters" in body


def test_login_wrong_password_then_right(client, make_user):
    user = make_user(email="bo@team.test")
    response = client.post("/login", data={"email": "bo@team.test", "password": "wrong-password"})
    assert response.status_code == 401
    assert "Wrong email or password" in response.get_data(as_text=True)
    response = client.post("/login", data={"email": "BO@team.test", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/settings/").status_code == 200
    assert user.name in client.get("/settings/").get_data(as_text=True)


def test_login_throttled_after_five_failures_even_with_right_password(client, make_user, caplog):
    make_user(email="cy@team.test")
    for _ in range(5):
        client.post("/login", data={"email": "cy@team.test", "password": "bad-guess-123"})
    response = client.post("/login", data={"email": "cy@team.test", "password": PASSWORD})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "bad-guess-123" not in caplog.text and PASSWORD not in caplog.text
    assert "login failed" in caplog.text


def test_other_account_not_throttled_by_one_accounts_failures(client, make_user):
    make_user(email="d1@team.test")
    make_user(email="d2@team.test")
    for _ in range(5):
        client.post("/login", data={"email": "d1@team.test", "password": "bad-guess-123"})
    assert (
        client.post("/login", data={"email": "d2@team.test", "password": PASSWORD}).status_code
        == 302
    )


def test_deactivated_user_cannot_sign_in(client, make_user, admin_client):
    user = make_user(email="gone@team.test")
    admin_client.post(f"/admin/users/{user.id}/active", data={"deactivated": "1"})
    response = client.post("/login", data={"email": "gone@team.test", "password": PASSWORD})
    assert response.status_code == 401


def test_logout_kills_the_old_cookie(app, make_user, login):
    user = make_user()
    client = login(user)
    cookie = client.get_cookie("session").value
    client.post("/logout")
    replay = app.test_client()
    replay.set_cookie("session", cookie)
    response = replay.get("/settings/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_password_change_ends_other_sessions(make_user, login):
    user = make_user()
    first, second = login(user), login(user)
    response = first.post(
        "/account/password",
        data={"current": PASSWORD, "new": "a brand new secret", "confirm": "a brand new secret"},
    )
    assert response.status_code == 200 and "Password changed" in response.get_data(as_text=True)
    assert first.get("/settings/").status_code == 200
    assert second.get("/settings/").status_code == 302


def _session_payload(cookie: str) -> str:
    """Return the JSON inside a Flask session cookie (signed, not encrypted)."""
    compressed = cookie.startswith(".")
    payload = cookie.lstrip(".").split(".")[0]
    data = base64.urlsafe_b64decode(payload + "==")
    return (zlib.decompress(data) if compressed else data).decode()


# What a signed-in session may hold: Flask-Login's keys, the CSRF secret, the sign-in time.
SESSION_KEYS = {"_user_id", "_fresh", "_id", "_permanent", "csrf_token", "signed_in_at"}


def test_session_cookie_flags_and_contents(client, make_user):
    make_user(email="fl@team.test")
    response = client.post("/login", data={"email": "fl@team.test", "password": PASSWORD})
    set_cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    for url in ("/mail/", "/settings/", "/account/password"):
        assert client.get(url).status_code == 200
    text = _session_payload(client.get_cookie("session").value)
    assert PASSWORD not in text
    assert set(json.loads(text)) <= SESSION_KEYS  # no password, no mail content


def test_session_and_remember_cookies_are_host_only_and_secure_under_https(app_with):
    with app_with(HTTPS=True) as app:
        users.create_user(email="hs@team.test", name="Hs", password=PASSWORD)
        client = app.test_client()
        response = client.post(
            "/login",
            data={"email": "hs@team.test", "password": PASSWORD},
            base_url="https://localhost",
            headers={"Referer": "https://localhost/login"},  # Flask-WTF's HTTPS check
        )
        assert response.status_code == 302
        (session_cookie,) = [
            c for c in response.headers.getlist("Set-Cookie") if c.startswith("__Host-session=")
        ]
        for flag in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
            assert flag in session_cookie
        assert "Domain=" not in session_cookie  # the __Host- prefix forbids it
        # No "remember me" is offered; should Flask-Login ever set its cookie, it is the same.
        assert app.config["REMEMBER_COOKIE_NAME"].startswith("__Host-")
        assert app.config["REMEMBER_COOKIE_SECURE"] is True
        assert app.config["REMEMBER_COOKIE_PATH"] == "/"


def test_sign_in_starts_a_fresh_session(client, make_user):
    make_user(email="fx@team.test")
    with client.session_transaction() as session:
        session["planted"] = "by-an-attacker"  # e.g. a session fixed before sign-in
    client.post("/login", data={"email": "fx@team.test", "password": PASSWORD})
    with client.session_transaction() as session:
        assert "planted" not in session
        assert session["_user_id"]


def test_session_ends_after_the_idle_lifetime(app, make_user, login, monkeypatch):
    client = login(make_user())
    idle = app.config["PERMANENT_SESSION_LIFETIME"]
    clock = [time.time()]
    # Flask checks the age of the cookie's signed timestamp; each request renews it.
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(clock[0]))
    for _ in range(2):  # used just within the idle lifetime, twice: still signed in
        clock[0] += idle - 60
        assert client.get("/settings/").status_code == 200
    clock[0] += idle + 1
    response = client.get("/settings/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_a_request_sent_before_sign_in_and_answered_after_it_keeps_the_sign_in(client, make_user):
    """A browser fetches the login page's icon while the form is being sent: the icon's
    answer (a redirect to sign in) comes after the sign-in's and must not overwrite the new
    session cookie with the old one (the user was sent back to the sign-in page)."""
    make_user(email="race@team.test")
    assert client.get("/login").status_code == 200
    before = client.get_cookie("session").value  # the sign-in form's session (CSRF token)
    assert (
        client.post("/login", data={"email": "race@team.test", "password": PASSWORD}).status_code
        == 302
    )
    late = client.application.test_client()  # the icon request, with the old cookie
    late.set_cookie("session", before)
    response = late.get("/favicon.ico")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert not [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert client.get("/settings/").status_code == 200


def test_session_cookie_moved_to_another_browser_is_refused(app, make_user, login):
    """Flask-Login's "strong" protection: a cookie used from another address or user agent
    ends the session (Flask-Login alone only marks permanent sessions non-fresh)."""
    client = login(make_user())
    cookie = client.get_cookie("session").value
    assert client.get("/settings/").status_code == 200
    thief = app.test_client()
    thief.set_cookie("session", cookie)
    response = thief.get("/settings/", headers={"User-Agent": "Other/1.0"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    thief.environ_base["REMOTE_ADDR"] = "10.9.9.9"
    thief.set_cookie("session", cookie)
    assert thief.get("/settings/").status_code == 302
    assert client.get("/settings/").status_code == 200  # the owner's browser is unaffected


def test_auth_events_are_logged_without_secrets(client, make_user, caplog):
    caplog.set_level(logging.INFO, logger="threadline.auth")
    user = make_user(email="lg@team.test")
    client.environ_base["REMOTE_ADDR"] = "10.0.0.42"
    client.post("/login", data={"email": "lg@team.test", "password": "bad-guess-123"})
    client.post("/login", data={"email": "lg@team.test", "password": PASSWORD})
    new = "another long secret"
    client.post("/account/password", data={"current": "bad-guess-456", "new": new, "confirm": new})
    client.post("/account/password", data={"current": PASSWORD, "new": new, "confirm": new})
    client.post("/logout")
    events = [r.getMessage() for r in caplog.records if r.name == "threadline.auth"]
    expected = (
        "login failed email='lg@team.test' ip=10.0.0.42",
        f"login ok user={user.id} ip=10.0.0.42",
        f"password change: wrong current password user={user.id} ip=10.0.0.42",
        f"password changed user={user.id} ip=10.0.0.42",
        f"logout user={user.id} ip=10.0.0.42",
    )
    for start, event in zip(expected, events, strict=True):
        assert event.startswith(start), (start, event)
    for secret in (PASSWORD, new, "bad-guess-123", "bad-guess-456"):
        assert secret not in caplog.text


def test_post_without_csrf_token_is_rejected(make_user, login):
    user = make_user()
    client = login(user)
    response = client.post("/settings/preferences", data={"records_page_size": "50"}, csrf=False)
    assert response.status_code == 400
    assert "form expired" in response.get_data(as_text=True)


def test_htmx_request_when_signed_out_gets_hx_redirect(client, make_user):
    make_user()
    response = client.get("/settings/", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login")


def test_security_headers_on_pages(client, make_user, login):
    user = make_user()
    response = login(user).get("/settings/")
    csp = response.headers["Content-Security-Policy"]
    assert (
        "script-src 'self'" in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
    )
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


def test_login_next_never_leaves_the_site(client, make_user):
    make_user(email="nx@team.test")
    response = client.post(
        "/login", data={"email": "nx@team.test", "password": PASSWORD, "next": "//evil.example/x"}
    )
    assert response.headers["Location"] == "/"


def test_healthz_reports_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok"}


def test_concurrent_setup_posts_create_exactly_one_admin(app):
    # Eight browsers submit the setup form of a fresh install at the same moment (threads,
    # each with its own client and database connection, against the file SQLite database).
    start = threading.Barrier(8)

    def submit(n: int):
        client = app.test_client()
        client.get("/setup")
        start.wait()
        return client.post(
            "/setup", data={"name": f"Admin {n}", "email": f"a{n}@team.test", "password": PASSWORD}
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(submit, range(8)))

    statuses = sorted(response.status_code for response in responses)
    assert all(status in (302, 303) for status in statuses), statuses
    winners = [r for r in responses if not r.headers["Location"].endswith("/login")]
    assert len(winners) == 1
    db.session.remove()
    assert db.session.scalar(select(func.count(User.id))) == 1
    assert db.session.scalar(select(func.count(User.id)).where(User.is_admin)) == 1


# --------------------------------------------------------------------------- throttling (R27)

OWNER_ADDRESS, ATTACKER_ADDRESS, OTHER_ADDRESS = "10.0.0.10", "10.0.0.66", "10.0.0.77"


def _client_at(app, address: str):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def _login(client, email: str, password: str):
    return client.post("/login", data={"email": email, "password": password})


def test_attack_from_elsewhere_does_not_lock_out_the_owners_browser(app, make_user):
    make_user(email="own@team.test")
    owner = _client_at(app, OWNER_ADDRESS)
    assert _login(owner, "own@team.test", PASSWORD).status_code == 302
    owner.post("/logout")  # the device cookie outlives the session
    attacker = _client_at(app, ATTACKER_ADDRESS)
    for _ in range(10):
        _login(attacker, "own@team.test", "bad-guess-123")
    assert _login(attacker, "own@team.test", PASSWORD).status_code == 429
    # The owner's browser carries its device token: the attacker's failures do not count.
    assert _login(owner, "own@team.test", PASSWORD).status_code == 302


def test_device_token_is_locked_by_its_own_failures_only(app, make_user):
    make_user(email="dv@team.test")
    owner = _client_at(app, OWNER_ADDRESS)
    assert _login(owner, "dv@team.test", PASSWORD).status_code == 302
    owner.post("/logout")
    for _ in range(5):
        assert _login(owner, "dv@team.test", "bad-guess-123").status_code == 401
    response = _login(owner, "dv@team.test", PASSWORD)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0


def test_device_token_of_one_account_does_not_vouch_for_another(app, make_user):
    make_user(email="t1@team.test")
    make_user(email="t2@team.test")
    browser = _client_at(app, OWNER_ADDRESS)
    assert _login(browser, "t1@team.test", PASSWORD).status_code == 302
    for _ in range(5):
        _login(_client_at(app, ATTACKER_ADDRESS), "t2@team.test", "bad-guess-123")
    assert _login(browser, "t2@team.test", PASSWORD).status_code == 429


def test_device_cookie_flags(app, make_user):
    make_user(email="ck@team.test")
    response = _login(_client_at(app, OWNER_ADDRESS), "ck@team.test", PASSWORD)
    (device,) = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("device=")]
    assert "HttpOnly" in device and "SameSite=Lax" in device and "Max-Age=" in device
    assert "Secure" not in device  # plain HTTP here; THREADLINE_HTTPS=1 makes it Secure


def test_device_cookie_is_secure_under_https(app_with):
    # CSRF off: under HTTPS Flask-WTF wants a Referer; this test is about cookie flags.
    with app_with(HTTPS=True, WTF_CSRF_ENABLED=False) as app:
        users.create_user(email="sc@team.test", name="Sc", password=PASSWORD)
        response = app.test_client().post(
            "/login",
            data={"email": "sc@team.test", "password": PASSWORD},
            base_url="https://localhost",
        )
    (device,) = [
        c for c in response.headers.getlist("Set-Cookie") if c.startswith("__Host-device=")
    ]
    assert "Secure" in device and "HttpOnly" in device and "Path=/" in device


def test_backoff_grows_and_the_right_password_waits_too(app, make_user, monkeypatch):
    make_user(email="bk@team.test")
    now = datetime.now(UTC)
    monkeypatch.setattr(throttle, "utcnow", lambda: now)
    attacker = _client_at(app, ATTACKER_ADDRESS)
    for _ in range(5):
        _login(attacker, "bk@team.test", "bad-guess-123")
    first = _login(attacker, "bk@team.test", PASSWORD)
    assert first.status_code == 429 and "Too many failed attempts" in first.get_data(as_text=True)
    first_wait = int(first.headers["Retry-After"])
    now += timedelta(seconds=first_wait)  # the delay has run: one more guess is allowed
    assert _login(attacker, "bk@team.test", "bad-guess-456").status_code == 401
    second = _login(attacker, "bk@team.test", PASSWORD)
    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) == 2 * first_wait


def test_other_address_without_device_token_is_throttled_per_account(app, make_user):
    make_user(email="pa@team.test")
    for _ in range(5):
        _login(_client_at(app, ATTACKER_ADDRESS), "pa@team.test", "bad-guess-123")
    assert _login(_client_at(app, OTHER_ADDRESS), "pa@team.test", PASSWORD).status_code == 429


def test_one_address_is_throttled_across_accounts(app, make_user):
    for n in range(4):
        make_user(email=f"ip{n}@team.test")
        for _ in range(5):
            _login(_client_at(app, ATTACKER_ADDRESS), f"ip{n}@team.test", "bad-guess-123")
    make_user(email="ip-fresh@team.test")
    attacker = _client_at(app, ATTACKER_ADDRESS)
    assert _login(attacker, "ip-fresh@team.test", PASSWORD).status_code == 429
    other = _client_at(app, OTHER_ADDRESS)
    assert _login(other, "ip-fresh@team.test", PASSWORD).status_code == 302


def _failure_addresses() -> list[str]:
    return list(db.session.scalars(select(LoginFailure.ip)))


def test_forwarded_for_is_ignored_without_trusted_proxies(app, client):
    client.environ_base["REMOTE_ADDR"] = "10.0.0.1"
    client.post(
        "/login",
        data={"email": "x@team.test", "password": "bad-guess-123"},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert _failure_addresses() == ["10.0.0.1"]


def test_forwarded_for_is_honored_with_one_trusted_proxy(app_with):
    with app_with(TRUSTED_PROXY_HOPS=1) as app:
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = "10.0.0.1"
        client.post(
            "/login",
            data={"email": "x@team.test", "password": "bad-guess-123"},
            headers={"X-Forwarded-For": "198.51.100.5, 203.0.113.9"},
        )
        # Only the last hop is trusted: the address our proxy saw, not what the client claims.
        assert _failure_addresses() == ["203.0.113.9"]


def test_unknown_address_costs_one_password_check_like_a_real_one(client, make_user, monkeypatch):
    make_user(email="real@team.test")
    checks = []

    def counting_check(pwhash: str, password: str) -> bool:
        checks.append(pwhash.split("$")[0])
        return check_password_hash(pwhash, password)

    monkeypatch.setattr(users, "check_password_hash", counting_check)
    assert _login(client, "real@team.test", "bad-guess-123").status_code == 401
    assert _login(client, "nobody@team.test", "bad-guess-123").status_code == 401
    assert len(checks) == 2 and checks[0] == checks[1]  # same KDF and parameters


def test_production_hash_is_scrypt_for_users_and_the_unknown_address_check(app_with, monkeypatch):
    """The other tests run with a cheap hash (conftest); this one signs in with the real one."""
    checks = []

    def counting_check(pwhash: str, password: str) -> bool:
        checks.append(pwhash.split("$")[0])
        return check_password_hash(pwhash, password)

    monkeypatch.setattr(users, "check_password_hash", counting_check)
    with app_with() as app:  # the default configuration
        assert app.config["PASSWORD_HASH_METHOD"] == "scrypt"
        user = users.create_user(email="real@team.test", name="Real", password=PASSWORD)
        assert user.password_hash.startswith("scrypt:")
        client = app.test_client()
        assert _login(client, "nobody@team.test", PASSWORD).status_code == 401
        assert _login(client, "real@team.test", PASSWORD).status_code == 302
        assert client.get("/settings/").status_code == 200
        assert checks[0] == checks[1] and checks[0].startswith("scrypt:")


def test_password_change_is_throttled_per_user(make_user, login):
    user = make_user()
    client = login(user)
    for _ in range(5):
        response = client.post(
            "/account/password",
            data={"current": "bad-guess-123", "new": "x" * 12, "confirm": "x" * 12},
        )
        assert response.status_code == 422
    response = client.post(
        "/account/password",
        data={"current": PASSWORD, "new": "a brand new secret", "confirm": "a brand new secret"},
    )
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    db.session.expire_all()
    assert check_password_hash(db.session.get(User, user.id).password_hash, PASSWORD)


# --------------------------------------------------------------------------- session lifetime


def test_session_ends_after_the_absolute_lifetime_even_when_used_daily(
    app, make_user, login, monkeypatch
):
    now = datetime.now(UTC)
    # raising=False: the clock must exist for the rule to be tested (it fails otherwise)
    monkeypatch.setattr(users, "utcnow", lambda: now, raising=False)
    client = login(make_user())
    for _day in range(13):  # used every day: the idle limit never runs out
        now += timedelta(days=1)
        assert client.get("/settings/").status_code == 200
    now += timedelta(days=1, seconds=1)  # 14 days and a second after signing in
    response = client.get("/settings/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.get("/settings/").status_code == 302  # signed out, not only redirected


def test_absolute_session_lifetime_is_a_setting(app, make_user, login, monkeypatch):
    app.config["SESSION_ABSOLUTE_LIFETIME_SECONDS"] = 60
    now = datetime.now(UTC)
    monkeypatch.setattr(users, "utcnow", lambda: now, raising=False)
    client = login(make_user())
    now += timedelta(seconds=61)
    assert client.get("/settings/").status_code == 302
