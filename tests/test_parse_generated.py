"""mailsync.parse against Python's email package on generated MIME messages.

tests/test_parse_differential.py compares the two parsers over a fixed corpus; here a seeded
generator builds a few hundred messages with the standard library (email.mime, compat32, so
every header is written exactly as built) in the shapes mail clients send: attachments at
several depths, inline images, attached messages, non-ASCII file names, names and subjects,
legacy charsets and every transfer encoding. Each message is read by both parsers and
compared the way a user would look at it: the attachments listed (name, type, Content-ID,
shown size) and the bytes the download route serves, the text and HTML bodies, the subject and
the addresses. The reference is checked against what the generator put in, too, so a quirk
of either parser shows up. Broken variants of the same messages must never make the parse
raise. A failure names the seed and the case number; `generate(SEED, n)` rebuilds that case.

A smaller end-to-end test saves generated messages into a real Dovecot, syncs them and reads
them back through the conversation page and the attachment download route.
"""

from __future__ import annotations

import base64
import binascii
import email
import functools
import html
import random
import re
import urllib.parse
from dataclasses import dataclass, field
from email import policy
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import encode_rfc2231, formataddr

import pytest
from sqlalchemy import select

from extensions import db
from mailsync.parse import (
    MAX_SUBJECT,
    ParsedMessage,
    extract_part,
    normalize_content_id,
    parse_message,
)
from models import Message as StoredMessage
from services.mail_render import INLINE_SAFE_TYPES, safe_filename
from tests.sync_helpers import run_sync

SEED = 20261207
CASES = 200
BROKEN_CASES = 150
E2E_CASES = 20

# ---------------------------------------------------------------------------------------------
# What the generator puts in


@dataclass
class SentAttachment:
    """One attachment as built: the bytes for a leaf, the inner message for message/rfc822."""

    filename: str | None
    content_type: str
    data: bytes = b""
    content_id: str | None = None
    inner: Sent | None = None


@dataclass
class Sent:
    """A generated message: its bytes and what a user should find in it."""

    raw: bytes
    subject: str
    sender: tuple[str, str]
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    text: str | None  # the text/plain body, None when the message has only HTML
    html: str | None
    attachments: list[SentAttachment] = field(default_factory=list)  # in tree order
    text_charset: str = "utf-8"


# Words per charset: each charset only gets text it can encode.
ASCII_WORDS = "offer invoice meeting quarterly report agenda budget contract delivery".split()
LATIN1_WORDS = "Grüße Café naïve Müller façade Ångström señor größer Øresund".split()
CP1252_WORDS = [*LATIN1_WORDS, "€42", "“Zitat”", "–", "…", "Œuvre", "Šipka"]
RUSSIAN_WORDS = "Привет отчёт счёт договор встреча Ёлка щука".split()
GB2312_WORDS = "你好 报告 会议 合同 价格 北京".split()
GBK_WORDS = [*GB2312_WORDS, "朱镕基", "堃"]  # 镕 and 堃 are in GBK only, not GB2312
JAPANESE_WORDS = "こんにちは 会議 資料 ありがとう カタカナ 東京".split()
UTF8_WORDS = [
    *LATIN1_WORDS,
    *RUSSIAN_WORDS,
    *GB2312_WORDS,
    *JAPANESE_WORDS,
    "🙂",
    "مرحبا",
    "שלום",
    "Ελλάδα",
]

# charset label -> (Python codec, words)
CHARSETS = {
    "us-ascii": ("ascii", []),
    "utf-8": ("utf-8", UTF8_WORDS),
    "iso-8859-1": ("latin-1", LATIN1_WORDS),
    "windows-1252": ("cp1252", CP1252_WORDS),
    "koi8-r": ("koi8_r", RUSSIAN_WORDS),
    "gb2312": ("gb2312", GB2312_WORDS),
    "gbk": ("gbk", GBK_WORDS),
    "shift_jis": ("shift_jis", JAPANESE_WORDS),
    "iso-2022-jp": ("iso2022_jp", JAPANESE_WORDS),
}

# name -> charsets its encoded-words may use
FILE_NAMES = {
    "report.pdf": ["utf-8"],
    "invoice-4471.pdf": ["utf-8"],
    "notes for the meeting.docx": ["utf-8"],
    "Rechnung März.pdf": ["utf-8", "iso-8859-1"],
    "naïve café.xlsx": ["utf-8", "windows-1252"],
    "Отчёт за март.xlsx": ["utf-8", "koi8-r"],
    "合同 2026.pdf": ["utf-8", "gb2312"],
    "報告書.docx": ["utf-8", "shift_jis", "iso-2022-jp"],
    "Übersicht der Quartalszahlen für die Region Nordost, endgültige Fassung.pdf": ["utf-8"],
    "Договор поставки оборудования и программного обеспечения, редакция 3.pdf": ["utf-8"],
    "مرحبا.txt": ["utf-8"],
    "smile 🙂.bin": ["utf-8"],
    'the "final" version.pdf': ["utf-8"],
    "semi;colon, comma.txt": ["utf-8"],
}
BINARY_TYPES = ["application/pdf", "application/octet-stream", "application/zip"]
IMAGE_TYPES = {"image/png": "png", "image/gif": "gif", "image/jpeg": "jpg"}
PEOPLE = [
    ("Carla Díaz", "carla@customer.test"),
    ("Иван Петров", "ivan@customer.test"),
    ("山田 太郎", "yamada@customer.test"),
    ("Zoë O'Brien", "zoe@customer.test"),
    ("José, Ana", "ana@customer.test"),
    ("", "plain@customer.test"),
    ("Bob Smith", "bob@customer.test"),
    ("李 雷", "li@customer.test"),
]


class Generator:
    """Build one random message per call from a seeded random.Random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.boundaries = 0
        self.used_boundaries: list[str] = []

    # -- helpers -------------------------------------------------------------------------

    def boundary(self) -> str:
        """Return a fresh boundary, sometimes with the punctuation RFC 2046 allows."""
        self.boundaries += 1
        style = self.rng.choice(["plain", "equals", "punct"])
        token = f"{self.rng.getrandbits(48):012x}{self.boundaries}"
        if style == "equals":
            return f"===============_{token}=="
        if style == "punct":
            return f"----=_Part_{token}.'()+_,-./:=?"
        return f"b{token}"

    def words(self, charset: str, count: int) -> str:
        pool = ASCII_WORDS + CHARSETS[charset][1]
        return " ".join(self.rng.choice(pool) for _ in range(count))

    def text_lines(self, charset: str, *, flowed: bool) -> str:
        """Return a few lines of text; some are long (quoted-printable soft breaks)."""
        lines = []
        for _ in range(self.rng.randint(1, 6)):
            line = self.words(charset, self.rng.choice([1, 4, 12, 40]))
            if flowed and len(line) > 60:
                # RFC 3676: a line ending in a space continues the paragraph.
                cut = line.rfind(" ", 0, 60)
                line = line[: cut + 1] + "\n" + line[cut + 1 :]
            lines.append(line)
        return "\n".join(lines) + "\n"

    def encode_body(self, part: Message, data: bytes, *, text: bool) -> None:
        """Set a leaf's payload in a randomly chosen transfer encoding that fits the data."""
        choices = ["base64", "quoted-printable"]
        if text and b"\x00" not in data and max(map(len, data.split(b"\n"))) < 900:
            choices += ["8bit"] if not data.isascii() else ["7bit"]
        cte = self.rng.choice(choices)
        if cte == "base64":
            payload = base64.encodebytes(data).decode("ascii")
        elif cte == "quoted-printable":
            payload = binascii.b2a_qp(data, istext=text).decode("ascii")
        else:
            payload = data.decode("ascii", "surrogateescape")
        part.set_payload(payload)
        part["Content-Transfer-Encoding"] = self.rng.choice([cte, cte.upper(), cte.title()])

    def name_header(self, part: Message, disposition: str, name: str | None) -> None:
        """Write Content-Disposition (and Content-Type name=) with the name encoded one of the
        ways mail clients write it."""
        if name is None:
            part["Content-Disposition"] = disposition
            return
        ways = ["rfc2231", "rfc2231-continued", "encoded-word", "name-only", "split-word", "utf-8"]
        if name.isascii():
            ways.append("quoted")
        way = self.rng.choice(ways)
        if way == "quoted":
            quoted = name.replace("\\", "\\\\").replace('"', '\\"')  # RFC 5322 quoted-pair
            part["Content-Disposition"] = f'{disposition}; filename="{quoted}"'
        elif way == "rfc2231":
            charset = "iso-8859-1" if "iso-8859-1" in FILE_NAMES.get(name, []) else "utf-8"
            language = self.rng.choice(["", "de"])
            encoded = encode_rfc2231(name, charset, language)
            part["Content-Disposition"] = f"{disposition}; filename*={encoded}"
        elif way == "rfc2231-continued":
            encoded = urllib.parse.quote(name.encode("utf-8"), safe="")
            pieces = re.findall(r"(?:%[0-9A-F]{2}|[^%]){1,18}", encoded)
            params = [f"filename*{n}*={piece}" for n, piece in enumerate(pieces)]
            params[0] = params[0].replace("*=", "*=utf-8''", 1)
            part["Content-Disposition"] = ";\n ".join([disposition, *params])
        elif way == "utf-8":  # raw UTF-8 in the header (RFC 6532), as some webmails write it
            raw_name = name.encode("utf-8").decode("ascii", "surrogateescape")
            quoted = raw_name.replace("\\", "\\\\").replace('"', '\\"')
            part["Content-Disposition"] = f'{disposition}; filename="{quoted}"'
        elif way == "split-word":
            # Encoded-words cut in the middle of a UTF-8 character, as some mailers cut them.
            data = name.encode("utf-8")
            cuts = sorted(self.rng.sample(range(1, len(data)), min(2, len(data) - 1)))
            chunks = [
                data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)
            ]
            words = " ".join(f"=?utf-8?b?{base64.b64encode(c).decode()}?=" for c in chunks)
            part["Content-Disposition"] = f'{disposition}; filename="{words}"'
        else:
            charset = self.rng.choice(FILE_NAMES.get(name, ["utf-8"]))
            words = Header(name, charset).encode().replace("\n", "")
            if self.rng.random() < 0.3:  # Q encoding
                words = Header(name, charset).encode(splitchars=" ").replace("\n", "")
            part.set_param("name", words)  # Outlook writes the name in both headers
            if way == "encoded-word":
                part["Content-Disposition"] = f'{disposition}; filename="{words}"'
            else:
                part["Content-Disposition"] = disposition

    def address(self, person: tuple[str, str]) -> str:
        """Return a From/To item, its display name encoded in a charset that can hold it."""
        name, address = person
        if not name.isascii() and self.rng.random() < 0.2:
            # Encoded-words inside quotes: not allowed (RFC 2047 §5), written all the same.
            return f'"{Header(name, "utf-8").encode()}" <{address}>'
        fitting = [label for label, (codec, _) in CHARSETS.items() if can_encode(name, codec)]
        return formataddr(person, self.rng.choice(fitting[1:] or ["utf-8"]))

    def pad_delimiters(self, raw: bytes) -> bytes:
        """Add white space after the delimiter lines, as RFC 2046 §5.1.1 allows (transport
        padding some gateways add)."""
        for boundary in self.used_boundaries:
            line = re.compile(rb"(\n--" + re.escape(boundary.encode()) + rb"(?:--)?)(\r?\n)")
            raw = line.sub(rb"\1 \t\2", raw)
        return raw

    # -- leaves --------------------------------------------------------------------------

    def text_part(self, subtype: str, content: str, charset: str, *, flowed: bool = False):
        codec = CHARSETS[charset][0]
        part = MIMENonMultipart("text", subtype, charset=charset)
        if flowed:
            part.set_param("format", "flowed")
        data = content.encode(codec)
        if charset == "iso-2022-jp":  # a 7-bit charset: sent as is, as Japanese clients do
            part.set_payload(data.decode("ascii"))
            part["Content-Transfer-Encoding"] = "7bit"
        else:
            self.encode_body(part, data, text=True)
        return part

    def binary_attachment(self) -> tuple[Message, SentAttachment]:
        ctype = self.rng.choice(BINARY_TYPES)
        size = self.rng.choice([0, 1, 2, 3, 57, 300, 1023, 1024, 1025, 4000, 9000])
        data = self.rng.randbytes(size)
        name = None if self.rng.random() < 0.15 else self.rng.choice(list(FILE_NAMES))
        part = MIMENonMultipart(*ctype.split("/"))
        self.encode_body(part, data, text=False)
        # A part without a file name still says "attachment" (scanners, some phones); Apple
        # Mail sends named files "inline".
        disposition = "attachment" if name is None else self.rng.choice(["attachment", "inline"])
        self.name_header(part, disposition, name)
        return part, SentAttachment(name, ctype, data)

    def text_attachment(self) -> tuple[Message, SentAttachment]:
        """A text file: a named .txt, a .csv or an invitation, or an unnamed attachment."""
        kind = self.rng.choice(["txt", "csv", "ics", "html", "unnamed"])
        charset = self.rng.choice(["utf-8", "iso-8859-1", "koi8-r", "us-ascii"])
        if kind == "csv":
            rows = [f"{self.words(charset, 1)},{n},{self.words(charset, 2)}" for n in range(4)]
            ctype, name, content = "text/csv", "export.csv", "\n".join(rows) + "\n"
        elif kind == "html":  # a saved web page or an invoice: a file, not the body
            ctype, name = "text/html", self.rng.choice(["invoice.html", "Übersicht.htm"])
            content = f"<html><body><p>{self.words(charset, 5)}</p></body></html>\n"
        elif kind == "ics":
            ctype, name = "text/calendar", "invite.ics"
            content = (
                "BEGIN:VCALENDAR\nVERSION:2.0\nMETHOD:REQUEST\nBEGIN:VEVENT\n"
                f"SUMMARY:{self.words(charset, 3)}\nDTSTART:20261208T100000Z\n"
                "END:VEVENT\nEND:VCALENDAR\n"
            )
        else:
            ctype = "text/plain"
            name = None if kind == "unnamed" else self.rng.choice(["notes.txt", "Протокол.txt"])
            content = self.text_lines(charset, flowed=False)
        codec = CHARSETS[charset][0]
        part = MIMENonMultipart(*ctype.split("/"), charset=charset)
        if ctype == "text/calendar":
            part.set_param("method", "REQUEST")
        data = content.encode(codec)
        self.encode_body(part, data, text=True)
        self.name_header(part, "attachment", name)
        return part, SentAttachment(name, ctype, data)

    def image(self, content_id: str) -> tuple[Message, SentAttachment]:
        ctype = self.rng.choice(list(IMAGE_TYPES))
        data = self.rng.randbytes(self.rng.choice([60, 700, 3000]))
        name = None if self.rng.random() < 0.5 else f"image{content_id[:4]}.{IMAGE_TYPES[ctype]}"
        part = MIMENonMultipart(*ctype.split("/"))
        self.encode_body(part, data, text=False)
        part["Content-ID"] = f"<{content_id}>"
        self.name_header(part, "inline", name)
        return part, SentAttachment(name, ctype, data, content_id=content_id)

    # -- trees ---------------------------------------------------------------------------

    def multipart(
        self, subtype: str, children: list[Message], boundary: str | None = None
    ) -> MIMEMultipart:
        container = MIMEMultipart(subtype, boundary=boundary or self.boundary())
        self.used_boundaries.append(container.get_boundary())
        for child in children:
            container.attach(child)
        if self.rng.random() < 0.2:
            container.preamble = "This is a multi-part message in MIME format."
        if self.rng.random() < 0.2:
            container.epilogue = "-- \nan epilogue nobody reads"
        return container

    def message(self, depth: int = 0, *, crlf: bool | None = None) -> Sent:
        """Build one message; `depth` counts how deep inside attached messages it sits."""
        rng = self.rng
        charset = rng.choice(list(CHARSETS))
        flowed = rng.random() < 0.2
        text = self.text_lines(charset, flowed=flowed)
        text_boundary = self.boundary()  # of the multipart that holds the text, if any
        if rng.random() < 0.15:
            # A line that starts with the delimiter but is not one (RFC 2046 §5.1.1): text.
            text += f"--{text_boundary}x\n{self.words(charset, 3)}\n"
        html_charset = rng.choice(["utf-8", "windows-1252", "koi8-r", "shift_jis", "us-ascii"])
        shapes = ["text", "html", "alternative", "related", "outlook", "apple", "split", "lone"]
        shapes.append("rich split")
        shape = rng.choice(shapes)
        images: list[tuple[Message, SentAttachment]] = []
        if shape in ("related", "outlook", "apple"):
            images = [self.image(f"img{n}.{rng.getrandbits(32):08x}@gen") for n in range(3)]
            images = images[: rng.randint(1, 3)]
        html_text = self.words(html_charset, rng.randint(3, 30))
        markup = f"<html><body><p>{html.escape(html_text, quote=False)}</p>"
        markup += "".join(f'<img src="cid:{sent.content_id}">' for _part, sent in images)
        markup += "</body></html>\n"
        text_part = self.text_part("plain", text, charset, flowed=flowed)
        html_part = self.text_part("html", markup, html_charset)
        sent_text: str | None = text
        sent_html: str | None = markup
        attachments = [sent for _part, sent in images]
        if shape == "text":
            body, sent_html = text_part, None
        elif shape == "html":
            body, sent_text = html_part, None
        elif shape == "split":  # Apple Mail: the text goes on below a picture put into it
            more = self.text_lines(charset, flowed=False)
            picture, sent = self.image(f"split.{rng.getrandbits(32):08x}@gen")
            second = self.text_part("plain", more, charset)
            body = self.multipart("mixed", [text_part, picture, second], text_boundary)
            sent_text, sent_html = text + more, None
            attachments.append(sent)
        elif shape == "rich split":  # Apple Mail: rich text goes on below a file put into it
            more_text = self.words("us-ascii", rng.randint(3, 12))  # fits both charsets
            more = f"<html><body><p>{html.escape(more_text, quote=False)}</p></body></html>\n"
            file_part, sent = self.binary_attachment()
            halves = [html_part, file_part, self.text_part("html", more, html_charset)]
            text_part = self.text_part("plain", text + more_text + "\n", charset, flowed=flowed)
            mixed = self.multipart("mixed", halves)
            body = self.multipart("alternative", [text_part, mixed], text_boundary)
            sent_text, sent_html = text + more_text + "\n", markup + more
            attachments.append(sent)
        elif shape == "lone":  # a scanner's mail: the file is the whole message
            body, sent = self.binary_attachment()
            sent_text = sent_html = None
            attachments.append(sent)
        elif shape == "alternative":
            body = self.multipart("alternative", [text_part, html_part], text_boundary)
        elif shape == "related":  # Gmail: the images next to the HTML
            related = self.multipart("related", [html_part, *(part for part, _ in images)])
            body = self.multipart("alternative", [text_part, related], text_boundary)
        elif shape == "apple":  # Apple Mail: files, named and inline, next to the HTML too
            files = [self.binary_attachment() for _ in range(rng.randint(1, 2))]
            leaves = [part for part, _ in [*images, *files]]
            related = self.multipart("related", [html_part, *leaves])
            body = self.multipart("alternative", [text_part, related], text_boundary)
            attachments += [sent for _part, sent in files]
        else:  # Outlook: the images next to the whole alternative
            alternative = self.multipart("alternative", [text_part, html_part], text_boundary)
            body = self.multipart("related", [alternative, *(part for part, _ in images)])
        extra: list[tuple[Message, list[SentAttachment]]] = []
        for _ in range(rng.choice([0, 0, 1, 2, 3, 5])):
            kind = rng.choice(["binary", "binary", "text", "message", "nested", "digest"])
            if kind == "message" and depth < 2:
                inner = self.message(depth + 1, crlf=False)
                part = MIMEMessage(email.message_from_bytes(inner.raw))
                if rng.random() < 0.5:
                    part["Content-Disposition"] = "attachment"
                extra.append((part, [SentAttachment(None, "message/rfc822", inner=inner)]))
            elif kind == "digest" and depth < 2:
                # RFC 2046 §5.1.5: the parts of a digest are messages without saying so.
                inners = [self.message(depth + 1, crlf=False) for _ in range(rng.randint(1, 2))]
                parts = []
                for inner in inners:
                    part = MIMEMessage(email.message_from_bytes(inner.raw))
                    del part["Content-Type"], part["MIME-Version"]
                    part.set_default_type("message/rfc822")
                    parts.append(part)
                digest = self.multipart("digest", parts)
                sents = [SentAttachment(None, "message/rfc822", inner=inner) for inner in inners]
                extra.append((digest, sents))
            elif kind == "nested":
                # Attachments a few multiparts down, as forwarding clients nest them.
                leaves = [self.binary_attachment() for _ in range(rng.randint(1, 3))]
                node: Message = self.multipart("mixed", [part for part, _ in leaves])
                for _level in range(rng.randint(0, 3)):
                    node = self.multipart("mixed", [node])
                extra.append((node, [sent for _, sent in leaves]))
            elif kind == "text":
                part, sent = self.text_attachment()
                extra.append((part, [sent]))
            else:
                part, sent = self.binary_attachment()
                extra.append((part, [sent]))
        root: Message = body
        if extra:
            parts = [body, *(part for part, _ in extra)]
            root = self.multipart("mixed", parts, text_boundary if shape == "text" else None)
            for _part, sents in extra:
                attachments.extend(sents)
        header_charset = rng.choice(list(CHARSETS))
        subject = self.words(header_charset, rng.randint(1, 14))
        sender = rng.choice(PEOPLE)
        to = rng.sample(PEOPLE, rng.randint(1, 3))
        cc = rng.sample(PEOPLE, rng.randint(0, 2))
        root["Subject"] = (
            Header(subject, header_charset).encode() if not subject.isascii() else subject
        )
        root["From"] = self.address(sender)
        root["To"] = ", ".join(self.address(person) for person in to)
        if cc:
            root["Cc"] = ", ".join(self.address(person) for person in cc)
        if rng.random() < 0.1:  # RFC 5322 group syntax: the members are the recipients
            del root["To"]
            root["To"] = (
                "undisclosed-recipients:;"
                if len(to) == 1
                else ("Team: " + ", ".join(self.address(person) for person in to[1:]) + ";")
            )
            to = to[1:]
        root["Date"] = (
            f"Mon, 07 Dec 2026 {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00 +0000"
        )
        root["Message-ID"] = f"<gen.{rng.getrandbits(64):016x}@customer.test>"
        if crlf is None:
            crlf = rng.random() < 0.7
        raw = root.as_bytes(policy=policy.compat32.clone(linesep="\r\n" if crlf else "\n"))
        if rng.random() < 0.2:
            raw = self.pad_delimiters(raw)
        return Sent(raw, subject, sender, to, cc, sent_text, sent_html, attachments, charset)


def can_encode(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


@functools.cache  # three tests read the same cases
def generate(seed: int, case: int) -> Sent:
    """Return generated case `case` of `seed` (each case has its own stream of choices)."""
    return Generator(random.Random(f"{seed}:{case}")).message()


# ---------------------------------------------------------------------------------------------
# Reading both ways


def squash(text: str | None) -> str:
    """Collapse white space: line breaks and flowed-text folds are not what we compare."""
    return " ".join((text or "").split())


def display(value: str | None) -> str:
    """Collapse whitespace and cut as stored (see test_parse_differential.display)."""
    return squash(value)[:MAX_SUBJECT]


def reference_leaves(part: EmailMessage):
    """Yield the leaves as our parser sees them: an attached message is one leaf."""
    if part.is_multipart() and part.get_content_maintype() != "message":
        for child in part.iter_parts():
            yield from reference_leaves(child)
    else:
        yield part


def is_reference_body(leaf: EmailMessage) -> bool:
    """A text/plain or text/html part without a name that is not "attachment" is body."""
    return (
        leaf.get_content_type() in ("text/plain", "text/html")
        and not leaf.get_filename()
        and leaf.get_content_disposition() != "attachment"
    )


def unsplit(leaf: EmailMessage) -> bool:
    """Tell whether the reference kept a multipart as one leaf (no delimiter found)."""
    return leaf.get_content_maintype() == "multipart"


def reference_attachments(message: EmailMessage) -> list[EmailMessage]:
    """Return the leaves a user gets as files. A multipart without any delimiter line stays
    a leaf in the reference (StartBoundaryNotFoundDefect); we show its text instead, and
    there is no file to download."""
    return [
        leaf
        for leaf in reference_leaves(message)
        if not is_reference_body(leaf) and leaf.get_content_maintype() != "multipart"
    ]


def base64_with_junk(leaf: EmailMessage | None) -> bool:
    """Tell whether a part labelled base64 holds a line that is not base64 (a stray delimiter
    or header line put into it by the damage) where the two readings part ways.

    Not compared: the two decoders skip junk amid base64 differently and both give garbage,
    so neither has the file; a text part whose first line is junk is served as it is
    (parse._looks_unencoded takes it for mislabelled plain text). Compared: a text part with
    junk only after its base64, which both decode, junk into the same few garbage bytes.
    """
    if leaf is None or leaf.get("content-transfer-encoding", "").lower() != "base64":
        return False
    payload = leaf.get_payload()
    if not isinstance(payload, str):
        return False
    lines = [line.strip() for line in payload.splitlines() if line.strip()]
    junk = [re.search(r"[^A-Za-z0-9+/=]", line) is not None for line in lines]
    if leaf.get_content_maintype() != "text":
        return any(junk)
    return True in junk and False in junk[junk.index(True) :]  # base64 after the junk


def downloaded(raw: bytes, parsed: ParsedMessage) -> list[tuple[str | None, str, bytes]]:
    """Return (name, type, bytes) of every attachment as the download route serves it
    (services.conversations.attachment_part: the listed part, its bytes by part id)."""
    result = []
    for part in parsed.attachments:
        data, content_type, _name = extract_part(raw, part.part_id)
        result.append((part.filename, content_type, data))
    return result


def reference_body(message: EmailMessage, subtype: str) -> EmailMessage | None:
    try:
        body = message.get_body(preferencelist=(subtype,))
    except AttributeError:  # the reference raises on a multipart/related cut before its parts
        return None
    if body is None or body.get_content_type() != f"text/{subtype}":
        return None
    return body


def reference_text(message: EmailMessage, subtype: str) -> str | None:
    body = reference_body(message, subtype)
    return None if body is None else body.get_content()


def reference_shown(message: EmailMessage, subtype: str) -> str | None:
    """Return the text or HTML a user reads: get_body()'s part, or all of the inline parts of
    that type when there are several (Apple Mail goes on with the text below a picture or
    file put into it): mail clients show them all, get_body() only the first. (No generated
    message has two renderings of one type in a multipart/alternative.)"""
    parts = [
        leaf
        for leaf in reference_leaves(message)
        if leaf.get_content_type() == f"text/{subtype}" and is_reference_body(leaf)
    ]
    if len(parts) > 1:
        return "\n".join(part.get_content() for part in parts)
    return reference_text(message, subtype)


def addresses(message: EmailMessage, name: str) -> list[tuple[str, str]]:
    header = message.get(name)
    if header is None:
        return []
    return [(squash(a.display_name), a.addr_spec.lower()) for a in header.addresses]


# Where damaged mail is not compared, and why (intact mail is compared whole):
# A delimiter inside a part makes the rest of it a part without headers, which is text/plain
# (RFC 2046 §5.1.1): we show it below the text, as mail clients show every inline text part,
# while get_body() picks the first text part only; and a headerless part left at the start
# of a multipart/related hides the HTML from get_body(), which only looks there.
DELIMITER_INSIDE = "delimiter inside a part"
# A base64 part with lines of junk in it: see base64_with_junk().
# A character cut in two by the damage: the reference shows U+FFFD, ours keeps the byte as
# Windows-1252 (test_parse_differential.KEEPS_BYTES).
CUT_CHARACTER = "\ufffd"


def comparable_text(reference: EmailMessage, subtype: str, damage: str) -> bool:
    """Tell whether the text or HTML body of damaged mail can be compared (see above)."""
    body = reference_body(reference, subtype)
    if damage == DELIMITER_INSIDE or base64_with_junk(body):
        return False
    if any(unsplit(leaf) for leaf in reference_leaves(reference)):
        return False  # a multipart cut before its first part: we may show its preamble
    return body is None or CUT_CHARACTER not in body.get_content()


def compare(
    raw: bytes, reference: EmailMessage, where: str, damage: str | None = None
) -> list[str]:
    """Return the differences a user would notice between our reading of `raw` and the
    reference's reading `reference` of the same bytes; `damage` names how `raw` was broken."""
    problems: list[str] = []
    parsed = parse_message(raw)
    if parsed.parse_error and parsed.parse_error.startswith("parse failed"):
        problems.append(f"{where}: {parsed.parse_error}")
    theirs = reference_attachments(reference)
    ours = downloaded(raw, parsed)
    if damage and any(
        unsplit(leaf) and leaf.get_boundary() is None for leaf in reference_leaves(reference)
    ):
        # The damage cut the boundary parameter off a multipart's header: the reference keeps
        # it whole (NoBoundaryInMultipartDefect), we find its parts by their delimiter lines.
        return problems
    if len(theirs) != len(ours):
        names = [(leaf.get_content_type(), leaf.get_filename()) for leaf in theirs]
        ours_names = [(ctype, name) for name, ctype, _data in ours]
        return [*problems, f"{where}: attachments {names} (reference) != {ours_names} (ours)"]
    for n, (leaf, info, (name, ctype, data)) in enumerate(
        zip(theirs, parsed.attachments, ours, strict=True)
    ):
        at = f"{where} attachment {n} ({info.part_id})"
        if leaf.get_content_type() != ctype:
            problems.append(f"{at}: type {leaf.get_content_type()} != {ctype}")
        if ctype == "message/rfc822":
            # Shown as "<subject>.eml"; the user opens it: compare what is inside.
            problems += compare(data, leaf.get_payload(0), f"{at} (attached message)", damage)
            continue
        if display(leaf.get_filename()) != display(name):
            problems.append(f"{at}: name {leaf.get_filename()!r} != {name!r}")
        if normalize_content_id(leaf.get("content-id")) != info.content_id:
            problems.append(f"{at}: Content-ID {leaf.get('content-id')} != {info.content_id}")
        expected = leaf.get_payload(decode=True)
        if damage in ("no closing boundary", CUT):
            # Which line breaks at the end belong to the last part is a guess without the
            # closing delimiter: the reference drops one, we keep them.
            expected, data = expected.rstrip(b"\r\n"), data.rstrip(b"\r\n")
        if damage and base64_with_junk(leaf):
            continue  # see base64_with_junk()
        if expected != data:
            problems.append(f"{at}: {len(data)} bytes differ from the reference's {len(expected)}")
        # The size shown is estimated without decoding (parse.py): a few bytes off is fine,
        # and a part cut or corrupted in transit decodes to what the estimate cannot know.
        if damage is None and abs(info.size - len(expected)) > 4 + len(expected) // 100:
            problems.append(f"{at}: size {info.size} shown for {len(expected)} bytes")
    plain = reference_shown(reference, "plain")
    if damage is None or comparable_text(reference, "plain", damage):
        if plain is not None and squash(plain) != squash(parsed.text_body):
            problems.append(f"{where}: text {squash(plain)!r} != {squash(parsed.text_body)!r}")
    markup = reference_shown(reference, "html")
    if damage is not None and not comparable_text(reference, "html", damage):
        pass  # see DELIMITER_INSIDE, base64_with_junk(), CUT_CHARACTER
    elif squash(markup) != squash(parsed.html_body):
        problems.append(f"{where}: html {squash(markup)!r} != {squash(parsed.html_body)!r}")
    if damage == DELIMITER_INSIDE:
        return problems  # it may have cut a header of an attached message: both read junk
    if display(str(reference.get("subject") or "")) != display(parsed.subject):
        problems.append(f"{where}: subject {reference.get('subject')!r} != {parsed.subject!r}")
    senders = addresses(reference, "from")[:1]
    ours_sender = [(squash(parsed.from_name), parsed.from_address)] if parsed.from_address else []
    if senders != ours_sender:
        problems.append(f"{where}: from {senders} != {parsed.from_name, parsed.from_address}")
    for header, pairs in (("to", parsed.to), ("cc", parsed.cc)):
        if addresses(reference, header) != [(squash(name), addr) for name, addr in pairs]:
            problems.append(f"{where}: {header} {addresses(reference, header)} != {pairs}")
    return problems


def intended(sent: Sent, reference: EmailMessage, where: str) -> list[str]:
    """Return where the reference's reading differs from what the generator put in (a quirk
    of the generator or of the reference, which would make the comparison meaningless)."""
    problems = []
    theirs = reference_attachments(reference)
    if len(theirs) != len(sent.attachments):
        return [f"{where}: reference sees {len(theirs)} attachments of {len(sent.attachments)}"]
    for leaf, attachment in zip(theirs, sent.attachments, strict=True):
        if attachment.inner is not None:
            problems += intended(attachment.inner, leaf.get_payload(0), f"{where} (inner)")
            continue
        data = text_lines(leaf.get_payload(decode=True), attachment.content_type)
        if (leaf.get_filename(), data) != (attachment.filename, attachment.data):
            problems.append(f"{where}: reference reads {attachment.filename!r} differently")
    if squash(reference_shown(reference, "plain")) != squash(sent.text):
        problems.append(f"{where}: reference text differs from the text put in")
    if squash(reference_shown(reference, "html")) != squash(sent.html):
        problems.append(f"{where}: reference HTML differs from the HTML put in")
    return problems


def text_lines(data: bytes, content_type: str) -> bytes:
    """Return text with the line breaks the generator wrote (a text file travels with CRLF
    line ends in mail, RFC 2046 §4.1.1); other bytes unchanged."""
    return data.replace(b"\r\n", b"\n") if content_type.startswith("text/") else data


def report(failures: list[str]) -> str:
    return "\n".join(failure[:400] for failure in failures[:40])


def read(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)


# ---------------------------------------------------------------------------------------------
# The parser


def test_generated_messages_read_as_the_email_package_reads_them():
    failures = []
    for case in range(CASES):
        sent = generate(SEED, case)
        where = f"seed {SEED} case {case}"
        reference = read(sent.raw)
        failures += intended(sent, reference, where)
        failures += compare(sent.raw, reference, where)
    assert not failures, report(failures)


def test_generated_messages_keep_every_attachment_and_the_text_put_in():
    """Against the generator itself, for what both parsers might get wrong alike."""
    failures = []
    for case in range(CASES):
        sent = generate(SEED, case)
        failures += [f"seed {SEED} case {case}: {p}" for p in against_sent(sent.raw, sent)]
    assert not failures, report(failures)


def against_sent(raw: bytes, sent: Sent) -> list[str]:
    parsed = parse_message(raw)
    problems = []
    ours = downloaded(raw, parsed)
    if [a.content_type for a in sent.attachments] != [ctype for _n, ctype, _d in ours]:
        return [f"attachments {[a.content_type for a in sent.attachments]} != {ours}"]
    for attachment, (name, _ctype, data), info in zip(
        sent.attachments, ours, parsed.attachments, strict=True
    ):
        if attachment.inner is not None:
            if name != squash(attachment.inner.subject)[:200] + ".eml":  # named after it
                problems.append(f"attached message {info.part_id} named {name!r}")
            problems += [f"(attached message) {p}" for p in against_sent(data, attachment.inner)]
            continue
        if (name, text_lines(data, attachment.content_type)) != (
            attachment.filename,
            attachment.data,
        ):
            problems.append(f"attachment {info.part_id} {attachment.filename!r}: got {name!r}")
        if info.content_id != normalize_content_id(attachment.content_id):
            problems.append(f"attachment {info.part_id}: Content-ID {info.content_id}")
    if sent.text is not None and squash(parsed.text_body) != squash(sent.text):
        problems.append(f"text {squash(parsed.text_body)!r} != {squash(sent.text)!r}")
    if squash(parsed.html_body) != squash(sent.html):
        problems.append("html differs")
    if parsed.subject != squash(sent.subject)[:MAX_SUBJECT]:
        problems.append(f"subject {parsed.subject!r} != {sent.subject!r}")
    if (parsed.from_name, parsed.from_address) != sent.sender:
        problems.append(f"from {parsed.from_name, parsed.from_address} != {sent.sender}")
    if parsed.to != list(sent.to) or parsed.cc != list(sent.cc):
        problems.append(f"to/cc {parsed.to} {parsed.cc} != {sent.to} {sent.cc}")
    return problems


# ---------------------------------------------------------------------------------------------
# Broken variants


# A line left behind after the base64 of a text part: an inner multipart's closing delimiter
# whose part was cut away, or a footer a list server added.
STRAY_LINE = "stray line after base64 text"
BASE64_TEXT_HEADERS = re.compile(
    rb"^Content-Type: text/[^\n]*\n(?:[!-9;-~]+:[^\n]*\n|[ \t][^\n]*\n)*?"
    rb"Content-Transfer-Encoding: base64\r?\n(?:[!-9;-~]+:[^\n]*\n|[ \t][^\n]*\n)*\r?\n",
    re.MULTILINE | re.IGNORECASE,
)
CUT = "cut before a delimiter line"  # a download or a disk that stopped between two parts


def kept_before_cut(raw: bytes, intact: bytes) -> list[str]:
    """Return how the attachments of `raw`, cut before a delimiter line, differ from the first
    ones of the intact message: every file before the cut must be there whole."""
    ours = downloaded(raw, parse_message(raw))
    whole = downloaded(intact, parse_message(intact))
    if len(ours) > len(whole):
        return [f"{len(ours)} attachments, the intact message has {len(whole)}"]
    problems = []
    for n, ((name, ctype, data), (whole_name, whole_ctype, whole_data)) in enumerate(
        zip(ours, whole, strict=False)
    ):
        if n == len(ours) - 1:
            if ctype == "message/rfc822":
                continue  # the cut may fall inside an attached message: it is cut too
            data, whole_data = data.rstrip(), whole_data.rstrip()  # the CR before the cut
        if (name, ctype, data) != (whole_name, whole_ctype, whole_data):
            problems.append(f"attachment {n} {whole_name!r}: {name!r}, {len(data)} bytes")
    return problems


def break_message(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    """Return (kind, bytes): `raw` damaged the way real mail arrives damaged."""
    boundaries = re.findall(rb'boundary="([^"]+)"', raw)
    kinds = ["truncated", "unknown charset"]
    if boundaries:
        kinds += ["no closing boundary", DELIMITER_INSIDE, "no boundary parameter", CUT]
    if b"Content-Transfer-Encoding: base64" in raw:
        kinds.append("invalid base64")
    base64_texts = [match.end() for match in BASE64_TEXT_HEADERS.finditer(raw)]
    if base64_texts:
        kinds.append(STRAY_LINE)
    kind = rng.choice(kinds)
    if kind == "truncated":
        return kind, raw[: rng.randint(0, len(raw))]
    if kind == "unknown charset":
        return kind, re.sub(rb'charset="[^"]+"', b'charset="x-no-such-charset"', raw)
    if kind == STRAY_LINE:
        end = raw.find(b"\n--", rng.choice(base64_texts))
        end = len(raw) if end < 0 else end + 1
        stray = b"------=_Part_0_1234567.890--" + (b"\r\n" if b"\r\n" in raw else b"\n")
        return kind, raw[:end] + stray + raw[end:]
    if kind == "invalid base64":
        header = raw.find(b"Content-Transfer-Encoding: base64")
        blank = re.compile(rb"\r?\n\r?\n").search(raw, header)
        start = blank.end() if blank else len(raw)
        end = raw.find(b"\n--", start)
        at = rng.randint(start, end if end > start else start)  # inside the base64 text
        junk = rng.choice([b"!!", b"\xff\xfe", b"====", b"*", b"%"])  # never base64 letters
        return kind, raw[:at] + junk + raw[at:]
    boundary = rng.choice(boundaries)
    if kind == CUT:
        starts = [m.start() for m in re.finditer(rb"\n--" + re.escape(boundary), raw)]
        return kind, raw[: rng.choice(starts)]
    if kind == "no closing boundary":  # the message ends before a closing delimiter
        end = raw.find(b"--" + boundary + b"--")
        return kind, raw[:end] if end > 0 else raw
    if kind == "no boundary parameter":
        of_digest = re.search(rb"multipart/digest;\s+boundary=\"" + re.escape(boundary), raw)
        if of_digest:  # told apart: its parts start with a blank line, not a header
            kind = "no boundary parameter of a digest"
        return kind, raw.replace(b'boundary="' + boundary + b'"', b"", 1)
    # The delimiter line itself inside a part: it really cuts the part (RFC 2046 §5.1.1).
    lines = raw.split(b"\n")
    at = rng.randint(lines.index(next(line for line in lines if not line.strip())), len(lines) - 1)
    lines.insert(at, b"--" + boundary + b"\r")
    return kind, b"\n".join(lines)


def test_broken_variants_never_raise_and_every_listed_attachment_downloads():
    failures = []
    rng = random.Random(SEED)
    for case in range(BROKEN_CASES):
        sent = generate(SEED, case)
        kind, raw = break_message(rng, sent.raw)
        where = f"seed {SEED} broken case {case} ({kind})"
        parsed = parse_message(raw)  # parse_message catches its own bugs: look at the note
        if parsed.parse_error and parsed.parse_error.startswith("parse failed"):
            failures.append(f"{where}: {parsed.parse_error}")
            continue
        try:
            downloaded(raw, parsed)
        except KeyError as exc:
            failures.append(f"{where}: listed part {exc} cannot be downloaded")
        if kind in ("invalid base64", "no closing boundary", DELIMITER_INSIDE, CUT, STRAY_LINE):
            # The structure is still readable: the reference reads it as a client would.
            failures += compare(raw, read(raw), where, kind)
        if kind == CUT:
            failures += [f"{where}: {problem}" for problem in kept_before_cut(raw, sent.raw)]
        if kind == "no boundary parameter":
            # The parts are found again by a delimiter line followed by a header line
            # (parse._Walker._split); the reference reads it all as text, so compare with
            # what was put in. Not for a digest, whose parts start with a blank line.
            failures += [f"{where}: {problem}" for problem in against_sent(raw, sent)]
        if kind == "unknown charset" and sent.text is not None:
            # Read as UTF-8, else Windows-1252 (SYNC.md §9): UTF-8 text stays whole, the
            # ASCII words of any other stay readable.
            shown = squash(parsed.text_body)
            if sent.text_charset in ("utf-8", "us-ascii") and shown != squash(sent.text):
                failures.append(f"{where}: {sent.text_charset} text {shown!r} garbled")
            lost = [word for word in ASCII_WORDS if word in sent.text and word not in shown]
            if lost:
                failures.append(f"{where}: ASCII words {lost} lost from the text")
    assert not failures, report(failures)


# ---------------------------------------------------------------------------------------------
# End to end: Dovecot, sync, the conversation page and the download route

ATTACHMENT_LINK = re.compile(r'href="/mail/messages/(\d+)/attachments/([0-9.]+)"')


def shown_inline(sent: Sent, attachment: SentAttachment) -> bool:
    """Tell whether the page shows a part inside the HTML instead of listing it (an image its
    HTML refers to by cid:, services.conversations._shown_inline)."""
    return bool(
        attachment.content_id
        and sent.html
        and f"cid:{attachment.content_id}" in sent.html
        and attachment.content_type in INLINE_SAFE_TYPES
    )


def downloaded_name(response) -> str:
    """Return the file name a browser saves a download under (RFC 6266 filename*)."""
    disposition = response.headers["Content-Disposition"]
    return urllib.parse.unquote(disposition.split("filename*=UTF-8''", 1)[1])


@pytest.mark.imap
def test_generated_messages_synced_from_dovecot_show_their_text_and_download_whole(
    app, dovecot, mail_user, make_user, make_account, login
):
    account = make_account(make_user(), mail_user)
    cases = {case: generate(SEED, case) for case in range(E2E_CASES)}
    for sent in cases.values():
        dovecot.deliver(mail_user.email, sent.raw)
    assert run_sync(app, account).ok
    client = login(account.user)
    failures = []
    for case, sent in cases.items():
        where = f"seed {SEED} case {case}"
        message_id = parse_message(sent.raw).message_id
        stored = db.session.scalar(
            select(StoredMessage).where(
                StoredMessage.account_id == account.id,
                StoredMessage.message_id_header == message_id,
            )
        )
        if stored is None:
            failures.append(f"{where}: not synced")
            continue
        response = client.get(f"/mail/threads/{stored.thread_id}")
        assert response.status_code == 200, where
        page = response.get_data(as_text=True)
        # The body sits in the iframe's srcdoc attribute: escaped once for the attribute.
        shown = html.unescape(html.unescape(page))
        # The page shows the HTML when there is one, else the text: each paragraph or line
        # of it whole (a format=flowed line is joined to the next one, so still found).
        missing = [piece for piece in shown_pieces(sent) if piece not in shown]
        if missing:
            failures.append(f"{where}: {missing[:2]} of the text not shown")
        links = [
            part for message, part in ATTACHMENT_LINK.findall(page) if int(message) == stored.id
        ]
        listed = [a for a in sent.attachments if not shown_inline(sent, a)]
        if len(links) != len(listed):
            failures.append(f"{where}: {len(links)} attachments listed of {len(listed)}")
            continue
        for attachment in sent.attachments:
            if shown_inline(sent, attachment):
                encoded = base64.b64encode(attachment.data).decode("ascii")
                if f"data:{attachment.content_type};base64,{encoded}" not in page:
                    failures.append(f"{where}: inline image {attachment.content_id} not shown")
        for part_id, attachment in zip(links, listed, strict=True):
            download = client.get(f"/mail/messages/{stored.id}/attachments/{part_id}")
            at = f"{where} attachment {part_id}"
            if download.status_code != 200:
                failures.append(f"{at}: status {download.status_code}")
                continue
            if attachment.inner is not None:  # saved as "<subject>.eml"; open it
                expected_name = squash(attachment.inner.subject)[:200] + ".eml"
                problems = against_sent(download.data, attachment.inner)
                failures += [f"{at} (attached message): {problem}" for problem in problems]
            else:
                expected_name = attachment.filename
                data = text_lines(download.data, attachment.content_type)
                if data != attachment.data:
                    failures.append(f"{at}: {len(download.data)} bytes differ from those sent")
            if downloaded_name(download) != safe_filename(expected_name):
                failures.append(f"{at}: saved as {downloaded_name(download)!r}")
            if expected_name and expected_name not in html.unescape(page):
                failures.append(f"{at}: {expected_name!r} not listed on the page")
    assert not failures, report(failures)


def shown_pieces(sent: Sent) -> list[str]:
    """Return the paragraphs of the generated HTML, else the lines of the text."""
    if sent.html is not None:
        return [html.unescape(text) for text in re.findall(r"<p>(.*?)</p>", sent.html)]
    return [squash(line) for line in (sent.text or "").splitlines() if line.strip()]
