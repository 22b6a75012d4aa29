"""Walk app.url_map for the transport rules: headers (R31, R33), CSRF and methods (R25),
generic error pages (R34) and Host-header poisoning (R33).

Ids come from the world of test_authorization_matrix (A's account, thread, records...).
"""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import MethodNotAllowed

from tests.test_authorization_matrix import (
    CLASSIFICATION,
    RULES,
    _snapshot,
    _url,
    world,
)

__all__ = ["world"]  # a fixture, used by name below

GET_ENDPOINTS = sorted(e for e, (_rule, methods) in RULES.items() if "GET" in methods)
UNSAFE = sorted(
    (e, m) for e, (_rule, methods) in RULES.items() for m in methods if m not in ("GET",)
)
# URLs that only change state (no GET page shares the rule): a GET there must be 405.
GET_RULES = {rule for rule, methods in RULES.values() if "GET" in methods}
POST_ONLY = sorted(e for e, m in UNSAFE if RULES[e][0] not in GET_RULES)


def _csp(header: str) -> dict[str, str]:
    directives = {}
    for item in header.split(";"):
        name, _, value = item.strip().partition(" ")
        if name:
            directives[name] = value.strip()
    return directives


def _assert_headers(response, where) -> None:
    headers = response.headers
    csp = _csp(headers.get("Content-Security-Policy", ""))
    assert csp.get("script-src") == "'self'", where
    assert "unsafe-eval" not in headers["Content-Security-Policy"], where
    assert csp.get("frame-ancestors") == "'none'", where
    assert csp.get("object-src") == "'none'", where
    assert headers.get("X-Content-Type-Options") == "nosniff", where
    assert headers.get("X-Frame-Options") == "DENY", where
    assert headers.get("Referrer-Policy") in ("same-origin", "no-referrer"), where
    assert headers.get("Cross-Origin-Opener-Policy") == "same-origin", where
    assert "no-store" in headers.get("Cache-Control", ""), where
    assert "hx-request" in headers.get("Vary", "").lower(), where


@pytest.mark.parametrize("endpoint", GET_ENDPOINTS)
def test_security_headers_on_every_get_route(app, world, login, endpoint):
    # Admin pages are walked as the admin; everything else as A, who owns the ids.
    user = world["admin"] if CLASSIFICATION[endpoint] == "admin_page" else world["a"]
    client = login(user)
    url = _url(app, endpoint, world["ids"])
    for headers in ({}, {"HX-Request": "true", "HX-Target": "main"}):
        response = client.get(url, headers=headers)
        assert response.status_code < 400, (endpoint, url, response.status_code)
        # Every response carries nosniff, no-store and Vary, HTML or attachment alike (R31).
        assert response.headers.get("X-Content-Type-Options") == "nosniff", endpoint
        assert "no-store" in response.headers.get("Cache-Control", ""), endpoint
        assert "hx-request" in response.headers.get("Vary", "").lower(), endpoint
        if response.mimetype == "text/html":
            _assert_headers(response, (endpoint, url, headers))


def test_error_pages_carry_the_headers_too(client, world, login):
    response = login(world["b"]).get(f"/mail/threads/{world['ids']['thread_id']}")
    assert response.status_code == 404
    _assert_headers(response, "404")
    _assert_headers(client.get("/login"), "login page")


@pytest.mark.parametrize("endpoint,method", UNSAFE)
def test_state_change_without_csrf_token_is_refused(app, world, login, endpoint, method):
    client = login(world["admin"] if endpoint.startswith("admin.") else world["a"])
    url = _url(app, endpoint, world["ids"])
    form = {"name": "Changed", "title": "Changed", "action": "delete", "entry": "x@y.test"}
    form["thread_id"] = world["ids"]["thread_id"]
    before = _snapshot()
    response = client.open(url, method=method, data=form, csrf=False)
    assert response.status_code == 400, (endpoint, response.status_code)
    # A valid token of another session is no token for this one.
    foreign = login(world["b"]).csrf_token()
    response = client.open(url, method=method, data=form, headers={"X-CSRFToken": foreign})
    assert response.status_code == 400, (endpoint, "foreign token", response.status_code)
    after = _snapshot()
    assert [t for t in before if before[t] != after[t]] == [], endpoint


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost"},
    ],
)
def test_cross_site_writes_are_refused_even_with_a_token(world, login, headers):
    """R25's second layer: a valid token does not help a request another site sent."""
    client = login(world["a"])
    before = _snapshot()
    response = client.post("/deals/", data={"title": "Forged"}, headers=headers)
    assert response.status_code == 400
    assert _snapshot() == before
    same_origin = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/deals/", data={"title": "Mine"}, headers=same_origin).status_code in (
        200,
        303,
    )


def test_get_routes_change_nothing(app, world, login):
    """R25: no state change on GET, whether a page or its htmx fragment is asked for."""
    changed = []
    for endpoint in GET_ENDPOINTS:
        user = world["admin"] if CLASSIFICATION[endpoint] == "admin_page" else world["a"]
        client = login(user)
        url = _url(app, endpoint, world["ids"])
        before = _snapshot()
        for headers in ({}, {"HX-Request": "true", "HX-Target": "main"}):
            assert client.get(url, headers=headers).status_code < 400, (endpoint, url)
        after = _snapshot()
        changed += [(endpoint, table) for table in before if before[table] != after[table]]
    assert not changed


@pytest.mark.parametrize("endpoint", POST_ONLY)
def test_get_to_a_post_only_url_is_405(app, world, login, endpoint):
    url = _url(app, endpoint, world["ids"])
    with pytest.raises(MethodNotAllowed):
        app.url_map.bind("localhost").match(url, method="GET")
    before = _snapshot()
    response = login(world["a"]).get(url)
    assert response.status_code == 405, (endpoint, url)
    assert _snapshot() == before


def test_forced_exception_gives_a_generic_500(app, login, make_user, caplog):
    def explode():
        raise RuntimeError("kaboom-internal-detail in /secret/path.py")

    app.add_url_rule("/test-only/boom", "test_only_boom", explode)
    client = login(make_user())
    for headers in ({}, {"HX-Request": "true"}):
        response = client.get("/test-only/boom", headers=headers)
        body = response.get_data(as_text=True)
        assert response.status_code == 500
        assert "Something went wrong" in body
        for leak in ("Traceback", "kaboom", "RuntimeError", "/secret/path.py", 'File "'):
            assert leak not in body
        _assert_headers(response, "500")
    assert "kaboom-internal-detail" in caplog.text  # logged for the operator instead


@pytest.mark.parametrize(
    "driver_error, words",
    [
        (sqlite3.OperationalError("database or disk is full"), "the disk holding its data is full"),
        (
            psycopg.errors.ReadOnlySqlTransaction("read-only transaction"),
            "it cannot write its data",
        ),
    ],
    ids=["sqlite-disk-full", "postgresql-read-only"],
)
def test_a_full_disk_or_read_only_database_is_a_plain_503(
    app, login, make_user, driver_error, words
):
    def save():
        raise OperationalError("INSERT INTO person ...", {}, driver_error)

    app.add_url_rule("/test-only/save", "test_only_save", save, methods=["POST"])
    client = login(make_user())
    for headers in ({}, {"HX-Request": "true"}):
        response = client.post("/test-only/save", headers=headers)
        body = response.get_data(as_text=True)
        assert response.status_code == 503
        assert f"Threadline could not save this: {words}" in body
        assert "INSERT" not in body and "Traceback" not in body


EVIL = "evil.example"


def test_host_header_does_not_leak_into_links(app, world, login, client):
    """With TRUSTED_HOSTS unset any Host is served, but no URL is built from it."""
    signed_in = login(world["a"])
    ids = world["ids"]
    urls = ["/", "/mail/", f"/mail/threads/{ids['thread_id']}", "/deals/", "/settings/"]
    urls.append(f"/settings/accounts/{ids['account_id']}")
    for who, c in (("anonymous", client), ("A", signed_in)):
        for url in urls:
            response = c.get(url, headers={"Host": EVIL})
            assert EVIL not in response.get_data(as_text=True), (who, url)
            assert EVIL not in response.headers.get("Location", ""), (who, url)
            assert EVIL not in response.headers.get("HX-Redirect", ""), (who, url)
    # A sign-in's redirect is relative too.
    login_response = client.post(
        "/login?next=/mail/",
        data={"email": world["a"].email, "password": "correct horse battery"},
        headers={"Host": EVIL},
    )
    assert EVIL not in login_response.headers.get("Location", "")


def test_trusted_hosts_rejects_other_hosts(app, world, login, client):
    signed_in = login(world["a"])
    app.config["TRUSTED_HOSTS"] = ["threadline.lan", "localhost"]
    for c in (signed_in, client):
        for method, url in (("GET", "/mail/"), ("GET", "/nowhere"), ("POST", "/deals/")):
            response = c.open(url, method=method, headers={"Host": EVIL}, data={"title": "X"})
            assert response.status_code == 400, (method, url)
            assert EVIL not in response.get_data(as_text=True)
            assert response.headers["X-Frame-Options"] == "DENY"
    assert signed_in.get("/mail/", headers={"Host": "localhost"}).status_code == 200
    assert client.get("/login", headers={"Host": "threadline.lan"}).status_code == 200


def test_trusted_hosts_from_the_environment(monkeypatch):
    import config

    monkeypatch.setenv("THREADLINE_TRUSTED_HOSTS", "threadline.lan, .team.lan")
    assert config.environment_overrides()["TRUSTED_HOSTS"] == ["threadline.lan", ".team.lan"]
