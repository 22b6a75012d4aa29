"""Talk to SMTP servers: verified TLS, login, plain-words errors, one delivery.

Every failure becomes an SMTPFailure that says how the sender should react: `permanent`
(the server refused for good: wrong password, recipient refused, too large; the mail is
failed with the server's words), `maybe_sent` (the connection broke after the message was
handed over; resending could deliver it twice, so the mail becomes "uncertain"), or neither
(a temporary problem: 4xx answers, an unreachable server; the mail is retried later).

Network-level failures never echo the server's banner (SECURITY.md R20); SMTP answers to
our own commands are quoted, since they are what the user must act on.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass

from mailsync.imap import (
    APP_PASSWORD_REQUIRED,
    AUTH_FAILED,
    CERT_UNTRUSTED,
    CONNECTION_REFUSED,
    HOST_NOT_FOUND,
    NETWORK,
    OAUTH_LOGIN_MESSAGE,
    OAUTH_REQUIRED,
    PROTOCOL_ERROR,
    TIMEOUT,
    TLS_ERROR,
    TLS_NOT_OFFERED,
    ConnectionSettings,
    MailConnectionError,
    _ssl_context,
    classify_login_error,
)

DEFAULT_ALLOWED_PORTS = frozenset({465, 587, 25})
REFUSED = "refused"  # the server refused the mail, a recipient or the sender
TEMPORARY = "temporary"  # a 4xx answer: try again later
TOO_LARGE = "too_large"
SMTPUTF8_MISSING = "smtputf8_missing"

SMTP_LOGIN_MESSAGES = {
    AUTH_FAILED: "The outgoing (SMTP) server rejected the username or password. "
    "Check them in Settings > Mail accounts.",
    APP_PASSWORD_REQUIRED: (
        "This provider needs an app password for sending (SMTP) instead of your normal "
        "password. Create one in your provider's security settings and enter it in "
        "Settings > Mail accounts."
    ),
    OAUTH_REQUIRED: (
        "This provider only accepts OAuth2 sign-in for sending. Remove this mailbox and add "
        'it again with "Sign in with Microsoft" (or Google).'
    ),
}


class SMTPFailure(Exception):
    """A failed connection or delivery: a kind, plain words, and how to react."""

    def __init__(
        self, kind: str, message: str, *, permanent: bool = False, maybe_sent: bool = False
    ) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message
        self.permanent, self.maybe_sent = permanent, maybe_sent


@dataclass(frozen=True)
class Delivery:
    """What the server accepted: refused holds the recipients it turned down (others got it)."""

    refused: dict[str, tuple[int, str]]


def _answer(code: int, text: bytes | str) -> str:
    words = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(words.split())}"


def _network_failure(exc: BaseException, settings: ConnectionSettings) -> SMTPFailure:
    host = f"{settings.host}:{settings.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SMTPFailure(
            CERT_UNTRUSTED,
            f"The certificate of the outgoing server {host} is not trusted "
            f"({exc.verify_message}). If this is your own server with a private CA, upload "
            "that CA certificate.",
            permanent=True,
        )
    if isinstance(exc, ssl.SSLError):
        return SMTPFailure(
            TLS_ERROR,
            f"A secure (TLS) connection to {host} failed. Check the port and security setting "
            "(465 uses SSL, 587 uses STARTTLS).",
            permanent=True,
        )
    if isinstance(exc, socket.gaierror):
        return SMTPFailure(
            HOST_NOT_FOUND, f"The server name {settings.host} could not be found. Check it."
        )
    if isinstance(exc, ConnectionRefusedError):
        return SMTPFailure(
            CONNECTION_REFUSED,
            f"{host} refused the connection. Check the port, or whether the server is running.",
        )
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return SMTPFailure(TIMEOUT, f"{host} did not answer in time.")
    if isinstance(exc, (smtplib.SMTPServerDisconnected, OSError)):
        return SMTPFailure(NETWORK, f"The connection to {host} dropped. Threadline will retry.")
    return SMTPFailure(
        PROTOCOL_ERROR,
        f"Could not talk to {host} as an SMTP server. Check the host, port and security setting.",
    )


def connect(settings: ConnectionSettings, *, local_hostname: str | None = None) -> smtplib.SMTP:
    """Open, secure and log in an SMTP connection; raise SMTPFailure on failure.

    STARTTLS is required on a non-SSL port: no silent plain-text fallback (R19).
    """
    context = _ssl_context(settings.ca_cert_pem)
    try:
        if settings.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.host,
                settings.port,
                timeout=settings.timeout,
                context=context,
                local_hostname=local_hostname,
            )
        else:
            client = smtplib.SMTP(
                settings.host,
                settings.port,
                timeout=settings.timeout,
                local_hostname=local_hostname,
            )
    except (OSError, smtplib.SMTPException) as exc:
        raise _network_failure(exc, settings) from exc
    try:
        client.ehlo()
        if settings.security != "ssl":
            if not client.has_extn("starttls"):
                raise SMTPFailure(
                    TLS_NOT_OFFERED,
                    f"{settings.host}:{settings.port} does not offer STARTTLS, so the password "
                    "and the mail would travel unencrypted. Use port 465 with SSL instead.",
                    permanent=True,
                )
            client.starttls(context=context)
            client.ehlo()
        if settings.username:
            try:
                login(client, settings)
            except smtplib.SMTPAuthenticationError as exc:
                kind = classify_login_error(_answer(exc.smtp_code, exc.smtp_error))
                if exc.smtp_code and 400 <= exc.smtp_code < 500 and kind == AUTH_FAILED:
                    raise SMTPFailure(
                        TEMPORARY,
                        "The outgoing server could not check the password right now "
                        f"({_answer(exc.smtp_code, exc.smtp_error)}). Threadline will retry.",
                    ) from exc
                message = SMTP_LOGIN_MESSAGES.get(kind, SMTP_LOGIN_MESSAGES[AUTH_FAILED])
                if settings.auth == "xoauth2" and kind == AUTH_FAILED:
                    message = OAUTH_LOGIN_MESSAGE
                raise SMTPFailure(kind, message, permanent=True) from exc
            except smtplib.SMTPNotSupportedError as exc:
                raise SMTPFailure(
                    AUTH_FAILED,
                    f"{settings.host}:{settings.port} does not accept a sign-in (no AUTH). "
                    "Check the port: 465 or 587 are the usual ones for sending.",
                    permanent=True,
                ) from exc
        return client
    except SMTPFailure:
        close(client)
        raise
    except (OSError, smtplib.SMTPException) as exc:
        close(client)
        raise _network_failure(exc, settings) from exc


def login(client: smtplib.SMTP, settings: ConnectionSettings) -> None:
    """Authenticate: AUTH PLAIN/LOGIN with the password, or AUTH XOAUTH2 with the token.

    Raises smtplib.SMTPAuthenticationError when refused, SMTPNotSupportedError without AUTH.
    """
    if settings.auth != "xoauth2":
        client.login(settings.username, settings.password)
        return
    if not client.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
    initial = f"user={settings.username}\x01auth=Bearer {settings.password}\x01\x01"
    # On failure the server sends a 334 challenge holding an error (JSON); the client
    # answers it with an empty line and the server then gives its final 5xx answer.
    client.auth("XOAUTH2", lambda challenge=None: "" if challenge else initial)


def check(settings: ConnectionSettings) -> None:
    """Connect and log in, then quit: the account form's test. Raises MailConnectionError."""
    try:
        close(connect(settings))
    except SMTPFailure as exc:
        raise MailConnectionError(exc.kind, exc.message) from exc


def close(client: smtplib.SMTP | None) -> None:
    """Quit a connection, ignoring errors (it may already be broken)."""
    if client is None:
        return
    try:
        client.quit()
    except Exception:
        try:
            client.close()
        except Exception:
            pass


def _refusal(code: int, text: bytes | str, what: str) -> SMTPFailure:
    answer = _answer(code, text)
    if 400 <= code < 500:
        return SMTPFailure(TEMPORARY, f"The server asked to try again later: {answer}")
    kind = TOO_LARGE if code == 552 or "size" in answer.lower() else REFUSED
    return SMTPFailure(kind, f"The server refused {what}: {answer}", permanent=True)


def deliver(
    client: smtplib.SMTP, mail_from: str, recipients: list[str], raw: bytes, *, smtputf8: bool
) -> Delivery:
    """Hand one message to a connected server (MAIL, RCPT each, DATA).

    A server that takes only so many recipients at once answers the next ones "452 too many
    recipients" (RFC 5321 4.5.3.1.10): the message then goes to them in further
    transactions on the same connection, until each recipient was taken or refused.

    Raises SMTPFailure when the first transaction fails (nobody got the mail); `maybe_sent`
    when the connection broke once DATA had begun, since the server may have accepted the
    message by then. Once some recipients got it, a later failure is reported as refusals of
    the recipients it left out.
    """
    options = _mail_options(client, raw, smtputf8)
    refused, rest = _transaction(client, mail_from, recipients, raw, options, first=True)
    while rest:
        try:
            more, rest_after = _transaction(client, mail_from, rest, raw, options, first=False)
        except SMTPFailure as exc:
            # The others have the mail: these recipients are reported, the mail is sent.
            code = MAYBE_DELIVERED if exc.maybe_sent else 554 if exc.permanent else 451
            refused.update({recipient: (code, exc.message) for recipient in rest})
            try:
                client.rset()  # a refused DATA leaves the transaction open for the next mail
            except (OSError, smtplib.SMTPException):
                pass  # a broken connection: the next mail opens a new one
            break
        refused.update(more)
        rest = rest_after
    return Delivery(refused=refused)


def _mail_options(client: smtplib.SMTP, raw: bytes, smtputf8: bool) -> list[str]:
    """The MAIL FROM options; SMTPFailure when the server cannot take the message at all."""
    options: list[str] = []
    if smtputf8:
        if not client.has_extn("smtputf8"):
            raise SMTPFailure(
                SMTPUTF8_MISSING,
                "An address of this mail has non-Latin letters before the @, and the outgoing "
                "server cannot send to such addresses (it lacks SMTPUTF8). Write to another "
                "address of the recipient.",
                permanent=True,
            )
        options += ["SMTPUTF8", "BODY=8BITMIME"]
    limit = client.esmtp_features.get("size", "")
    if limit.isdigit() and int(limit) and len(raw) > int(limit):
        raise SMTPFailure(
            TOO_LARGE,
            f"This mail is {len(raw) / 1_000_000:.1f} MB; the server accepts at most "
            f"{int(limit) / 1_000_000:.1f} MB. Remove an attachment or share a link instead.",
            permanent=True,
        )
    if limit.isdigit():
        options.append(f"SIZE={len(raw)}")
    return options


TOO_MANY_RECIPIENTS = 452
# Delivery.refused's code for recipients of a later transaction whose connection broke while
# the mail was handed over: they may have it.
MAYBE_DELIVERED = 0


def _transaction(
    client: smtplib.SMTP,
    mail_from: str,
    recipients: list[str],
    raw: bytes,
    options: list[str],
    *,
    first: bool,
) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """One MAIL, RCPT, DATA exchange; return (the recipients refused, those left for the next
    transaction: from the first one answered 452 after another was taken).

    A `first` transaction that delivers to nobody raises SMTPFailure (the mail was not
    sent); a later one returns its refusals (the mail went to others already).
    """
    try:
        code, text = client.mail(mail_from, options)
        if code != 250:
            client.rset()
            raise _refusal(code, text, "the sender")
        refused: dict[str, tuple[int, str]] = {}
        taken = 0
        for position, recipient in enumerate(recipients):
            code, text = client.rcpt(recipient)
            if code in (250, 251):
                taken += 1
            elif code == TOO_MANY_RECIPIENTS and taken:
                rest = recipients[position:]  # the server's limit: these go next time
                break
            else:
                refused[recipient] = (code, _answer(code, text))
        else:
            rest = []
        if not taken:
            client.rset()
            if not first:
                return refused, []
            codes = [code for code, _ in refused.values()]
            words = "; ".join(f"{rcpt}: {answer}" for rcpt, (_c, answer) in refused.items())
            if any(400 <= code < 500 for code in codes):
                raise SMTPFailure(TEMPORARY, f"The server asked to try again later: {words}")
            raise SMTPFailure(
                REFUSED, f"The server refused every recipient: {words}", permanent=True
            )
    except SMTPFailure:
        raise
    except (OSError, smtplib.SMTPException) as exc:
        raise SMTPFailure(
            NETWORK, "The connection to the outgoing server dropped before the mail was sent."
        ) from exc
    try:
        code, text = client.data(raw)
    except smtplib.SMTPDataError as exc:  # DATA itself refused: nothing was handed over
        raise _refusal(exc.smtp_code, exc.smtp_error, "the mail") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise SMTPFailure(
            NETWORK,
            "The connection to the outgoing server broke while the mail was being handed over, "
            "so it may or may not have been sent.",
            maybe_sent=True,
        ) from exc
    if code != 250:
        raise _refusal(code, text, "the mail")
    return refused, rest
