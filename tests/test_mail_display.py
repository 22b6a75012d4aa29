"""services.mail_display, and the Mail tab and conversation pages over mail whose headers are
missing, empty, huge or undecodable: every list, row and sidebar still answers 200."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from extensions import db
from services.mail_display import display_text, sender_label, short_name, subject_label

FUZZ_SEED = 20260405
FUZZ_MESSAGES = 40
ARRIVED = datetime(2026, 3, 9, 8, 7, tzinfo=UTC)

# What a header can look like in the wild; None means the header line is left out.
HEADER_SHAPES: list[bytes | None] = [
    None,
    b"",
    b"   ",
    b"\t\r\n ",  # folded to nothing
    b"x" * 200_000,  # huge
    b"\xff\xfe\x00\x81\x8d garbage \xc3",  # undecodable bytes and a NUL
    b"=?x-unknown?B?////?= =?utf-8?Q?=FF=FE?=",  # undecodable encoded-words
    b"=?utf-8?B?" + b"QQ" * 5000 + b"?=",  # huge once decoded
    b"\xe2\x80\xae\xe2\x81\xa6reversed\xe2\x81\xa9",  # bidi override and isolate
    b"<>",
    b"(comment only)",
    b'"" <>',
    b"Ann Lee <ann@customer.test>",
    b"Tue, 07 Apr 2026 10:00:01 +0200",
    b"<id@x.test>",
]
HEADERS = (b"From", b"To", b"Date", b"Subject", b"Message-ID")


def random_message(rng: random.Random) -> bytes:
    """Return a small message whose every header is picked from HEADER_SHAPES."""
    lines = []
    for name in HEADERS:
        shape = rng.choice(HEADER_SHAPES)
        if shape is not None:
            lines.append(name + b": " + shape)
    return b"\r\n".join(lines) + b"\r\n\r\nbody\r\n"


@pytest.fixture
def me(make_user):
    return make_user(email="me@team.test", name="Me")


@pytest.fixture
def account(me, make_stored_account):
    return make_stored_account(me)


def store_in_inbox(make_raw_message, account, raw: bytes, *, thread=None):
    """Store raw as the sync does for mail without a Date header (INTERNALDATE set)."""
    message = make_raw_message(account, raw, thread=thread, internaldate=ARRIVED)
    message.thread.in_inbox = True  # as sync does for mail that lands in an inbox folder
    db.session.commit()
    return message


def test_labels_fall_back_and_drop_bidi_controls():
    assert sender_label("", "") == "(unknown sender)"
    assert sender_label(" \t", None) == "(unknown sender)"
    assert sender_label("", "ann@x.test") == "ann@x.test"
    assert subject_label(None) == subject_label("  ") == "(no subject)"
    assert display_text("a\u202eb\u2066c\u2069") == "abc"
    assert short_name("(unknown sender)") == "(unknown sender)"
    assert short_name("Carla Diaz") == "Carla"


def test_display_text_agrees_with_its_plain_rule_on_random_text():
    """The shortcut for text that needs no change gives what the plain rule gives."""
    import re

    def reference(value):
        value = re.sub("[\u202a-\u202e\u2066-\u2069]", "", value or "")
        return re.sub(r"\s+", " ", value).strip()

    alphabet = (
        "ab \t\n\r\x0b\x0c\u00a0\u2003\u3000\u202a\u202e\u2066\u2069\u200b\u00e9\u05d0\x00\x1c"
    )
    rng = random.Random(FUZZ_SEED)
    for _ in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert display_text(value) == reference(value), repr(value)
    assert display_text(None) == ""


def test_missing_date_shows_the_arrival_time(me, login, account, make_raw_message):
    raw = b"From: Ann <ann@x.test>\r\nSubject: Undated\r\n\r\nbody\r\n"
    message = store_in_inbox(make_raw_message, account, raw)
    assert message.date is None
    page = login(me).get(f"/mail/threads/{message.thread_id}")
    assert page.status_code == 200
    assert "2026-03-09 08:07" in page.get_data(as_text=True)


def test_bidi_controls_do_not_reach_the_pages(me, login, account, make_raw_message):
    raw = (
        "From: \u202eEvil\u202c <evil@x.test>\r\nTo: me@team.test\r\n"
        "Subject: invoice \u202egnp.exe\u202c \u2067x\u2069\r\n\r\nbody\r\n"
    ).encode()
    message = store_in_inbox(make_raw_message, account, raw)
    client = login(me)
    for url in ("/mail/", f"/mail/threads/{message.thread_id}"):
        html = client.get(url).get_data(as_text=True)
        assert "gnp.exe" in html
        assert not any(char in html for char in "\u202a\u202b\u202c\u202d\u202e\u2067\u2069")


def test_hostile_headers_never_break_a_page(me, login, account, make_raw_message):
    rng = random.Random(FUZZ_SEED)
    threads = []
    for _ in range(FUZZ_MESSAGES):
        message = store_in_inbox(make_raw_message, account, random_message(rng))
        # Half the conversations get a second, ordinary sender: rows shorten names then.
        if rng.random() < 0.5:
            reply = b"From: Dan Ong <d@x.test>\r\nSubject: Re\r\n\r\nreply\r\n"
            store_in_inbox(make_raw_message, account, reply, thread=message.thread)
        threads.append(message.thread_id)
    client = login(me)
    fragment = {"HX-Request": "true", "HX-Target": "mail-results"}
    for url, headers in (
        ("/mail/", {}),
        ("/mail/", fragment),
        ("/mail/folders", {"HX-Request": "true"}),
        ("/mail/?q=body", {}),
    ):
        assert client.get(url, headers=headers).status_code == 200, url
    for thread_id in threads:
        response = client.get(f"/mail/threads/{thread_id}")
        assert response.status_code == 200, thread_id
