"""Every page that shows a mail answers for hostile and broken mail: never an error page,
never minutes of work (the parser's and sanitizer's limits hold end to end)."""

from __future__ import annotations

import pytest

HEAD = b"From: Mallory <mallory@evil.test>\r\nTo: owner@team.test\r\nSubject: Hostile %d\r\n"
MB = 1_000_000


def html_mail(markup: bytes) -> bytes:
    return b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + markup


def text_mail(text: bytes) -> bytes:
    return b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text


HOSTILE = {
    "unclosed divs": html_mail(b"<div>x" * (MB // 6)),
    "reopened formatting": html_mail(b"".join(b"<div><b id=%d>x</div>" % i for i in range(40_000))),
    "nested tables": html_mail(b"<table><tr><td>" * (MB // 15)),
    "long words": html_mail(b"<p>" + b"x" * MB + b"</p>"),
    "many images": html_mail(b'<img src="https://tracker.test/p.gif">' * (MB // 40)),
    "quote rule line": text_mail(b"above\r\n" + b">" * MB + b"\r\nbelow"),
    "deep quotes": text_mail(b"\r\n".join(b">" * depth + b" x" for depth in range(2000))),
    "one long line": text_mail(b"http://x.test/" * (MB // 14)),
    "many lines": text_mail(b"x\r\n" * (MB // 3)),
    "bidi and controls": text_mail("\u202e\u2066\x07\x1b[31m ".encode() * (MB // 16)),
    "many addresses": b"Cc: " + b"a@b.test, " * 50_000 + b"\r\n" + text_mail(b"hi"),
    "deep multipart": b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    + b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(3000)
    ),
    "many parts": b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    + b"--b\r\nContent-Type: application/pdf; name=a.pdf\r\n\r\nx\r\n" * 5000,
    "broken base64": b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + b"!@#$" * (MB // 4),
}


@pytest.fixture
def owner_mailbox(make_user, make_stored_account):
    owner = make_user(name="Owner", email="owner@team.test")
    return owner, make_stored_account(owner)


@pytest.mark.timeout(300)  # a hang guard: unclosed divs took minutes, the rule line failed
@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_every_page_of_a_hostile_mail_answers(owner_mailbox, make_raw_message, login, body):
    owner, account = owner_mailbox
    message = make_raw_message(account, HEAD % 1 + body)
    client = login(owner)
    for url in (
        "/mail/",
        "/mail/?q=hostile",
        f"/mail/threads/{message.thread_id}",
        f"/mail/compose?reply={message.id}&kind=reply",
        f"/mail/compose?reply={message.id}&kind=forward",
    ):
        assert client.get(url).status_code == 200, url
