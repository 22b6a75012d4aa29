"""Messy mail delivered to the real Dovecot, synced, and shown whole (issue 10.1-10.3, 10.5).

The parser's own tests (tests/test_parse.py) cover each shape in detail; here the same
shapes travel the whole way a user's mail does: IMAP delivery, sync, the Mail tab and the
conversation page, and the attachment downloads.
"""

from __future__ import annotations

import base64
import html
import re

import pytest
from sqlalchemy import select

from extensions import db
from mailsync.parse import MAX_DEPTH
from models import Message
from tests.mail_fixtures import OUTLOOK_RTF, tnef_package
from tests.sync_helpers import run_sync
from tests.test_parse import (
    APPLE_ALTERNATIVE,
    HEAD,
    SMIME,
    bounce,
    customer_mail,
    forwarded,
    nested,
)

pytestmark = pytest.mark.imap


def head(n: int, *, sender: bytes | None = b"Carla <carla@customer.test>", extra=b"") -> bytes:
    lines = [
        b"To: box@mail.test",
        b"Subject: Case %d" % n,
        b"Date: Tue, 07 Apr 2026 10:%02d:00 +0000" % n,
        b"Message-ID: <case%d@customer.test>" % n,
        b"MIME-Version: 1.0",
    ]
    if sender is not None:
        lines.insert(0, b"From: " + sender)
    return b"\r\n".join(lines) + b"\r\n" + extra


BROKEN_BOUNDARY = (
    b"Content-Type: multipart/mixed; boundary=declared\r\n\r\n"
    b"--real\r\nContent-Type: text/plain\r\n\r\nfirst part kept\r\n"
    b'--real\r\nContent-Type: application/pdf; name="b.pdf"\r\n\r\n%PDF\r\n--real--\r\n'
)


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


def test_messy_mail_is_listed_and_shown_whole(app, dovecot, mail_user, account, login):
    mails = {
        # A conversation with two senders, one message without any From header.
        "no-from": [
            head(1) + b"Content-Type: text/plain\r\n\r\nfirst\r\n",
            head(2, sender=None, extra=b"In-Reply-To: <case1@customer.test>\r\n")
            + b"Content-Type: text/plain\r\n\r\nsecond without a sender\r\n",
        ],
        "apple": [head(3) + APPLE_ALTERNATIVE],
        "huge-header": [
            head(4, extra=b"X-Junk: " + b"a" * 1_100_000 + b"\r\n")
            + b"Content-Type: text/plain\r\n\r\nthe body after a huge header\r\n"
        ],
        "deep": [_deep(5)],
        "broken-boundary": [head(6) + BROKEN_BOUNDARY],
        "latin1-as-utf8": [
            head(7)
            + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            + "Grüße aus dem Café".encode("latin-1")
            + b"\r\n"
        ],
    }
    for raws in mails.values():
        for raw in raws:
            dovecot.deliver(mail_user.email, raw)
    assert run_sync(app, account).ok
    client = login(account.user)
    listing = client.get("/mail/")
    assert listing.status_code == 200
    assert "Case 2" in listing.get_data(as_text=True) and "(unknown sender)" in listing.get_data(
        as_text=True
    )

    def page_of(subject: str) -> str:
        thread_id = db.session.scalar(select(Message.thread_id).where(Message.subject == subject))
        response = client.get(f"/mail/threads/{thread_id}")
        assert response.status_code == 200, subject
        return response.get_data(as_text=True)

    page = page_of("Case 1")
    assert "second without a sender" in page and "(unknown sender)" in page
    page = page_of("Case 3")
    names = re.findall(r"(notes\.txt|ann\.vcf|a\.pdf)", page)
    assert {"notes.txt", "ann.vcf", "a.pdf"} <= set(names)
    message = db.session.scalar(select(Message).where(Message.subject == "Case 3"))
    for part_id, data in (("2.2", b"the notes"), ("2.4", b"%PDF")):
        download = client.get(f"/mail/messages/{message.id}/attachments/{part_id}")
        assert download.status_code == 200 and download.data == data
    assert "the body after a huge header" in page_of("Case 4")
    assert "deepest" in page_of("Case 5")
    page = page_of("Case 6")
    assert "first part kept" in page and "b.pdf" in page and "--real" not in page
    assert "Grüße aus dem Café" in page_of("Case 7")


def _deep(n: int) -> bytes:
    """A message nested deeper than the parser's limit, with its text at the bottom."""
    return head(n) + nested(MAX_DEPTH + 10)[len(HEAD) :]


def test_signed_and_encrypted_mail_from_the_server_is_shown_and_found(
    app, dovecot, mail_user, account, login
):
    """Opaque S/MIME: the text inside the signature is shown and searchable, its file
    downloads; encrypted mail says so (tests/test_parse.py covers the shapes)."""
    for name in ("signed-opaque.eml", "signed-opaque-streamed.eml", "encrypted.eml"):
        dovecot.deliver(mail_user.email, (SMIME / name).read_bytes())
    assert run_sync(app, account).ok
    client = login(account.user)
    found = client.get("/mail/?q=zanzibarite").get_data(as_text=True)
    assert "Signed contract" in found and "Secret" not in found
    assert "Signed, streamed" in client.get("/mail/?q=quixotal").get_data(as_text=True)
    signed = db.session.scalar(select(Message).where(Message.subject == "Signed contract"))
    page = client.get(f"/mail/threads/{signed.thread_id}").get_data(as_text=True)
    assert "Zanzibarite 42." in page and "contract.pdf" in page
    download = client.get(f"/mail/messages/{signed.id}/attachments/1.0.2")
    assert download.status_code == 200 and download.data.startswith(b"%PDF-1.4")
    secret = db.session.scalar(select(Message).where(Message.subject == "Secret"))
    page = client.get(f"/mail/threads/{secret.thread_id}").get_data(as_text=True)
    assert "This message is encrypted for its recipient" in page


def winmail_mail(n: int, package: bytes) -> bytes:
    """Case n, whose only part is an Outlook winmail.dat (Exchange's rich text mode)."""
    return (
        head(n)
        + b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(package)
    )


def test_a_body_sent_only_inside_winmail_dat_is_shown_and_found(
    app, dovecot, mail_user, account, login
):
    rtf = rb"{\rtf1\ansi\ansicpg1252 The Quillwort order is confirmed.\par Regards}"
    package = tnef_package([("order.pdf", b"%PDF-1.4 order")], rtf=rtf)
    dovecot.deliver(mail_user.email, winmail_mail(10, package))
    assert run_sync(app, account).ok
    client = login(account.user)
    assert "Case 10" in client.get("/mail/?q=quillwort").get_data(as_text=True)
    message = db.session.scalar(select(Message).where(Message.subject == "Case 10"))
    page = client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert "The Quillwort order is confirmed." in page and "order.pdf" in page


def test_html_kept_in_the_rich_text_of_a_winmail_dat_is_shown_as_html(
    app, dovecot, mail_user, account, login
):
    package = tnef_package([], rtf=OUTLOOK_RTF)
    dovecot.deliver(mail_user.email, winmail_mail(11, package))
    assert run_sync(app, account).ok
    client = login(account.user)
    assert "Case 11" in client.get("/mail/?q=prices").get_data(as_text=True)
    message = db.session.scalar(select(Message).where(Message.subject == "Case 11"))
    page = client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    shown = html.unescape(page)  # the mail's HTML is in the sandboxed frame's srcdoc
    assert (
        'href="https://quillwort.test/prices?a=1&amp;b=2"' in shown and ">our prices</a>" in shown
    )
    assert "htmltag" not in shown and "<o:p>" not in shown


def test_an_outlook_item_inside_a_winmail_dat_is_shown_found_and_its_file_downloads(
    app, dovecot, mail_user, account, login
):
    item = tnef_package(
        [("Marigold offer.pdf", b"%PDF-1.4 marigold")],
        body=b"The marigold offer stands until Friday.",
        subject="Marigold offer",
        sender=("Bo Berg", "bo@vendor.test"),
    )
    package = tnef_package([], body=b"Forwarding the offer.", embedded=[item])
    dovecot.deliver(mail_user.email, winmail_mail(12, package))
    assert run_sync(app, account).ok
    client = login(account.user)
    assert "Case 12" in client.get("/mail/?q=marigold").get_data(as_text=True)
    message = db.session.scalar(select(Message).where(Message.subject == "Case 12"))
    page = html.unescape(client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True))
    assert "Forwarding the offer." in page
    assert "From: Bo Berg" in page and "Subject: Marigold offer" in page
    assert "The marigold offer stands until Friday." in page and "Marigold offer.pdf" in page
    download = client.get(f"/mail/messages/{message.id}/attachments/1.tnef1")
    assert download.status_code == 200 and download.data == b"%PDF-1.4 marigold"


def test_a_meeting_reply_that_is_only_a_calendar_is_shown_and_found(
    app, dovecot, mail_user, account, login
):
    accepted = (
        "BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\n"
        "ATTENDEE;PARTSTAT=ACCEPTED;CN=Carla:mailto:carla@customer.test\r\n"
        "SUMMARY:Zeppelin kick-off\r\nDTSTART:20261208T090000Z\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    dovecot.deliver(
        mail_user.email,
        head(13) + b"Content-Type: text/calendar; method=REPLY\r\n\r\n" + accepted.encode(),
    )
    assert run_sync(app, account).ok
    client = login(account.user)
    assert "Case 13" in client.get("/mail/?q=zeppelin").get_data(as_text=True)
    message = db.session.scalar(select(Message).where(Message.subject == "Case 13"))
    page = html.unescape(client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True))
    assert "Accepted: Zeppelin kick-off (Carla" in page and "This message has no text" not in page
    assert "When: 2026-12-08 09:00 (UTC)" in page


def test_a_bounce_joins_the_conversation_of_the_mail_that_failed(
    app, dovecot, mail_user, account, login
):
    original = (
        b"From: box@mail.test\r\nTo: gone@customer.test\r\nSubject: Renewal offer\r\n"
        b"Date: Tue, 07 Apr 2026 09:00:00 +0000\r\nMessage-ID: <renewal-7@mail.test>\r\n\r\n"
        b"Here is the offer.\r\n"
    )
    dovecot.deliver(mail_user.email, original)
    dovecot.deliver(mail_user.email, bounce(original))
    assert run_sync(app, account).ok
    sent = db.session.scalar(select(Message).where(Message.subject == "Renewal offer"))
    returned = db.session.scalar(
        select(Message).where(Message.subject == "Undelivered Mail Returned to Sender")
    )
    assert returned.thread_id == sent.thread_id
    page = login(account.user).get(f"/mail/threads/{sent.thread_id}").get_data(as_text=True)
    assert "2 messages" in page and "could not be delivered" in html.unescape(page)


def test_a_sender_whose_encoded_name_holds_a_comma_is_read_right(
    app, dovecot, mail_user, account, login
):
    dovecot.deliver(
        mail_user.email,
        head(14, sender=b"=?utf-8?q?Berg,_Bo?= <Bo@Vendor.test>")
        + b"Content-Type: text/plain\r\n\r\nThe quote.\r\n",
    )
    assert run_sync(app, account).ok
    message = db.session.scalar(select(Message).where(Message.subject == "Case 14"))
    assert (message.from_name, message.from_address) == ("Berg, Bo", "bo@vendor.test")
    page = login(account.user).get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert "Berg, Bo" in page and "=?utf-8" not in page


def test_a_mail_forwarded_as_an_attachment_is_found_by_the_attached_text(
    app, dovecot, mail_user, account, login
):
    dovecot.deliver(
        mail_user.email,
        b"Subject: FW: Price question\r\n" + forwarded(customer_mail(1), text=b"FYI"),
    )
    dovecot.deliver(mail_user.email, head(9) + b"Content-Type: text/plain\r\n\r\nno price here\r\n")
    assert run_sync(app, account).ok
    client = login(account.user)
    rows = client.get("/mail/?q=gold+plan").get_data(as_text=True)
    assert "FW: Price question" in rows and "Case 9" not in rows
    assert "FW: Price question" not in client.get("/mail/?q=platinum").get_data(as_text=True)


def test_a_mail_with_only_enriched_text_is_shown_and_found(app, dovecot, mail_user, account, login):
    body = b"<bold>The Quillwort</bold> order\r\nis <italic>confirmed</italic>.\r\n\r\nRegards"
    raw = head(15) + b"Content-Type: text/enriched; charset=us-ascii\r\n\r\n" + body
    dovecot.deliver(mail_user.email, raw)
    assert run_sync(app, account).ok
    client = login(account.user)
    listing = client.get("/mail/?q=quillwort").get_data(as_text=True)
    assert "Case 15" in listing and "The Quillwort order is confirmed." in listing  # snippet
    message = db.session.scalar(select(Message).where(Message.subject == "Case 15"))
    page = client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert "The Quillwort order is confirmed." in page and "Regards" in page
    assert "bold&gt;" not in page  # its commands are not shown as text
