"""Load and render one conversation for a viewer, and the owner's actions on it.

Visibility is decided by services/access.py before anything here runs; linking and blocking
rules live in services/linking.py. Mail bodies are rendered only through
services/mail_render.py (SECURITY.md R1-R15).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from extensions import db
from mailsync.blobstore import BlobStore, app_blob_store
from mailsync.parse import (
    MAX_TEXT_CHARS,
    AttachmentInfo,
    ParsedMessage,
    extract_part,
    html_to_text,
    normalize_content_id,
    parse_message,
)
from models import (
    OUTGOING_SENT,
    ImageAllowance,
    MailAccount,
    Message,
    MessageLocation,
    OutgoingMail,
    Person,
    PersonEmail,
    Thread,
    User,
)
from services import job_queue, linking, mailbox, records
from services.access import record_or_none, record_threads, visible_records
from services.errors import ValidationError
from services.inputs import search_text
from services.linking_rules import address_is_blocked, normalize_block_entry
from services.mail_display import display_text, sender_label
from services.mail_render import (
    INLINE_SAFE_TYPES,
    email_document,
    is_rtl_text,
    plain_text_to_html,
    sanitize_reply_html,
)

# Inline cid: images up to this size are embedded as data: URIs: the sandboxed srcdoc frame
# has an opaque origin, so cookie-authenticated image URLs do not load there (R10 design note).
DATA_URI_LIMIT = 2 * 1024 * 1024
# SYNC.md §4: messages above this size are stored as headers plus a placeholder.
LINK_LABELS = {"deal": "Deal", "lead": "Lead", "project": "Project"}
SEARCH_LIMIT = 8


def blob_store() -> BlobStore:
    """Return the raw-mail store of the running app."""
    return app_blob_store(current_app)


def load_raw(message: Message) -> bytes | None:
    """Return the stored raw bytes of a message, or None when they are missing."""
    if not message.raw_sha256:
        return None
    try:
        return blob_store().get(message.raw_sha256)
    except (FileNotFoundError, ValueError):
        return None


# Header fields naming who the sender copied in secret: the conversation page never shows
# them, and "Show original" leaves them out for anyone but the mailbox's owner (a Sent copy
# from another mail program keeps its Bcc line).
_SECRET_COPY_FIELDS = (b"bcc", b"resent-bcc")


def original_for(message: Message, *, is_owner: bool) -> bytes | None:
    """Return the stored original for its viewer: whole for the owner, without the Bcc fields
    of its header for a teammate; None when it is missing."""
    raw = load_raw(message)
    if raw is None or is_owner:
        return raw
    return without_secret_copies(raw)


def without_secret_copies(raw: bytes) -> bytes:
    """Return `raw` with the Bcc and Resent-Bcc fields (and their folded lines) taken out of
    its top-level header; the body is left byte for byte."""
    lines = raw.splitlines(keepends=True)
    kept: list[bytes] = []
    dropping = False
    for index, line in enumerate(lines):
        if line in (b"\r\n", b"\n", b"\r"):  # the blank line: the body follows untouched
            return b"".join(kept) + b"".join(lines[index:])
        if line[:1] in (b" ", b"\t"):  # a folded line belongs to the field above
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() in _SECRET_COPY_FIELDS
        if not dropping:
            kept.append(line)
    return b"".join(kept)


# --------------------------------------------------------------------------- rendering


@dataclass
class RenderedMessage:
    """One message as the conversation view shows it."""

    message: Message
    document: str | None = None  # srcdoc for the sandboxed iframe
    notice: str | None = None
    attachments: list[AttachmentInfo] = field(default_factory=list)
    blocked_remote_images: int = 0
    images_allowed: bool = False
    rtl: bool = False
    has_raw: bool = False
    to_total: int = 0  # recipients the header names (the stored list stops at 500)
    cc_total: int = 0
    height: int = 160  # px for the iframe: a sandboxed frame without scripts cannot auto-size


def frame_height(parsed: ParsedMessage) -> int:
    """Estimate the iframe height: text lines of about 90 characters, plus images and rows."""
    if parsed.html_body is not None:
        html = parsed.html_body[:200_000].lower()
        text = html_to_text(parsed.html_body[:200_000])
        extra = 110 * min(html.count("<img"), 8) + 30 * min(html.count("<tr"), 40)
    else:
        text, extra = parsed.text_body, 0
    text = "\n".join([text, *parsed.texts_below])
    lines = sum(len(line) // 90 + 1 for line in text.splitlines()[:400])
    return max(100, min(1400, 48 + lines * 24 + extra))


def cid_token(content_id: str) -> str:
    """Return the URL token of a normalized Content-ID."""
    return base64.urlsafe_b64encode(content_id.encode("utf-8")).decode("ascii").rstrip("=")


def content_id_from_token(token: str) -> str | None:
    """Return the normalized Content-ID a URL token stands for, or None."""
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return normalize_content_id(decoded)


def _inline_image(parsed: ParsedMessage, content_id: str | None) -> AttachmentInfo | None:
    """Return the raster part with this Content-ID in this message only (R10)."""
    wanted = normalize_content_id(content_id)
    for part in parsed.attachments:
        if wanted and part.content_id == wanted and part.content_type in INLINE_SAFE_TYPES:
            return part
    return None


def _cid_url(raw: bytes, parsed: ParsedMessage, content_id: str) -> str | None:
    """Map a cid: reference to a data: URI of a raster part of this message, or None.

    Checked in Chromium: the sandboxed srcdoc frame has an opaque origin, so a same-origin
    image URL (the inline_image route) does not load there; larger parts are listed as
    downloads instead (see _listed_attachments).
    """
    part = _inline_image(parsed, content_id)
    if part is None or part.size > DATA_URI_LIMIT:
        return None
    data, _content_type, _name = extract_part(raw, part.part_id)
    if len(data) > DATA_URI_LIMIT:
        return None
    return f"data:{part.content_type};base64,{base64.b64encode(data).decode('ascii')}"


def inline_data_url(raw: bytes, parsed: ParsedMessage, content_id: str) -> str | None:
    """Return a data: URI of an inline image of this message (quoted into compose), or None."""
    return _cid_url(raw, parsed, content_id)


def _shown_inline(part: AttachmentInfo) -> bool:
    """Tell whether a part is displayed inside the message body instead of listed."""
    return bool(
        part.is_inline
        and part.content_id
        and part.content_type in INLINE_SAFE_TYPES
        and part.size <= DATA_URI_LIMIT
    )


def _listed_attachments(parsed: ParsedMessage) -> list[AttachmentInfo]:
    """Return the parts to list as downloads: all but raster images shown inline."""
    return [part for part in parsed.attachments if not _shown_inline(part)]


def sender_images_allowed(user: User, sender: str) -> bool:
    """Tell whether `user` chose to always show remote images from `sender`."""
    return bool(senders_with_images_allowed(user, [sender]))


def senders_with_images_allowed(user: User, senders: Iterable[str]) -> set[str]:
    """Return those of `senders` (lowercased) whose remote images `user` always shows; one
    query for a whole conversation."""
    wanted = {sender.lower() for sender in senders if sender}
    if not wanted:
        return set()
    return set(
        db.session.scalars(
            select(ImageAllowance.sender).where(
                ImageAllowance.user_id == user.id, ImageAllowance.sender.in_(sorted(wanted))
            )
        )
    )


def allow_images_from(user: User, sender: str) -> None:
    """Always show remote images from `sender` to `user` (idempotent); commits."""
    if not sender or sender_images_allowed(user, sender):
        return
    db.session.add(ImageAllowance(user_id=user.id, sender=sender.lower()))
    db.session.commit()


FETCH_BODY_JOB = "message.fetch_body"  # the worker runs it with mailsync.actions


def request_full_message(message: Message) -> int:
    """Queue downloading a header-only message's body for the worker; return the job id.

    Commits. Queued behind the account's write-backs, so it reads the message where they
    left it.
    """
    from services.mailbox import writeback_key

    return job_queue.enqueue(
        FETCH_BODY_JOB,
        {"message_id": message.id, "thread_ids": [message.thread_id]},
        key=writeback_key(message.account_id),
        account_id=message.account_id,
    )


def render_message(message: Message, *, allow_remote_images: bool = False) -> RenderedMessage:
    """Render one message body for the sandboxed iframe; never raises on bad mail (R16).

    `allow_remote_images`: the viewer asked to see them, for this message or its sender.
    """
    view = RenderedMessage(message=message)
    raw = load_raw(message)
    view.has_raw = raw is not None
    if message.is_placeholder:
        limit_mb = current_app.config["MAX_FULL_SIZE"] // (1024 * 1024)
        view.notice = (
            f"This message is larger than {limit_mb} MB, so only its headers were synced. "
            "Open it in your mail program to read it."
        )
        return view
    if raw is None:
        view.notice = "The original of this message is not stored, so it cannot be shown."
        return view
    parsed = parse_message(raw)
    view.attachments = _listed_attachments(parsed)
    view.to_total, view.cc_total = parsed.to_total, parsed.cc_total
    if parsed.html_body is None and not parsed.text_body and not parsed.texts_below:
        if parsed.encrypted:
            view.notice = (
                "This message is encrypted for its recipient, so Threadline cannot show it. "
                "Download the original to open it in a mail program that holds the key."
            )
        elif parsed.parse_error or parsed.headers_only:
            view.notice = "This message could not be displayed. Download the original to read it."
        else:
            view.notice = "This message has no text."
        return view
    allowed = allow_remote_images
    if parsed.html_body is not None:
        sanitized = sanitize_reply_html(
            parsed.html_body,
            cid_url=lambda content_id: _cid_url(raw, parsed, content_id),
            allow_remote_images=allowed,
        )
        body = sanitized.html + attached_html(parsed)
        view.blocked_remote_images = sanitized.blocked_remote_images
        view.images_allowed = allowed and sanitized.has_remote_content
    else:
        body = text_html(parsed) + attached_html(parsed)
    view.height = frame_height(parsed)
    view.rtl = is_rtl_text(parsed.text_body or parsed.snippet or message.subject)
    view.document = email_document(
        body, rtl=True if view.rtl else None, allow_remote_images=view.images_allowed
    )
    if parsed.parse_error:
        view.notice = "Parts of this message could not be read. Download the original to check."
    elif parsed.text_cut and parsed.html_body is None:
        view.notice = (
            f"This message is longer than Threadline shows (its first {MAX_TEXT_CHARS:,} "
            "characters). Download the original to read all of it."
        )
    return view


def text_html(parsed: ParsedMessage) -> str:
    """A mail's plain text as sanitized HTML (format=flowed soft breaks joined)."""
    return plain_text_to_html(parsed.text_body, flowed=parsed.flowed, delsp=parsed.delsp)


def attached_html(parsed: ParsedMessage) -> str:
    """A calendar invitation's summary and the mails forwarded as attachments, as sanitized
    HTML to put below the mail's own body ("" when there are none): the conversation page
    and the reply quote show them."""
    below = parsed.texts_below
    return plain_text_to_html("\n\n".join(below)) if below else ""


def thread_messages(thread: Thread, *, include_blocked: bool) -> list[Message]:
    """Return the live messages of a thread, oldest first."""
    query = select(Message).where(Message.thread_id == thread.id, Message.deleted_at.is_(None))
    if not include_blocked:
        query = query.where(Message.blocked.is_(False))
    return list(
        db.session.scalars(query.order_by(Message.date.is_(None).desc(), Message.date, Message.id))
    )


def threads_with_hidden_mail(thread_ids: list[int]) -> set[int]:
    """Return the threads holding a live message its owner's blocks hide.

    A thread keeps the subject of the message that started it, blocked or not; in these
    threads a hidden message must not name the conversation (a teammate would learn of mail
    they cannot open): the pages take the subject from the shown messages instead
    (_shown_heading). The thread's date is already its newest shown message's
    (store.refresh_threads), unless every message is hidden: the heading's date covers that.
    """
    found: set[int] = set()
    for start in range(0, len(thread_ids), 500):
        found.update(
            db.session.scalars(
                select(Message.thread_id)
                .where(
                    Message.thread_id.in_(thread_ids[start : start + 500]),
                    Message.blocked.is_(True),
                    Message.deleted_at.is_(None),
                )
                .distinct()
            )
        )
    return found


def _shown_heading(shown: list[tuple[str | None, datetime | None]]) -> tuple[str, datetime | None]:
    """(subject of the first, newest date) of a thread's shown messages, oldest first."""
    dates = [date for _subject, date in shown if date is not None]
    return (shown[0][0] or "") if shown else "", max(dates, default=None)


@dataclass
class ConversationView:
    """A whole conversation for one viewer."""

    thread: Thread
    is_owner: bool
    owner: User
    messages: list[RenderedMessage]
    hidden_by_block: bool
    subject: str  # the thread's, or its first shown message's (threads_with_hidden_mail)
    read_state_unsaved: bool = False  # a read/unread change not yet written to the mailbox
    # Mail sent from Threadline that some recipients did not get: message id -> the server's
    # words (the owner's view only).
    undelivered: dict[int, str] = field(default_factory=dict)


def load_conversation(
    user: User, thread: Thread, *, is_owner: bool, show_images_for: int | None = None
) -> ConversationView:
    """Render every visible message; `show_images_for` allows remote images of one message."""
    messages = thread_messages(thread, include_blocked=False)
    hidden_by_block = not messages
    if hidden_by_block and is_owner:
        messages = thread_messages(thread, include_blocked=True)
    always = senders_with_images_allowed(user, [message.from_address for message in messages])
    rendered = [
        render_message(
            message,
            allow_remote_images=message.id == show_images_for
            or (message.from_address or "").lower() in always,
        )
        for message in messages
    ]
    subject = thread.subject
    # hidden_by_block: the owner sees every message, so the thread's own subject.
    if not hidden_by_block and threads_with_hidden_mail([thread.id]):
        subject, _last_date = _shown_heading(
            [(m.subject, m.date or m.internaldate) for m in messages]
        )
    return ConversationView(
        thread=thread,
        is_owner=is_owner,
        owner=thread.account.user,
        messages=rendered,
        hidden_by_block=hidden_by_block,
        subject=subject,
        read_state_unsaved=is_owner and _read_state_unsaved([m.id for m in messages]),
        undelivered=_undelivered(thread) if is_owner else {},
    )


def _undelivered(thread: Thread) -> dict[int, str]:
    """Return {message id: the refusal} for this conversation's mail sent from Threadline to
    which the mail server refused some recipients while taking the others: sent, but not to
    everyone, which only this note tells."""
    rows = db.session.execute(
        select(OutgoingMail.message_id, OutgoingMail.error).where(
            OutgoingMail.thread_id == thread.id,
            OutgoingMail.state == OUTGOING_SENT,
            OutgoingMail.message_id.is_not(None),
            OutgoingMail.error.is_not(None),
        )
    )
    return {message_id: error for message_id, error in rows}


def _read_state_unsaved(message_ids: list[int]) -> bool:
    pending = select(MessageLocation.id).where(
        MessageLocation.message_id.in_(message_ids), MessageLocation.seen_pending.is_(True)
    )
    return db.session.scalar(pending.limit(1)) is not None


def attachment_part(message: Message, part_id: str) -> tuple[bytes, str, str | None] | None:
    """Return (bytes, content type, filename) of a listed attachment, or None."""
    raw = load_raw(message)
    if raw is None or message.is_placeholder:
        return None
    parsed = parse_message(raw)
    part = next((p for p in parsed.attachments if p.part_id == part_id), None)
    if part is None:
        return None
    try:
        data, content_type, _name = extract_part(raw, part.part_id)
    except KeyError:
        return None
    return data, content_type, part.filename


def inline_image(message: Message, token: str) -> tuple[bytes, str] | None:
    """Return (bytes, content type) of a raster cid: part of this message only, or None."""
    content_id = content_id_from_token(token)
    raw = load_raw(message)
    if content_id is None or raw is None or message.is_placeholder:
        return None
    part = _inline_image(parse_message(raw), content_id)
    if part is None:
        return None
    data, _content_type, _name = extract_part(raw, part.part_id)
    return data, part.content_type


# --------------------------------------------------------------------------- sidebar


@dataclass
class Participant:
    """A sender or recipient of the conversation, other than the owner."""

    address: str
    name: str
    person: Person | None = None  # the person with this address, when the viewer can see it
    private_person: bool = False  # someone has this address, but the viewer cannot see them
    blocked: bool = False


PastOffer = linking.PastOffer
MAX_OFFER_ADDRESSES = 50  # participants checked for open offers (a list mail has thousands)


@dataclass
class Sidebar:
    """The actions panel of a conversation (owner) or its read-only facts (teammate)."""

    thread: Thread
    is_owner: bool
    linked_kind: str | None
    linked_record: object | None
    participants: list[Participant]
    link_choices: list[tuple[str, object]]
    person_choices: list[PersonChoice]
    link_query: str = ""
    link_results: list[tuple[str, object]] = field(default_factory=list)
    offers: list[PastOffer] = field(default_factory=list)  # open "link past mail" offers
    notice: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    form_address: str = ""


def linked_record(user: User, thread: Thread) -> tuple[str | None, object | None]:
    """Return (kind, record) of the thread's deal/lead/project when `user` can access it."""
    for kind, model in linking.LINK_MODELS.items():
        record_id = getattr(thread, f"{kind}_id")
        if record_id is not None:
            return kind, record_or_none(user, model, record_id)
    return None, None


def participants(user: User, thread: Thread, *, is_owner: bool) -> list[Participant]:
    """Return the thread's distinct participants, excluding the owner's own addresses."""
    owner = thread.account.user
    own = linking.own_addresses(owner)
    names: dict[str, str] = {}
    for message in thread_messages(thread, include_blocked=is_owner):
        pairs = [[message.from_name, message.from_address]]
        pairs += [*(message.to or []), *(message.cc or []), *(message.reply_to or [])]
        for pair in pairs:
            if len(pair) < 2 or not pair[1]:
                continue
            address = pair[1].strip().lower()
            if address and address not in own and not names.get(address):
                names[address] = display_text(pair[0])
    person_ids = linking.persons_for_addresses(names)
    entries = [row.entry for row in linking.blocked_entries(owner)] if is_owner else []
    result = []
    for address, name in names.items():
        person_id = person_ids.get(address)
        person = record_or_none(user, Person, person_id) if person_id else None
        result.append(
            Participant(
                address=address,
                name=name,
                person=person,
                private_person=person_id is not None and person is None,
                blocked=address_is_blocked(address, entries),
            )
        )
    return result


def link_choices(user: User, thread: Thread) -> list[tuple[str, object]]:
    """Return the open deals/leads/projects of the thread's persons that `user` can access."""
    choices = []
    for target in linking.open_link_targets(linking.thread_person_ids(thread)):
        record = record_or_none(user, linking.LINK_MODELS[target.kind], target.id)
        if record is not None:
            choices.append((target.kind, record))
    return choices


def search_link_targets(user: User, query: str) -> list[tuple[str, object]]:
    """Return deals, leads and projects `user` can access whose title contains `query`."""
    text = search_text(query).lower()
    results: list[tuple[str, object]] = []
    for kind, model in linking.LINK_MODELS.items():
        statement = visible_records(user, model).order_by(model.status != "open", model.title)
        if text:
            statement = statement.where(func.lower(model.title).contains(text, autoescape=True))
        results.extend(
            (kind, record) for record in db.session.scalars(statement.limit(SEARCH_LIMIT))
        )
    return results


class PersonChoice(NamedTuple):
    id: int
    name: str


def person_choices(user: User) -> list[PersonChoice]:
    """Return the persons `user` can add an address to, by name (id and name only)."""
    rows = db.session.execute(
        visible_records(user, Person)
        .with_only_columns(Person.id, Person.name)
        .order_by(Person.name)
        .limit(500)
    )
    return [PersonChoice(person_id, name) for person_id, name in rows]


def load_sidebar(user: User, thread: Thread, *, is_owner: bool, **extra) -> Sidebar:
    """Return the sidebar of a conversation; owner-only choices stay empty for teammates."""
    kind, record = linked_record(user, thread)
    people = participants(user, thread, is_owner=is_owner)
    # The "add to an existing person" picker only shows next to an unknown address.
    unknown = any(p.person is None and not p.private_person for p in people)
    known = [p.address for p in people if p.person is not None][:MAX_OFFER_ADDRESSES]
    offers = linking.past_link_offers(user, addresses=known) if is_owner and known else []
    return Sidebar(
        offers=offers,
        thread=thread,
        is_owner=is_owner,
        linked_kind=kind if record is not None else None,
        linked_record=record,
        participants=people,
        link_choices=link_choices(user, thread) if is_owner and thread.needs_link_choice else [],
        person_choices=person_choices(user) if is_owner and unknown else [],
        **extra,
    )


# --------------------------------------------------------------------------- owner actions


def _require_participant(user: User, thread: Thread, address: str) -> str:
    """Return the lowercased address when it is a participant of the thread, else raise."""
    value = (address or "").strip().lower()
    if value not in {p.address for p in participants(user, thread, is_owner=True)}:
        raise ValidationError({"address": "Choose one of the people in this conversation."})
    return value


def set_sharing(thread: Thread, shared: bool) -> None:
    """Share or unshare the conversation; commits."""
    linking.set_thread_shared(thread, shared)


def link_record(user: User, thread: Thread, kind: str, record_id: int | None) -> None:
    """Link the conversation to a deal, lead or project `user` can access; commits."""
    model = linking.LINK_MODELS.get(kind)
    record = record_or_none(user, model, record_id) if model else None
    if record is None:
        raise ValidationError({"record": "Choose a deal, lead or project from the list."})
    linking.link_thread(thread, kind, record.id)


def unlink_record(thread: Thread) -> None:
    """Remove the conversation's deal, lead or project link; commits."""
    linking.link_thread(thread, "deal", None)


def create_person_from_participant(
    user: User, thread: Thread, *, name: str, address: str
) -> Person:
    """Create a person with a participant's address; commits.

    This conversation is linked to the person at once; other past mail with the address
    becomes an offer (records.create_person makes it).
    """
    value = _require_participant(user, thread, address)
    person = records.create_person(user, name=name, emails=[value])
    linking.link_thread_to_person(user, person, thread, value)
    db.session.commit()
    return person


def add_address_to_person(
    user: User, thread: Thread, *, person_id: int | None, address: str
) -> Person:
    """Add a participant's address to an existing person; commits; offers past mail."""
    value = _require_participant(user, thread, address)
    person = record_or_none(user, Person, person_id)
    if person is None:
        raise ValidationError({"person_id": "Choose a person from the list."})
    if db.session.scalar(select(PersonEmail.id).where(PersonEmail.email == value)) is not None:
        raise ValidationError({"address": f"{value} already belongs to a person."})
    person.emails.append(PersonEmail(email=value, is_primary=not person.emails))
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        raise ValidationError({"address": f"{value} already belongs to a person."}) from exc
    linking.link_thread_to_person(user, person, thread, value)
    db.session.commit()
    linking.remember_past_link_offers(user, person, [value])
    return person


def link_past(user: User, *, person_id: int | None, address: str) -> int:
    """Link past conversations mentioning one of a person's addresses; commits; the count."""
    person = record_or_none(user, Person, person_id)
    value = (address or "").strip().lower()
    if person is None or value not in {row.email for row in person.emails}:
        raise ValidationError({"address": "Choose one of the person's addresses."})
    return linking.link_past_conversations(user, person, value)


def dismiss_offer(user: User, *, person_id: int | None, address: str) -> None:
    """Drop a "link past conversations" offer; commits."""
    linking.dismiss_past_link_offer(user, person_id, address)


def block_participant(user: User, thread: Thread, address: str) -> str:
    """Block one participant's address; commits; return the stored entry."""
    value = _require_participant(user, thread, address)
    return linking.block(user, normalize_block_entry(value)).entry


# --------------------------------------------------------------------------- record pages


@dataclass
class ThreadSummary:
    """One row of a record page's "Email conversations" panel."""

    thread: Thread
    owner: User
    names: list[str]
    subject: str  # of the shown messages, and so is last_date (threads_with_hidden_mail)
    last_date: datetime | None


RECORD_PAGE_SIZE = 25  # conversations per page of a record's panel ("More" loads the next)


@dataclass
class RecordConversations:
    """One page of a record page's "Email conversations" panel."""

    summaries: list[ThreadSummary]
    next_cursor: str | None


def record_conversations(
    user: User, kind: str, record_id: int, *, after: str = ""
) -> RecordConversations:
    """Return one page of the conversations `user` may see on a record page, newest first,
    after the keyset cursor `after`.

    The caller must have loaded the record through `record_for`.
    """
    threads, next_cursor = mailbox.keyset_page(
        record_threads(user, kind, record_id), (after or "")[:40], RECORD_PAGE_SIZE
    )
    names, shown = _sender_names([thread.id for thread in threads])
    hidden = threads_with_hidden_mail([thread.id for thread in threads])
    owners = dict(
        db.session.execute(
            select(MailAccount.id, User)
            .join(User, User.id == MailAccount.user_id)
            .where(MailAccount.id.in_({thread.account_id for thread in threads}))
        ).all()
    )
    summaries = [
        ThreadSummary(
            thread=thread,
            owner=owners[thread.account_id],
            names=names[thread.id][:4],
            subject=heading[0],
            last_date=heading[1],
        )
        for thread in threads
        for heading in [
            _shown_heading(shown[thread.id])
            if thread.id in hidden
            else (thread.subject, thread.last_date)
        ]
    ]
    return RecordConversations(summaries, next_cursor)


def _sender_names(
    thread_ids: list[int],
) -> tuple[dict[int, list[str]], dict[int, list[tuple[str | None, datetime | None]]]]:
    """Return each thread's distinct sender names in message order (as thread_messages), and
    (subject, date) of its shown messages in that order, from one read."""
    names: dict[int, list[str]] = {thread_id: [] for thread_id in thread_ids}
    shown: dict[int, list[tuple[str | None, datetime | None]]] = {t: [] for t in thread_ids}
    when = func.coalesce(Message.date, Message.internaldate)
    for start in range(0, len(thread_ids), 500):
        rows = db.session.execute(
            select(
                Message.thread_id, Message.from_name, Message.from_address, Message.subject, when
            )
            .where(
                Message.thread_id.in_(thread_ids[start : start + 500]),
                Message.deleted_at.is_(None),
                Message.blocked.is_(False),
            )
            .order_by(Message.thread_id, Message.date.is_(None).desc(), Message.date, Message.id)
        )
        for thread_id, from_name, from_address, subject, date in rows:
            shown[thread_id].append((subject, date))
            name = sender_label(from_name, from_address)
            if name not in names[thread_id]:
                names[thread_id].append(name)
    return names, shown
