"""mailsync.imap.connect against the real Dovecot: TLS trust, STARTTLS, errors in plain words."""

import socket

import pytest

from mailsync import imap
from mailsync.imap import ConnectionSettings, MailConnectionError, classify_login_error


def settings_for(dovecot, user, **overrides):
    values = dict(
        host=dovecot.host,
        port=dovecot.ssl_port,
        security="ssl",
        username=user.email,
        password=user.password,
        ca_cert_pem=dovecot.ca_file.read_text(),
        timeout=5,
    )
    values.update(overrides)
    return ConnectionSettings(**values)


@pytest.mark.imap
def test_connect_with_private_ca_logs_in_and_enables_condstore(dovecot, mail_user):
    client = imap.connect(settings_for(dovecot, mail_user), allowed_ports=None)
    try:
        assert b"CONDSTORE" in client.capabilities()
        assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 0
    finally:
        imap.safe_logout(client)


@pytest.mark.imap
def test_starttls_connection(dovecot, mail_user):
    settings = settings_for(dovecot, mail_user, port=dovecot.plain_port, security="starttls")
    imap.safe_logout(imap.connect(settings, allowed_ports=None))


@pytest.mark.imap
def test_untrusted_certificate_names_the_certificate(dovecot, mail_user):
    with pytest.raises(MailConnectionError) as caught:
        imap.connect(settings_for(dovecot, mail_user, ca_cert_pem=None), allowed_ports=None)
    assert caught.value.kind == imap.CERT_UNTRUSTED
    assert "not trusted" in caught.value.message
    assert "Threadline Test CA" in caught.value.message


@pytest.mark.imap
def test_wrong_password_is_auth_failed(dovecot, mail_user):
    with pytest.raises(MailConnectionError) as caught:
        imap.connect(settings_for(dovecot, mail_user, password="wrong"), allowed_ports=None)
    assert caught.value.kind == imap.AUTH_FAILED
    assert caught.value.needs_user_action
    assert "username or password" in caught.value.message


def test_connection_refused_and_unknown_host():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = dict(username="u", password="p", security="ssl", timeout=3)
    with pytest.raises(MailConnectionError) as refused:
        imap.connect(ConnectionSettings(host="127.0.0.1", port=port, **base), allowed_ports=None)
    assert refused.value.kind == imap.CONNECTION_REFUSED
    with pytest.raises(MailConnectionError) as unknown:
        imap.connect(ConnectionSettings(host="no-such-host.invalid", port=993, **base))
    assert unknown.value.kind == imap.HOST_NOT_FOUND


def test_non_mail_port_refused_before_connecting():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(MailConnectionError) as caught:
            imap.connect(
                ConnectionSettings(
                    host="127.0.0.1", port=port, security="ssl", username="u", password="p"
                )
            )
    assert caught.value.kind == imap.PORT_NOT_ALLOWED


def test_plaintext_service_banner_is_not_echoed():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        import threading

        def banner():
            conn, _ = listener.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.2 secret-banner\r\n")
            conn.close()

        threading.Thread(target=banner, daemon=True).start()
        with pytest.raises(MailConnectionError) as caught:
            imap.connect(
                ConnectionSettings(
                    host="127.0.0.1",
                    port=port,
                    security="starttls",
                    username="u",
                    password="p",
                    timeout=3,
                ),
                allowed_ports=None,
            )
    assert "secret-banner" not in caught.value.message


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("[AUTHENTICATIONFAILED] Invalid credentials (Failure)", imap.AUTH_FAILED),
        ("LOGIN failed.", imap.AUTH_FAILED),
        ("NO Basic authentication is disabled", imap.OAUTH_REQUIRED),
        ("Please using authorized code to login.", imap.APP_PASSWORD_REQUIRED),
        ("[ALERT] Application-specific password required", imap.APP_PASSWORD_REQUIRED),
        ("[ALERT] Please log in via your web browser", imap.IMAP_DISABLED),
        ("Your account is not enabled for IMAP use. Please enable IMAP", imap.IMAP_DISABLED),
        ("NO [LIMIT] Rate limit hit", imap.THROTTLED),
    ],
)
def test_classify_real_server_answers(answer, kind):
    assert classify_login_error(answer) == kind
