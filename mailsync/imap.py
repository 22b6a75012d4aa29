"""Connect to IMAP servers: verified TLS, login, ID, capabilities, plain-words errors.

Every failure becomes a MailConnectionError whose `kind` drives account state (SYNC.md §6)
and whose `message` a user can act on. Server responses are never echoed verbatim into
messages shown for network-level failures, so the form cannot be used to read banners of
arbitrary services (SECURITY.md R20).
"""

from __future__ import annotations

import functools
import imaplib
import socket
import ssl
from dataclasses import dataclass

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.imapclient import seq_to_parenstr_upper
from imapclient.response_parser import parse_fetch_response

# imaplib's line limit is a module global; a big UID SEARCH line exceeds the 1 MB default
# (SYNC.md §3 step 5). Setting it on an instance has no effect.
imaplib._MAXLINE = 50_000_000

DEFAULT_ALLOWED_PORTS = frozenset({993, 143})

# NetEase requires the ID command before SELECT, even when ID is not advertised.
ID_REQUIRED_DOMAINS = ("163.com", "126.com", "yeah.net", "188.com")
CLIENT_ID = {"name": "Threadline", "version": "1.0", "vendor": "Threadline"}

# Error kinds. AUTH_* kinds stop scheduled sync until the user fixes the credentials.
AUTH_FAILED = "auth_failed"
APP_PASSWORD_REQUIRED = "app_password_required"
IMAP_DISABLED = "imap_disabled"
OAUTH_REQUIRED = "oauth_required"
HOST_NOT_FOUND = "host_not_found"
CONNECTION_REFUSED = "connection_refused"
TIMEOUT = "timeout"
CERT_UNTRUSTED = "cert_untrusted"
TLS_NOT_OFFERED = "tls_not_offered"
TLS_ERROR = "tls_error"
PORT_NOT_ALLOWED = "port_not_allowed"
THROTTLED = "throttled"
PROTOCOL_ERROR = "protocol_error"
NETWORK = "network"  # the connection dropped mid-way: transient, retried

CREDENTIAL_KINDS = frozenset({AUTH_FAILED, APP_PASSWORD_REQUIRED, IMAP_DISABLED, OAUTH_REQUIRED})


class MailConnectionError(Exception):
    """A connection or login failure, with a kind and a message in plain words."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def transient(self) -> bool:
        """Tell whether trying again soon may well succeed (the connection dropped)."""
        return self.kind == NETWORK

    @property
    def needs_user_action(self) -> bool:
        """Tell whether retrying cannot help until the user changes something."""
        return self.kind in CREDENTIAL_KINDS or self.kind in (
            CERT_UNTRUSTED,
            TLS_NOT_OFFERED,
            PORT_NOT_ALLOWED,
        )


@dataclass(frozen=True)
class ConnectionSettings:
    host: str
    port: int
    security: str  # "ssl" (implicit TLS) or "starttls"
    username: str
    password: str
    ca_cert_pem: str | None = None
    timeout: float = 30.0
    # "password" (LOGIN / AUTH PLAIN), or "xoauth2": `password` then holds an OAuth2 access
    # token, sent with SASL XOAUTH2 (OAUTHBEARER where only that is offered).
    auth: str = "password"


# Lowercase substrings of real server answers (SYNC.md §6; Close matches substrings).
APP_PASSWORD_PATTERNS = (
    "application-specific password",
    "app password",
    "authorized code",
    "authorization code",
    "weixin token",
    "授权码",
)
IMAP_DISABLED_PATTERNS = (
    "enable imap",
    "imap is disabled",
    "imap access is disabled",
    "imap not enabled",
    "log in via your web browser",
    "web login required",
    "webalert",
    "temporarily restricted",
    "unsafe login",
)
OAUTH_PATTERNS = ("basic authentication is disabled",)
THROTTLE_PATTERNS = (
    "[limit]",
    "[unavailable]",
    "too many simultaneous connections",
    "exceeded command or bandwidth limits",
    "maximum number of connections",
)


def classify_login_error(text: str) -> str:
    """Return the error kind for a server's answer to LOGIN."""
    lowered = text.lower()
    for patterns, kind in (
        (OAUTH_PATTERNS, OAUTH_REQUIRED),
        (APP_PASSWORD_PATTERNS, APP_PASSWORD_REQUIRED),
        (IMAP_DISABLED_PATTERNS, IMAP_DISABLED),
        (THROTTLE_PATTERNS, THROTTLED),
    ):
        if any(pattern in lowered for pattern in patterns):
            return kind
    return AUTH_FAILED


LOGIN_MESSAGES = {
    AUTH_FAILED: "The server rejected the username or password. Check them and try again.",
    APP_PASSWORD_REQUIRED: (
        "This provider needs an app password (or authorization code) instead of your normal "
        "password. Create one in your provider's security settings and enter it here."
    ),
    IMAP_DISABLED: (
        "IMAP access is turned off for this mailbox. Enable IMAP in your provider's web "
        "settings (or sign in there once to clear a security check), then try again."
    ),
    OAUTH_REQUIRED: (
        "This provider only accepts OAuth2 sign-in for IMAP. Remove this mailbox and add it "
        'again with "Sign in with Microsoft" (or Google).'
    ),
    THROTTLED: "The provider is limiting connections right now. Threadline will retry later.",
}


@functools.lru_cache(maxsize=64)
def _ssl_context(ca_cert_pem: str | None) -> ssl.SSLContext:
    # Certificates are always verified; a private CA is trusted only when given (R19).
    # Cached: loading the system's CA store takes ~75 ms, and a context is never changed
    # after this (wrap_socket only reads it), so connections may share one.
    context = ssl.create_default_context()
    if ca_cert_pem:
        context.load_verify_locations(cadata=ca_cert_pem)
    return context


def _certificate_subject(host: str, port: int, timeout: float) -> str | None:
    """Return the subject and issuer of the server's certificate, read without trusting it."""
    try:
        from cryptography import x509

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der)
        return f"{cert.subject.rfc4514_string()} (issued by {cert.issuer.rfc4514_string()})"
    except Exception:
        return None


def connection_dropped(exc: BaseException) -> bool:
    """Tell whether `exc` means the connection broke (a flaky network or proxy).

    Such a failure says nothing about the settings: the server never answered in a way
    that proves them wrong. imaplib reports a closed socket as an abort whose text says
    "socket error" ("socket error: EOF"), and IMAPClient wraps that into LoginError when it
    happens during LOGIN.
    """
    if isinstance(
        exc,
        (
            ssl.SSLEOFError,
            ssl.SSLZeroReturnError,
            ConnectionResetError,
            ConnectionAbortedError,
            BrokenPipeError,
        ),
    ):
        return True
    return isinstance(exc, (imaplib.IMAP4.error, IMAPClientError)) and "socket error" in str(exc)


def _network_error(exc: BaseException, settings: ConnectionSettings) -> MailConnectionError:
    host = f"{settings.host}:{settings.port}"
    if connection_dropped(exc):
        return MailConnectionError(
            NETWORK,
            f"The connection to {host} dropped while signing in. This looks like a network "
            "problem, not a settings problem; Threadline will retry.",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        subject = (
            _certificate_subject(settings.host, settings.port, settings.timeout)
            if settings.security == "ssl"
            else None
        )
        detail = f" The server presented {subject}." if subject else ""
        if settings.ca_cert_pem:
            advice = (
                "The CA certificate you uploaded did not sign this server's certificate: "
                "upload the CA that issued it (ask whoever runs the server)."
            )
        else:
            advice = "If this is your own server with a private CA, upload that CA certificate."
        return MailConnectionError(
            CERT_UNTRUSTED,
            f"The certificate of {host} is not trusted ({exc.verify_message}).{detail} {advice}",
        )
    if isinstance(exc, ssl.SSLError):
        return MailConnectionError(
            TLS_ERROR,
            f"A secure (TLS) connection to {host} failed. Check the port and security setting "
            "(993 uses SSL, 143 uses STARTTLS).",
        )
    if isinstance(exc, socket.gaierror):
        return MailConnectionError(
            HOST_NOT_FOUND,
            f"The server name {settings.host} could not be found. Check the spelling.",
        )
    if isinstance(exc, ConnectionRefusedError):
        return MailConnectionError(
            CONNECTION_REFUSED,
            f"{host} refused the connection. Check the port, or whether the server is running.",
        )
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return MailConnectionError(
            TIMEOUT, f"{host} did not answer in time. Check the address, port and network."
        )
    return MailConnectionError(
        PROTOCOL_ERROR,
        f"Could not talk to {host} as an IMAP server. Check the host, port and security setting.",
    )


def send_id(client: IMAPClient, host: str) -> None:
    """Send the ID command (RFC 2971) when advertised, and always for NetEase hosts."""
    advertised = b"ID" in client.capabilities()
    required = any(host.lower().endswith(domain) for domain in ID_REQUIRED_DOMAINS)
    if not (advertised or required):
        return
    try:
        if advertised:
            client.id_(CLIENT_ID)
        else:
            # imapclient's id_() refuses when ID is not advertised; NetEase needs it anyway.
            args = " ".join(f'"{k}" "{v}"' for k, v in CLIENT_ID.items())
            client._imap._simple_command("ID", f"({args})")
    except (IMAPClientError, imaplib.IMAP4.error):
        pass  # ID is advisory; a server that rejects it still serves mail


OAUTH_LOGIN_MESSAGE = (
    "The mail server did not accept Threadline's sign-in (access was revoked or has "
    "expired). Sign in again to resume."
)


def login(client: IMAPClient, settings: ConnectionSettings) -> None:
    """Authenticate: LOGIN with the password, or SASL XOAUTH2 / OAUTHBEARER with the token.

    Raises imapclient's LoginError when the server refuses.
    """
    if settings.auth != "xoauth2":
        client.login(settings.username, settings.password)
        return
    capabilities = client.capabilities()
    if b"AUTH=XOAUTH2" not in capabilities and b"AUTH=OAUTHBEARER" in capabilities:
        # OAUTHBEARER (RFC 7628) is the standard form; XOAUTH2 is what Gmail and
        # Microsoft advertise, so it stays the first choice.
        client.oauthbearer_login(settings.username, settings.password)
    else:
        client.oauth2_login(settings.username, settings.password)


def connect(
    settings: ConnectionSettings,
    *,
    allowed_ports: frozenset[int] | None = DEFAULT_ALLOWED_PORTS,
    qresync: bool = False,
) -> IMAPClient:
    """Open, secure and log in an IMAP connection; raise MailConnectionError on failure.

    After login: ID is sent, capabilities re-read, and CONDSTORE enabled when offered; with
    `qresync`, QRESYNC too (see qresync_enabled). Only the sync engine asks for QRESYNC: once
    it is on, the server reports expunges as VANISHED instead of EXPUNGE for the whole
    connection (RFC 7162 §3.2.10), which other users of a connection need not expect.
    """
    if allowed_ports is not None and settings.port not in allowed_ports:
        raise MailConnectionError(
            PORT_NOT_ALLOWED,
            f"Port {settings.port} is not an IMAP port. Use 993 (SSL) or 143 (STARTTLS). "
            "If your server really listens there (a local bridge such as Proton Mail Bridge "
            "or DavMail uses 1143), an administrator can allow it with the setting "
            f"THREADLINE_MAIL_ALLOWED_PORTS (e.g. 993,143,{settings.port}).",
        )
    context = _ssl_context(settings.ca_cert_pem)
    timeout = settings.timeout
    try:
        client = IMAPClient(
            settings.host,
            port=settings.port,
            ssl=settings.security == "ssl",
            ssl_context=context,
            timeout=timeout,
        )
    except (OSError, imaplib.IMAP4.error, IMAPClientError) as exc:
        raise _network_error(exc, settings) from exc
    try:
        if settings.security != "ssl":
            if b"STARTTLS" not in client.capabilities():
                raise MailConnectionError(
                    TLS_NOT_OFFERED,
                    f"{settings.host}:{settings.port} does not offer STARTTLS, so the password "
                    "would travel unencrypted. Use port 993 with SSL instead.",
                )
            client.starttls(context)
        try:
            login(client, settings)
        except LoginError as exc:
            if connection_dropped(exc):
                raise _network_error(exc, settings) from exc
            kind = classify_login_error(str(exc))
            message = LOGIN_MESSAGES[kind]
            if settings.auth == "xoauth2" and kind == AUTH_FAILED:
                message = OAUTH_LOGIN_MESSAGE
            raise MailConnectionError(kind, message) from exc
        send_id(client, settings.host)
        client._cached_capabilities = None  # capabilities often change after login
        capabilities = client.capabilities()
        wanted = [b"CONDSTORE"] if b"CONDSTORE" in capabilities else []
        if qresync and b"QRESYNC" in capabilities:
            wanted.append(b"QRESYNC")
        enabled: list[bytes] = []
        if b"ENABLE" in capabilities and wanted:
            enabled = [bytes(item).upper() for item in client.enable(*wanted)]
        client.threadline_enabled = frozenset(enabled)
        return client
    except MailConnectionError:
        safe_logout(client)
        raise
    except (OSError, imaplib.IMAP4.error, IMAPClientError) as exc:
        safe_logout(client)
        raise _network_error(exc, settings) from exc


def uid_fetch(
    client: IMAPClient, uid_set: str, items: list[str], *, modifiers: list[str] | None = None
) -> dict[int, dict]:
    """Run `UID FETCH uid_set items` and return {uid: data} for the responses that name a UID.

    While a folder is selected, the server reports another session's flag change with an
    unsolicited `* <seq> FETCH (FLAGS (..) MODSEQ (..))` that carries no UID (RFC 3501
    §7.4.2; Dovecot sends it with the next command's response). IMAPClient.fetch keys such a
    response by its sequence number as if it were a UID, and merges it into the entry of the
    UID with that number, so its flags would land on the wrong message. Here responses are
    grouped by sequence number first (a solicited and an unsolicited response for the same
    message merge correctly), and only those that carry a UID are kept; the change itself
    reaches us later through CHANGEDSINCE or the flag scan.
    """
    args = ["UID", "FETCH", uid_set, seq_to_parenstr_upper(items)]
    if modifiers:
        args.append(seq_to_parenstr_upper(modifiers))
    # IMAPClient.fetch's own steps, but parsed by sequence number (uid_is_key=False).
    tag = client._imap._command(*args)
    typ, data = client._imap._command_complete("FETCH", tag)
    client._checkok("fetch", typ, data)
    typ, data = client._imap._untagged_response(typ, data, "FETCH")
    by_sequence = parse_fetch_response(data, client.normalise_times, uid_is_key=False)
    return {int(entry[b"UID"]): entry for entry in by_sequence.values() if b"UID" in entry}


def qresync_enabled(client: IMAPClient) -> bool:
    """Tell whether the server confirmed `ENABLE QRESYNC` on this connection (see connect)."""
    return b"QRESYNC" in getattr(client, "threadline_enabled", frozenset())


def parse_uid_set(text: bytes | str) -> list[tuple[int, int]]:
    """Return the UID ranges of an IMAP sequence set such as '41,43:116' as ascending
    (low, high) pairs, in the server's order.

    For the VANISHED response (RFC 7162 §3.2.10), whose set names UIDs only: '*', a zero,
    a value beyond 32 bits or anything else that is not a number raises ValueError, so an
    odd answer is never read as a list of deleted mail.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii")
    ranges: list[tuple[int, int]] = []
    for part in text.strip().split(","):
        first, colon, last = part.partition(":")
        bounds = (first, last) if colon else (first,)
        if not all(bound.isascii() and bound.isdigit() for bound in bounds):
            raise ValueError(f"not a UID set: {text!r}")
        low, high = sorted(int(bound) for bound in (first, last if colon else first))
        if low < 1 or high > 0xFFFFFFFF:
            raise ValueError(f"UID out of range in {text!r}")
        ranges.append((low, high))
    return ranges


@dataclass
class QresyncAnswer:
    """What `EXAMINE folder (QRESYNC ...)` reported besides the usual SELECT data."""

    info: dict  # as IMAPClient.select_folder returns it
    vanished: list[tuple[int, int]]  # UID ranges expunged since the given modseq
    changed: dict[int, dict]  # {uid: FETCH data (FLAGS, MODSEQ)} changed since that modseq


def examine_qresync(
    client: IMAPClient, folder: str, uidvalidity: int, modseq: int, known_uids: str
) -> QresyncAnswer:
    """EXAMINE `folder` with the QRESYNC parameter (RFC 7162 §3.2.5) and return its answer.

    IMAPClient cannot send the parameter nor parse VANISHED, so this does what its
    select_folder does (imaplib's select: flush old untagged responses, send, mark the
    folder selected) with the parameter added, then takes the VANISHED and FETCH responses
    out before IMAPClient reads the rest. Raises imaplib's errors like select_folder; a
    VANISHED set that cannot be parsed raises ValueError. The caller must check that the
    answer's UIDVALIDITY is the one it sent: on a mismatch the server ignores the parameter.
    """
    imap4 = client._imap
    imap4.untagged_responses = {}
    imap4.is_readonly = True
    parameter = f"(QRESYNC ({uidvalidity} {modseq} {known_uids}))"
    typ, data = imap4._simple_command("EXAMINE", client._normalise_folder(folder), parameter)
    if typ != "OK":
        imap4.state = "AUTH"
    client._checkok("examine", typ, data)
    imap4.state = "SELECTED"
    vanished_lines = imap4.untagged_responses.pop("VANISHED", [])
    fetch_lines = imap4.untagged_responses.pop("FETCH", [])
    vanished: list[tuple[int, int]] = []
    for line in vanished_lines:
        text = bytes(line).strip()
        if text.upper().startswith(b"(EARLIER)"):
            text = text[len(b"(EARLIER)") :]
        vanished.extend(parse_uid_set(text))
    by_sequence = parse_fetch_response(fetch_lines, client.normalise_times, uid_is_key=False)
    changed = {int(entry[b"UID"]): entry for entry in by_sequence.values() if b"UID" in entry}
    info = client._process_select_response(imap4.untagged_responses)
    return QresyncAnswer(info=info, vanished=vanished, changed=changed)


def safe_logout(client: IMAPClient | None) -> None:
    """Close a connection, ignoring errors (the connection may already be broken)."""
    if client is None:
        return
    try:
        client.logout()
    except Exception:
        try:
            client.shutdown()
        except Exception:
            pass


def allowed_ports(config) -> frozenset[int] | None:
    """Return the IMAP ports mailboxes may use (config MAIL_ALLOWED_PORTS; None allows any)."""
    ports = config.get("MAIL_ALLOWED_PORTS")
    return None if ports is None else frozenset(int(port) for port in ports)


def account_settings(app, account, *, timeout: float) -> ConnectionSettings:
    """Return how to reach a stored mail account, its password (or fresh access token)
    decrypted.

    Raises services.credentials.CredentialError when the stored secret cannot be read, and
    for OAuth2 accounts MailConnectionError when the token cannot be renewed (AUTH_FAILED:
    the grant was revoked or expired; NETWORK: the provider could not be reached). Renewing
    commits the new token.
    """
    from services.credentials import secret_box
    from services.oauth import fresh_access_token

    if account.auth_type == "xoauth2":
        secret, auth = fresh_access_token(app, account), "xoauth2"
    else:
        secret, auth = secret_box(app).decrypt(account.password_encrypted), "password"
    return ConnectionSettings(
        host=account.imap_host,
        port=account.imap_port,
        security=account.imap_security,
        username=account.username,
        password=secret,
        ca_cert_pem=account.ca_cert_pem,
        timeout=timeout,
        auth=auth,
    )
