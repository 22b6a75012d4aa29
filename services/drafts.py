"""Drafts: prefill a new mail (blank, reply, reply-all, forward, from a record), save what the
editor sends, and keep a draft's attachments and inline images in the blob store.

Callers load the draft through services.access.outgoing_for_owner and the quoted message
through message_for_viewer, so nothing here decides who may see what. Functions that change
state commit once at their end. Sending is services/outbox.py's job.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from flask import current_app
from sqlalchemy import func, or_, select

from extensions import db
from mailsync.parse import extract_part, parse_message
from models import (
    OUTGOING_DRAFT,
    OUTGOING_SENT,
    RECORD_MODELS,
    MailAccount,
    Message,
    Organization,
    OutgoingAttachment,
    OutgoingMail,
    Person,
    PersonEmail,
    StoredFile,
    User,
)
from services import compose, linking, outbox, signatures, smart_fields
from services.access import (
    own_sending_accounts,
    owned_messages,
    record_or_none,
    visible_records,
)
from services.conversations import (
    attached_html,
    blob_store,
    inline_data_url,
    load_raw,
    text_html,
)
from services.errors import ValidationError
from services.inputs import parse_id
from services.mail_render import safe_filename, sanitize_email_html
from services.preferences import get_preference
from services.time_display import full_label, zone_for

REPLY_KINDS = ("reply", "reply_all", "forward")
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_SUBJECT_LENGTH = 998  # RFC 5322 line limit
MAX_BODY_LENGTH = 5_000_000
MAX_RECIPIENTS = 500
INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# What the editor's own markup keeps through the draft sanitizer (span chips, div signature).
EDITOR_ATTRIBUTES = {**smart_fields.CHIP_ATTRIBUTES, **signatures.MARKER_ATTRIBUTES}


@dataclass
class Prefill:
    """The fields of a mail not saved yet (the compose page before its first autosave)."""

    to: list[list[str]] = field(default_factory=list)
    cc: list[list[str]] = field(default_factory=list)
    bcc: list[list[str]] = field(default_factory=list)
    subject: str = ""
    body_html: str = ""
    reply_kind: str | None = None
    source_message_id: int | None = None
    record_kind: str | None = None
    record_id: int | None = None
    account_id: int | None = None
    # The replied-to or forwarded mail is stored as headers only (too big to download with the
    # rest, or its copy is missing): the quote has only its first lines, a forward no files.
    source_incomplete: bool = False


def sending_accounts(user: User) -> list[MailAccount]:
    """Return the accounts the user may pick in From, the default first."""
    return list(db.session.scalars(own_sending_accounts(user)))


def default_account_id(user: User, *, source: Message | None = None) -> int | None:
    """Return the From account: the one the answered mail came to, else the first."""
    accounts = sending_accounts(user)
    if source is not None and any(a.id == source.account_id for a in accounts):
        return source.account_id
    return accounts[0].id if accounts else None


def quoted_body(user: User, message: Message, kind: str, raw: bytes | None) -> str:
    """Return the sanitized original (`raw`, its stored mail; None when there is none: its
    snippet), quoted for a reply or forward.

    Remote images are always dropped here (R8: composing loads nothing remote); the
    original's inline (cid:) images become data: URIs, so they still show.
    """
    parsed = parse_message(raw) if raw is not None else None
    # Mail forwarded as attachments is quoted as the conversation page shows it: below.
    if parsed is not None and parsed.html_body is not None:
        body = sanitize_email_html(
            parsed.html_body,
            cid_url=lambda content_id: inline_data_url(raw, parsed, content_id),
            allow_remote_images=False,
        ).html + attached_html(parsed)
    elif parsed is not None and (parsed.text_body or parsed.texts_below):
        body = text_html(parsed) + attached_html(parsed)
    else:
        body = f"<div>{html.escape(message.snippet or '')}</div>"
    return compose.quote_html(
        kind=kind,
        body_html=body,
        from_pair=[message.from_name or "", message.from_address or ""],
        date=message.date,
        subject=message.subject or "",
        to=message.to or [],
        cc=message.cc or [],
        date_label=full_label(message.date, zone_for(get_preference(user, "time_zone"))),
    )


def prefill(
    user: User,
    *,
    to_text: str = "",
    source: Message | None = None,
    kind: str | None = None,
    record_kind: str | None = None,
    record_id: int | None = None,
) -> Prefill:
    """Return the fields of a new mail: blank, to an address, a reply or forward of `source`
    (which the caller got through message_for_viewer), or from a record's "Email" button."""
    values = Prefill(to=compose.parse_address_list(to_text)[:MAX_RECIPIENTS])
    values.account_id = default_account_id(user, source=source)
    if record_kind in RECORD_MODELS and record_id:
        record = record_or_none(user, RECORD_MODELS[record_kind], record_id)
        if record is not None:
            values.record_kind, values.record_id = record_kind, record.id
            if not values.to:
                values.to = record_recipients(user, record)
    if source is not None and kind in REPLY_KINDS:
        own = linking.own_addresses(user)
        to, cc = compose.reply_recipients(
            kind=kind,
            from_pair=[source.from_name or "", source.from_address or ""],
            reply_to=source.reply_to or [],
            to=source.to or [],
            cc=source.cc or [],
            own=own,
        )
        values.to, values.cc = to, cc
        values.reply_kind, values.source_message_id = kind, source.id
        if kind == "forward":
            values.subject = compose.forward_subject(source.subject)
        else:
            values.subject = compose.reply_subject(source.subject)
        raw = load_raw(source)
        values.body_html = quoted_body(user, source, kind, raw)
        values.source_incomplete = raw is None
    return values


def record_recipients(user: User, record: object) -> list[list[str]]:
    """Return whom "Email" on a record page writes to: the person, or the record's person(s)."""
    persons: list[Person] = []
    if isinstance(record, Person):
        persons = [record]
    elif getattr(record, "person_id", None):
        person = record_or_none(user, Person, record.person_id)
        persons = [person] if person is not None else []
    elif isinstance(record, Organization):
        persons = list(
            db.session.scalars(
                visible_records(user, Person).where(Person.organization_id == record.id).limit(20)
            )
        )
    recipients = []
    for person in persons:
        emails = sorted(person.emails, key=lambda e: (not e.is_primary, e.id))
        if emails:
            recipients.append([person.name, emails[0].email])
    return recipients


def _clean_pairs(value: list[list[str]]) -> list[list[str]]:
    return [[name[:255], address[:320]] for name, address in value[:MAX_RECIPIENTS]]


def apply_form(
    user: User, mail: OutgoingMail, form: Mapping[str, str], attachment_url: AttachmentUrl
) -> None:
    """Copy what the editor sends (to/cc/bcc lines, subject, body, From) onto a draft.

    Raises ValidationError for a From account that is not the user's. Does not commit.
    """
    for name in ("to", "cc", "bcc"):
        if name in form:
            setattr(mail, name, _clean_pairs(compose.parse_address_list(form.get(name) or "")))
    if "subject" in form:
        mail.subject = one_line_subject(form.get("subject"))[:MAX_SUBJECT_LENGTH]
    if "account_id" in form:
        account_id = parse_id(form.get("account_id"))
        if account_id is not None:
            allowed = {a.id for a in sending_accounts(user)}
            if account_id not in allowed:
                raise ValidationError({"account": "Choose one of your mail accounts."})
        mail.account_id = account_id
    if "body_html" in form:
        body = (form.get("body_html") or "").replace("\x00", "")
        if len(body) > MAX_BODY_LENGTH:
            raise ValidationError({"body": "The message is too long to save."})
        mail.body_html = clean_body(mail, body, attachment_url)


# The views pass how an attachment's owner-only URL is spelled (url_for lives there).
AttachmentUrl = Callable[[OutgoingAttachment], str]


def one_line_subject(value: str | None) -> str:
    """A subject as the editor sent it, on one line (a header holds no line break)."""
    return " ".join((value or "").replace("\x00", "").splitlines())


def urls_by_cid(attachments: Iterable[StoredFile], attachment_url: Callable) -> dict[str, str]:
    """Map the Content-IDs of inline images (a draft's or a template's) to their editor URLs."""
    return {a.content_id: attachment_url(a) for a in attachments if a.content_id}


def clean_body(mail: OutgoingMail, body: str, attachment_url: AttachmentUrl) -> str:
    """Sanitize editor HTML (the same policy as received mail) and store inline images as cid:.

    The editor's URLs of this draft's images are turned into cid: first, so the sanitizer's
    cid rule maps them back to those URLs and drops any other image that is not a data: URI.
    """
    return clean_editor_html(body, urls_by_cid(mail.attachments, attachment_url))


def clean_editor_html(body: str, urls_by_cid: Mapping[str, str]) -> str:
    """Sanitize what an editor sent (a draft's or a template's body); inline images as cid:.

    `urls_by_cid` maps the Content-IDs of the body's own inline images to their URLs in the
    editor. Smart-field chips and the signature block's marker are kept (services/mail_render.py's
    composed-HTML policy); sending drops both.
    """
    as_cid = compose.body_for_storage(body, urls_by_cid)
    sanitized = sanitize_email_html(
        as_cid,
        cid_url=urls_by_cid.get,
        allow_remote_images=False,
        extra_attributes=EDITOR_ATTRIBUTES,  # chips and the signature marker stay until sent
    ).html
    return compose.body_for_storage(sanitized, urls_by_cid)


def editor_body(mail: OutgoingMail, attachment_url: AttachmentUrl) -> str:
    """Return the stored body with this draft's cid: images pointing at their URLs."""
    return compose.body_for_editor(
        mail.body_html or "", urls_by_cid(mail.attachments, attachment_url)
    )


def create_draft(
    user: User, values: Prefill, form: Mapping[str, str], attachment_url: AttachmentUrl
) -> OutgoingMail:
    """Create a draft from the prefill it was opened with and what the editor sends; commits.

    A forward also gets the original's attachments (copied into the blob store's names).
    """
    mail = OutgoingMail(user_id=user.id, state=OUTGOING_DRAFT)
    mail.to, mail.cc, mail.bcc = values.to, values.cc, values.bcc
    mail.subject, mail.account_id = values.subject, values.account_id
    mail.record_kind, mail.record_id = values.record_kind, values.record_id
    db.session.add(mail)
    source = db.session.get(Message, values.source_message_id) if values.source_message_id else None
    if source is not None and values.reply_kind in REPLY_KINDS:
        mail.reply_kind, mail.source_message_id = values.reply_kind, source.id
        if values.reply_kind != "forward":
            mail.in_reply_to = compose.angle_id(source.message_id_header)
            mail.references = compose.references_for(
                source.message_id_header, source.references or [], source.in_reply_to
            )
        else:
            _copy_forward_attachments(mail, source)
    db.session.flush()
    apply_form(user, mail, form, attachment_url)
    db.session.commit()
    return mail


def _copy_forward_attachments(mail: OutgoingMail, source: Message) -> None:
    raw = load_raw(source)
    if raw is None:
        return
    store = blob_store()
    for part in parse_message(raw).attachments:
        data, content_type, filename = extract_part(raw, part.part_id)
        mail.attachments.append(
            OutgoingAttachment(
                filename=safe_filename(filename or part.filename),
                content_type=(content_type or part.content_type or "application/octet-stream")[
                    :255
                ],
                size=len(data),
                blob_sha256=store.put(data),
                content_id=None,
            )
        )


def save_draft(
    user: User, mail: OutgoingMail, form: Mapping[str, str], attachment_url: AttachmentUrl
) -> OutgoingMail:
    """Save the editor's fields onto a draft; commits. A mail that left Drafts is refused."""
    if mail.state != OUTGOING_DRAFT:
        raise ValidationError(
            {"__all__": "This mail is no longer a draft (it is in the Outbox or was sent)."}
        )
    apply_form(user, mail, form, attachment_url)
    db.session.commit()
    return mail


def send_draft(
    user: User,
    mail: OutgoingMail,
    form: Mapping[str, str],
    attachment_url: AttachmentUrl,
    *,
    zone: ZoneInfo,
) -> int:
    """Save the editor's fields, then queue the draft: after the user's undo window, or at
    the "send at" time of the form (read in `zone`). Return the undo window in seconds.

    Inline images no longer in the body are dropped first, so they are not sent as files.
    Raises ValidationError (field -> message) when the mail cannot be sent; what was typed
    is saved either way.
    """
    save_draft(user, mail, form, attachment_url)
    send_at = compose.parse_local_datetime(form.get("send_at", ""), zone)
    for attachment in [a for a in mail.attachments if a.content_id]:
        if f"cid:{attachment.content_id}" not in (mail.body_html or ""):
            mail.attachments.remove(attachment)
    db.session.commit()
    undo = int(get_preference(user, "undo_send_seconds"))
    outbox.queue_send(user, mail, undo_seconds=undo, send_at=send_at)
    return 0 if mail.scheduled else undo


def max_upload_bytes(account_id: int | None) -> int:
    """Return the largest upload allowed: the config cap, or the From account's limit."""
    cap = int(current_app.config.get("COMPOSE_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES))
    account = db.session.get(MailAccount, account_id) if account_id else None
    if account is not None and account.max_message_bytes:
        return min(cap, account.max_message_bytes)
    return cap


def add_attachment(
    user: User,
    mail: OutgoingMail,
    *,
    filename: str,
    content_type: str,
    data: bytes,
    inline: bool = False,
) -> OutgoingAttachment:
    """Store an uploaded file on a draft (an inline image gets a Content-ID); commits.

    Raises ValidationError when the draft is gone from Drafts, the file is too large for the
    account or the upload cap, or an inline image is not a raster image.
    """
    if mail.state != OUTGOING_DRAFT:
        raise ValidationError({"attachments": "This mail is no longer a draft."})
    fields = stored_upload(
        filename=filename,
        content_type=content_type,
        data=data,
        inline=inline,
        limit=max_upload_bytes(mail.account_id),
        already=sum(a.size for a in mail.attachments),
    )
    attachment = OutgoingAttachment(**fields)
    mail.attachments.append(attachment)
    db.session.commit()
    return attachment


def stored_upload(
    *, filename: str, content_type: str, data: bytes, inline: bool, limit: int, already: int
) -> dict:
    """Check one upload (a draft's or a template's) and put its bytes in the blob store.

    Return the attachment row's fields (filename, content_type, size, blob_sha256,
    content_id: a new Content-ID for an inline image). Raises ValidationError when the file
    makes the attachments (`already` bytes so far) larger than `limit`, or an inline image
    is not a raster image.
    """
    if len(data) > limit or already + len(data) > limit:
        raise ValidationError(
            {
                "attachments": f"{safe_filename(filename)} is too large: attachments may add up "
                f"to {limit / 1_000_000:.0f} MB. Share a link to it instead."
            }
        )
    content_type = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    if inline and content_type not in INLINE_TYPES:
        raise ValidationError({"attachments": "Only PNG, JPEG, GIF and WebP images go inline."})
    return {
        "filename": safe_filename(filename, default="image" if inline else "attachment"),
        "content_type": content_type[:255] or "application/octet-stream",
        "size": len(data),
        "blob_sha256": blob_store().put(data),
        "content_id": f"{secrets.token_hex(12)}@threadline" if inline else None,
    }


def remove_attachment(user: User, mail: OutgoingMail, attachment: OutgoingAttachment) -> None:
    """Remove an attachment from a draft (its blob is left to the garbage collection); commits."""
    if mail.state != OUTGOING_DRAFT:
        raise ValidationError({"attachments": "This mail is no longer a draft."})
    mail.attachments.remove(attachment)
    db.session.commit()


def attachment_bytes(attachment: StoredFile) -> bytes | None:
    """Return an attachment's bytes, or None when the blob is missing."""
    try:
        return blob_store().get(attachment.blob_sha256)
    except (FileNotFoundError, ValueError):
        return None


def discard_draft(user: User, mail: OutgoingMail) -> None:
    """Delete a draft for good; commits. Mail in the Outbox must be cancelled first."""
    if mail.state != OUTGOING_DRAFT:
        raise ValidationError({"__all__": "Only a draft can be discarded."})
    db.session.delete(mail)
    db.session.commit()


@dataclass(frozen=True)
class Suggestion:
    name: str
    address: str
    source: str  # "person" or "recent"


def suggest_recipients(user: User, query: str, *, limit: int = 8) -> list[Suggestion]:
    """Return persons the user can see, then recent correspondents of their own mailbox,
    whose name or address contains `query`."""
    text = (query or "").strip().lower()
    if not text:
        return []
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    found: list[Suggestion] = []
    seen: set[str] = set()
    persons = db.session.execute(
        visible_records(user, Person)
        .join(PersonEmail, PersonEmail.person_id == Person.id)
        .where(
            or_(
                func.lower(Person.name).like(pattern, escape="\\"),
                PersonEmail.email.like(pattern, escape="\\"),
            )
        )
        .with_only_columns(Person.name, PersonEmail.email)
        .order_by(Person.name, PersonEmail.email)
        .limit(limit)
    ).all()
    for name, address in persons:
        if address not in seen:
            seen.add(address)
            found.append(Suggestion(name, address, "person"))
    own = linking.own_addresses(user)
    recent = db.session.execute(
        owned_messages(user)
        .where(
            or_(
                func.lower(Message.from_name).like(pattern, escape="\\"),
                Message.from_address.like(pattern, escape="\\"),
            )
        )
        .with_only_columns(Message.from_name, Message.from_address)
        .order_by(Message.date.desc())
        .limit(limit * 4)
    ).all()
    for name, address in recent:
        address = (address or "").lower()
        if address and address not in seen and address not in own and len(found) < limit:
            seen.add(address)
            found.append(Suggestion(name or "", address, "recent"))
    return found[:limit]


def recently_sent(user: User, *, limit: int = 20) -> list[OutgoingMail]:
    """Return the user's latest sent mail (the Outbox links each to its conversation)."""
    return list(
        db.session.scalars(
            select(OutgoingMail)
            .where(OutgoingMail.user_id == user.id, OutgoingMail.state == OUTGOING_SENT)
            .order_by(OutgoingMail.sent_at.desc(), OutgoingMail.id.desc())
            .limit(limit)
        )
    )
