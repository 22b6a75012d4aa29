"""Mail accounts: connect (tested before saving), re-authenticate, sync settings, pause,
remove, and the status shown on the troubleshooting page.

Passwords are encrypted (services.credentials) before they reach the database, and are
never logged or sent back to a browser. Functions that change state commit once at their
end; bad input raises ValidationError with field errors, keyed by the form's field names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from flask import Flask, abort
from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import selectinload

from extensions import db
from mailsync import imap
from mailsync import smtp as smtp_client
from mailsync.folders import ServerFolder, list_server_folders, sort_folders
from mailsync.imap import ConnectionSettings, MailConnectionError
from mailsync.providers import PROVIDERS_BY_KEY, get_provider, preset_for_oauth
from models import (
    AUTH_BLOCKED_STATES,
    AUTH_PASSWORD,
    AUTH_XOAUTH2,
    SYNC_ERROR,
    SYNC_IMAP_DISABLED,
    SYNC_NEEDS_APP_PASSWORD,
    SYNC_NEEDS_REAUTH,
    SYNC_PAUSED,
    SYNC_RUNNING,
    ConnectionTest,
    FailedUid,
    FolderCheck,
    MailAccount,
    MailFolder,
    Message,
    MessageLocation,
    OAuthClient,
    SyncRun,
    SyncRunEntry,
    User,
    utcnow,
)
from services import job_queue, oauth
from services.access import forget_own_accounts, own_accounts
from services.credentials import CredentialError, secret_box
from services.errors import ValidationError

log = logging.getLogger("threadline.accounts")

SINCE_CHOICES = (
    ("1m", "1 month"),
    ("3m", "3 months"),
    ("6m", "6 months"),
    ("1y", "1 year"),
    ("2y", "2 years"),
    ("all", "Everything"),
)
DEFAULT_SINCE = "3m"
FOLDER_MODES = ("all", "chosen")
SECURITY_CHOICES = (("ssl", "SSL/TLS"), ("starttls", "STARTTLS"))
CA_CERT_MAX_BYTES = 64 * 1024
PENDING_PASSWORD_TTL_SECONDS = 30 * 60
RECENT_RUNS = 50

# Which form field a connection failure belongs to, so the message shows next to it.
ERROR_FIELDS = {
    imap.AUTH_FAILED: "password",
    imap.APP_PASSWORD_REQUIRED: "password",
    imap.OAUTH_REQUIRED: "provider",
    imap.HOST_NOT_FOUND: "imap_host",
    imap.CONNECTION_REFUSED: "imap_host",
    imap.TIMEOUT: "imap_host",
    imap.PROTOCOL_ERROR: "imap_host",
    imap.CERT_UNTRUSTED: "ca_cert",
    imap.TLS_NOT_OFFERED: "imap_security",
    imap.TLS_ERROR: "imap_security",
    imap.PORT_NOT_ALLOWED: "imap_port",
}

STATE_LABELS = {
    "syncing": "Syncing",
    "up_to_date": "Up to date",
    SYNC_PAUSED: "Paused",
    SYNC_NEEDS_REAUTH: "Needs re-authentication",
    SYNC_NEEDS_APP_PASSWORD: "Needs app password",
    SYNC_IMAP_DISABLED: "IMAP disabled at the provider",
    SYNC_ERROR: "Error",
    "removed": "Removed (mail kept)",
}
STATE_FIXES = {
    SYNC_NEEDS_REAUTH: "The password stopped working (changed or revoked). Re-enter it to resume.",
    SYNC_NEEDS_APP_PASSWORD: (
        "Create an app password (or authorization code) in your provider's security "
        "settings, then enter it with Re-enter password."
    ),
    SYNC_IMAP_DISABLED: (
        "Enable IMAP in your provider's web settings (or sign in there once to clear a "
        "security check), then re-enter the password."
    ),
    SYNC_ERROR: "Check the server settings, then press Sync now.",
    SYNC_PAUSED: "Press Resume to sync again.",
}


class RateLimited(Exception):
    """Too many connection tests; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        minutes = max(1, (retry_after + 59) // 60)
        self.retry_after = retry_after
        self.message = (
            "Too many connection tests in a short time. "
            f"Wait {minutes} minute{'s' if minutes != 1 else ''} and try again."
        )
        super().__init__(self.message)


@dataclass(frozen=True)
class Progress:
    """Initial-sync progress; `pending` means a first sync has not reported totals yet."""

    done: int
    total: int
    pending: bool = False
    # "queued" or "running" while a "Sync now" job of the account waits or runs (the
    # account page's bar only; see account_progress).
    requested: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.pending or self.requested or (self.total > 0 and self.done < self.total))

    @property
    def percent(self) -> int:
        return 0 if not self.total else min(100, self.done * 100 // self.total)


# --------------------------------------------------------------------------- validation


def allowed_ports(app: Flask) -> frozenset[int] | None:
    """Return the IMAP ports mailboxes may use (the rule lives in mailsync.imap)."""
    return imap.allowed_ports(app.config)


def parse_ca_certificate(data: bytes | str) -> str:
    """Return the PEM text of an uploaded CA certificate; raise ValidationError if invalid."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > CA_CERT_MAX_BYTES:
        raise ValidationError({"ca_cert": "That file is too large for a CA certificate."})
    try:
        certificates = x509.load_pem_x509_certificates(raw)
        text = raw.decode("ascii")
    except ValueError:
        raise ValidationError(
            {
                "ca_cert": "That is not a PEM certificate (it should start with -----BEGIN "
                "CERTIFICATE-----)."
            }
        ) from None
    if not certificates:
        raise ValidationError({"ca_cert": "That file holds no certificate."})
    return text


def _clean_server(
    *,
    provider: str,
    email_address: str,
    username: str,
    imap_host: str,
    imap_port: int | None,
    imap_security: str,
    ca_cert_pem: str | None,
) -> dict:
    errors: dict[str, str] = {}
    preset = PROVIDERS_BY_KEY.get(provider)
    if preset is None:
        errors["provider"] = "Choose a provider from the list."
    elif preset.oauth_only:
        errors["provider"] = preset.auth_note
    email_address = email_address.strip().lower()
    if "@" not in email_address or len(email_address) > 320 or " " in email_address:
        errors["email_address"] = "Enter the mailbox's email address."
    imap_host = imap_host.strip().lower()
    if not imap_host or len(imap_host) > 255 or any(c.isspace() or c in "/@" for c in imap_host):
        errors["imap_host"] = "Enter the IMAP server name, for example imap.example.com."
    if imap_port is None or not 0 < imap_port < 65536:
        errors["imap_port"] = "Enter the IMAP port (993 for SSL, 143 for STARTTLS)."
    if imap_security not in dict(SECURITY_CHOICES):
        errors["imap_security"] = "Choose SSL/TLS or STARTTLS."
    if ca_cert_pem:
        try:
            ca_cert_pem = parse_ca_certificate(ca_cert_pem)
        except ValidationError as exc:
            errors.update(exc.errors)
    if errors:
        raise ValidationError(errors)
    return dict(
        provider=provider,
        email_address=email_address,
        username=username.strip() or email_address,
        imap_host=imap_host,
        imap_port=imap_port,
        imap_security=imap_security,
        ca_cert_pem=ca_cert_pem or None,
    )


def _clean_smtp(smtp_host: str | None, smtp_port: int | None, smtp_security: str | None) -> dict:
    smtp_host = (smtp_host or "").strip().lower() or None
    if smtp_host is None:
        return dict(smtp_host=None, smtp_port=None, smtp_security=None)
    errors = {}
    if smtp_port is None or not 0 < smtp_port < 65536:
        errors["smtp_port"] = "Enter the SMTP port (465 for SSL, 587 for STARTTLS)."
    if smtp_security not in dict(SECURITY_CHOICES):
        errors["smtp_security"] = "Choose SSL/TLS or STARTTLS."
    if errors:
        raise ValidationError(errors)
    return dict(smtp_host=smtp_host, smtp_port=smtp_port, smtp_security=smtp_security)


def _clean_sync_choice(
    folder_mode: str, chosen_folders: Iterable[str], since: str, server: list[ServerFolder]
) -> tuple[str, list[str], str]:
    errors = {}
    if folder_mode not in FOLDER_MODES:
        errors["folder_mode"] = "Choose all folders or the folders to sync."
    if since not in dict(SINCE_CHOICES):
        errors["since"] = "Choose how far back to sync."
    names = {folder.name for folder in server}
    chosen = [name for name in dict.fromkeys(chosen_folders) if name in names]
    if folder_mode == "chosen" and not chosen:
        errors["chosen_folders"] = "Choose at least one folder (Sent is always synced)."
    if errors:
        raise ValidationError(errors)
    if folder_mode == "all":
        return folder_mode, [], since
    # The Sent folder is always synced, so outgoing conversations are complete (PRODUCT.md).
    sent = [folder.name for folder in server if folder.is_sent and folder.name not in chosen]
    return folder_mode, chosen + sent, since


# --------------------------------------------------------------------------- connection tests


def _consume_connection_test(app: Flask, user: User) -> None:
    """Count one connection test for `user`; raise RateLimited past the configured limit.

    Commits (before the test opens a connection, so no transaction waits on the network).
    """
    limit = int(app.config.get("MAIL_CONNECTION_TESTS", 10))
    window = timedelta(seconds=float(app.config.get("MAIL_CONNECTION_TEST_WINDOW_SECONDS", 600)))
    now = utcnow()
    # Older rows no longer count; dropping them keeps the table at most `limit` rows a user.
    db.session.execute(
        delete(ConnectionTest).where(
            ConnectionTest.user_id == user.id, ConnectionTest.created_at <= now - window
        )
    )
    oldest, count = db.session.execute(
        select(func.min(ConnectionTest.created_at), func.count(ConnectionTest.id)).where(
            ConnectionTest.user_id == user.id
        )
    ).one()
    if count >= limit:
        db.session.commit()
        raise RateLimited(int((oldest + window - now).total_seconds()) + 1)
    db.session.add(ConnectionTest(user_id=user.id, created_at=now))
    db.session.commit()


def test_connection(
    settings: ConnectionSettings, *, allowed_ports: frozenset[int] | None
) -> list[ServerFolder]:
    """Log in and return the server's selectable folders; raise MailConnectionError."""
    client = imap.connect(settings, allowed_ports=allowed_ports)
    try:
        return list_server_folders(client)
    except Exception as exc:
        raise MailConnectionError(
            imap.PROTOCOL_ERROR, "Signed in, but the server's folder list could not be read."
        ) from exc
    finally:
        imap.safe_logout(client)


def _stored_server(account: MailAccount) -> dict:
    """The IMAP server settings of a stored account, as _tested_folders takes them."""
    return {
        "imap_host": account.imap_host,
        "imap_port": account.imap_port,
        "imap_security": account.imap_security,
        "username": account.username,
        "ca_cert_pem": account.ca_cert_pem,
    }


def _tested_folders(
    app: Flask, user: User, server: dict, password: str, *, auth: str = "password"
) -> list[ServerFolder]:
    if not password:
        raise ValidationError({"password": "Enter the password."})
    _consume_connection_test(app, user)
    settings = ConnectionSettings(
        host=server["imap_host"],
        port=server["imap_port"],
        security=server["imap_security"],
        username=server["username"],
        password=password,
        ca_cert_pem=server["ca_cert_pem"],
        timeout=float(app.config.get("MAIL_CONNECT_TIMEOUT", 20)),
        auth=auth,
    )
    try:
        folders = test_connection(settings, allowed_ports=allowed_ports(app))
    except MailConnectionError as exc:
        log.info("mail connection test failed for user %s: %s", user.id, exc.kind)
        raise ValidationError({ERROR_FIELDS.get(exc.kind, "__all__"): exc.message}) from None
    return folders


def check_connection(
    user: User,
    *,
    app: Flask,
    provider: str,
    email_address: str,
    username: str,
    password: str,
    imap_host: str,
    imap_port: int | None,
    imap_security: str,
    ca_cert_pem: str | None = None,
    smtp_host: str | None = None,
    smtp_port: int | None = None,
    smtp_security: str | None = None,
) -> list[ServerFolder]:
    """Validate the settings and test them against the server (step 1 of adding a mailbox).

    Raises ValidationError (field errors in plain words) or RateLimited; changes nothing.
    """
    server = _clean_server(
        provider=provider,
        email_address=email_address,
        username=username,
        imap_host=imap_host,
        imap_port=imap_port,
        imap_security=imap_security,
        ca_cert_pem=ca_cert_pem,
    )
    smtp = _clean_smtp(smtp_host, smtp_port, smtp_security)
    folders = _tested_folders(app, user, server, password)
    if smtp["smtp_host"]:
        # Sending uses the same sign-in until the account's Outgoing mail page says otherwise.
        _test_smtp(
            app, **smtp, username=server["username"], password=password,
            ca_cert_pem=server["ca_cert_pem"],
        )  # fmt: skip
    return folders


def seal_password(app: Flask, user: User, password: str) -> str:
    """Encrypt a just-tested password for the folder step's hidden field (bound to `user`)."""
    return secret_box(app).encrypt(f"{user.id}\n{password}").decode()


def open_sealed_password(app: Flask, user: User, token: str) -> str:
    """Return the password sealed by seal_password; raise ValidationError when stale."""
    try:
        owner, _, password = (
            secret_box(app)
            .decrypt(token.encode(), ttl=PENDING_PASSWORD_TTL_SECONDS)
            .partition("\n")
        )
    except CredentialError:
        owner, password = "", ""
    if owner != str(user.id) or not password:
        raise ValidationError(
            {"password": "The connection test expired. Enter the password again."}
        )
    return password


# --------------------------------------------------------------------------- operations


def _require_owner(user: User, account: MailAccount) -> None:
    # Views load accounts through access.account_for; this guards other callers (CLI, jobs).
    if account.user_id != user.id:
        raise PermissionError("not the owner of this mail account")


def create_account(
    user: User,
    *,
    app: Flask,
    email_address: str,
    provider: str,
    username: str,
    password: str,
    imap_host: str,
    imap_port: int | None,
    imap_security: str,
    smtp_host: str | None = None,
    smtp_port: int | None = None,
    smtp_security: str | None = None,
    ca_cert_pem: str | None = None,
    folder_mode: str = "all",
    chosen_folders: Iterable[str] = (),
    since: str = DEFAULT_SINCE,
) -> MailAccount:
    """Test the connection, then save the account with its password encrypted; commits.

    Raises ValidationError (nothing saved) or RateLimited. Re-adding an address whose
    account was removed with its mail kept revives that account, so its mail stays linked.
    """
    server = _clean_server(
        provider=provider,
        email_address=email_address,
        username=username,
        imap_host=imap_host,
        imap_port=imap_port,
        imap_security=imap_security,
        ca_cert_pem=ca_cert_pem,
    )
    smtp = _clean_smtp(smtp_host, smtp_port, smtp_security)
    existing = db.session.scalar(
        select(MailAccount).where(
            MailAccount.user_id == user.id,
            MailAccount.email_address == server["email_address"],
        )
    )
    if existing is not None and existing.removed_at is None:
        raise ValidationError({"email_address": "This mailbox is already connected."})
    folders = _tested_folders(app, user, server, password)
    mode, chosen, since = _clean_sync_choice(folder_mode, chosen_folders, since, folders)
    account = existing or MailAccount(user_id=user.id)
    for key, value in {**server, **smtp, **get_provider(provider).sending_defaults()}.items():
        setattr(account, key, value)
    _use_password(app, account, password)
    account.folder_mode, account.chosen_folders, account.since = mode, chosen, since
    _mark_running(account)
    account.removed_at = None
    db.session.add(account)
    db.session.commit()
    forget_own_accounts(user.id)
    log.info("mail account %s added for user %s", account.id, user.id)
    return account


def _use_password(app: Flask, account: MailAccount, password: str) -> None:
    # A password (or app password) replaces an OAuth2 sign-in the account may have had.
    account.password_encrypted = secret_box(app).encrypt(password)
    account.auth_type = AUTH_PASSWORD
    account.refresh_token_encrypted = None
    account.token_expires_at = None


def _mark_running(account: MailAccount) -> None:
    account.sync_state = SYNC_RUNNING
    account.consecutive_failures = 0
    account.backoff_until = None
    account.last_error = None


def update_credentials(
    user: User, account: MailAccount, password: str, *, app: Flask, username: str | None = None
) -> MailAccount:
    """Test and store new credentials, then resume sync with every setting kept; commits.

    Raises ValidationError (nothing changed) or RateLimited.
    """
    _require_owner(user, account)
    server = _clean_server(
        provider=account.provider,
        email_address=account.email_address,
        username=username if username is not None and username.strip() else account.username,
        imap_host=account.imap_host,
        imap_port=account.imap_port,
        imap_security=account.imap_security,
        ca_cert_pem=account.ca_cert_pem,
    )
    _tested_folders(app, user, server, password)
    account.username = server["username"]
    _use_password(app, account, password)
    _mark_running(account)
    db.session.commit()
    log.info("mail account %s re-authenticated by user %s", account.id, user.id)
    return account


def _oauth_server(app: Flask, oauth_key: str, email_address: str) -> dict:
    preset = preset_for_oauth(oauth_key, email_address)
    server = {
        **preset.settings_for(email_address),
        **preset.sending_defaults(),
        "provider": preset.key,
        "ca_cert_pem": None,
    }
    # OAUTH_MAIL_SERVERS ({"google": {"imap_host": ...}}) replaces the preset's servers:
    # tests sign in to a local Dovecot; a site may reach the provider through a local bridge.
    server.update((app.config.get("OAUTH_MAIL_SERVERS") or {}).get(oauth_key) or {})
    return server


def create_oauth_account(
    user: User, *, app: Flask, oauth_key: str, tokens: oauth.Tokens
) -> MailAccount:
    """Save the mailbox a "Sign in with Google / Microsoft" returned, after a test sign-in
    with its access token (XOAUTH2); commits. Everything is synced, from DEFAULT_SINCE.

    The address is the one the provider named. Raises ValidationError (nothing saved) or
    RateLimited. Re-adding a removed-with-mail-kept address revives that account.
    """
    email_address = (tokens.email or "").strip().lower()
    server = _oauth_server(app, oauth_key, email_address)
    existing = db.session.scalar(
        select(MailAccount).where(
            MailAccount.user_id == user.id, MailAccount.email_address == email_address
        )
    )
    if existing is not None and existing.removed_at is None:
        raise ValidationError(
            {
                "__all__": f"{email_address} is already connected. If it needs a new sign-in, "
                "use Sign in again on its page."
            }
        )
    server["username"] = email_address
    _tested_folders(app, user, server, tokens.access_token, auth=AUTH_XOAUTH2)
    account = existing or MailAccount(user_id=user.id)
    for key, value in server.items():
        setattr(account, key, value)
    account.email_address = email_address
    oauth.store_tokens(app, account, tokens)
    account.smtp_username = None
    account.smtp_password_encrypted = None  # sending signs in with the same token
    account.folder_mode, account.chosen_folders, account.since = "all", [], DEFAULT_SINCE
    _mark_running(account)
    account.removed_at = None
    db.session.add(account)
    db.session.commit()
    forget_own_accounts(user.id)
    log.info("mail account %s added with OAuth2 (%s) for user %s", account.id, oauth_key, user.id)
    return account


def reauthorize_oauth_account(
    user: User, account: MailAccount, *, app: Flask, tokens: oauth.Tokens
) -> MailAccount:
    """Store a new sign-in's tokens on the account ("Sign in again") after a test sign-in,
    then resume sync with every setting kept; commits.

    The provider must name the account's own address. Raises ValidationError (nothing
    changed) or RateLimited.
    """
    _require_owner(user, account)
    if (tokens.email or "").lower() != account.email_address.lower():
        raise ValidationError(
            {
                "__all__": f"You signed in as {tokens.email}, but this account is "
                f"{account.email_address}. Sign in again with {account.email_address}."
            }
        )
    _tested_folders(app, user, _stored_server(account), tokens.access_token, auth=AUTH_XOAUTH2)
    oauth.store_tokens(app, account, tokens)
    _mark_running(account)
    db.session.commit()
    log.info("mail account %s signed in again (OAuth2) by user %s", account.id, user.id)
    return account


@dataclass(frozen=True)
class Reencrypted:
    """The outcome of reencrypt_mail_passwords."""

    reencrypted: int
    unreadable_account_ids: list[int]
    # OAuth2 client registrations (provider keys) whose secret no key reads: re-enter it.
    unreadable_oauth_clients: list[str] = field(default_factory=list)


def reencrypt_mail_passwords(app: Flask) -> Reencrypted:
    """Re-encrypt every stored mail password with the newest key (key rotation); commits.

    A password no configured key can read is left as it is and its account reported: its
    owner must enter the password again (the sync says so), as before the rotation.
    """
    box = secret_box(app)
    reencrypted, unreadable = 0, []
    for account in db.session.scalars(select(MailAccount).order_by(MailAccount.id)):
        try:
            account.password_encrypted = box.rotate(account.password_encrypted)
            if account.refresh_token_encrypted:
                account.refresh_token_encrypted = box.rotate(account.refresh_token_encrypted)
            if account.smtp_password_encrypted:
                account.smtp_password_encrypted = box.rotate(account.smtp_password_encrypted)
        except CredentialError:
            unreadable.append(account.id)
            continue
        reencrypted += 1
    # The admin's OAuth2 client secrets use the same key: left behind, every OAuth2 account
    # would need re-authentication once the old key is dropped.
    unreadable_clients = []
    for client in db.session.scalars(select(OAuthClient).order_by(OAuthClient.provider)):
        try:
            client.client_secret_encrypted = box.rotate(client.client_secret_encrypted)
        except CredentialError:
            unreadable_clients.append(client.provider)
    db.session.commit()
    log.info("mail passwords re-encrypted: %s, unreadable: %s", reencrypted, unreadable)
    return Reencrypted(reencrypted, unreadable, unreadable_clients)


# --------------------------------------------------------------------------- sending (SMTP)

SMTP_ERROR_FIELDS = {
    imap.AUTH_FAILED: "smtp_password",
    imap.APP_PASSWORD_REQUIRED: "smtp_password",
    imap.OAUTH_REQUIRED: "smtp_host",
    imap.TLS_NOT_OFFERED: "smtp_security",
    imap.TLS_ERROR: "smtp_security",
    imap.PORT_NOT_ALLOWED: "smtp_port",
}


def smtp_allowed_ports(app: Flask) -> frozenset[int] | None:
    """Return the SMTP ports an account may use (SMTP_ALLOWED_PORTS; None allows any, R20)."""
    ports = app.config.get("SMTP_ALLOWED_PORTS", tuple(smtp_client.DEFAULT_ALLOWED_PORTS))
    return None if ports is None else frozenset(int(port) for port in ports)


def _test_smtp(
    app: Flask,
    *,
    smtp_host: str,
    smtp_port: int,
    smtp_security: str,
    username: str,
    password: str,
    ca_cert_pem: str | None,
) -> None:
    """Sign in to the SMTP server and quit; raise ValidationError in plain words."""
    allowed = smtp_allowed_ports(app)
    if allowed is not None and smtp_port not in allowed:
        raise ValidationError(
            {
                "smtp_port": f"Port {smtp_port} is not a mail submission port. Use 465 (SSL) or "
                "587 (STARTTLS); an administrator can allow others with "
                "THREADLINE_SMTP_ALLOWED_PORTS."
            }
        )
    settings = ConnectionSettings(
        host=smtp_host,
        port=smtp_port,
        security=smtp_security,
        username=username,
        password=password,
        ca_cert_pem=ca_cert_pem,
        timeout=float(app.config.get("MAIL_CONNECT_TIMEOUT", 20)),
    )
    try:
        smtp_client.check(settings)
    except MailConnectionError as exc:
        log.info("SMTP connection test failed: %s", exc.kind)
        raise ValidationError({SMTP_ERROR_FIELDS.get(exc.kind, "smtp_host"): exc.message}) from None


def smtp_form(account: MailAccount) -> dict:
    """Return the Outgoing mail form's values: the account's, or its preset's where unset.

    Accounts added before sending existed have no SMTP settings; they are filled from the
    preset when the page is shown (nothing is saved until the user saves the tested form).
    """
    provider = get_provider(account.provider)
    preset = provider.settings_for(account.email_address)
    configured = bool(account.smtp_host)
    defaults = provider.sending_defaults()
    max_bytes = account.max_message_bytes if configured else defaults["max_message_bytes"]
    return {
        "smtp_host": account.smtp_host or preset["smtp_host"],
        "smtp_port": account.smtp_port or preset["smtp_port"],
        "smtp_security": account.smtp_security or preset["smtp_security"],
        "smtp_username": account.smtp_username or "",
        "smtp_files_sent_copy": (
            account.smtp_files_sent_copy if configured else defaults["smtp_files_sent_copy"]
        ),
        "max_message_mb": f"{max_bytes / 1_000_000:g}" if max_bytes else "",
        "has_own_password": account.smtp_password_encrypted is not None,
    }


def update_smtp_settings(
    user: User,
    account: MailAccount,
    *,
    app: Flask,
    smtp_host: str | None,
    smtp_port: int | None,
    smtp_security: str | None,
    smtp_username: str = "",
    smtp_password: str = "",
    files_sent_copy: bool = False,
    max_message_mb: float | None = None,
) -> MailAccount:
    """Test, then save the account's outgoing (SMTP) server; commits.

    A blank username or password means "the IMAP one" (or, for the password, the SMTP one
    saved before). An empty host turns sending off. Raises ValidationError (nothing changed)
    or RateLimited.
    """
    _require_owner(user, account)
    smtp = _clean_smtp(smtp_host, smtp_port, smtp_security)
    if max_message_mb is not None and not 0 < max_message_mb <= 1000:
        raise ValidationError({"max_message_mb": "Enter a size in MB, for example 25."})
    username = (smtp_username or "").strip()
    if len(username) > 320:
        raise ValidationError({"smtp_username": "That username is too long."})
    if smtp["smtp_host"]:
        box = secret_box(app)
        try:
            password = smtp_password or box.decrypt(
                account.smtp_password_encrypted or account.password_encrypted
            )
        except CredentialError:
            raise ValidationError({"smtp_password": "Enter the password."}) from None
        _consume_connection_test(app, user)
        _test_smtp(
            app, **smtp, username=username or account.username, password=password,
            ca_cert_pem=account.ca_cert_pem,
        )  # fmt: skip
        if smtp_password:
            account.smtp_password_encrypted = box.encrypt(smtp_password)
    for key, value in smtp.items():
        setattr(account, key, value)
    account.smtp_username = username or None
    account.smtp_files_sent_copy = bool(files_sent_copy)
    account.max_message_bytes = int(max_message_mb * 1_000_000) if max_message_mb else None
    db.session.commit()
    log.info("mail account %s: outgoing server saved by user %s", account.id, user.id)
    return account


def server_folders(user: User, account: MailAccount, *, app: Flask) -> list[ServerFolder]:
    """Return the account's folders as the server lists them now (for choosing folders).

    Raises ValidationError with a plain-words message when the stored password cannot be
    read or the server refuses it, and RateLimited.
    """
    _require_owner(user, account)
    try:
        if account.auth_type == AUTH_XOAUTH2:
            password = oauth.fresh_access_token(app, account)
        else:
            password = secret_box(app).decrypt(account.password_encrypted)
    except CredentialError as exc:
        raise ValidationError({"password": str(exc)}) from None
    except MailConnectionError as exc:
        raise ValidationError({"__all__": exc.message}) from None
    return _tested_folders(app, user, _stored_server(account), password, auth=account.auth_type)


def update_sync_settings(
    user: User,
    account: MailAccount,
    *,
    folder_mode: str,
    chosen_folders: Iterable[str],
    since: str,
    available: list[ServerFolder],
) -> MailAccount:
    """Change which folders are synced and how far back; commits.

    `available` is the server's folder list (server_folders). Sent is always kept.
    """
    _require_owner(user, account)
    mode, chosen, since = _clean_sync_choice(folder_mode, chosen_folders, since, available)
    account.folder_mode, account.chosen_folders, account.since = mode, chosen, since
    for folder in account.folders:
        folder.sync_enabled = mode == "all" or folder.name in chosen or folder.role == "sent"
    db.session.commit()
    return account


def pause_account(user: User, account: MailAccount) -> None:
    """Stop scheduled sync of the account until resumed; commits."""
    _require_owner(user, account)
    if account.removed_at is None:
        account.sync_state = SYNC_PAUSED
        db.session.commit()


def resume_account(user: User, account: MailAccount) -> None:
    """Resume a paused account; commits. Accounts needing credentials stay as they are."""
    _require_owner(user, account)
    if account.sync_state == SYNC_PAUSED and account.removed_at is None:
        _mark_running(account)
        db.session.commit()


def remove_account(user: User, account: MailAccount, *, keep_mail: bool, app: Flask) -> str | None:
    """Disconnect the account; commits. Return a warning for the user, or None.

    keep_mail=True: forget the password, stop syncing, keep the synced mail visible.
    keep_mail=False: delete the account and its synced mail (the stored raw mail files go
    with the next blob sweep, jobs.sweep_blobs, within the hour).
    An OAuth2 account's grant is revoked at the provider first: a removed mailbox leaves
    Threadline no way back in.
    """
    _require_owner(user, account)
    warning = oauth.revoke_grant(app, account)
    if keep_mail:
        account.removed_at = utcnow()
        account.sync_state = SYNC_PAUSED
        account.password_encrypted = b""
        account.refresh_token_encrypted = None
    else:
        db.session.delete(account)
    db.session.commit()
    forget_own_accounts(user.id)
    log.info("mail account %s removed by user %s (keep_mail=%s)", account.id, user.id, keep_mail)
    return warning


SYNC_JOB = "account.sync"  # the worker runs it with jobs.run_account_sync


def sync_job_key(account_id: int) -> str:
    """Return the queue key of the account's sync passes (one queued at a time)."""
    return f"sync:{account_id}"


def _merge_sync(old: dict, new: dict) -> dict:
    # A queued pass already covers a newer request; "Sync now" widens a scheduled one.
    return {"all_folders": bool(old.get("all_folders") or new.get("all_folders"))}


def request_sync(account_id: int, *, all_folders: bool = True) -> int:
    """Queue a sync pass of the account for the worker ("Sync now"); return the job id.

    all_folders=False is the scheduled pass (INBOX and Sent; see mailsync.sync). Commits.
    """
    return job_queue.enqueue(
        SYNC_JOB,
        {"all_folders": all_folders},
        key=sync_job_key(account_id),
        account_id=account_id,
        merge=_merge_sync,
        max_attempts=1,  # the account keeps its own backoff (jobs._record)
    )


def sync_request_state(account: MailAccount) -> str | None:
    """Return "queued" or "running" while a "Sync now" of the account waits or runs, else None.

    Scheduled passes (every few minutes) are left out: the bar would flicker for each.
    """
    job = job_queue.latest_job(SYNC_JOB, sync_job_key(account.id))
    if job is None or job.state not in job_queue.UNFINISHED:
        return None
    return job.state if job.payload.get("all_folders") else None


def account_progress(account: MailAccount) -> Progress:
    """Return the account page's progress: the backfill, and a "Sync now" on its way."""
    progress = backfill_progress([account])
    return replace(progress, requested=sync_request_state(account))


# --------------------------------------------------------------------------- reading


def sync_run_log(account: MailAccount, run_id: int) -> tuple[SyncRun, list[SyncRunEntry]]:
    """One run of `account` (the caller checked the account is the user's) with its entries:
    added first, then changed, then removed, each by folder and UID. 404 for another's run."""
    run = db.session.scalar(
        select(SyncRun).where(SyncRun.id == run_id, SyncRun.account_id == account.id)
    )
    if run is None:
        abort(404)
    order = case({"added": 0, "changed": 1, "removed": 2}, value=SyncRunEntry.kind, else_=3)
    entries = list(
        db.session.scalars(
            select(SyncRunEntry)
            .where(SyncRunEntry.run_id == run.id)
            .options(selectinload(SyncRunEntry.message))  # the page links each entry's thread
            .order_by(order, SyncRunEntry.folder, SyncRunEntry.uid)
        )
    )
    return run, entries


FOLDER_CHECK_JOB = "compare_folder"
FETCH_AGAIN_NOTE = "Fetch again asked for on the account page."


def _account_folder(account: MailAccount, folder_id: int) -> MailFolder:
    folder = db.session.get(MailFolder, folder_id)
    if folder is None or folder.account_id != account.id:
        abort(404)
    return folder


def folder_check(account: MailAccount, folder_id: int) -> tuple[MailFolder, FolderCheck | None]:
    """A folder of `account` (404 otherwise) and its last comparison with the server."""
    folder = _account_folder(account, folder_id)
    return folder, db.session.get(FolderCheck, folder.id)


def request_folder_check(user: User, account: MailAccount, folder_id: int) -> FolderCheck:
    """Queue a comparison of the folder with the server (mailsync.audit); commits."""
    _require_owner(user, account)
    folder = _account_folder(account, folder_id)
    check = db.session.get(FolderCheck, folder.id)
    if check is None:
        check = FolderCheck(folder_id=folder.id)
        db.session.add(check)
    check.state, check.error = "queued", None
    check.requested_at = datetime.now(UTC)
    db.session.commit()
    job_queue.enqueue(
        FOLDER_CHECK_JOB,
        {"folder_id": folder.id},
        key=f"compare:{folder.id}",
        account_id=account.id,
        merge=lambda old, new: new,
        max_attempts=1,  # the check records its own failure
    )
    return check


def fetch_again(user: User, account: MailAccount, folder_id: int) -> int:
    """Queue the mail the last check found missing for download, then a sync; commits.

    The sync engine's retry of failed fetches does the work: each UID gets a fresh retry
    that is due now. Returns how many UIDs were queued.
    """
    _require_owner(user, account)
    folder, check = folder_check(account, folder_id)
    uids = sorted({int(uid) for uid, *_rest in (check.missing_here if check else [])})
    if not uids:
        return 0
    now = datetime.now(UTC)
    known = {
        row.uid: row
        for row in db.session.scalars(
            select(FailedUid).where(FailedUid.folder_id == folder.id, FailedUid.uid.in_(uids))
        )
    }
    for uid in uids:
        row = known.get(uid) or FailedUid(folder_id=folder.id, uid=uid)
        row.attempts, row.next_retry_at, row.last_error = 0, now, FETCH_AGAIN_NOTE
        db.session.add(row)
    db.session.commit()
    request_sync(account.id)
    return len(uids)


def list_accounts(user: User) -> list[MailAccount]:
    """Return the user's own mail accounts, removed ones included."""
    return list(own_accounts(user.id))


def accounts_needing_attention(user: User) -> list[MailAccount]:
    """Return the user's accounts whose sync stopped until the user fixes the credentials."""
    return [
        account
        for account in own_accounts(user.id)
        if account.sync_state in AUTH_BLOCKED_STATES and account.removed_at is None
    ]


def backfill_progress(accounts: Iterable[MailAccount]) -> Progress:
    """Return done/total of the initial backfill over the running accounts' synced folders.

    Paused, removed and credential-blocked accounts make no progress, so they are left out.
    """
    live = [a for a in accounts if a.removed_at is None and a.sync_state == SYNC_RUNNING]
    if not live:
        return Progress(0, 0)
    done, total = db.session.execute(
        select(
            func.coalesce(func.sum(MailFolder.backfill_done), 0),
            func.coalesce(func.sum(MailFolder.backfill_total), 0),
        ).where(MailFolder.account_id.in_([a.id for a in live]), MailFolder.sync_enabled.is_(True))
    ).one()
    pending = any(a.last_success_at is None for a in live)
    return Progress(int(done), int(total), pending and not total)


def _state_key(account: MailAccount, progress: Progress) -> str:
    if account.removed_at is not None:
        return "removed"
    if account.sync_state != SYNC_RUNNING:
        return account.sync_state if account.sync_state in STATE_LABELS else SYNC_ERROR
    if progress.active or account.last_success_at is None:
        return "syncing"
    return "up_to_date"


# The worker renews a live IDLE connection's record every IDLE_REFRESH_SECONDS; one not
# renewed for this many refreshes belongs to a worker that died (mailsync/idle.py).
IDLE_MISSED_REFRESHES = 3


def _idle_live_after(refresh_seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=IDLE_MISSED_REFRESHES * refresh_seconds)


def idle_connection_count(*, refresh_seconds: float = 30) -> int:
    """Return how many IMAP IDLE connections the worker holds live now (all accounts)."""
    return db.session.scalar(
        select(func.count())
        .select_from(MailAccount)
        .where(MailAccount.idle_seen_at >= _idle_live_after(refresh_seconds))
    )


def push_status(account: MailAccount, *, refresh_seconds: float = 30) -> dict:
    """Return whether the account's new mail is pushed (its IDLE connection is live), and the
    worker's count of live IDLE connections."""
    seen = account.idle_seen_at
    return {
        "live": seen is not None and seen >= _idle_live_after(refresh_seconds),
        "connections": idle_connection_count(refresh_seconds=refresh_seconds),
    }


def account_status(
    account: MailAccount, *, interval_seconds: int = 120, idle_refresh_seconds: float = 30
) -> dict:
    """Return what the status page shows: state, errors and fixes, timing, folders, runs."""
    progress = account_progress(account)
    state = _state_key(account, progress)
    stored = dict(
        db.session.execute(
            select(MessageLocation.folder_id, func.count())
            .join(Message, MessageLocation.message_id == Message.id)
            .join(MailFolder, MessageLocation.folder_id == MailFolder.id)
            .where(
                MailFolder.account_id == account.id,
                MessageLocation.deleted.is_(False),
                Message.deleted_at.is_(None),
            )
            .group_by(MessageLocation.folder_id)
        ).all()
    )
    folders = [
        {
            "id": folder.id,
            "name": folder.name,
            "role": folder.role,
            "sync_enabled": folder.sync_enabled,
            "state": folder.state,
            "last_error": folder.last_error,
            "server_count": folder.server_message_count,
            "stored_count": stored.get(folder.id, 0),
            "backfill_done": folder.backfill_done,
            "backfill_total": folder.backfill_total,
        }
        for folder in sort_folders(list(account.folders))
    ]
    runs = list(
        db.session.scalars(
            select(SyncRun)
            .where(SyncRun.account_id == account.id)
            .order_by(SyncRun.started_at.desc(), SyncRun.id.desc())
            .limit(RECENT_RUNS)
        )
    )
    return {
        "state": state,
        "label": STATE_LABELS[state],
        "needs_credentials": account.sync_state in AUTH_BLOCKED_STATES and state != "removed",
        "last_error": account.last_error,
        "last_error_at": account.last_error_at,
        "fix": _fix_for(account, state),
        "last_success_at": account.last_success_at,
        "next_run_at": _next_run(account, state, runs, interval_seconds),
        "progress": progress,
        "push": push_status(account, refresh_seconds=idle_refresh_seconds),
        "folders": folders,
        "runs": runs,
    }


def status_is_live(status: dict) -> bool:
    """Tell whether the status page should keep refreshing: a sync runs or was asked for."""
    running = any(run.finished_at is None for run in status["runs"][:1])
    return status["progress"].active or running


def time_left_label(
    progress: Progress, start_done: int | None, start_at: float | None, now: float
) -> str | None:
    """Estimate the first sync's time left from the rate seen since the page started polling.

    `start_done` messages were done at `start_at` (epoch seconds); None until enough is seen.
    """
    if not progress.total or progress.done >= progress.total or start_done is None:
        return None
    elapsed = now - (start_at if start_at is not None else now)
    gained = progress.done - start_done
    if elapsed < 4 or gained <= 0:
        return None
    seconds = (progress.total - progress.done) / (gained / elapsed)
    if seconds < 90:
        return "About a minute left."
    if seconds < 3600:
        return f"About {round(seconds / 60)} minutes left."
    return f"About {seconds / 3600:.1f} hours left."


def _fix_for(account: MailAccount, state: str) -> str | None:
    if state == SYNC_NEEDS_REAUTH and account.auth_type == AUTH_XOAUTH2:
        return "The provider no longer accepts Threadline's sign-in. Sign in again to resume."
    if state in STATE_FIXES:
        return STATE_FIXES[state]
    if account.consecutive_failures and account.last_error:
        return "Threadline retries automatically, waiting longer after each failure."
    return None


def _next_run(
    account: MailAccount, state: str, runs: list[SyncRun], interval_seconds: int
) -> datetime | None:
    if state not in ("syncing", "up_to_date"):
        return None
    now = utcnow()
    if account.backoff_until and account.backoff_until > now:
        return account.backoff_until
    last = runs[0].started_at if runs else account.last_success_at
    if last is None:
        return now
    return max(now, last + timedelta(seconds=interval_seconds))
