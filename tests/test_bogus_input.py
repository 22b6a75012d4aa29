"""Bogus form data never gives a 500 and loses nothing, on every state-changing route.

The owner A (the world of test_authorization_matrix) posts to every unsafe endpoint of
app.url_map, with A's own ids in the URL, a series of bogus bodies built from the form fields
the app reads: missing, empty, blank, 100,000 characters, NUL bytes and invalid UTF-8,
non-numbers, negative, huge and unknown ids, a field sent twice, impossible dates, unknown
choices, HTML and CR/LF header injection; with and without htmx headers. No answer may be a
5xx or an empty or traceback page, and afterwards A's data still reads back.
"""

from __future__ import annotations

import inspect
import io
import random
import re
from urllib.parse import quote

import pytest

from extensions import db
from models import (
    Deal,
    GroupSend,
    Lead,
    MailAccount,
    MailTemplate,
    Message,
    Organization,
    OutgoingMail,
    Person,
    Project,
    Signature,
    Thread,
    User,
)
from tests.test_authorization_matrix import RULES, TOKEN, _url, world

__all__ = ["world"]  # a fixture, used by name below

# Every form field name the app reads: the names in templates' forms and the names views and
# services take from request.form (grep `form.get(`, `getlist(`, `form_value(`, `name="`).
# A body built from all of them reaches whichever subset an endpoint reads.
FIELDS = sorted(
    """account_id action address after attachments bcc body body_html ca_cert_pem cc
    chosen_folders confirm currency current deactivated destination domain email
    email_address emails entry expected_close_date files_sent_copy folder folder_mode
    folders_json imap_host imap_port imap_security inline is_admin is_default keep_mail kind
    link_q linked max_message_mb name new next organization_id owner_id password
    password_token person_id phone primary_email provider q recipient record_id record_kind
    reply_kind role send_at shared sharing since smtp_files_sent_copy smtp_host smtp_password
    smtp_port smtp_security smtp_username source source_message_id stage state status
    subject template_id thread_id time_zone title to unread user username value
    visibility""".split()
)

HUGE = "x" * 100_000
# Values as bytes are sent percent-encoded as they are: NUL, a UTF-16 surrogate encoded as
# UTF-8 (invalid UTF-8, what a lone surrogate becomes on the wire) and a stray 0xFF.
BOGUS_VALUES: list[str | bytes] = [
    "",
    "   \t ",
    b"a\x00b",
    b"\xed\xa0\x80junk\xff",
    "abc",
    "-1",
    "0",
    str(2**63),
    str(10**30),
    "1.5e999",
    "987654321",  # an id no object has
    "2026-02-30",
    "99999-01-01",
    "bogus-choice",
    "<script>alert(1)</script>\"'><img src=x onerror=alert(1)>",
    "victim@example.test\r\nBcc: everyone@evil.test\r\nSubject: hijacked",
    "Name\nX-Injected: 1",
]
HTMX = {"HX-Request": "true", "HX-Target": "main"}

# Endpoints that connect to an outside server with what is posted (or stored): a bogus host
# would be a DNS lookup or a connection attempt, not an input check. Their validation has
# its own tests against real servers (test_accounts.py, test_oauth.py).
EXTERNAL = {
    "accounts.test": "connects to the posted IMAP server",
    "accounts.create": "connects to the posted IMAP and SMTP servers",
    "accounts.reauth": "signs in to the account's IMAP server",
    "accounts.smtp_update": "signs in to the posted SMTP server",
    "accounts.oauth_start": "redirects to the provider's sign-in",
    "accounts.oauth_again": "redirects to the provider's sign-in",
}
# Signing out ends the walk's session; test_auth.py covers it.
SKIPPED = {**EXTERNAL, "auth.logout": "signs A out"}
# Endpoints that delete or end what later endpoints need: walked last, in this order (a
# draft is sent before it is discarded; the account, whose removal takes its signatures and
# addresses along, goes last).
DESTRUCTIVE_WORDS = ("send", "undo", "cancel", "convert", "remove_", "delete", "discard")

UNSAFE = sorted(
    (endpoint, method)
    for endpoint, (_rule, methods) in RULES.items()
    for method in methods
    if method != "GET" and endpoint not in SKIPPED
)


def _is_destructive(endpoint: str) -> bool:
    return _walk_order((endpoint, "POST"))[0] > 0


def _walk_order(item: tuple[str, str]) -> tuple:
    """Sort key: editing endpoints first, then the destructive ones in DESTRUCTIVE_WORDS order."""
    endpoint = item[0]
    if endpoint == "accounts.remove":
        return (len(DESTRUCTIVE_WORDS) + 1, item)
    action = endpoint.split(".")[1]
    ranks = [i + 1 for i, word in enumerate(DESTRUCTIVE_WORDS) if word in action]
    return (ranks[0] if ranks else 0, item)


def _encode(pairs: list[tuple[str, str | bytes]]) -> bytes:
    """Return an x-www-form-urlencoded body, bytes values sent as they are (invalid UTF-8)."""
    return "&".join(f"{quote(name)}={quote(value, safe='')}" for name, value in pairs).encode()


def _valid_form(ids: dict) -> dict[str, str]:
    """Return plausible values, so one bogus field at a time gets past the others."""
    return {
        "title": "Plausible",
        "name": "Plausible",
        "subject": "Plausible",
        "body_html": "<p>Plausible</p>",
        "to": "carla@customer.test",
        "address": "carla@customer.test",
        "email": "carla@customer.test",
        "entry": "someone@junk.test",
        "thread_id": str(ids["thread_id"]),
        "record_kind": "deal",
        "kind": "deal",
        "record_id": str(ids["deal_id"]),
        "person_id": str(ids["person_id"]),
        "organization_id": str(ids["organization_id"]),
        "account_id": str(ids["account_id"]),
        "template_id": str(ids["template_id"]),
        "source_message_id": str(ids["message_id"]),
        "stage": "qualified",
        "status": "open",
        "value": "12500",
        "currency": "EUR",
        "visibility": "everyone",
        "action": "archive",
        "time_zone": "Europe/Berlin",
    }


def _endpoint_fields(app, endpoint: str) -> list[str]:
    """Return the fields the endpoint's view names; all of FIELDS when it hands the whole
    form to a service (which then reads names the view does not spell out)."""
    source = inspect.getsource(app.view_functions[endpoint])
    if re.search(r"request\.form(?![.\[])", source) or "parse_source" in source:
        return FIELDS
    named = set(re.findall(r"[\"']([a-z_]+)[\"']", source)) & set(FIELDS)
    return sorted(named) or FIELDS


def _bodies(rng: random.Random, ids: dict, fields: list[str]) -> list[tuple[str, bytes, dict]]:
    """Return (label, body, headers) for one endpoint's walk; `fields` are the ones it reads."""
    bodies = [("missing fields", b"", {}), ("missing fields", b"", HTMX)]
    for value in BOGUS_VALUES:
        # Every field the same bogus value, as a full page or as a fragment (both, sampled).
        pairs = [(name, value) for name in FIELDS]
        bodies.append((f"all fields {value!r:.40}", _encode(pairs), rng.choice([{}, HTMX])))
    # Every field twice (a list where one value is expected).
    twice = [(name, value) for name in FIELDS for value in ("1", "2")]
    bodies.append(("every field twice", _encode(twice), {}))
    # One bogus field among plausible ones, sampled: deeper than an all-bogus body.
    valid = _valid_form(ids)
    for name in fields if len(fields) <= 12 else rng.sample(fields, 12):
        for value in rng.sample(BOGUS_VALUES, 2):
            pairs = [(k, v) for k, v in valid.items() if k != name] + [(name, value)]
            headers = rng.choice([{}, HTMX])
            bodies.append((f"{name}={value!r:.40} among valid", _encode(pairs), headers))
    # 100,000 characters in the fields the endpoint reads, four at a time (Flask refuses a
    # form over 500 kB, MAX_FORM_MEMORY_SIZE, with a 413 before any view sees it); for a
    # view that hands the whole form on, six groups, sampled.
    groups = [fields[start : start + 4] for start in range(0, len(fields), 4)]
    for group in groups if len(groups) <= 6 else rng.sample(groups, 6):
        pairs = [(k, v) for k, v in valid.items() if k not in group] + [(k, HUGE) for k in group]
        bodies.append((f"{group} of 100,000 characters", _encode(pairs), {}))
    return bodies


# Uploads: file names and content types are form input too, and become MIME headers of a
# sent mail. Each is (filename, content type, data).
BOGUS_FILES = [
    ("", "text/plain", b"no name"),
    ("empty.txt", "text/plain", b""),
    ("a\r\nContent-Type: text/html.txt", "text/plain", b"injected name"),
    ("../../etc/passwd", "application/octet-stream", b"path"),
    ("nul\x00.txt", "text/plain", b"nul"),
    ("<script>alert(1)</script>.html", "text/html", b"<script>alert(1)</script>"),
    ("n" * 100_000 + ".txt", "text/plain", b"long name"),
    ("long-type.txt", "text/" + "x" * 100_000, b"long type"),
    ("bogus.bin", "not a mime type", b"\x00\xff" * 10),
]


def _file_requests(rng: random.Random) -> list[tuple[str, dict, dict]]:
    """Return (label, multipart data, headers) uploads for an endpoint reading a file."""
    requests = []
    for filename, content_type, data in BOGUS_FILES:
        for inline in ("1", "", "bogus-choice"):
            upload = (io.BytesIO(data), filename, content_type)
            requests.append(
                (f"file {filename!r:.40} {content_type!r:.40}", {"file": upload, "inline": inline},
                 rng.choice([{}, HTMX]))
            )  # fmt: skip
    return requests


# A's rows that no bogus request may lose or garble: name -> (model, key of its id).
KEY_ROWS = {
    "user": (User, "a_id"),
    "account": (MailAccount, "account_id"),
    "thread": (Thread, "thread_id"),
    "message": (Message, "message_id"),
    "deal": (Deal, "deal_id"),
    "person": (Person, "person_id"),
    "organization": (Organization, "organization_id"),
    "lead": (Lead, "lead_id"),
    "project": (Project, "project_id"),
    "draft": (OutgoingMail, "draft_id"),
    "signature": (Signature, "signature_id"),
    "template": (MailTemplate, "template_id"),
    "group_send": (GroupSend, "group_send_id"),
}


def _key_rows(ids: dict) -> dict:
    """Return A's KEY_ROWS as they are now (None where one is gone)."""
    return {name: db.session.get(model, ids[key]) for name, (model, key) in KEY_ROWS.items()}


def _read_back(ids: dict) -> dict:
    """Return the values of A's key rows that must read back unchanged."""
    db.session.expire_all()
    rows = _key_rows(ids)
    missing = [name for name, row in rows.items() if row is None]
    assert not missing, f"rows lost: {missing}"
    return {
        "user": (rows["user"].email, rows["user"].password_hash, rows["user"].is_active),
        "account": (rows["account"].email_address, rows["account"].username),
        "message": (rows["message"].subject, rows["message"].thread_id),
        "thread": (rows["thread"].id,),
        "records": tuple(rows[k].owner_id for k in ("deal", "person", "organization", "lead")),
        "draft": (rows["draft"].user_id, rows["draft"].account_id),
        "signature": (rows["signature"].account_id,),
        "template": (rows["template"].owner_id,),
    }


def _check_text_fields(ids: dict, before: dict) -> None:
    """A record's name is its original or a value a request validly set: never cut, never
    100,000 characters, never with a NUL."""
    sent = {"Plausible", "1", "2"}
    for value in BOGUS_VALUES:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        sent.add(text.replace("\x00", "").strip())
    rows = _key_rows(ids)
    for name, (attribute, original) in before.items():
        value = getattr(rows[name], attribute)
        assert value == original or value in sent, (name, attribute, value[:80])


def _problem(response) -> str | None:
    """Return what is wrong with an answer to bogus input, or None when it is fine."""
    if response.status_code >= 500:
        return f"status {response.status_code}"
    if response.mimetype == "text/html" and response.status_code not in (204, 301, 302, 303):
        body = response.get_data(as_text=True)
        # htmx may be answered with an empty 200 and an HX-Redirect or HX-Trigger header.
        headers = response.headers
        if not body.strip() and not (headers.get("HX-Redirect") or headers.get("HX-Trigger")):
            return "empty page"
        if "Traceback" in body:
            return "traceback"
    return None


@pytest.mark.slow(seconds=60)
def test_bogus_form_data_is_never_a_server_error_and_loses_nothing(app, world, login):
    ids = {**world["ids"], "a_id": world["a"].id}
    rng = random.Random(20261207)
    owner, admin = login(world["a"]), login(world["admin"])
    before = _read_back(ids)
    text_before = {
        "deal": ("title", world_title := _key_rows(ids)["deal"].title),
        "person": ("name", _key_rows(ids)["person"].name),
        "organization": ("name", _key_rows(ids)["organization"].name),
        "lead": ("title", _key_rows(ids)["lead"].title),
        "project": ("title", _key_rows(ids)["project"].title),
    }
    assert TOKEN in world_title  # the world is the one of the authorization matrix

    ordered = sorted(UNSAFE, key=_walk_order)
    destructive_started = False
    problems = []  # (endpoint, body, with htmx headers, what was wrong): all of them, not the first
    for endpoint, method in ordered:
        if _is_destructive(endpoint) and not destructive_started:
            # Everything up to here only edits: A's rows must all read back.
            assert _read_back(ids) == before
            _check_text_fields(ids, text_before)
            destructive_started = True
        client = admin if endpoint.startswith("admin.") else owner
        url = _url(app, endpoint, ids)
        fields = _endpoint_fields(app, endpoint)
        for label, body, headers in _bodies(rng, ids, fields):
            response = client.open(
                url,
                method=method,
                data=body,
                content_type="application/x-www-form-urlencoded",
                headers=headers,
            )
            if problem := _problem(response):
                problems.append((endpoint, label, bool(headers), problem))
        if "request.files" not in inspect.getsource(app.view_functions[endpoint]):
            continue
        for label, data, headers in _file_requests(rng):
            response = client.open(url, method=method, data=data, headers=headers)
            if problem := _problem(response):
                problems.append((endpoint, label, bool(headers), problem))
    assert not problems, "\n".join(map(repr, problems))
    # A's sign-in survives even the deleting endpoints' junk.
    db.session.expire_all()
    assert db.session.get(User, ids["a_id"]).password_hash == before["user"][1]


def test_fields_and_query_arguments_lose_their_nul_characters(app):
    from flask import request

    with app.test_request_context(
        "/mail/?q=quar%00terly", method="POST", data={"title": "Pla\x00n", "na\x00me": "x"}
    ):
        assert request.args["q"] == "quarterly"
        assert request.form["title"] == "Plan"
        assert request.form["name"] == "x"
        assert request.htmx is not None  # still htmx-flask's request


# Every query argument the app reads (grep `args.get(`, `values.get(` and parse_query).
QUERY_ARGS = sorted(
    """after attachments bar code connected done email_address error folder images kind
    link_q linked next page person_id provider q record record_id reply sharing sort
    start_at start_done state thread to unread""".split()
)
# OAuth's callback exchanges the posted code with the provider: test_oauth.py covers it.
GET_SKIPPED = {"accounts.oauth_callback", "auth.logout"}
# Rows of a list, swapped into a page: with a search or a cursor matching no row, the
# answer is no rows (the Mail tab's rows always; a record's panel for "More", after=).
ROWS_ONLY = {"mail.rows": "", "conversations.record_panel": "after="}


def _query_strings(rng: random.Random) -> list[str]:
    """Return bogus query strings: every argument one bogus value, then a sample of single
    arguments (one bogus value, or 5,000 characters: a URL stays under 8 kB)."""
    queries = []
    for value in BOGUS_VALUES:
        queries.append(_encode([(name, value) for name in QUERY_ARGS]).decode())
    queries.append(_encode([(name, value) for name in QUERY_ARGS for value in ("1", "2")]).decode())
    for name in rng.sample(QUERY_ARGS, 6):
        queries.append(_encode([(name, rng.choice([*BOGUS_VALUES, "x" * 5_000]))]).decode())
    return queries


@pytest.mark.slow(seconds=60)
def test_bogus_query_strings_are_never_a_server_error(app, world, login):
    """Every page and fragment, with A's own ids in the path, answers bogus query arguments
    (NULs, invalid UTF-8, huge and unknown ids, impossible dates, garbage cursors, markup)
    without a 5xx, an empty page or a traceback, as a page and as an htmx fragment."""
    ids = {**world["ids"], "a_id": world["a"].id}
    rng = random.Random(20261207)
    owner, admin = login(world["a"]), login(world["admin"])
    problems = []
    endpoints = sorted(
        endpoint
        for endpoint, (_rule, methods) in RULES.items()
        if "GET" in methods and endpoint not in GET_SKIPPED
    )
    assert len(endpoints) > 50  # the walk reaches the whole app
    for endpoint in endpoints:
        client = admin if endpoint.startswith("admin.") else owner
        url = _url(app, endpoint, ids)
        for query in _query_strings(rng):
            headers = rng.choice([{}, HTMX])
            response = client.get(f"{url}?{query}", headers=headers)
            problem = _problem(response)
            if problem == "empty page" and ROWS_ONLY.get(endpoint, "-") in query:
                continue
            if problem:
                problems.append((endpoint, query[:60], bool(headers), problem))
    assert not problems, "\n".join(map(repr, problems))
