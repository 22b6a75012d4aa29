"""End to end: a mail written in Chromium's compose page is sent by the worker's send tick
through a real SMTP server (aiosmtpd, STARTTLS + AUTH), filed in the real Dovecot's Sent
folder, and shown once in its conversation, also after the next sync; then a reply to it
from the conversation carries In-Reply-To and References. The captured mail is read back
with the standard `email` package."""

from __future__ import annotations

import email
import email.policy
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

import jobs
from extensions import db
from models import OUTGOING_SENT, Message, OutgoingMail
from services.preferences import update_preferences
from tests.mail_fixtures import PNG_1X1
from tests.servers.browser import sign_in_with_session
from tests.servers.smtp import SMTPServer

pytestmark = [pytest.mark.browser, pytest.mark.imap]

HEBREW = "שלום, ההצעה מצורפת"


@pytest.fixture
def smtp(dovecot, mail_user):
    server = SMTPServer(
        cert_file=dovecot.certs.cert_file,
        key_file=dovecot.certs.key_file,
        username=mail_user.email,
        password=mail_user.password,
    ).start()
    yield server
    server.stop()


@pytest.fixture
def me(app, make_user, make_account, make_person, mail_user, smtp):
    user = make_user(name="Mia Müller")
    account = make_account(
        user, mail_user, smtp_host=smtp.host, smtp_port=smtp.port, smtp_security="starttls"
    )
    assert jobs.run_account_sync(app, account.id).ok  # its Sent folder is known
    make_person(user, name="Carla Díaz", emails=("carla@customer.test",))
    update_preferences(user, {"undo_send_seconds": "0"})
    return user, account


def wait_until_queued(count: int) -> None:
    """Wait (for state, up to 10 s) until `count` mails have left the editor for the queue."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        db.session.expire_all()
        queued = db.session.scalar(
            select(func.count()).select_from(OutgoingMail).where(OutgoingMail.state != "draft")
        )
        if queued >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} mails were not queued")


def send_tick(app) -> dict:
    results = jobs.send_due_mail(app, started_at=datetime.now(UTC) - timedelta(seconds=1))
    db.session.expire_all()
    return results


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def paste_image(page) -> None:
    page.evaluate(
        """(bytes) => {
            const file = new File([new Uint8Array(bytes)], "chart.png", {type: "image/png"});
            const data = new DataTransfer();
            data.items.add(file);
            document.getElementById("compose-editor").dispatchEvent(new ClipboardEvent(
                "paste", {clipboardData: data, bubbles: true, cancelable: true}));
        }""",
        list(PNG_1X1),
    )


def test_a_mail_written_in_the_browser_is_sent_filed_and_shown_once(
    app, page, live_server, me, smtp, dovecot, mail_user
):
    user, account = me
    sign_in_with_session(page, live_server.app, live_server.url, user)
    page.goto(live_server.url + "/mail/compose")
    page.locator("#compose-form[data-ready=true]").wait_for()
    page.locator("#compose-to-input").type("car")
    page.locator("#compose-to-suggestions li", has_text="carla@customer.test").click()
    page.fill("#compose-subject", "Angebot für 2027 ✓")
    editor = page.locator("#compose-editor")
    editor.click()
    page.keyboard.press("Control+b")
    page.keyboard.type("Bold terms")
    page.keyboard.press("Control+b")
    page.keyboard.press("Enter")
    page.keyboard.type(HEBREW)
    expect(editor.locator('[dir="rtl"]')).to_have_text(HEBREW)
    page.keyboard.press("Enter")
    paste_image(page)
    expect(editor.locator("img[src^='/mail/drafts/']")).to_have_count(1)
    page.set_input_files(
        "#compose-file-input",
        files=[
            {
                "name": "Preisliste 2027.pdf",
                "mimeType": "application/pdf",
                "buffer": b"%PDF-1.4 prices",
            }
        ],
    )
    expect(page.locator("#compose-files a", has_text="Preisliste 2027.pdf")).to_be_visible()
    page.get_by_role("button", name="Send", exact=True).click()
    wait_until_queued(1)

    mail_id = db.session.scalar(select(OutgoingMail.id))
    results = send_tick(app)
    assert results == {mail_id: OUTGOING_SENT}, results
    mail = db.session.get(OutgoingMail, mail_id)
    assert mail.state == OUTGOING_SENT and mail.thread_id

    [received] = smtp.handler.messages
    assert received.rcpt_tos == ["carla@customer.test"]
    message = parsed(received.data)
    assert message["Subject"] == "Angebot für 2027 ✓"
    assert message["From"].addresses[0].display_name == "Mia Müller"
    assert message["Message-ID"] == mail.message_id_header
    html = message.get_body(("html",)).get_content()
    assert "<b>Bold terms</b>" in html or "<strong>Bold terms</strong>" in html
    assert re.search(r'dir="rtl"[^>]*>(<[^>]+>)*' + HEBREW, html)
    cids = set(re.findall(r'src="cid:([^"]+)"', html))
    inline = {
        part["Content-ID"].strip("<>"): part.get_content()
        for part in message.walk()
        if part["Content-ID"]
    }
    assert cids and cids <= set(inline) and all(inline[c] == PNG_1X1 for c in cids)
    files = [part for part in message.iter_attachments() if part.get_filename()]
    assert [(f.get_filename(), f.get_content()) for f in files] == [
        ("Preisliste 2027.pdf", b"%PDF-1.4 prices")
    ]
    assert message.get_body(("plain",)).get_content().strip().startswith("Bold terms")

    # Its copy in the real Sent folder, read.
    sent_uids = dovecot.uids(mail_user.email, "Sent")
    assert len(sent_uids) == 1
    assert "\\Seen" in dovecot.flags(mail_user.email, "Sent", sent_uids[0])

    # In its conversation at once, and still once after the next sync finds the Sent copy.
    def copies() -> int:
        return db.session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.message_id_header == mail.message_id_header.strip("<>"))
        ) or db.session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.message_id_header == mail.message_id_header)
        )

    assert copies() == 1
    assert jobs.run_account_sync(app, account.id).ok
    db.session.expire_all()
    assert copies() == 1
    page.goto(f"{live_server.url}/mail/threads/{mail.thread_id}")
    expect(page.locator("h1")).to_have_text("Angebot für 2027 ✓")
    expect(page.locator(".message-card, article")).to_have_count(1)

    # A reply from the conversation answers it.
    page.get_by_role("link", name=re.compile("^Reply$")).last.click()
    page.locator("#compose-form[data-ready=true]").wait_for()
    expect(page.locator("#compose-subject")).to_have_value("Re: Angebot für 2027 ✓")
    page.locator("#compose-editor").click()
    page.keyboard.press("Control+Home")
    page.keyboard.type("One more thing.")
    page.keyboard.press("Control+Enter")
    wait_until_queued(2)
    reply_id = db.session.scalar(select(func.max(OutgoingMail.id)))
    assert send_tick(app) == {reply_id: OUTGOING_SENT}
    reply = parsed(smtp.handler.messages[-1].data)
    assert reply["In-Reply-To"] == mail.message_id_header
    assert mail.message_id_header in reply["References"]
    assert db.session.get(OutgoingMail, reply_id).thread_id == mail.thread_id
