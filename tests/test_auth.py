"""Setup, sign-in, sign-out, throttling, password change, sessions, CSRF."""

import base64
import json
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from extensions import db
from models import User
from tests.conftest import PASSWORD


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


def test_session_cookie_flags_and_contents(client, make_user):
    make_user(email="fl@team.test")
    response = client.post("/login", data={"email": "fl@team.test", "password": PASSWORD})
    set_cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    cookie = client.get_cookie("session").value
    compressed = cookie.startswith(".")
    payload = cookie.lstrip(".").split(".")[0]
    data = base64.urlsafe_b64decode(payload + "==")
    text = (zlib.decompress(data) if compressed else data).decode()
    assert PASSWORD not in text
    assert "password" not in json.loads(text)


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
