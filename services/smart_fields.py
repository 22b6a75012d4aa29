"""Smart fields: placeholders in a mail filled from the CRM when it is sent (and in Preview).

In the body a field is a chip, `<span data-smart-field="person.first_name"
data-fallback="there">First name</span>` (data-fallback optional), inserted from the picker of
static/js/smart_fields.js; in the subject (plain text) it is a readable token, `{{First name}}`
or `{{First name|there}}`. Filling replaces every chip and every known token with its value,
HTML-escaped into the body and flattened to one line in the subject (no header line breaks,
R18); a field with no value takes the chip's fallback, else it is listed in `missing` and the
mail may not be sent. A chip never leaves in a sent mail; an unknown `{{...}}` stays as typed.

Values come from the record the mail was written from (only when its sender may see it),
else from the person matched to the first To recipient and their single open deal.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from datetime import date
from html.parser import HTMLParser
from typing import NamedTuple

from extensions import db
from models import (
    DEAL_STAGE_LABELS,
    RECORD_MODELS,
    Deal,
    Lead,
    MailAccount,
    Organization,
    OutgoingMail,
    Person,
    Project,
    User,
)
from services.access import can_access_record, visible_records
from services.conversations import blob_store
from services.linking import persons_for_addresses
from services.mail_render import INLINE_SAFE_TYPES, email_document, sanitize_email_html
from services.records import format_money


@dataclass(frozen=True)
class Field:
    label: str
    group: str


# Ordered as the picker shows them; labels are unique (the subject's tokens name them).
FIELDS: dict[str, Field] = {
    "person.name": Field("Name", "Recipient"),
    "person.first_name": Field("First name", "Recipient"),
    "person.last_name": Field("Last name", "Recipient"),
    "person.email": Field("Email", "Recipient"),
    "person.phone": Field("Phone", "Recipient"),
    "organization.name": Field("Organization", "Organization"),
    "organization.address": Field("Organization address", "Organization"),
    "deal.title": Field("Deal", "Deal"),
    "deal.value": Field("Deal value", "Deal"),
    "deal.stage": Field("Deal stage", "Deal"),
    "deal.expected_close_date": Field("Expected close date", "Deal"),
    "lead.title": Field("Lead", "Lead and project"),
    "project.title": Field("Project", "Lead and project"),
    "sender.name": Field("Your name", "You"),
    "sender.email": Field("Your email", "You"),
    "sender.phone": Field("Your phone", "You"),
}
# What the body sanitizer (services/drafts.py) keeps of a chip (mail_render extra_attributes).
CHIP_ATTRIBUTES = {"span": {"data-smart-field", "data-fallback"}}
MAX_FALLBACK_LENGTH = 200
MISSING_MESSAGE = "These smart fields have no value: "

_BY_LABEL = {field.label.casefold(): key for key, field in FIELDS.items()}
_TOKEN = re.compile(r"\{\{([^{}|]{1,80})(?:\|([^{}]{0,200}))?\}\}")

Values = dict[str, str | None]


class Filled(NamedTuple):
    """A filled subject and body, and the labels of the fields that had no value."""

    subject: str
    body_html: str
    missing: list[str]


# --------------------------------------------------------------------------- resolving


@dataclass
class Sources:
    """The records a mail's fields are read from, and where they were found (for Preview)."""

    person: Person | None = None
    organization: Organization | None = None
    deal: Deal | None = None
    lead: Lead | None = None
    project: Project | None = None
    origin: str = ""


def _visible(user: User, record: object | None) -> object | None:
    return record if record is not None and can_access_record(user, record) else None


def _person_for_address(user: User, address: str) -> Person | None:
    # The same match as linking mail to persons, limited to what the sender may see.
    person_id = persons_for_addresses([address], visible_to=user.id).get(address)
    return db.session.get(Person, person_id) if person_id else None


def _first_to(mail: OutgoingMail) -> str | None:
    return next((address.strip().lower() for _name, address in mail.to or [] if address), None)


def _single_open_deal(user: User, person: Person) -> Deal | None:
    deals = list(
        db.session.scalars(
            visible_records(user, Deal)
            .where(Deal.person_id == person.id, Deal.status == "open")
            .limit(2)
        )
    )
    return deals[0] if len(deals) == 1 else None


def sources_for(mail: OutgoingMail) -> Sources:
    """Return the records `mail`'s fields come from, as its sender may see them."""
    user = db.session.get(User, mail.user_id)
    found = Sources()
    if user is None:
        return found
    model = RECORD_MODELS.get(mail.record_kind or "")
    record = (
        _visible(user, db.session.get(model, mail.record_id)) if model and mail.record_id else None
    )
    origins = []
    if record is not None:
        kind = mail.record_kind
        setattr(found, kind, record)
        label = getattr(record, "title", None) or getattr(record, "name", "")
        origins.append(f"the {kind} “{label}” this mail is written from")
        if kind in ("deal", "lead", "project"):
            found.person = _visible(user, record.person)
            found.organization = _visible(user, record.organization)
        if kind == "lead":
            found.deal = _visible(user, record.deal)
    first_to = _first_to(mail)
    if found.person is None and first_to:
        found.person = _person_for_address(user, first_to)
        if found.person is not None:
            origins.append(f"{found.person.name}, the person with the address {first_to}")
    if found.person is not None:
        if found.organization is None:
            found.organization = _visible(user, found.person.organization)
        if found.deal is None and found.lead is None and found.project is None:
            found.deal = _single_open_deal(user, found.person)
            if found.deal is not None:
                origins.append(f"their open deal “{found.deal.title}”")
    found.origin = ", and ".join(origins)
    return found


def format_date(value: date | None) -> str | None:
    """Return "7 December 2026": a date no reader can take for another."""
    return f"{value.day} {value:%B %Y}" if value else None


def _split_name(name: str) -> tuple[str | None, str | None]:
    words = name.split()
    if not words:
        return None, None
    return words[0], " ".join(words[1:]) or None


def _person_email(person: Person, first_to: str | None) -> str | None:
    addresses = [entry.email for entry in person.emails]
    if first_to in addresses:
        return first_to
    return addresses[0] if addresses else None


def values_for(mail: OutgoingMail) -> Values:
    """Return every field's current value for `mail` (None: no value)."""
    found = sources_for(mail)
    user = db.session.get(User, mail.user_id)
    account = db.session.get(MailAccount, mail.account_id) if mail.account_id else None
    person, organization, deal = found.person, found.organization, found.deal
    first_to = _first_to(mail)
    first, last = _split_name(person.name) if person else (None, None)
    values: Values = {
        "person.name": person.name if person else None,
        "person.first_name": first,
        "person.last_name": last,
        "person.email": _person_email(person, first_to) if person else None,
        "person.phone": person.phone if person else None,
        "organization.name": organization.name if organization else None,
        "organization.address": organization.address if organization else None,
        "deal.title": deal.title if deal else None,
        "deal.value": format_money(deal.value, deal.currency) if deal else None,
        "deal.stage": DEAL_STAGE_LABELS.get(deal.stage, deal.stage) if deal else None,
        "deal.expected_close_date": format_date(deal.expected_close_date) if deal else None,
        "lead.title": found.lead.title if found.lead else None,
        "project.title": found.project.title if found.project else None,
        "sender.name": user.name if user else None,
        "sender.email": account.email_address if account else (user.email if user else None),
        "sender.phone": user.phone if user else None,
    }
    return {key: (value.strip() or None) if value else None for key, value in values.items()}


# --------------------------------------------------------------------------- filling


def one_line(text: str) -> str:
    """Return `text` as one line: every run of whitespace, line breaks and controls one space."""
    return " ".join("".join(" " if _is_control(c) else c for c in text).split())


def _is_control(char: str) -> bool:
    return ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or char in "\u2028\u2029"


class _Filler:
    """Fills fields for one mail and records the labels of those left without a value."""

    def __init__(self, values: Values, *, mark_missing: bool) -> None:
        self.values = values
        self.mark_missing = mark_missing
        self.missing: list[str] = []

    def value(self, key: str, fallback: str | None) -> str | None:
        """Return the field's value, else its fallback, else None (noted as missing)."""
        field = FIELDS.get(key)
        value = self.values.get(key) if field else None
        if value:
            return value
        fallback = (fallback or "").strip()[:MAX_FALLBACK_LENGTH]
        if fallback:
            return fallback
        label = field.label if field else f"unknown field “{one_line(key)[:60]}”"
        if label not in self.missing:
            self.missing.append(label)
        return None

    def subject(self, subject: str) -> str:
        return one_line(_TOKEN.sub(lambda m: self.token(m, html_out=False), subject or ""))

    def token(self, match: re.Match, *, html_out: bool) -> str:
        key = _BY_LABEL.get(match.group(1).strip().casefold())
        if key is None and match.group(1).strip() in FIELDS:
            key = match.group(1).strip()
        if key is None:
            return html.escape(match.group(0), quote=False) if html_out else match.group(0)
        value = self.value(key, match.group(2))
        if value is None:
            return self.placeholder(key) if html_out else ""
        return self.html_value(value) if html_out else one_line(value)

    def html_value(self, value: str) -> str:
        lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return "<br>".join(html.escape(line) for line in lines)

    def chip(self, key: str, fallback: str | None) -> str:
        value = self.value(key, fallback)
        return self.placeholder(key) if value is None else self.html_value(value)

    def placeholder(self, key: str) -> str:
        if not self.mark_missing:
            return ""
        label = FIELDS[key].label if key in FIELDS else key
        return f'<mark class="smart-field-missing">[{html.escape(label)}]</mark>'


class _BodyFiller(HTMLParser):
    """Re-emits (sanitized) HTML with chips replaced and tokens in its text filled."""

    def __init__(self, filler: _Filler) -> None:
        super().__init__(convert_charrefs=True)
        self.filler = filler
        self.out: list[str] = []
        self.skipping = 0  # depth of <span>s inside the chip being replaced

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skipping:
            self.skipping += tag == "span"
            return
        chip = dict(attrs).get("data-smart-field") if tag == "span" else None
        if chip is not None:
            self.out.append(self.filler.chip(chip, dict(attrs).get("data-fallback")))
            self.skipping = 1
            return
        self.out.append(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skipping:
            return
        chip = dict(attrs).get("data-smart-field") if tag == "span" else None
        if chip is not None:
            self.out.append(self.filler.chip(chip, dict(attrs).get("data-fallback")))
            return
        self.out.append(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            self.skipping -= tag == "span"
            return
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        text, position = [], 0
        for match in _TOKEN.finditer(data):
            text.append(html.escape(data[position : match.start()], quote=False))
            text.append(self.filler.token(match, html_out=True))
            position = match.end()
        text.append(html.escape(data[position:], quote=False))
        self.out.append("".join(text))

    def handle_comment(self, data: str) -> None:
        pass  # the sanitizer strips comments; none is sent

    def handle_decl(self, decl: str) -> None:
        pass

    def handle_pi(self, data: str) -> None:
        pass

    def unknown_decl(self, data: str) -> None:
        pass


def fill(subject: str, body_html: str, values: Values, *, mark_missing: bool = False) -> Filled:
    """Fill the subject's tokens and the body's chips (and tokens) with `values`.

    Values are HTML-escaped into the body and flattened to one line in the subject. A field
    with no value takes its fallback, else its label goes into `missing` and it is left out
    (or, with `mark_missing`, shown as a highlighted "[Label]" for Preview). The body is
    expected to be sanitized HTML (services/drafts.py); the result still goes through the
    outgoing sanitizer in mailsync/send.py.
    """
    filler = _Filler(values, mark_missing=mark_missing)
    filled_subject = filler.subject(subject)
    parser = _BodyFiller(filler)
    parser.feed(body_html or "")
    parser.close()
    return Filled(filled_subject, "".join(parser.out), filler.missing)


def missing_fields(mail: OutgoingMail) -> list[str]:
    """Return the labels of `mail`'s fields that have no value and no fallback."""
    if not uses_fields(mail.subject or "", mail.body_html or ""):
        return []
    return fill(mail.subject or "", mail.body_html or "", values_for(mail)).missing


def uses_fields(subject: str, body_html: str) -> bool:
    """Tell whether a subject or body may hold a field (a chip or a {{token}})."""
    return "data-smart-field" in body_html or "{{" in body_html or "{{" in subject


def fill_mail(mail: OutgoingMail) -> Filled:
    """Fill `mail`'s subject and body with the CRM's current values (the worker, Preview)."""
    if not uses_fields(mail.subject or "", mail.body_html or ""):
        return Filled(mail.subject or "", mail.body_html or "", [])
    return fill(mail.subject or "", mail.body_html or "", values_for(mail))


def missing_message(missing: list[str]) -> str:
    """Return the plain sentence that lists empty fields."""
    return (
        MISSING_MESSAGE
        + ", ".join(missing)
        + ". Fill them in on the record, or click a field to give it a fallback text."
    )


# --------------------------------------------------------------------------- preview


@dataclass(frozen=True)
class Preview:
    """A draft as its recipient would get it now: subject, body document, what is missing."""

    subject: str
    document: str  # for a sandboxed iframe's srcdoc (services/mail_render.email_document)
    missing: list[str]
    origin: str  # where the values come from, "" when from no record


def preview(mail: OutgoingMail) -> Preview:
    """Fill a saved draft for Preview; empty fields show as a highlighted [Label]."""
    filled = fill(mail.subject or "", mail.body_html or "", values_for(mail), mark_missing=True)
    inline = {a.content_id: a for a in mail.attachments if a.content_id}

    def cid_url(content_id: str) -> str | None:
        # The srcdoc frame has an opaque origin: inline images go in as data: URIs.
        attachment = inline.get(content_id)
        if attachment is None or attachment.content_type not in INLINE_SAFE_TYPES:
            return None
        data = blob_store().get(attachment.blob_sha256)
        return f"data:{attachment.content_type};base64,{base64.b64encode(data).decode('ascii')}"

    body = sanitize_email_html(filled.body_html, cid_url=cid_url).html
    return Preview(filled.subject, email_document(body), filled.missing, sources_for(mail).origin)


def field_choices() -> list[dict[str, str]]:
    """Return the fields as the picker lists them: key, label and group, in order."""
    return [{"key": k, "label": f.label, "group": f.group} for k, f in FIELDS.items()]
