"""Compose rules as pure functions: subjects, reply recipients, quoting, address lists, cid: bodies.

No database and no request here (services/drafts.py feeds these with stored rows), so each
rule is unit-tested on plain values.
"""

from __future__ import annotations

import email.utils
import html
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.addresses import is_valid_address
from services.errors import ValidationError

# Reply prefixes: "Re:", "RE:", "AW:" (German), "SV:" (Nordic), "Antw:", with counts like "Re[2]:".
_REPLY_ONLY = re.compile(r"^\s*(?:(?:re|aw|sv|antw)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+", re.I)

Recipient = list[str]  # [name, address], as OutgoingMail.to/cc/bcc store them


def reply_subject(subject: str) -> str:
    """Return the subject of a reply: exactly one "Re:" (never "Re: Re:", "Re: AW:")."""
    base = _REPLY_ONLY.sub("", subject or "").strip()
    return f"Re: {base}" if base else "Re:"


def forward_subject(subject: str) -> str:
    """Return the subject of a forward: exactly one "Fwd:" in front of the original subject."""
    base = re.sub(
        r"^\s*(?:(?:fwd?|wg|tr|rv|enc|doorst)\s*[:：]\s*)+", "", subject or "", flags=re.I
    ).strip()
    return f"Fwd: {base}" if base else "Fwd:"


def _split_list(text: str) -> list[str]:
    """Split an address list on commas, semicolons and line breaks outside quotes and <...>."""
    items, current, quoted, angle, escaped = [], [], False, False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
            continue
        if char == "\\" and quoted:
            escaped = True
            current.append(char)
            continue
        if char == '"':
            quoted = not quoted
        elif char == "<" and not quoted:
            angle = True
        elif char == ">" and not quoted:
            angle = False
        if char in ",;\n\r" and not quoted and not angle:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_address_list(text: str) -> list[Recipient]:
    """Parse "Name <addr>, addr; "Doe, John" <j@d>" into [[name, address], ...].

    Addresses are lowercased and stripped; an entry that is not an address keeps its text as
    the address, so check_sendable (and the page) can point at it instead of dropping it.
    """
    recipients: list[Recipient] = []
    for item in _split_list(text or ""):
        match = re.match(r"^(.*?)<([^<>]*)>\s*$", item, re.S)
        if match:
            name, address = match.group(1).strip(), match.group(2)
        else:
            name, address = "", item
        name = name.strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
        name = " ".join(name.replace("\r", " ").replace("\n", " ").split())
        address = address.strip().strip("<>").strip()
        if address.lower().startswith("mailto:"):
            address = address[7:]
        recipients.append([name[:255], address.lower()[:320]])
    return recipients


def format_address(name: str, address: str) -> str:
    """Return "Name <address>" (the name quoted when it needs it), or the bare address."""
    if not name:
        return address
    if re.search(r'[()<>\[\]:;@\\,."]', name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def format_address_list(recipients: Iterable[Recipient]) -> str:
    """Return recipients as one editable line, the inverse of parse_address_list."""
    return ", ".join(format_address(name, address) for name, address in recipients)


def invalid_addresses(recipients: Iterable[Recipient]) -> list[str]:
    """Return the addresses of recipients that are not valid email addresses."""
    return [address for _name, address in recipients if not is_valid_address(address)]


def _unique(recipients: Iterable[Recipient], exclude: set[str]) -> list[Recipient]:
    seen = set(exclude)
    kept: list[Recipient] = []
    for name, address in recipients:
        key = (address or "").lower()
        if not key or key in seen:
            continue
        seen.add(key)
        kept.append([name or "", key])
    return kept


def reply_recipients(
    *,
    kind: str,
    from_pair: Recipient,
    reply_to: list[Recipient],
    to: list[Recipient],
    cc: list[Recipient],
    own: set[str],
) -> tuple[list[Recipient], list[Recipient]]:
    """Return (to, cc) of a reply or reply-all; a forward starts with none.

    A reply goes to Reply-To when the original has one, else to From. Reply-all adds the
    original To and Cc (To into To, Cc into Cc), leaving out the user's own addresses and
    duplicates. Replying to one's own mail (a sent message) goes to its recipients instead.
    """
    own = {address.lower() for address in own}
    if kind == "forward":
        return [], []
    sender = reply_to or [from_pair]
    from_me = (from_pair[1] or "").lower() in own
    if from_me:
        sender = to or sender
    first = _unique(sender, own if not from_me else set())
    if kind != "reply_all":
        if not first and from_me:
            first = _unique(sender, set())
        return first, []
    taken = {address for _name, address in first} | own
    reply_to_all = _unique(to, taken)
    taken |= {address for _name, address in reply_to_all}
    return first + reply_to_all, _unique(cc, taken)


def angle_id(message_id: str | None) -> str | None:
    """Return a Message-ID in its header form, "<id@host>" (the store keeps it without <>)."""
    value = (message_id or "").strip()
    if not value or "\r" in value or "\n" in value:
        return None
    return value if value.startswith("<") else f"<{value}>"


def references_for(
    message_id: str | None, references: Iterable[str], in_reply_to: str | None
) -> list[str]:
    """Return the References of a reply (RFC 5322 3.6.4): the parent's References, or its
    In-Reply-To, followed by the parent's Message-ID; no duplicates, each in <angle> form."""
    chain = list(references or [])
    if not chain and in_reply_to:
        chain = [in_reply_to]
    if message_id:
        chain.append(message_id)
    result: list[str] = []
    for item in map(angle_id, chain):
        if item and item not in result:
            result.append(item)
    return result[-50:]  # long threads: keep the newest (RFC 5322 allows trimming the middle)


def _pairs_label(pairs: Iterable[Recipient]) -> str:
    return ", ".join(format_address(name, address) for name, address in pairs)


def quote_html(
    *,
    kind: str,
    body_html: str,
    from_pair: Recipient,
    date: datetime | None,
    subject: str,
    to: list[Recipient],
    cc: list[Recipient],
    date_label: str = "",
) -> str:
    """Return the quoted original for a reply or forward, around already sanitized HTML.

    `body_html` must be sanitized (services.mail_render) before it comes here: this function
    only escapes the header values it adds and wraps the body.
    """
    sender = html.escape(format_address(*from_pair))
    when = html.escape(date_label or (email.utils.format_datetime(date) if date else ""))
    if kind == "forward":
        rows = [("From", sender), ("Date", when), ("Subject", html.escape(subject or ""))]
        rows.append(("To", html.escape(_pairs_label(to))))
        if cc:
            rows.append(("Cc", html.escape(_pairs_label(cc))))
        header = "<div>---------- Forwarded message ----------</div>" + "".join(
            f"<div>{label}: {value}</div>" for label, value in rows if value
        )
        return f'<div><br></div><div class="tl-forward">{header}<div><br></div>{body_html}</div>'
    intro = f"On {when}, {sender} wrote:" if when else f"{sender} wrote:"
    return (
        f'<div><br></div><div><br></div><div class="tl-attribution">{intro}</div>'
        f'<blockquote type="cite">{body_html}</blockquote>'
    )


# <img src="..."> as our sanitizer serializes it (double-quoted attribute values).
_IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]*)(")', re.IGNORECASE)


def body_for_storage(body_html: str, urls_by_cid: Mapping[str, str]) -> str:
    """Rewrite the editor's image URLs of this draft's inline images to cid:<content_id>."""
    cid_by_url = {url: cid for cid, url in urls_by_cid.items()}

    def replace(match: re.Match) -> str:
        src = html.unescape(match.group(2))
        cid = cid_by_url.get(src)
        if cid is None:
            return match.group(0)
        return f"{match.group(1)}cid:{html.escape(cid)}{match.group(3)}"

    return _IMG_SRC.sub(replace, body_html or "")


def body_for_editor(body_html: str, urls_by_cid: Mapping[str, str]) -> str:
    """Rewrite cid:<content_id> images of this draft to their owner-only URLs for the editor."""

    def replace(match: re.Match) -> str:
        src = html.unescape(match.group(2))
        if not src.lower().startswith("cid:"):
            return match.group(0)
        url = urls_by_cid.get(src[4:])
        if url is None:
            return match.group(0)
        return f"{match.group(1)}{html.escape(url)}{match.group(3)}"

    return _IMG_SRC.sub(replace, body_html or "")


def parse_local_datetime(text: str, zone: ZoneInfo) -> datetime | None:
    """Return the UTC time of "2026-12-07T09:30" read in the user's zone; None when empty.

    Raises ValidationError for text that is not such a time.
    """
    text = (text or "").strip()
    if not text:
        return None
    try:
        local = datetime.fromisoformat(text[:32])
    except ValueError:
        raise ValidationError({"send_at": "Pick a date and a time."}) from None
    if local.tzinfo is None:
        local = local.replace(tzinfo=zone)
    return local.astimezone(UTC)
