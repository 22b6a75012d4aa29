"""Sending mail: the built message, SMTP against aiosmtpd, the Sent copy in Dovecot, the
conversation, and every way a send can fail (mailsync/send.py, mailsync/smtp.py,
services/outbox.py's worker side, the worker's send tick)."""

from __future__ import annotations

import email
import email.policy
import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

import jobs
from extensions import db
from mailsync import send
from models import (
    OUTGOING_FAILED,
    OUTGOING_QUEUED,
    OUTGOING_SENDING,
    OUTGOING_SENT,
    OUTGOING_UNCERTAIN,
    Message,
    OutgoingAttachment,
    OutgoingMail,
    Thread,
)
from services import outbox
from services.errors import ValidationError
from tests.servers.smtp import SMTPServer

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00"
    b"\x00\x00\x00IEND\xaeB`\x82"
)


# --------------------------------------------------------------------------- helpers


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def tree(part) -> object:
    """The part tree as nested content types: 'text/plain' or ('multipart/x', [...])."""
    if part.is_multipart():
        return (part.get_content_type(), [tree(p) for p in part.iter_parts()])
    return part.get_content_type()


def new_mail(user, account, **fields) -> OutgoingMail:
    values = dict(
        user_id=user.id,
        account_id=account.id,
        to=[["Carla Díaz", "carla@customer.test"]],
        cc=[],
        bcc=[],
        subject="Quote for the Q3 order",
        body_html="<p>Hello Carla,</p><p>the quote is attached.</p>",
        references=[],
    )
    values.update(fields)
    mail = OutgoingMail(**values)
    db.session.add(mail)
    db.session.commit()
    return mail


def queue(user, mail, **kwargs) -> OutgoingMail:
    return outbox.queue_send(user, mail, **kwargs)


def state_of(mail_id: int) -> OutgoingMail:
    db.session.expire_all()
    return db.session.get(OutgoingMail, mail_id)


def make_due(mail_id: int) -> None:
    db.session.execute(
        update(OutgoingMail)
        .where(OutgoingMail.id == mail_id)
        .values(send_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    db.session.commit()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def smtp_servers(dovecot):
    """Start aiosmtpd servers on demand (STARTTLS + AUTH by default); stop them after."""
    started: list[SMTPServer] = []

    def start(username: str, password: str = "mail-password-1", **options) -> SMTPServer:
        server = SMTPServer(
            cert_file=dovecot.certs.cert_file,
            key_file=dovecot.certs.key_file,
            username=username,
            password=password,
            **options,
        ).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sender(app, make_user, make_account, mail_user, smtp_servers):
    """(user, account, smtp server, mail user): an account synced once (its Sent folder is
    known), sending through a STARTTLS + AUTH aiosmtpd that knows its IMAP password."""
    user = make_user(name="Ana Pérez")
    server = smtp_servers(mail_user.email)
    account = make_account(
        user, mail_user, smtp_host=server.host, smtp_port=server.port, smtp_security="starttls"
    )
    jobs.run_account_sync(app, account.id)
    return user, account, server, mail_user


def use_server(account, server, *, security: str = "starttls") -> None:
    account.smtp_host, account.smtp_port, account.smtp_security = (
        server.host,
        server.port,
        security,
    )
    db.session.commit()


# --------------------------------------------------------------------------- building


def test_built_message_has_the_part_tree_and_every_cid_resolves(
    app, make_user, make_stored_account
):
    user = make_user(name="Ana Pérez")
    account = make_stored_account(user, email_address="ana@team.test")
    mail = new_mail(
        user,
        account,
        to=[["Jörg Müller", "jorg@customer.test"]],
        cc=[["", "cc@customer.test"]],
        bcc=[["Hidden", "boss@team.test"]],
        subject="Angebot für Q3 ✓",
        body_html='<p dir="rtl">שלום</p><p>Logo: <img src="cid:logo@team.test"></p>'
        '<script>alert(1)</script><a href="javascript:alert(1)">x</a>',
        in_reply_to="<orig@customer.test>",
        references=["<root@customer.test>", "<orig@customer.test>"],
        message_id_header="<fixed-1@team.test>",
    )
    blobs = {"a" * 64: PNG, "b" * 64: b"%PDF-1.4 quote"}
    mail.attachments = [
        OutgoingAttachment(
            filename="logo.png",
            content_type="image/png",
            size=len(PNG),
            blob_sha256="a" * 64,
            content_id="logo@team.test",
        ),
        OutgoingAttachment(
            filename="Angebot Müller – 2026.pdf",
            content_type="application/pdf",
            size=14,
            blob_sha256="b" * 64,
        ),
    ]
    built = send.build_message(
        mail, from_name=user.name, from_address=account.email_address, attachment_bytes=blobs.get
    )
    message = parse(built.raw)
    assert tree(message) == (
        "multipart/mixed",
        [
            (
                "multipart/related",
                [("multipart/alternative", ["text/plain", "text/html"]), "image/png"],
            ),
            "application/pdf",
        ],
    )
    assert not message.defects
    assert str(message["Subject"]) == "Angebot für Q3 ✓"
    assert b"Angebot f=C3=BCr" in built.raw or b"=?utf-8?" in built.raw  # RFC 2047
    assert message["From"].addresses[0].display_name == "Ana Pérez"
    assert message["To"].addresses[0].display_name == "Jörg Müller"
    assert message["Message-ID"] == "<fixed-1@team.test>"
    assert message["In-Reply-To"] == "<orig@customer.test>"
    assert message["References"] == "<root@customer.test> <orig@customer.test>"
    assert message["Date"] is not None
    assert "Bcc" not in message and b"boss@team.test" not in built.raw
    assert built.recipients == ["jorg@customer.test", "cc@customer.test", "boss@team.test"]
    assert built.mail_from == "ana@team.test" and not built.smtputf8
    assert built.raw.isascii() and all(len(line) <= 998 for line in built.raw.split(b"\r\n"))
    # Every cid: in the HTML names an inline part of the same related group.
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    cids = {p["Content-ID"].strip("<>") for p in related.iter_parts() if p["Content-ID"]}
    html = message.get_body(("html",)).get_content()
    assert 'src="cid:logo@team.test"' in html and cids == {"logo@team.test"}
    assert 'dir="rtl"' in html  # the direction survives the sanitizer
    assert "<script" not in html and "javascript:" not in html
    assert "שלום" in message.get_body(("plain",)).get_content()
    attachment = next(message.iter_attachments())
    assert attachment.get_filename() == "Angebot Müller – 2026.pdf"  # RFC 2231
    assert attachment.get_content() == b"%PDF-1.4 quote"


def test_a_cid_without_its_image_is_dropped(app, make_user, make_stored_account):
    user = make_user()
    account = make_stored_account(user)
    mail = new_mail(user, account, body_html='<img src="cid:missing@x"><p>hi</p>')
    mail.message_id_header = "<m@x>"
    built = send.build_message(
        mail, from_name="A", from_address=account.email_address, attachment_bytes=dict().get
    )
    message = parse(built.raw)
    assert tree(message) == ("multipart/alternative", ["text/plain", "text/html"])
    assert "cid:" not in message.get_body(("html",)).get_content()


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "hi\r\nBcc: victim@evil.example"},
        {"subject": "hi\nBcc: victim@evil.example"},
        {"to": [["Carla\nBcc: y@evil.example", "carla@customer.test"]]},
        {"to": [["Carla", "carla@customer.test\r\nBcc: y@evil.example"]]},
    ],
)
def test_header_injection_is_refused_before_any_smtp(app, sender, fields):
    user, account, server, _mail_user = sender
    mail = new_mail(user, account, **fields)
    with pytest.raises(ValidationError):
        queue(user, mail)
    with pytest.raises(ValidationError):
        send.build_message(
            mail,
            from_name=user.name,
            from_address=account.email_address,
            attachment_bytes=dict().get,
        )
    # Even a mail that got past the form is refused by the worker, before any SMTP.
    db.session.execute(
        update(OutgoingMail)
        .where(OutgoingMail.id == mail.id)
        .values(state=OUTGOING_QUEUED, send_at=datetime.now(UTC), message_id_header="<i@x>")
    )
    db.session.commit()
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    assert "line breaks" in state_of(mail.id).error
    assert server.handler.transactions == 0 and server.messages == []


def test_a_name_with_a_line_break_is_refused(app, make_user, make_stored_account):
    user = make_user(name="Ana\nBcc: y@evil.example")
    account = make_stored_account(user)
    mail = new_mail(user, account, message_id_header="<n@x>")
    with pytest.raises(ValidationError):
        send.build_message(
            mail, from_name=user.name, from_address=account.email_address, attachment_bytes={}.get
        )


# --------------------------------------------------------------------------- sending


def test_send_files_the_sent_copy_and_shows_it_once_in_its_conversation(app, sender, dovecot):
    user, account, server, mail_user = sender
    mail = new_mail(user, account, bcc=[["", "boss@team.test"]])
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}

    [received] = server.messages
    assert sorted(received.rcpt_tos) == ["boss@team.test", "carla@customer.test"]
    assert received.mail_from == mail_user.email
    assert b"boss@team.test" not in received.data
    sent = state_of(mail.id)
    assert sent.state == OUTGOING_SENT and sent.sent_at is not None and sent.error is None
    assert sent.message_id is not None and sent.thread_id is not None
    # The Sent copy: the same bytes, read.
    [uid] = dovecot.uids(mail_user.email, "Sent")
    assert "\\Seen" in dovecot.flags(mail_user.email, "Sent", uid)
    stored = db.session.get(Message, sent.message_id)
    assert stored.thread_id == sent.thread_id and stored.subject == mail.subject
    # A real sync of Sent afterwards recognises the copy: still one message.
    jobs.run_account_sync(app, account.id)
    count = db.session.scalar(
        select(func.count()).select_from(Message).where(Message.account_id == account.id)
    )
    assert count == 1
    thread = db.session.get(Thread, sent.thread_id)
    assert thread.message_count == 1


def test_a_reply_joins_its_conversation_and_the_record_it_came_from(
    app, sender, dovecot, make_deal, make_raw_message
):
    user, account, _server, mail_user = sender
    dovecot.deliver(
        mail_user.email,
        b"From: Carla <carla@customer.test>\r\nTo: " + mail_user.email.encode() + b"\r\n"
        b"Subject: Quote?\r\nMessage-ID: <ask-1@customer.test>\r\n"
        b"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\r\nCan you send a quote?\r\n",
    )
    jobs.run_account_sync(app, account.id)
    original = db.session.scalar(select(Message).where(Message.account_id == account.id))
    deal = make_deal(user)
    mail = new_mail(
        user,
        account,
        subject="Re: Quote?",
        reply_kind="reply",
        source_message_id=original.id,
        in_reply_to="<ask-1@customer.test>",
        references=["<ask-1@customer.test>"],
        record_kind="deal",
        record_id=deal.id,
    )
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    sent = state_of(mail.id)
    assert sent.thread_id == original.thread_id
    thread = db.session.get(Thread, sent.thread_id)
    assert thread.message_count == 2
    assert thread.deal_id == deal.id


def test_send_over_implicit_tls(app, sender, smtp_servers):
    user, account, _server, mail_user = sender
    server = smtp_servers(mail_user.email, implicit_tls=True)
    use_server(account, server, security="ssl")
    mail = new_mail(user, account)
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    assert len(server.messages) == 1


def test_an_international_address_uses_smtputf8_or_says_why_not(app, sender, smtp_servers):
    user, account, server, mail_user = sender
    mail = new_mail(user, account, to=[["Jörg", "jörg@customer.test"]])
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    [received] = server.messages
    assert received.rcpt_tos == ["jörg@customer.test"]
    utf8 = email.message_from_string(received.data.decode(), policy=email.policy.default)
    [to] = utf8["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Jörg", "jörg@customer.test")
    assert "jörg@customer.test".encode() in received.data  # UTF-8, not RFC 2047

    plain = smtp_servers(mail_user.email, smtputf8=False)
    use_server(account, plain)
    mail = new_mail(user, account, to=[["", "jörg@customer.test"]])
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    assert "SMTPUTF8" in state_of(mail.id).error
    assert plain.handler.transactions == 0


# --------------------------------------------------------------------------- failures


def test_a_temporary_failure_is_retried_with_backoff_then_sent(app, sender):
    user, account, server, _mail_user = sender
    app.config["SEND_BACKOFF_SECONDS"] = 30
    server.handler.data_answers.append("451 4.3.0 Mailbox busy, try again later")
    mail = new_mail(user, account)
    queue(user, mail)
    before = datetime.now(UTC)
    assert send.send_due(app) == {mail.id: OUTGOING_QUEUED}
    waiting = state_of(mail.id)
    assert waiting.attempts == 1 and "451 4.3.0 Mailbox busy" in waiting.error
    assert waiting.send_at >= before + timedelta(seconds=29)
    assert send.send_due(app) == {}  # not due yet
    make_due(mail.id)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    assert len(server.messages) == 1 and state_of(mail.id).attempts == 2


def test_temporary_failures_give_up_after_the_cap(app, sender):
    user, account, server, _mail_user = sender
    app.config["SEND_MAX_ATTEMPTS"] = 2
    server.handler.data_answers += ["421 4.7.0 Try later"] * 3
    mail = new_mail(user, account)
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_QUEUED}
    make_due(mail.id)
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    assert "gave up after 2 tries" in state_of(mail.id).error


def test_a_permanent_refusal_fails_with_the_servers_words(app, sender):
    user, account, server, _mail_user = sender
    server.handler.data_answers.append("554 5.7.1 Message rejected as spam")
    mail = new_mail(user, account)
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    assert "554 5.7.1 Message rejected as spam" in state_of(mail.id).error
    assert server.messages == []


def test_recipients_refused_all_or_some(app, sender):
    user, account, server, _mail_user = sender
    server.handler.rcpt_answers["nobody@customer.test"] = "550 5.1.1 No such user here"
    mail = new_mail(user, account, to=[["", "nobody@customer.test"]])
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    assert "550 5.1.1 No such user here" in state_of(mail.id).error
    # Some refused: the others got it, so it is sent, and the refusal is noted.
    mail = new_mail(user, account, to=[["", "nobody@customer.test"], ["", "carla@customer.test"]])
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    assert "nobody@customer.test" in state_of(mail.id).error
    assert server.messages[-1].rcpt_tos == ["carla@customer.test"]


def test_recipients_the_server_refused_are_named_where_the_user_looks(app, sender, login):
    user, account, server, _mail_user = sender
    server.handler.rcpt_answers["dave@customer.test"] = "450 4.2.0 Greylisted, try again later"
    mail = new_mail(
        user,
        account,
        subject="Contract v2",
        cc=[["Dave", "dave@customer.test"]],
    )
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    assert server.messages[-1].rcpt_tos == ["carla@customer.test"]
    sent = state_of(mail.id)
    assert sent.thread_id is not None
    client = login(user)
    note = "Not delivered to dave@customer.test (450 4.2.0 Greylisted, try again later)."
    outbox_page = html.unescape(client.get("/mail/outbox").get_data(as_text=True))
    assert note in outbox_page and "send it to them again later" in outbox_page
    page = html.unescape(client.get(f"/mail/threads/{sent.thread_id}").get_data(as_text=True))
    assert note in page and "The other recipients got it." in page


def test_a_server_taking_few_recipients_at_once_gets_the_rest_in_further_rounds(app, sender):
    user, account, server, _mail_user = sender
    server.handler.max_recipients = 2  # then "452 4.5.3 Too many recipients"
    server.handler.rcpt_answers["gone@customer.test"] = "550 5.1.1 No such user here"
    people = [["", f"p{n}@customer.test"] for n in range(4)]
    mail = new_mail(
        user,
        account,
        to=people[:2],
        cc=[*people[2:], ["", "gone@customer.test"]],
        bcc=[["", "boss@team.test"]],
    )
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    assert [m.rcpt_tos for m in server.messages] == [
        ["p0@customer.test", "p1@customer.test"],
        ["p2@customer.test", "p3@customer.test"],
        ["boss@team.test"],
    ]
    assert len({m.data for m in server.messages}) == 1  # one mail, the same bytes each time
    # Only the address the server refused for good is named.
    assert state_of(mail.id).error == (
        "Not delivered to gone@customer.test (550 5.1.1 No such user here). "
        "The other recipients got it."
    )


def test_a_later_round_the_server_refuses_is_noted_and_the_next_mail_still_goes(app, sender):
    user, account, server, _mail_user = sender
    server.handler.max_recipients = 1
    # The first round's DATA is taken, the second's refused for now.
    server.handler.data_answers = ["250 Message accepted", "451 4.7.1 Rate limited, try later"]
    first = new_mail(user, account, subject="Two rounds", to=[["", "p0@customer.test"]])
    first.cc = [["", "p1@customer.test"]]
    second = new_mail(user, account, subject="After it")
    queue(user, first)
    queue(user, second)
    assert send.send_due(app) == {first.id: OUTGOING_SENT, second.id: OUTGOING_SENT}
    note = state_of(first.id).error
    assert note.startswith("Not delivered to p1@customer.test (")
    assert "451 4.7.1 Rate limited" in note and "refused only for now" in note
    assert "p0@customer.test" not in note
    assert [m.rcpt_tos for m in server.messages] == [["carla@customer.test"]]  # the second


def test_recipients_a_broken_connection_may_have_reached_are_not_called_refused():
    note = send._refusal_note(
        {
            "p1@customer.test": (send.smtp.MAYBE_DELIVERED, "the connection broke"),
            "p2@customer.test": (550, "550 5.1.1 No such user"),
        }
    )
    assert note == (
        "Not delivered to p2@customer.test (550 5.1.1 No such user). The connection broke "
        "while the mail was handed over for p1@customer.test: they may or may not have it; "
        "ask before sending it to them again. The other recipients got it."
    )


def test_mail_everyone_got_carries_no_refusal_note(app, sender, login):
    user, account, _server, _mail_user = sender
    mail = new_mail(user, account, subject="Contract v3")
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    client = login(user)
    page = client.get(f"/mail/threads/{state_of(mail.id).thread_id}").get_data(as_text=True)
    assert "Not delivered to" not in page and "mail-undelivered" not in page
    assert "Not delivered to" not in client.get("/mail/outbox").get_data(as_text=True)


def test_a_wrong_smtp_password_is_said_in_plain_words(app, sender, smtp_servers):
    user, account, _server, mail_user = sender
    server = smtp_servers(mail_user.email, password="another-password")
    use_server(account, server)
    mail = new_mail(user, account)
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    assert "rejected the username or password" in state_of(mail.id).error


def test_a_mail_over_the_servers_size_limit_fails_before_data(app, sender, smtp_servers):
    user, account, _server, mail_user = sender
    server = smtp_servers(mail_user.email, data_size_limit=2000)
    use_server(account, server)
    mail = new_mail(user, account, body_html="<p>" + "long text " * 400 + "</p>")
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    assert "accepts at most" in state_of(mail.id).error
    assert server.handler.transactions == 0


def test_the_accounts_size_limit_is_checked_when_queued(app, sender):
    user, account, _server, _mail_user = sender
    account.max_message_bytes = 1000
    db.session.commit()
    mail = new_mail(user, account, body_html="x" * 2000)
    with pytest.raises(ValidationError) as refused:
        queue(user, mail)
    assert "attachments" in refused.value.errors


def test_only_the_owner_sends_from_an_account(app, sender, make_user):
    user, account, server, _mail_user = sender
    other = make_user()
    mail = new_mail(other, account)
    with pytest.raises(ValidationError):
        queue(other, mail)
    db.session.execute(
        update(OutgoingMail)
        .where(OutgoingMail.id == mail.id)
        .values(state=OUTGOING_QUEUED, send_at=datetime.now(UTC), message_id_header="<o@x>")
    )
    db.session.commit()
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    assert server.handler.transactions == 0


# --------------------------------------------------------------------------- crashes, restarts


def leave_sending(mail: OutgoingMail, *, minutes_ago: int = 1) -> None:
    db.session.execute(
        update(OutgoingMail)
        .where(OutgoingMail.id == mail.id)
        .values(
            state=OUTGOING_SENDING, updated_at=datetime.now(UTC) - timedelta(minutes=minutes_ago)
        )
    )
    db.session.commit()


def test_a_mail_left_sending_is_never_sent_again(app, sender, dovecot):
    user, account, server, mail_user = sender
    lost = new_mail(user, account, subject="Lost")
    queue(user, lost)
    leave_sending(lost)
    arrived = new_mail(user, account, subject="Arrived")
    queue(user, arrived)
    leave_sending(arrived)
    # The worker had sent this one and filed its copy before it stopped.
    dovecot.deliver(
        mail_user.email,
        b"From: a@b\r\nSubject: Arrived\r\nMessage-ID: "
        + arrived.message_id_header.encode()
        + b"\r\n\r\nbody\r\n",
        folder="Sent",
    )
    started = datetime.now(UTC)
    results = jobs.send_due_mail(app, started_at=started)
    assert results == {lost.id: OUTGOING_UNCERTAIN, arrived.id: OUTGOING_SENT}
    assert "may have been sent" in state_of(lost.id).error
    assert server.messages == []
    # Uncertain mail goes back to the user, never to SMTP by itself.
    assert jobs.send_due_mail(app, started_at=started) == {}
    assert outbox.cancel_to_draft(user, state_of(lost.id))


class WorkerKilled(BaseException):
    """The worker process dying mid-send (SIGKILL): nothing after it runs."""


def test_a_worker_stopped_mid_tick_leaves_only_the_mail_it_was_sending_in_doubt(
    app, sender, monkeypatch
):
    user, account, server, _mail_user = sender
    mails = [new_mail(user, account, subject=f"Order {n}") for n in range(3)]
    for mail in mails:
        queue(user, mail)
    deliver = send.smtp.deliver
    handed = []

    def dies_on_the_second(*args, **kwargs):
        handed.append(args)
        if len(handed) == 2:
            raise WorkerKilled
        return deliver(*args, **kwargs)

    monkeypatch.setattr(send.smtp, "deliver", dies_on_the_second)
    with pytest.raises(WorkerKilled):
        send.send_due(app)
    monkeypatch.setattr(send.smtp, "deliver", deliver)
    # The next worker: the mail cut off mid-send is the user's to decide; the one never
    # handed to SMTP goes out by itself.
    restarted = datetime.now(UTC) + timedelta(seconds=1)
    assert jobs.send_due_mail(app, started_at=restarted) == {
        mails[1].id: OUTGOING_UNCERTAIN,
        mails[2].id: OUTGOING_SENT,
    }
    assert [state_of(mail.id).state for mail in mails] == [
        OUTGOING_SENT,
        OUTGOING_UNCERTAIN,
        OUTGOING_SENT,
    ]
    subjects = [email.message_from_bytes(m.data)["Subject"] for m in server.messages]
    assert sorted(subjects) == ["Order 0", "Order 2"]


def test_mail_this_worker_is_sending_is_not_taken_for_left_behind(app, sender):
    user, account, _server, _mail_user = sender
    mail = new_mail(user, account)
    queue(user, mail)
    leave_sending(mail, minutes_ago=0)
    started = datetime.now(UTC) - timedelta(minutes=5)
    assert jobs.send_due_mail(app, started_at=started) == {}
    assert state_of(mail.id).state == OUTGOING_SENDING


def test_send_later_is_sent_on_time_across_a_worker_restart(app, sender):
    user, account, server, _mail_user = sender
    mail = new_mail(user, account)
    queue(user, mail, send_at=datetime.now(UTC) + timedelta(minutes=30))
    first_worker = datetime.now(UTC)
    assert jobs.send_due_mail(app, started_at=first_worker) == {}
    # The worker stops; its replacement starts once the time has come (it is just a row).
    make_due(mail.id)
    assert jobs.send_due_mail(app, started_at=datetime.now(UTC)) == {mail.id: OUTGOING_SENT}
    assert len(server.messages) == 1


def test_the_worker_runs_the_send_tick(app):
    import worker

    app.config["SEND_POLL_SECONDS"] = 5
    scheduler = worker.start_scheduler(app)
    try:
        job = scheduler.get_job(jobs.SEND_JOB_ID)
        assert job.func is jobs.send_due_mail and job.trigger.interval == timedelta(seconds=5)
    finally:
        scheduler.shutdown(wait=True)


def test_a_tick_reuses_one_connection_and_replaces_a_dropped_one(app, sender, dovecot):
    import socket

    user, account, server, mail_user = sender
    mails = [new_mail(user, account, subject=f"Batch {n}") for n in range(3)]
    for mail in mails:
        queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT for mail in mails}
    assert server.handler.ehlos == 2  # one connection: EHLO, STARTTLS, EHLO
    assert len(dovecot.uids(mail_user.email, "Sent")) == 3
    # A kept connection that broke meanwhile is replaced, and the mail still goes out once.
    sessions = send.Sessions()
    try:
        first, second = new_mail(user, account), new_mail(user, account)
        for mail in (first, second):
            queue(user, mail)
        claimed = outbox.claim_due()
        assert send.send_one(app, claimed[0], sessions=sessions) == OUTGOING_SENT
        sessions.smtp[account.id].sock.shutdown(socket.SHUT_RDWR)
        assert send.send_one(app, claimed[1], sessions=sessions) == OUTGOING_SENT
    finally:
        sessions.close()
    assert len(server.messages) == 5 and server.handler.ehlos == 6


# --------------------------------------------------------------------------- account settings


def test_the_outgoing_form_is_filled_from_the_preset(app, make_user, make_stored_account):
    from services import accounts

    account = make_stored_account(make_user(), email_address="ana@gmail.com")
    account.provider = "gmail"
    db.session.commit()
    form = accounts.smtp_form(account)
    assert (form["smtp_host"], form["smtp_port"], form["smtp_security"]) == (
        "smtp.gmail.com",
        465,
        "ssl",
    )
    assert form["smtp_files_sent_copy"] is True and form["max_message_mb"] == "25"
    from mailsync.providers import get_provider

    assert get_provider("office365").sending_defaults()["max_message_bytes"] == 20_000_000
    assert get_provider("other").sending_defaults() == {
        "max_message_bytes": None,
        "smtp_files_sent_copy": False,
    }


def test_smtp_settings_are_tested_before_saving(app, sender, smtp_servers, login):
    from services import accounts

    user, account, _server, mail_user = sender
    app.config["SMTP_ALLOWED_PORTS"] = None
    other = smtp_servers("sender-login", password="smtp-only-secret")
    values = dict(
        smtp_host=other.host, smtp_port=other.port, smtp_security="starttls", smtp_username=""
    )
    # The mailbox's own sign-in does not work there: plain words, nothing saved.
    with pytest.raises(ValidationError) as refused:
        accounts.update_smtp_settings(user, account, app=app, **values)
    assert "rejected the username or password" in refused.value.errors["smtp_password"]
    db.session.refresh(account)
    assert account.smtp_port != other.port
    # Its own username and password: tested, saved encrypted, used for sending.
    client = login(user)
    page = client.get(f"/settings/accounts/{account.id}/smtp")
    assert page.status_code == 200 and "Outgoing mail" in page.text
    response = client.post(
        f"/settings/accounts/{account.id}/smtp",
        data={
            **values,
            "smtp_username": "sender-login",
            "smtp_password": "smtp-only-secret",
            "max_message_mb": "10",
        },
    )
    assert response.status_code == 303
    db.session.expire_all()
    account = db.session.get(type(account), account.id)
    assert account.smtp_port == other.port and account.smtp_username == "sender-login"
    assert account.smtp_password_encrypted.startswith(b"gAAAAA")
    assert account.max_message_bytes == 10_000_000 and not account.smtp_files_sent_copy
    mail = new_mail(user, account)
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    assert len(other.messages) == 1


def test_the_add_form_tests_the_smtp_server_too(app, sender, smtp_servers):
    from services import accounts

    user, account, _server, mail_user = sender
    app.config["SMTP_ALLOWED_PORTS"] = None
    wrong = smtp_servers(mail_user.email, password="not-the-imap-password")
    with pytest.raises(ValidationError) as refused:
        accounts.check_connection(
            user,
            app=app,
            provider="other",
            email_address=mail_user.email,
            username=mail_user.email,
            password=mail_user.password,
            imap_host=account.imap_host,
            imap_port=account.imap_port,
            imap_security="ssl",
            ca_cert_pem=account.ca_cert_pem,
            smtp_host=wrong.host,
            smtp_port=wrong.port,
            smtp_security="starttls",
        )
    assert "smtp_password" in refused.value.errors


def test_smtp_ports_are_limited_to_mail_submission(app, sender):
    from services import accounts

    user, account, _server, _mail_user = sender
    with pytest.raises(ValidationError) as refused:
        accounts.update_smtp_settings(
            user, account, app=app, smtp_host="127.0.0.1", smtp_port=6379, smtp_security="ssl"
        )
    assert "not a mail submission port" in refused.value.errors["smtp_port"]


def test_sent_mail_is_linked_and_shared_like_synced_mail(app, sender, make_person):
    from models import MessagePerson
    from services.preferences import update_preferences

    user, account, _server, _mail_user = sender
    update_preferences(user, {"default_email_sharing": "shared"})
    carla = make_person(user, name="Carla Díaz", emails=("carla@customer.test",))
    mail = new_mail(user, account, record_kind="person", record_id=carla.id)
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    sent = state_of(mail.id)
    thread = db.session.get(Thread, sent.thread_id)
    assert thread.shared is True
    assert (
        db.session.scalar(
            select(MessagePerson.person_id).where(MessagePerson.message_id == sent.message_id)
        )
        == carla.id
    )


def test_a_record_the_sender_cannot_see_is_not_linked(app, sender, make_user, make_deal):
    user, account, _server, _mail_user = sender
    private = make_deal(make_user(), visibility="owner")
    mail = new_mail(user, account, record_kind="deal", record_id=private.id)
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    thread = db.session.get(Thread, state_of(mail.id).thread_id)
    assert thread.deal_id is None


def test_a_provider_that_files_its_own_sent_copy_gets_none_from_threadline(app, sender, dovecot):
    user, account, server, mail_user = sender
    account.smtp_files_sent_copy = True  # as Gmail's preset says
    db.session.commit()
    # The server files the copy itself, as Gmail does.
    server.handler.on_message = lambda raw: dovecot.deliver(mail_user.email, raw, "Sent")
    mail = new_mail(user, account)
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    assert len(dovecot.uids(mail_user.email, "Sent")) == 1  # its copy, not a second one
    sent = state_of(mail.id)
    assert sent.message_id is not None  # found by Message-ID and stored at its UID
    jobs.run_account_sync(app, account.id)
    count = db.session.scalar(
        select(func.count()).select_from(Message).where(Message.account_id == account.id)
    )
    assert count == 1


def test_a_running_worker_sends_due_and_scheduled_mail_across_a_restart(app, sender):
    """The real `flask worker`: due mail leaves within seconds; "send later" mail is sent on
    time by the worker started after the first one was killed (it is just a row)."""
    import signal

    from tests.test_jobs import environment, flask_process, stop, wait_for

    user, account, server, _mail_user = sender
    now_mail = new_mail(user, account, subject="Now")
    queue(user, now_mail)
    later_mail = new_mail(user, account, subject="Later")
    queue(user, later_mail, send_at=datetime.now(UTC) + timedelta(hours=1))
    env = environment(app, SEND_POLL_SECONDS=0.5, SYNC_START_DELAY_SECONDS=3600)
    worker = flask_process(env, "worker")
    try:
        wait_for(lambda: state_of(now_mail.id).state == OUTGOING_SENT, seconds=30)
        assert state_of(later_mail.id).state == OUTGOING_QUEUED  # not due: not sent
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        # Time passes while no worker runs: the mail falls due a few seconds from now
        # (set here, not at queueing, so a slow machine cannot make it due too early).
        due = datetime.now(UTC) + timedelta(seconds=3)
        db.session.execute(
            update(OutgoingMail).where(OutgoingMail.id == later_mail.id).values(send_at=due)
        )
        db.session.commit()
        worker = flask_process(env, "worker")
        wait_for(lambda: state_of(later_mail.id).state == OUTGOING_SENT, seconds=60)
    finally:
        output = stop(worker)
    later = state_of(later_mail.id)
    assert due <= later.sent_at < due + timedelta(seconds=60), output
    assert [m.data.count(b"Subject: Later") for m in server.messages] == [0, 1]


def test_the_accounts_size_limit_is_checked_again_on_the_built_message(app, sender):
    user, account, server, _mail_user = sender
    mail = new_mail(user, account, body_html="<p>" + "words " * 500 + "</p>")
    queue(user, mail)
    account.max_message_bytes = 3000  # lowered after the mail was queued
    db.session.commit()
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    assert "accepts at most 0.003 MB" in state_of(mail.id).error
    assert server.handler.transactions == 0


def test_images_quoted_as_data_uris_go_out_as_inline_parts(app, make_user, make_stored_account):
    """A reply quotes the original's inline images as data: URIs in the editor; many mail
    programs show no data: image, so the built mail carries each once as a cid: part."""
    import base64

    user = make_user(name="Ana Pérez")
    account = make_stored_account(user, email_address="ana@team.test")
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    mail = new_mail(
        user,
        account,
        body_html=f'<p>Yes.</p><blockquote type="cite"><img src="{uri}"><img src="{uri}">'
        "</blockquote>",
        message_id_header="<fixed-2@team.test>",
    )
    built = send.build_message(
        mail, from_name=user.name, from_address=account.email_address, attachment_bytes={}.get
    )
    message = parse(built.raw)
    assert tree(message) == (
        "multipart/related",
        [("multipart/alternative", ["text/plain", "text/html"]), "image/png"],
    )
    html = message.get_body(("html",)).get_content()
    assert "data:" not in html
    [cid] = set(re.findall(r'src="cid:([^"]+)"', html))
    [image] = [part for part in message.walk() if part["Content-ID"]]
    assert image["Content-ID"] == f"<{cid}>" and image.get_content() == PNG
