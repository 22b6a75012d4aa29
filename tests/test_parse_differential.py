"""mailsync.parse against Python's email package (policy.default) over the shared corpus.

The reference decides the attachment names, the subject and the addresses; every mail where
we disagree is either fixed or listed in ALLOWED with the reason we are right (or accept it).
"""

from __future__ import annotations

import dataclasses
import email
import hashlib
import re
from collections import Counter
from email import policy
from email.message import EmailMessage

import pytest

from mailsync.parse import MAX_SUBJECT, ParsedMessage, extract_part, parse_message
from tests.corpus import corpus_files, read_message, skip_reason

CORPUS = corpus_files()
PACKED_PART = re.compile(r"\.(uu|tnef)[0-9]+$")

KEEPS_BYTES = (
    "ours reads the raw 8-bit bytes (as cp1252 or the body charset); the reference shows U+FFFD"
)
DECODES_NAME = "ours decodes an encoded-word or RFC 2231 name the reference leaves encoded or drops"
ADDRESS_AS_NAME = (
    "the display name is an unquoted address; ours keeps the <angle-addr>, as clients do"
)
OBSOLETE_SYNTAX = "RFC 5322 §4.5 obsolete syntax (space before the colon) that ours accepts"
REFERENCE_RAISES = "the reference raises on this header; ours parses it"
JUNK_RECIPIENT = "the reference keeps a junk token as an address; ours drops it"
BROKEN_FIRST_LINE = "a broken first header line: the reference reads all as body, ours skips it"

# (file name, field) -> why the disagreement is right or accepted; field is
# "attachments" (names), "files" (decoded bytes), "subject", "from", "to" or "cc".
ALLOWED: dict[tuple[str, str], str] = {
    ("flanker__tests__fixtures__messages__russian-attachment-yahoo.eml", "attachments"): (
        "the filename ends in half a UTF-8 character; ours keeps that byte (cp1252), not U+FFFD"
    ),
    **{
        (name, "attachments"): KEEPS_BYTES
        for name in (
            "mikelmail__spec__fixtures__emails__attachment_emails__attachment_with_encoded_name.eml",
            "zbateson__tests___data__emails__m2011.txt",
            "zbateson__tests___data__emails__m2012.txt",
            "zbateson__tests___data__emails__m2013.txt",
            "zbateson__tests___data__emails__m3007.txt",
        )
    },
    **{
        (name, "attachments"): DECODES_NAME
        for name in (
            "mikelmail__spec__fixtures__emails__attachment_emails__attachment_with_base64_encoded_name.eml",
            "mime4j__core__src__test__resources__mimetools-testmsgs__multi-2evil.msg",
            "mime4j__core__src__test__resources__mimetools-testmsgs__russian.msg",
            "mime4j__core__src__test__resources__testmsgs__russian-headers.msg",
        )
    },
    (
        "mikelmail__spec__fixtures__emails__attachment_emails__attachment_with_unquoted_name.eml",
        "attachments",
    ): ("name=This is a test.txt without quotes: ours keeps the whole name, as clients do"),
    (
        "mikelmail__spec__fixtures__emails__mime_emails__raw_email_with_binary_encoded.eml",
        "attachments",
    ): ("the reference loses the name of a Content-Transfer-Encoding: binary part"),
    ("stalwart__resources__eml__malformed__017.eml", "attachments"): (
        "Content-Disposition: ; with a folded filename: ours still reads the filename"
    ),
    ("mime4j__core__src__test__resources__testmsgs__obsolete.msg", "subject"): OBSOLETE_SYNTAX,
    **{
        (name, "subject"): KEEPS_BYTES
        for name in (
            "flanker__tests__fixtures__messages__mailformed-headers.eml",
            "flanker__tests__fixtures__messages__spam__broken-headers.eml",
            "mailparser__tests__mails__mail_test_9.eml",
            "mikelmail__spec__fixtures__emails__error_emails__invalid_subject_characters.eml",
            "zbateson__tests___data__emails__github-102-01.txt",
            "zbateson__tests___data__emails__github-102-02.txt",
            "zbateson__tests___data__emails__m0001.txt",
            "zbateson__tests___data__emails__m0002.txt",
            "zbateson__tests___data__emails__m0003.txt",
            "zbateson__tests___data__emails__m0009.txt",
            "zbateson__tests___data__emails__m0023.txt",
            "zbateson__tests___data__emails__m2015.txt",
            "zbateson__tests___data__emails__m4001.txt",
        )
    },
    ("mimekit__UnitTests__TestData__messages__issue358.txt", "from"): ADDRESS_AS_NAME,
    ("mailparser__tests__mails__mail_test_15.eml", "from"): ADDRESS_AS_NAME,
    ("mailparser__tests__mails__mail_test_19.eml", "from"): ADDRESS_AS_NAME,
    ("mailparser__tests__mails__mail_test_19.eml", "cc"): ADDRESS_AS_NAME,
    ("mikelmail__spec__fixtures__emails__plain_emails__raw_email_with_at_display_name.eml", "to"): (
        ADDRESS_AS_NAME
    ),
    ("mikelmail__spec__fixtures__emails__plain_emails__mix_caps_content_type.eml", "from"): (
        'a quoted local part: the reference keeps the quotes ("big bug bb"@bug.com), ours not'
    ),
    ("mikelmail__spec__fixtures__emails__plain_emails__raw_email_multiple_from.eml", "to"): (
        "two addresses without the comma between them: ours keeps both, the reference one"
    ),
    ("mikelmail__spec__fixtures__emails__rfc2822__example13.eml", "to"): (
        OBSOLETE_SYNTAX + "; the display name folded over a blank line leaves only a local part"
    ),
    ("stalwart__resources__eml__malformed__019.eml", "subject"): BROKEN_FIRST_LINE,
    ("stalwart__resources__eml__malformed__019.eml", "to"): BROKEN_FIRST_LINE,
    ("mime4j__core__src__test__resources__mimetools-testmsgs__twopart.msg", "files"): (
        'the encoding is "base64 " (a space after it): the reference leaves the JPEG encoded'
    ),
    ("flanker__tests__fixtures__messages__mailformed-headers.eml", "to"): KEEPS_BYTES,
    ("mimekit__UnitTests__TestData__messages__stack-overflow.txt", "to"): JUNK_RECIPIENT,
}


def reference_leaves(part: EmailMessage):
    """Yield the leaves as our parser sees them: an attached message is one leaf."""
    if part.is_multipart() and part.get_content_maintype() != "message":
        for child in part.iter_parts():
            yield from reference_leaves(child)
    else:
        yield part


def display(value: str | None) -> str:
    """Collapse whitespace and cut as stored, so only real differences count."""
    return " ".join((value or "").split())[:MAX_SUBJECT]


def reference_addresses(message: EmailMessage, name: str) -> list[str]:
    """Return the addr-specs of one address header, lowercased, UTF-8 bytes decoded."""
    header = message.get(name)
    if header is None:
        return []
    addresses = [address.addr_spec for address in header.addresses]
    # policy.default keeps raw 8-bit bytes as surrogates (RFC 6532 addresses)
    return [
        address.encode("utf-8", "surrogateescape").decode("utf-8", "replace").lower()
        for address in addresses
        if address not in ("", "<>")
    ]


def disagreements(raw: bytes, parsed: ParsedMessage) -> dict[str, tuple[object, object]]:
    """Return field -> (reference, ours) where the two parsers disagree."""
    message = email.message_from_bytes(raw, policy=policy.default)
    found: dict[str, tuple[object, object]] = {}
    theirs = sorted(
        display(leaf.get_filename())
        for leaf in reference_leaves(message)
        if leaf.get_content_maintype() != "message"
        and leaf.get_content_type() != "text/calendar"
        and leaf.get_filename()
    )
    # Attached messages and calendars are compared by neither: we name them after their
    # subject, and an unnamed calendar "invite.ics". Nor are
    # files packed in a part (uuencoded in a text, in a winmail.dat), which the reference
    # does not take out (test_parse).
    ours = sorted(
        display(a.filename)
        for a in parsed.attachments
        if a.filename
        and not a.content_type.startswith("message/")
        and a.content_type != "text/calendar"
        and not PACKED_PART.search(a.part_id)
    )
    if theirs != ours:
        found["attachments"] = (theirs, ours)
    # The files themselves, byte for byte: every file the reference decodes, a user downloads
    # from us too (ours may also name files the reference cannot: "attachments" above).
    their_files = Counter(
        hashlib.sha256(leaf.get_payload(decode=True) or b"").hexdigest()
        for leaf in reference_leaves(message)
        if leaf.get_content_maintype() != "message" and leaf.get_filename()
    )
    our_files = Counter(
        hashlib.sha256(extract_part(raw, a.part_id)[0]).hexdigest()
        for a in parsed.attachments
        if not a.content_type.startswith("message/")
    )
    if their_files - our_files:
        found["files"] = (their_files.total(), our_files.total())
    subject = display(str(message.get("subject") or ""))
    if subject != display(parsed.subject):
        found["subject"] = (subject, parsed.subject)
    senders = reference_addresses(message, "from")
    # We keep the first sender only (a message has one author in the Mail tab).
    if senders[:1] != ([parsed.from_address] if parsed.from_address else []):
        found["from"] = (senders[:1], parsed.from_address)
    for name, pairs in (("to", parsed.to), ("cc", parsed.cc)):
        ours_addresses = sorted(address for _name, address in pairs if address)
        if sorted(reference_addresses(message, name)) != ours_addresses:
            found[name] = (reference_addresses(message, name), ours_addresses)
    return found


def stored_strings(parsed: ParsedMessage):
    """Yield every string of a parse result (what the sync stores or shows)."""
    for field in dataclasses.fields(parsed):
        value = getattr(parsed, field.name)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str):
                yield item
            elif isinstance(item, tuple):
                yield from (part for part in item if isinstance(part, str))
            elif dataclasses.is_dataclass(item):
                yield from (v for v in dataclasses.astuple(item) if isinstance(v, str))


@pytest.mark.skipif(not CORPUS, reason=skip_reason())
def test_corpus_agrees_with_the_email_package():
    unexpected: dict[tuple[str, str], tuple[object, object]] = {}
    seen: set[tuple[str, str]] = set()
    for path in CORPUS:
        raw = read_message(path)
        parsed = parse_message(raw)  # never raises: an exception fails the test here
        assert not any("\x00" in text for text in stored_strings(parsed)), path.name
        try:
            found = disagreements(raw, parsed)
        except Exception as exc:  # the reference itself gives up on a few headers
            found = {"reference": (type(exc).__name__, REFERENCE_RAISES)}
        for field, values in found.items():
            key = (path.name, field)
            seen.add(key)
            if field != "reference" and key not in ALLOWED:
                unexpected[key] = values
    assert not unexpected, "\n".join(f"{key}: {values}" for key, values in unexpected.items())
    names = {path.name for path in CORPUS}
    stale = [key for key in ALLOWED if key not in seen and key[0] in names]
    assert not stale, f"allowlisted but no longer different (remove them): {stale}"
