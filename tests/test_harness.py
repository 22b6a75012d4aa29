"""The real-server harness itself: Dovecot over TLS with a private CA, doveadm helpers,
SMTP capture, and Chromium against the live app."""

import smtplib
import ssl

import pytest
from imapclient import IMAPClient

MESSAGE = (
    b"From: Carla <carla@customer.test>\r\nTo: box@mail.test\r\nSubject: Harness check\r\n"
    b"Message-ID: <harness-1@customer.test>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n\r\n"
    b"Hello from the harness.\r\n"
)


@pytest.mark.imap
def test_dovecot_serves_tls_with_private_ca_and_doveadm_controls_mail(dovecot, mail_user):
    dovecot.deliver(mail_user.email, MESSAGE)
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    with IMAPClient(dovecot.host, port=dovecot.ssl_port, ssl_context=context) as client:
        client.login(mail_user.email, mail_user.password)
        info = client.select_folder("INBOX", readonly=True)
        assert info[b"EXISTS"] == 1
        uid = client.search(["ALL"])[0]
        fetched = client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
        assert b"Hello from the harness." in fetched
    dovecot.add_flags(mail_user.email, "INBOX", uid, "\\Flagged")
    assert "\\Flagged" in dovecot.flags(mail_user.email, "INBOX", uid)
    dovecot.move(mail_user.email, "INBOX", uid, "Archive")
    assert dovecot.uids(mail_user.email, "INBOX") == []
    assert len(dovecot.uids(mail_user.email, "Archive")) == 1
    dovecot.set_uidvalidity(mail_user.email, "Archive", 4242)
    assert dovecot.status(mail_user.email, "Archive")["uidvalidity"] == 4242


@pytest.mark.imap
def test_dovecot_certificate_is_not_trusted_without_the_ca(dovecot, mail_user):
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(dovecot.host, port=dovecot.ssl_port, ssl_context=ssl.create_default_context())


@pytest.mark.imap
def test_dovecot_plain_port_offers_starttls(dovecot, mail_user):
    client = IMAPClient(dovecot.host, port=dovecot.plain_port, ssl=False)
    assert b"STARTTLS" in client.capabilities()
    client.starttls(ssl.create_default_context(cafile=str(dovecot.ca_file)))
    client.login(mail_user.email, mail_user.password)
    client.logout()


def test_smtp_server_records_messages(smtp_server):
    with smtplib.SMTP(smtp_server.host, smtp_server.port) as smtp:
        smtp.sendmail("a@team.test", ["b@customer.test"], MESSAGE)
    assert smtp_server.messages[0].rcpt_tos == ["b@customer.test"]
    assert b"Harness check" in smtp_server.messages[0].data


@pytest.mark.browser
def test_browser_reaches_live_app(live_server, page):
    page.goto(live_server.url + "/")
    assert "/setup" in page.url
    assert page.get_by_role("button", name="Create admin account").is_visible()


def test_smtp_server_with_starttls_and_auth(dovecot):
    from tests.servers.smtp import SMTPServer

    server = SMTPServer(
        cert_file=dovecot.certs.cert_file,
        key_file=dovecot.certs.key_file,
        username="sender@team.test",
        password="smtp-secret-1",
    ).start()
    try:
        context = ssl.create_default_context(cafile=str(dovecot.ca_file))
        with smtplib.SMTP(server.host, server.port) as smtp:
            smtp.starttls(context=context)
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("sender@team.test", "wrong-password")
            smtp.login("sender@team.test", "smtp-secret-1")
            smtp.sendmail("sender@team.test", ["b@customer.test"], MESSAGE)
        assert [m.rcpt_tos for m in server.messages] == [["b@customer.test"]]
    finally:
        server.stop()
