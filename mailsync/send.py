"""Send outgoing mail: build the MIME message, hand it to SMTP, file the Sent copy, store it.

The worker (jobs.send_due_mail) claims due mail with services.outbox.claim_due (queued ->
sending) and calls send_one for each; every later state change goes through services.outbox
(sent, back to queued, failed, uncertain). Exactly once: a mail is handed to SMTP only
while it is "sending", and a mail found still "sending" after a worker stopped is never sent
again: recover_interrupted looks for it in the Sent folder by its Message-ID (fixed when it
was queued) and marks it sent, or "uncertain" ("may have been sent") for the user to decide.

After sending, the exact bytes that left are appended to the Sent folder (unless the
provider files its own copy) and stored through the sync's own path (store.store_batch) at
the Sent copy's UID, so the conversation shows the mail at once and the next sync of Sent
finds the copy already stored: one message, no duplicate (mailsync/IDENTITY.md).
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import hashlib
import logging
import re
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart

from flask import Flask
from sqlalchemy import select

from extensions import db
from mailsync import imap, smtp, store
from mailsync.blobstore import app_blob_store
from mailsync.parse import html_to_text, identity_keys, parse_message
from mailsync.prepare import for_search
from models import MailAccount, MailFolder, OutgoingMail, Thread, User
from services import outbox, smart_fields
from services.access import can_access_record
from services.errors import ValidationError
from services.linking import LINK_COLUMNS, LINK_MODELS, set_thread_link
from services.mail_render import sanitize_outgoing_html

log = logging.getLogger("threadline.send")

DEFAULT_MAX_ATTEMPTS = 5  # SEND_MAX_ATTEMPTS: temporary failures before a mail is failed
DEFAULT_BACKOFF_SECONDS = 30  # SEND_BACKOFF_SECONDS: the first retry's wait; it doubles
SMTP_TIMEOUT_SECONDS = 60.0
# A provider that files its own Sent copy (Gmail) does so within moments; look this often.
OWN_COPY_LOOKUPS = (0.5, 1.0, 2.0)
# The text part's quoted-printable or base64 keeps every line short and 7-bit (RFC 5322 2.1.1).
POLICY = email.policy.SMTP.clone(cte_type="7bit")
POLICY_UTF8 = email.policy.SMTPUTF8.clone(cte_type="7bit")
_APPENDUID = re.compile(rb"APPENDUID (\d+) (\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Built:
    """A message ready for SMTP: its bytes and its envelope."""

    raw: bytes
    mail_from: str
    recipients: list[str]
    smtputf8: bool


# --------------------------------------------------------------------------- building


def _has_line_break(value: str | None) -> bool:
    return bool(value) and ("\r" in value or "\n" in value or "\0" in value)


def _refuse_line_breaks(mail: OutgoingMail, from_name: str, subject: str) -> None:
    """Raise ValidationError when any value bound for a header holds CR, LF or NUL (R18)."""
    errors: dict[str, str] = {}
    for field in ("to", "cc", "bcc"):
        if any(_has_line_break(n) or _has_line_break(a) for n, a in getattr(mail, field) or []):
            errors[field] = "An address or name cannot contain line breaks."
    if _has_line_break(subject):
        errors["subject"] = "The subject cannot contain line breaks."
    if _has_line_break(from_name):
        errors["account"] = "Your name cannot contain line breaks (Settings > Profile)."
    ids = [mail.in_reply_to, mail.message_id_header, *(mail.references or [])]
    names = [a.filename for a in mail.attachments] + [a.content_id for a in mail.attachments]
    if any(_has_line_break(value) for value in ids):
        errors["__all__"] = "The mail this answers has a malformed Message-ID."
    if any(_has_line_break(value) for value in names):
        errors["attachments"] = "An attachment name cannot contain line breaks."
    if errors:
        raise ValidationError(errors)


def _needs_utf8(address: str) -> bool:
    return not address.rpartition("@")[0].isascii()


def _ascii_domain(address: str) -> str:
    """Write an internationalized domain in punycode, so only a non-ASCII local part needs
    SMTPUTF8 (RFC 6531)."""
    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address


def _quoted_name(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"' if name else ""


def _address_header(pairs: list[tuple[str, str]], *, utf8: bool):
    """Return an address header value: Address objects, or for SMTPUTF8 mail a string (the
    email package's Address refuses a non-ASCII local part even under the UTF-8 policy)."""
    if not utf8:
        return [Address(display_name=name, addr_spec=address) for name, address in pairs]
    return ", ".join(
        f"{_quoted_name(name)} <{address}>" if name else address for name, address in pairs
    )


# An image quoted from the original of a reply or forward reaches the editor as a data: URI;
# many mail programs (Gmail among them) show no data: images, so it goes out as a cid: part.
_DATA_IMAGE_SRC = re.compile(
    r'src="data:image/(png|gif|jpeg|webp);base64,([A-Za-z0-9+/=\s]*)"', re.IGNORECASE
)


def _data_images_to_parts(html: str) -> tuple[str, list[tuple[str, str, bytes]]]:
    """Return the HTML with data: images as cid: references, and the (cid, subtype, bytes)."""
    found: dict[str, tuple[str, str, bytes]] = {}

    def replace(match: re.Match) -> str:
        try:
            data = base64.b64decode(re.sub(r"\s", "", match.group(2)), validate=True)
        except (ValueError, binascii.Error):
            return 'src=""'
        cid = f"{hashlib.sha256(data).hexdigest()[:24]}@threadline"
        found.setdefault(cid, (cid, match.group(1).lower(), data))
        return f'src="cid:{cid}"'

    return _DATA_IMAGE_SRC.sub(replace, html), list(found.values())


def build_message(
    mail: OutgoingMail,
    *,
    from_name: str,
    from_address: str,
    attachment_bytes: Callable[[str], bytes],
    now: datetime | None = None,
    filled: smart_fields.Filled | None = None,
) -> Built:
    """Build the MIME message of `mail` (Bcc in the envelope only), with the subject and body
    of `filled` (its smart fields filled) when given, else the mail's own.

    multipart/alternative (text made from the sanitized HTML, and the HTML) inside
    multipart/related with the inline (cid:) images, inside multipart/mixed with the
    attachments; each wrapper only when needed. Non-ASCII names, subject and file names are
    RFC 2047/2231 encoded; a non-ASCII local part makes it an SMTPUTF8 message.
    Raises ValidationError for a value that cannot go into a header (never a 500).
    """
    subject = filled.subject if filled is not None else mail.subject or ""
    body_html = filled.body_html if filled is not None else mail.body_html or ""
    _refuse_line_breaks(mail, from_name, subject)
    pairs = {
        field: [
            (name or "", _ascii_domain(address)) for name, address in getattr(mail, field) or []
        ]
        for field in ("to", "cc", "bcc")
    }
    from_pair = (from_name or "", _ascii_domain(from_address))
    everyone = [from_pair, *pairs["to"], *pairs["cc"], *pairs["bcc"]]
    utf8 = any(_needs_utf8(address) for _name, address in everyone)
    inline = [a for a in mail.attachments if a.content_id]
    files = [a for a in mail.attachments if not a.content_id]
    html = sanitize_outgoing_html(body_html, content_ids={a.content_id for a in inline})
    html, embedded = _data_images_to_parts(html)
    text = html_to_text(html).strip() + "\n"
    policy = POLICY_UTF8 if utf8 else POLICY
    document = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>{html}</body></html>\n'
    )
    message = EmailMessage(policy=policy)
    try:
        if inline or embedded:
            # The email package cannot turn an alternative into a related group, so the
            # related group is made first and the alternative put in it.
            alternative = MIMEPart(policy=policy)
            alternative.set_content(text, cte="quoted-printable")
            alternative.add_alternative(document, subtype="html", cte="quoted-printable")
            message.make_related()
            message.attach(alternative)
            for attachment in inline:
                maintype, _, subtype = attachment.content_type.partition("/")
                message.add_related(
                    attachment_bytes(attachment.blob_sha256),
                    maintype=maintype or "application",
                    subtype=subtype or "octet-stream",
                    cid=f"<{attachment.content_id}>",
                    filename=attachment.filename,
                    disposition="inline",
                )
            for cid, subtype, data in embedded:
                message.add_related(
                    data, maintype="image", subtype=subtype, cid=f"<{cid}>", disposition="inline"
                )
        else:
            message.set_content(text, cte="quoted-printable")
            message.add_alternative(document, subtype="html", cte="quoted-printable")
        for attachment in files:
            maintype, _, subtype = attachment.content_type.partition("/")
            message.add_attachment(
                attachment_bytes(attachment.blob_sha256),
                maintype=maintype or "application",
                subtype=subtype or "octet-stream",
                filename=attachment.filename,
            )
        message["From"] = _address_header([from_pair], utf8=utf8)
        if pairs["to"]:
            message["To"] = _address_header(pairs["to"], utf8=utf8)
        if pairs["cc"]:
            message["Cc"] = _address_header(pairs["cc"], utf8=utf8)
        message["Subject"] = subject
        message["Date"] = email.utils.format_datetime(now or datetime.now(UTC))
        message["Message-ID"] = mail.message_id_header
        if mail.in_reply_to:
            message["In-Reply-To"] = mail.in_reply_to
        if mail.references:
            message["References"] = " ".join(mail.references)
        if "MIME-Version" not in message:
            message["MIME-Version"] = "1.0"
        raw = message.as_bytes()
    except (ValueError, TypeError, IndexError) as exc:
        # The email package refuses CR/LF and malformed addresses (R18): a form error.
        raise ValidationError({"__all__": f"This mail cannot be sent as written: {exc}"}) from exc
    recipients = list(
        dict.fromkeys(address for _n, address in [*pairs["to"], *pairs["cc"], *pairs["bcc"]])
    )
    return Built(raw=raw, mail_from=from_pair[1], recipients=recipients, smtputf8=utf8)


# --------------------------------------------------------------------------- settings


def smtp_settings(app: Flask, account: MailAccount, *, timeout: float = SMTP_TIMEOUT_SECONDS):
    """Return how to reach the account's SMTP server, the password decrypted (the SMTP one,
    else the IMAP one; for OAuth2 accounts a fresh access token). Raises
    services.credentials.CredentialError, and MailConnectionError when a token cannot be
    renewed."""
    from services.credentials import secret_box
    from services.oauth import fresh_access_token

    if account.auth_type == "xoauth2":
        # The same token signs in to SMTP (XOAUTH2); renewed first when about to expire.
        password, auth = fresh_access_token(app, account), "xoauth2"
    else:
        box = secret_box(app)
        password = box.decrypt(account.smtp_password_encrypted or account.password_encrypted)
        auth = "password"
    return imap.ConnectionSettings(
        host=account.smtp_host or "",
        port=int(account.smtp_port or 465),
        security=account.smtp_security or "ssl",
        username=account.smtp_username or account.username,
        password=password,
        ca_cert_pem=account.ca_cert_pem,
        timeout=timeout,
        auth=auth,
    )


# --------------------------------------------------------------------------- sending


@dataclass
class _Job:
    mail_id: int
    account_id: int
    attempts: int
    message_id_header: str
    built: Built
    settings: imap.ConnectionSettings
    files_own_copy: bool


def _load(app: Flask, mail_id: int) -> _Job | None:
    """Read and build a claimed mail; settle it as failed when it cannot be sent."""
    mail = db.session.get(OutgoingMail, mail_id)
    if mail is None or mail.state != outbox.OUTGOING_SENDING:
        return None
    account = db.session.get(MailAccount, mail.account_id) if mail.account_id else None
    user = db.session.get(User, mail.user_id)
    # Only the account's owner sends from it, and only while it is connected.
    if account is None or account.user_id != mail.user_id or account.removed_at is not None:
        outbox.mark_failed(mail_id, "The account this mail was to be sent from is gone.")
        return None
    if not account.smtp_host:
        outbox.mark_failed(mail_id, f"{account.email_address} has no outgoing (SMTP) server.")
        return None
    # Smart fields take the CRM's values of now; the Sent copy is the filled mail.
    filled = smart_fields.fill_mail(mail)
    if filled.missing:
        outbox.mark_failed(mail_id, "Not sent: " + smart_fields.missing_message(filled.missing))
        return None
    blobs = app_blob_store(app)
    try:
        built = build_message(
            mail,
            from_name=user.name or "",
            from_address=account.email_address,
            attachment_bytes=blobs.get,
            filled=filled,
        )
        settings = smtp_settings(app, account)
    except ValidationError as exc:
        outbox.mark_failed(mail_id, "; ".join(exc.errors.values()))
        return None
    except imap.MailConnectionError as exc:  # an OAuth2 token could not be renewed
        limit = int(app.config.get("SEND_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))
        if exc.transient and mail.attempts < limit:  # the provider was unreachable
            outbox.retry_later(mail_id, exc.message, delay_seconds=_backoff(app, mail.attempts))
        else:  # access revoked: "Sign in again" first
            outbox.mark_failed(mail_id, exc.message)
        return None
    except Exception as exc:  # an unreadable password or attachment: tell, do not retry
        log.exception("outgoing mail %s cannot be built", mail_id)
        outbox.mark_failed(mail_id, f"This mail could not be prepared: {exc}"[:500])
        return None
    if account.max_message_bytes and len(built.raw) > account.max_message_bytes:
        outbox.mark_failed(
            mail_id,
            f"This mail is {len(built.raw) / 1_000_000:.1f} MB once encoded; "
            f"{account.email_address} accepts at most "
            f"{account.max_message_bytes / 1_000_000:g} MB. Remove an attachment or share a "
            "link instead.",
        )
        return None
    return _Job(
        mail_id,
        account.id,
        mail.attempts,
        mail.message_id_header,
        built,
        settings,
        bool(account.smtp_files_sent_copy),
    )


def _backoff(app: Flask, attempts: int) -> float:
    base = float(app.config.get("SEND_BACKOFF_SECONDS", DEFAULT_BACKOFF_SECONDS))
    return base * 2 ** max(0, attempts - 1)


class Sessions:
    """Connections kept for one tick and reused by its mails: SMTP and IMAP per account.

    A batch of due mail then costs one TLS handshake and sign-in per server, not one per
    mail (providers also limit how many connections an account may open).
    """

    def __init__(self) -> None:
        self.smtp: dict[int, smtplib.SMTP] = {}
        self.imap: dict[int, object] = {}

    def smtp_for(self, account_id: int, settings: imap.ConnectionSettings):
        """Return (connection, whether it was used before); raise SMTPFailure."""
        if account_id in self.smtp:
            return self.smtp[account_id], True
        client = self.smtp[account_id] = smtp.connect(settings)
        return client, False

    def drop_smtp(self, account_id: int) -> None:
        smtp.close(self.smtp.pop(account_id, None))

    def imap_for(self, account_id: int, settings: imap.ConnectionSettings):
        if account_id not in self.imap:
            self.imap[account_id] = imap.connect(settings, allowed_ports=None)
        return self.imap[account_id]

    def drop_imap(self, account_id: int) -> None:
        imap.safe_logout(self.imap.pop(account_id, None))

    def close(self) -> None:
        for account_id in list(self.smtp):
            self.drop_smtp(account_id)
        for account_id in list(self.imap):
            self.drop_imap(account_id)


def _deliver(sessions: Sessions, job: _Job) -> smtp.Delivery:
    client, reused = sessions.smtp_for(job.account_id, job.settings)
    try:
        return smtp.deliver(
            client, job.built.mail_from, job.built.recipients, job.built.raw,
            smtputf8=job.built.smtputf8,
        )  # fmt: skip
    except smtp.SMTPFailure as exc:
        sessions.drop_smtp(job.account_id)  # its state is unknown now
        if reused and exc.kind == imap.NETWORK and not exc.maybe_sent:
            # A kept connection the server had closed meanwhile: once more on a new one.
            return _deliver(sessions, job)
        raise


def send_one(app: Flask, mail_id: int, *, sessions: Sessions | None = None) -> str | None:
    """Send one claimed ("sending") mail and settle it; return its new state.

    `sessions` holds connections to reuse (send_due passes the tick's); without it the
    connections are opened and closed here. Never holds a database transaction across
    network I/O.
    """
    with app.app_context():
        job = _load(app, mail_id)
        state = None if job is not None else _state(mail_id)
        db.session.remove()
    if job is None:
        return state
    own = sessions is None
    sessions = sessions or Sessions()
    try:
        try:
            delivery = _deliver(sessions, job)
        except smtp.SMTPFailure as exc:
            return _settle_failure(app, job, exc)
        refused = _refusal_note(delivery.refused) if delivery.refused else None
        with app.app_context():
            outbox.mark_sent(mail_id, error=refused)
            db.session.remove()
        for _attempt in range(2):
            reused = job.account_id in sessions.imap
            try:
                file_and_store(
                    app, job.account_id, mail_id, job.built.raw, job.message_id_header,
                    files_own_copy=job.files_own_copy, sessions=sessions,
                )  # fmt: skip
                break
            except Exception:
                sessions.drop_imap(job.account_id)
                if reused:
                    continue  # a kept connection the server had closed: once more, anew
                # The mail left; the next sync of Sent brings it into its conversation.
                log.exception("outgoing mail %s: filing the Sent copy failed", mail_id)
                break
        return outbox.OUTGOING_SENT
    finally:
        if own:
            sessions.close()


def _refusal_note(refused: dict[str, tuple[int, str]]) -> str:
    """What the Outbox and the conversation say of recipients the server refused while it
    took the mail for the others (or, after a broken connection, may have taken it for)."""
    maybe = [rcpt for rcpt, (code, _answer) in refused.items() if code == smtp.MAYBE_DELIVERED]
    refusals = {rcpt: value for rcpt, value in refused.items() if rcpt not in maybe}
    notes = []
    if refusals:
        notes.append(
            "Not delivered to "
            + "; ".join(f"{rcpt} ({answer})" for rcpt, (_code, answer) in refusals.items())
            + "."
        )
    if maybe:
        notes.append(
            f"The connection broke while the mail was handed over for {', '.join(maybe)}: "
            "they may or may not have it; ask before sending it to them again."
        )
    notes.append("The other recipients got it.")
    if any(400 <= code < 500 for code, _answer in refusals.values()):
        notes.append("The server refused only for now: send it to them again later.")
    return " ".join(notes)


def _state(mail_id: int) -> str | None:
    mail = db.session.get(OutgoingMail, mail_id)
    return mail.state if mail else None


def _settle_failure(app: Flask, job: _Job, exc: smtp.SMTPFailure) -> str:
    limit = int(app.config.get("SEND_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))
    with app.app_context():
        try:
            if exc.maybe_sent:
                outbox.mark_uncertain(job.mail_id, exc.message)
                return outbox.OUTGOING_UNCERTAIN
            if exc.permanent:
                outbox.mark_failed(job.mail_id, exc.message)
                return outbox.OUTGOING_FAILED
            if job.attempts >= limit:
                outbox.mark_failed(
                    job.mail_id, f"{exc.message} (gave up after {job.attempts} tries)"
                )
                return outbox.OUTGOING_FAILED
            outbox.retry_later(job.mail_id, exc.message, delay_seconds=_backoff(app, job.attempts))
            return outbox.OUTGOING_QUEUED
        finally:
            db.session.remove()


# --------------------------------------------------------------------------- the Sent copy


def _sent_folder(account_id: int) -> MailFolder | None:
    return db.session.scalar(
        select(MailFolder)
        .where(MailFolder.account_id == account_id, MailFolder.role == "sent")
        .order_by(MailFolder.id)
        .limit(1)
    )


def find_in_folder(client, folder: str, message_id_header: str) -> tuple[int, list[int]]:
    """Return (UIDVALIDITY, UIDs) of the folder's messages with this Message-ID."""
    info = client.select_folder(folder, readonly=True)
    uids = client.search(["HEADER", "Message-ID", message_id_header])
    return int(info[b"UIDVALIDITY"]), sorted(int(uid) for uid in uids)


def file_and_store(
    app: Flask,
    account_id: int,
    mail_id: int,
    raw: bytes,
    message_id_header: str,
    *,
    files_own_copy: bool,
    sessions: Sessions | None = None,
) -> int | None:
    """Append the Sent copy (\\Seen) unless the provider files its own, then store the mail
    in its conversation at that copy's UID; return the stored message id (None when the copy
    could not be located: the next sync stores it)."""
    with app.app_context():
        account = db.session.get(MailAccount, account_id)
        folder = _sent_folder(account_id)
        settings = imap.account_settings(app, account, timeout=SMTP_TIMEOUT_SECONDS)
        folder_id, folder_name, uidvalidity = (
            (folder.id, folder.name, folder.uidvalidity) if folder else (None, None, None)
        )
        db.session.remove()
    if folder_name is None:
        log.warning("account %s has no Sent folder: the sent copy is not filed", account_id)
        return None
    own = sessions is None
    sessions = sessions or Sessions()
    client = sessions.imap_for(account_id, settings)
    try:
        uid = None
        server_validity = None
        if not files_own_copy:
            answer = client.append(folder_name, raw, flags=(rb"\Seen",))
            match = _APPENDUID.search(answer or b"")
            if match:
                server_validity, uid = int(match.group(1)), int(match.group(2))
        if uid is None:
            for pause in OWN_COPY_LOOKUPS if files_own_copy else (0.0,):
                time.sleep(pause)
                server_validity, uids = find_in_folder(client, folder_name, message_id_header)
                if uids:
                    uid = uids[-1]
                    break
    finally:
        if own:
            sessions.close()
    if uid is None or (uidvalidity is not None and server_validity != uidvalidity):
        return None  # a folder the sync has not (or differently) seen: it will store it
    with app.app_context():
        try:
            return store_sent(app, account_id, mail_id, folder_id, uid, raw)
        finally:
            db.session.remove()


def store_sent(
    app: Flask, account_id: int, mail_id: int, folder_id: int, uid: int, raw: bytes
) -> int:
    """Store the sent bytes as the message at (folder, uid), exactly as a sync would, link
    the conversation to the record it was written from, and note both on the mail."""
    sha = app_blob_store(app).put(raw)  # blob before row
    parsed = parse_message(raw)
    account = db.session.get(MailAccount, account_id)
    key, candidate = identity_keys(raw)
    item = store.Fetched(
        folder_id=folder_id,
        uid=uid,
        flags=[rb"\Seen"],
        dedup_key=key,
        header_key=candidate,
        parsed=for_search(parsed),
        raw_sha256=sha,
        size=len(raw),
        internaldate=datetime.now(UTC),
    )
    store.store_batch(store.context_for(account), [item])
    message_id = store.existing_by_dedup_key(account_id, [item.dedup_key])[item.dedup_key]
    thread_id = db.session.scalar(
        select(store.message_t.c.thread_id).where(store.message_t.c.id == message_id)
    )
    mail = db.session.get(OutgoingMail, mail_id)
    thread = db.session.get(Thread, thread_id) if thread_id else None
    if thread is not None and mail is not None:
        _link_to_record(thread, mail)
    db.session.commit()
    outbox.record_stored(mail_id, message_id=message_id, thread_id=thread_id)
    return message_id


def _link_to_record(thread: Thread, mail: OutgoingMail) -> None:
    """Link a new conversation to the deal, lead or project the mail was written from.

    Only when the sender may see that record, and only a conversation not linked yet (a
    reply stays where its conversation is). Persons link by address, as for synced mail.
    """
    model = LINK_MODELS.get(mail.record_kind or "")
    if model is None or not mail.record_id:
        return
    if any(getattr(thread, column) for column in LINK_COLUMNS.values()):
        return
    record = db.session.get(model, mail.record_id)
    owner = db.session.get(User, mail.user_id)
    if record is None or owner is None or not can_access_record(owner, record):
        return
    set_thread_link(thread, mail.record_kind, record.id)


# --------------------------------------------------------------------------- the worker's tick


def send_due(app: Flask, *, limit: int = 20) -> dict[int, str | None]:
    """Send up to `limit` due mails, claiming each (queued -> sending) just before it is
    sent; return {mail id: new state}.

    One at a time: a worker stopped mid-tick leaves at most the mail it was sending in
    "sending" (which recovery may have to call uncertain); the rest stay queued and go out
    with the next tick. Claimed as a batch, every mail of the batch was "may have been sent".
    """
    sessions = Sessions()
    settled: dict[int, str | None] = {}
    try:
        for _ in range(limit):
            with app.app_context():
                claimed = outbox.claim_due(limit=1)
                db.session.remove()
            if not claimed:
                break
            settled[claimed[0]] = send_one(app, claimed[0], sessions=sessions)
    finally:
        sessions.close()
    return settled


def recover_interrupted(app: Flask, *, before: datetime | None = None) -> dict[int, str]:
    """Settle mail a stopped worker left "sending": sent when the Sent folder holds its
    Message-ID, else uncertain. Never sends anything. Returns {mail id: new state}."""
    with app.app_context():
        pending = []
        for mail_id in outbox.interrupted_sends(before=before):
            mail = db.session.get(OutgoingMail, mail_id)
            account = db.session.get(MailAccount, mail.account_id) if mail.account_id else None
            folder = _sent_folder(account.id) if account else None
            settings = None
            if account is not None and folder is not None:
                try:
                    settings = imap.account_settings(app, account, timeout=SMTP_TIMEOUT_SECONDS)
                except Exception:
                    settings = None
            pending.append(
                (mail_id, mail.message_id_header, settings, folder.name if folder else None,
                 account.id if account else None)
            )  # fmt: skip
        db.session.remove()
    settled: dict[int, str] = {}
    for mail_id, message_id_header, settings, folder_name, account_id in pending:
        found = False
        checked = False
        if settings is not None and message_id_header:
            client = None
            try:
                client = imap.connect(settings, allowed_ports=None)
                found = bool(find_in_folder(client, folder_name, message_id_header)[1])
                checked = True
            except Exception:
                log.exception("outgoing mail %s: looking for it in Sent failed", mail_id)
            finally:
                imap.safe_logout(client)
        with app.app_context():
            if found:
                outbox.mark_sent(mail_id)
                settled[mail_id] = outbox.OUTGOING_SENT
                from services.accounts import request_sync

                request_sync(account_id, all_folders=False)  # brings the copy in
            else:
                why = (
                    "Threadline stopped while sending this mail, and it is not in your Sent "
                    "folder. It may have been sent: check with a recipient before sending it "
                    "again."
                    if checked
                    else "Threadline stopped while sending this mail and could not check your "
                    "Sent folder. It may have been sent."
                )
                outbox.mark_uncertain(mail_id, why)
                settled[mail_id] = outbox.OUTGOING_UNCERTAIN
            db.session.remove()
    return settled
