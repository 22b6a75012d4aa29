"""Parse raw RFC 822 / MIME bytes into a plain dataclass (pure; never raises on bad input).

A small byte-level MIME walker is used instead of ``email.parser`` for speed (see
bench/parse_bench.py): headers are split with one regex, multipart bodies are cut at boundary
lines with ``re`` searches, and attachment payloads are never decoded during parse. Limits
(SECURITY.md R16) and total charset decoding (R17, SYNC.md §9) are enforced here.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import html
import itertools
import mimetypes
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache

import tnefparse
from asn1crypto import cms
from striprtf.striprtf import rtf_to_text

from mailsync.enriched import ENRICHED_TYPES, enriched_to_text
from mailsync.invitation import invitation_text
from mailsync.rtf import encapsulated_html, is_encapsulated_html
from mailsync.threading import MAX_CHAIN, normalize_msgid, parse_id_list

MAX_PARTS = 500
MAX_DEPTH = 30
MAX_HEADER_BYTES = 1_000_000  # a bigger header block is noted in parse_error
MAX_HEADER_VALUE_BYTES = 65_536  # per header we use; longer values are cut (noted)
MAX_ADDRESSES = 500  # per address field; longer lists are truncated and noted (SYNC.md §9)
MAX_ADDRESS_HEADER_CHARS = 64_000
MAX_RAW_SUBJECT = 16_384  # decoded subjects are cut to 255 anyway
MAX_SUBJECT = 255
MAX_TEXT_CHARS = 1_000_000
MAX_HTML_FOR_TEXT = 2_000_000
MAX_RTF_CHARS = 1_000_000  # of a winmail.dat's rich text read for its text (~0.3 s at most)
SNIPPET_CHARS = 200
PARSE_TIME_BUDGET = 1.5  # seconds; stop walking parts beyond this (R16 "time per message")
MAX_ATTACHED_SHOWN = 5  # attached messages whose text is shown below the mail's own

Address = tuple[str, str]

# ---------------------------------------------------------------------------------------------
# Result types


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """Metadata of one non-body MIME leaf; fetch its bytes later with extract_part()."""

    # IMAP-style section path ("1", "2.1", ...); "<p>.0..." are the parts of the mail inside
    # an opaque S/MIME signature at part <p>, "<p>.uu<n>"/"<p>.tnef<n>" files packed in <p>.
    part_id: str
    filename: str | None
    content_type: str
    size: int  # decoded size, estimated from the encoded length for base64
    content_id: str | None  # normalized: no <>, no "cid:", lowercased
    is_inline: bool


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """Fields of one message that the sync engine stores; no email objects are kept."""

    message_id: str | None = None
    alias_message_ids: list[str] = field(default_factory=list)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    subject: str = ""
    from_name: str = ""
    from_address: str = ""
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    # How many addresses To and Cc name: more than len(to)/len(cc) when a list was cut at
    # MAX_ADDRESSES, so a 5,000-recipient mail can say "and 4,992 more".
    to_total: int = 0
    cc_total: int = 0
    date: datetime | None = None
    text_body: str = ""
    html_body: str | None = None
    snippet: str = ""
    attachments: list[AttachmentInfo] = field(default_factory=list)
    has_attachments: bool = False
    is_rtl_hint: bool = False
    size: int = 0
    parse_error: str | None = None
    headers_only: bool = False
    # The plain text went on past MAX_TEXT_CHARS: text_body holds its start only.
    text_cut: bool = False
    # An encrypted part (S/MIME enveloped-data, PGP/MIME) that only the recipient's key opens.
    encrypted: bool = False
    # text_body is format=flowed (RFC 3676; delsp: its soft breaks hold an added space):
    # shown with its soft line breaks joined. Search and snippets need no joining.
    flowed: bool = False
    delsp: bool = False
    # The text of each attached message (forwarded as attachment) with its From, Date,
    # Subject and To: shown below the mail's own text and searched with it.
    attached_texts: list[str] = field(default_factory=list)
    # The summary of a calendar invitation the mail carries (mailsync/invitation.py).
    invitation: str = ""

    @property
    def texts_below(self) -> list[str]:
        """What is shown below the mail's own text, and searched with it."""
        return [self.invitation, *self.attached_texts] if self.invitation else self.attached_texts


# ---------------------------------------------------------------------------------------------
# Charsets (SYNC.md §9, SECURITY.md R17)

_CHARSET_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cn-gb": "gb18030",
    "euc-cn": "gb18030",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ksc5601": "cp949",
    "euc-kr": "cp949",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-8-e": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "iso-8859-6-e": "iso-8859-6",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "iso-8859-11": "cp874",
    "unicodebig": "utf-16-be",
    "unicodelittle": "utf-16-le",
    "cp-850": "cp850",
    "utf8": "utf-8",
    "x-sjis": "shift_jis",
    "shift-jis": "shift_jis",
    "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman",
    "big5": "big5hkscs",
    "x-euc-tw": "big5",
    # WHATWG: latin-1 and ascii labels mean windows-1252 in real mail
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "",
    "ascii": "",
    "ansi_x3.4-1968": "",
}
_UNKNOWN_CHARSETS = {"", "unknown-8bit", "x-unknown", "unknown", "x-user-defined", "default"}
_UNSAFE_CODECS = {"undefined", "unicode_escape", "raw_unicode_escape", "idna", "punycode"}
_CHARSET_JUNK = re.compile(r"[^a-z0-9._:\-]")


@lru_cache(maxsize=256)
def _codec_for(charset: str | None) -> str | None:
    """Return a Python text codec name for a MIME charset label, or None if unknown/unsafe."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower()
    label = label.rpartition("=")[2].strip("\"' ")  # "charset=us-ascii" repeated by mistake
    label = _CHARSET_JUNK.split(label, 1)[0].strip("_-.")  # "_iso-2022-jp$esc" -> iso-2022-jp
    label = _CHARSET_ALIASES.get(label, label)
    if label in _UNKNOWN_CHARSETS:
        return None
    try:
        info = codecs.lookup(label)
    except LookupError:
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _UNSAFE_CODECS:
        return None
    return info.name


def _decode_unknown(data: bytes) -> str:
    """Decode bytes of unknown charset: UTF-8, with each byte UTF-8 cannot read as cp1252.

    Per byte, so one stray Latin-1 byte (or a UTF-8 character cut in half at the end of a
    long filename) does not turn the whole UTF-8 text into mojibake.
    """
    if data.isascii():
        return data.decode("ascii")
    return data.decode("utf-8", "threadline-cp1252")


def _bytes_as_cp1252(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: read the bytes a charset cannot decode as Windows-1252.

    Keeps every byte (Latin-1 text labelled UTF-8 is the common case); the five bytes
    Windows-1252 leaves undefined become the Latin-1 control of the same value.
    """
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start : error.end]
    return "".join(_CP1252_CHARS[byte] for byte in bad), error.end


# Windows-1252 for every byte value; the five it leaves undefined as Latin-1 (WHATWG does so).
_CP1252_CHARS = [bytes([byte]).decode("cp1252", "ignore") or chr(byte) for byte in range(256)]
codecs.register_error("threadline-cp1252", _bytes_as_cp1252)

# Mail clients read ISO-2022-JP as Microsoft's CP50221: JIS X 0208 plus the NEC and IBM
# rows of CP932 ("№", "①", "㈱"), which no Python iso2022 codec has.
_ISO_2022_JP_CODECS = {"iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_ext"}
_ISO_2022_JP_ESCAPE = re.compile(rb"\x1b(\$[@B]|\([BJI])")


def _decode_iso2022_jp_as_cp932(data: bytes) -> str:
    """Decode ISO-2022-JP with CP932's character set; raises UnicodeDecodeError on others."""
    out: list[str] = []
    mode = b"(B"
    pos = 0
    for match in [*_ISO_2022_JP_ESCAPE.finditer(data), None]:
        segment = data[pos : match.start() if match else len(data)]
        if b"\x1b" in segment:  # an escape this decoder does not know (JIS X 0212, GB2312...)
            raise UnicodeDecodeError("iso2022_jp", data, pos, pos + 1, "unsupported escape")
        if mode in (b"$@", b"$B"):
            sjis = bytearray()
            for first, second in zip(segment[::2], segment[1::2], strict=False):
                # JIS row/cell to Shift_JIS (JIS X 0208 Annex 1).
                lead = ((first - 0x21) >> 1) + 0x81
                sjis.append(lead + 0x40 if lead > 0x9F else lead)
                if first & 1:
                    sjis.append(second + (0x20 if second >= 0x60 else 0x1F))
                else:
                    sjis.append(second + 0x7E)
            out.append(bytes(sjis).decode("cp932"))
        elif mode == b"(I":  # half-width katakana
            out.append(bytes(byte | 0x80 for byte in segment).decode("cp932"))
        else:
            out.append(segment.decode("ascii"))
        if match:
            mode, pos = match.group(1), match.end()
    return "".join(out)


def _decode_strict(data: bytes, codec: str) -> str:
    """Decode in one charset or raise UnicodeDecodeError (ISO-2022-JP read as mail clients do)."""
    if codec in _ISO_2022_JP_CODECS:
        try:
            return data.decode("iso2022_jp_2")
        except UnicodeDecodeError:
            return _decode_iso2022_jp_as_cp932(data)
    return data.decode(codec)


def decode_text(data: bytes, charset: str | None) -> str:
    """Decode bytes in a declared MIME charset; never raises and never drops a byte.

    The declared charset first; then UTF-8 (mail mislabelled by its sender); then the declared
    charset again, with each byte it cannot read taken as Windows-1252, so one bad byte spoils
    only itself.
    """
    codec = _codec_for(charset)
    if codec is None or data.isascii() and codec in ("utf-8", "cp1252"):
        return _decode_unknown(data)
    try:
        try:
            return _decode_strict(data, codec)
        except UnicodeDecodeError:
            pass
        if codec != "utf-8":
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        if codec in _ISO_2022_JP_CODECS:
            codec = "iso2022_jp_2"
        return data.decode(codec, "threadline-cp1252")
    except Exception:  # broken codec implementations must not escape (R17)
        return _decode_unknown(data)


# ---------------------------------------------------------------------------------------------
# Headers

_HEADER_LINE = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_HEADER_START = re.compile(rb"(?:[ \t][^\n]*\n)*[!-9;-~]+[ \t]*:")  # orphan folds first
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_CTRL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_WS = re.compile(r"\s+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_NON_HEADER_LINE = re.compile(rb"\n(?![ \t]|From |[!-9;-~]+[ \t]*:)")  # stray "From " is skipped
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?]*)\?=")

Headers = dict[str, list[bytes]]


def _split_entity(data: bytes, errors: list[str]) -> tuple[bytes, bytes]:
    """Split an entity into (header block, body); text without a header line is all body."""
    if data.startswith((b"\r\n", b"\n")):
        return b"", data[2 if data.startswith(b"\r\n") else 1 :]
    if not _HEADER_START.match(data):
        return b"", data
    match = _HEADER_END.search(data)
    end = match.start() if match else len(data)
    if end > MAX_HEADER_BYTES:
        # Still split at the real end of the block so the body survives; the headers we use
        # are each cut to MAX_HEADER_VALUE_BYTES in _parse_header_block.
        errors.append(f"header block larger than {MAX_HEADER_BYTES} bytes")
    # Like email.feedparser: a line that is neither a header nor a fold starts the body.
    stray = _NON_HEADER_LINE.search(data, 0, end)
    if stray is not None:
        return data[: stray.start()], data[stray.start() + 1 :]
    return (data[:end], data[match.end() :]) if match else (data, b"")


_USED_HEADERS = {
    name.encode(): name
    for name in (
        "message-id",
        "x-microsoft-original-message-id",
        "x-ms-exchange-parent-message-id",
        "in-reply-to",
        "references",
        "subject",
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "date",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
        "original-message-id",  # in a read receipt's report (RFC 8098)
        "content-location",  # how some mailers' HTML names its images (RFC 2557)
    )
}


# A pseudo-header key (never a real header name: it has a space) holding the number of
# addresses of a To/Cc value that was cut at MAX_HEADER_VALUE_BYTES, counted before the cut.
_CUT_ADDRESSES = "cut addresses "


def _parse_header_block(block: bytes, errors: list[str]) -> Headers:
    """Return lowercased header name -> raw (still folded) values, in order, for headers we use.

    Values longer than MAX_HEADER_VALUE_BYTES are cut: a 1 MB Subject costs only itself.
    """
    headers: Headers = {}
    for match in _HEADER_LINE.finditer(block):
        name = _USED_HEADERS.get(match.group(1).lower())
        if name is None:  # Received, DKIM-Signature, ...: skipped without decoding
            continue
        value = match.group(2)
        if len(value) > MAX_HEADER_VALUE_BYTES:
            errors.append(f"{name} header longer than {MAX_HEADER_VALUE_BYTES} bytes, cut")
            if name in ("to", "cc") and name not in headers:
                # Remember how many addresses the whole value held, for "and N more".
                total = _count_addresses(value.decode("latin-1"))
                headers[_CUT_ADDRESSES + name] = [str(total).encode()]
            value = value[:MAX_HEADER_VALUE_BYTES]
        headers.setdefault(name, []).append(value)
    return headers


def _header_str(value: bytes, charset_hint: str | None = None) -> str:
    """Unfold a raw header value and decode raw 8-bit bytes in it (see _decode_raw_header)."""
    text = _decode_raw_header(value, charset_hint)
    if "\n" in text:
        text = _FOLD.sub("", text)
    return text.strip().replace("\x00", "")


def _decode_raw_header(value: bytes, charset_hint: str | None) -> str:
    """Decode raw 8-bit header bytes: UTF-8 (RFC 6532), else the charset the body declares,
    else Windows-1252.

    Raw headers carry no charset; senders that write them (Big5, GB2312 webmail) write the
    body in the same charset, and mail clients read the headers with it.
    """
    if value.isascii():
        return value.decode("ascii")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        pass
    codec = _codec_for(charset_hint)
    if codec is not None:
        try:
            return _decode_strict(value, codec)
        except Exception:  # not in that charset after all, or a broken codec (R17)
            pass
    return _decode_unknown(value)


def _first(headers: Headers, name: str, charset_hint: str | None = None) -> str | None:
    """Return the first value of a header as unfolded text, or None."""
    values = headers.get(name)
    return _header_str(values[0], charset_hint) if values else None


# One run of base64 up to and including its padding: some encoders pad every chunk they
# write, and the standard library stops at the first padding, dropping the rest of the file.
_PADDED_CHUNK = re.compile(rb"[^=]*=+|[^=]+")


def _b64decode(data: bytes) -> bytes:
    """Decode lenient base64: junk characters ignored, bad padding repaired, and base64 that
    goes on after padding (chunks encoded one by one) decoded to its end."""
    padding = data.find(b"=")
    rest = data[padding:] if padding != -1 else b""
    # Only more base64 after the padding; anything else there (a stray delimiter, a footer)
    # is not part of the file.
    if rest.strip(b"= \t\r\n") and not _NOT_BASE64.search(rest):
        return b"".join(_b64decode_chunk(chunk) for chunk in _PADDED_CHUNK.findall(data))
    return _b64decode_chunk(data)


def _b64decode_chunk(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        extra = len(clean) % 4
        if extra == 1:
            clean = clean[:-1]
        elif extra:
            clean += b"=" * (4 - extra)
        try:
            return binascii.a2b_base64(clean)
        except (binascii.Error, ValueError):
            return b""


def decode_rfc2047(value: str) -> str:
    """Decode RFC 2047 encoded-words in a header value; never raises."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        if gap and (gap.strip() or pending_charset is None):
            if pending_charset is not None:
                out.append(decode_text(bytes(pending), pending_charset))
                pending.clear()
                pending_charset = None
            out.append(gap)
        charset = match.group(1).split("*", 1)[0]
        text = match.group(3)
        if text.isascii():
            payload = text.encode("ascii")
        else:  # raw 8-bit inside an encoded-word: assume it is in the word's charset
            payload = text.encode(_codec_for(charset) or "utf-8", "replace")
        if match.group(2) in "bB":
            chunk = _b64decode(payload)
        else:
            chunk = binascii.a2b_qp(payload, header=True)
        if pending_charset is not None and charset.lower() != pending_charset.lower():
            out.append(decode_text(bytes(pending), pending_charset))
            pending.clear()
        pending_charset = charset
        pending += chunk  # join words first: multibyte characters may be split across words
        pos = match.end()
    if pending_charset is not None:
        out.append(decode_text(bytes(pending), pending_charset))
    out.append(value[pos:])
    return "".join(out)


def _clean_display(text: str) -> str:
    """Remove NULs/control characters and collapse whitespace in a decoded header."""
    if text.isprintable() and "  " not in text:
        return text.strip()
    return _WS.sub(" ", _CTRL.sub(" ", text)).strip()


_SIMPLE_ADDR = re.compile(
    r'^\s*(?:"?([^"<>,;:\\]*?)"?\s*)?<\s*([^<>\s,;:"\\]+@[^<>\s,;:"\\]+)\s*>\s*$'
)
_FAST_ITEM_CHARS = 512
# Matches start only where a token starts (after a separator or at the beginning): the same
# matches as without the lookbehind, but a long run without "@" is scanned once instead of
# once per starting position (a 200,000-character header cost 87 s of CPU).
_ADDR_TOKEN = re.compile(r"(?<![^\s<>,;:\"\\()])[^\s<>,;:\"\\()]+@[^\s<>,;:\"\\()]+")
_BARE_ADDR = re.compile(r"^\s*<?([^<>\s,;:\"\\()]+@[^<>\s,;:\"\\()]+?)>?\s*$")


def _simple_address_list(value: str) -> list[Address] | None:
    """Parse a comma-separated list of plain addresses, or None if any item is not plain."""
    result: list[Address] = []
    for item in value.split(","):
        if not item.strip():
            continue
        if len(item) > _FAST_ITEM_CHARS:  # bound the regexes' backtracking
            return None
        match = _SIMPLE_ADDR.match(item) or _BARE_ADDR.match(item)
        if match is None or not _ADDR_SPEC.match(match.group(match.lastindex or 1)):
            return None
        if match.re is _BARE_ADDR:
            result.append(("", match.group(1).lower()))
        else:
            name = _clean_display(decode_rfc2047(match.group(1) or ""))
            result.append((name, match.group(2).lower()))
    return result


def _is_mangled(address: str) -> bool:
    """Tell whether getaddresses() mangled an address ("@host", "a@b@c", "user@", "bo berg
    bo@x.test", "'bo@x.test'"): an "@" in anything but one plain addr-spec."""
    return "@" in address and _ADDR_SPEC.match(address) is None


_ADDR_SPEC = re.compile(r"^[^\s@\"'<>\[\]();:,\\]+@[^\s@\"'<>\[\]();:,\\]+$")


def _address_tokens(value: str) -> list[str]:
    """The addresses written in a header value, as plain addr-specs ([bo@x.test], 'bo@x.test'
    and mailto:bo@x.test as bo@x.test), lowercased, in order, once each."""
    found = []
    for token in _ADDR_TOKEN.findall(value):
        token = token.strip("[]'").lower().removeprefix("mailto:")
        if _ADDR_SPEC.match(token):
            found.append(token)
    return list(dict.fromkeys(found))


def _parse_addresses(value: str | None, label: str, errors: list[str]) -> list[Address]:
    """Parse an address header into (name, lowercased address) pairs, capped at MAX_ADDRESSES."""
    if not value:
        return []
    if "=?" in value:
        value = _quote_encoded_words(value)
    if len(value) <= _FAST_ITEM_CHARS:
        match = _SIMPLE_ADDR.match(value)
        if match and _ADDR_SPEC.match(match.group(2)):
            name = _clean_display(decode_rfc2047(match.group(1) or ""))
            return [(name, match.group(2).lower())]
        match = _BARE_ADDR.match(value)
        if match and _ADDR_SPEC.match(match.group(1)):
            return [("", match.group(1).lower())]
    if len(value) < 8192 and not any(c in value for c in '"();:\\'):
        fast = _simple_address_list(value)  # no quoting: commas can only separate addresses
        if fast is not None:
            return fast
    truncated = False
    if len(value) > MAX_ADDRESS_HEADER_CHARS:
        value = value[:MAX_ADDRESS_HEADER_CHARS]
        truncated = True
    if value.count(",") >= MAX_ADDRESSES:
        # Bound getaddresses()' work: cut at the first comma after the MAX_ADDRESSES-th
        # address (not the MAX_ADDRESSES-th comma: quoted names such as "Doe, Jane" hold
        # commas too, and cutting there kept fewer addresses than the cap).
        masked = _mask_quoted(value)
        kept = list(itertools.islice(_ADDR_TOKEN.finditer(masked), MAX_ADDRESSES))
        cut = masked.find(",", kept[-1].end()) if kept else -1
        if cut != -1:
            value = value[:cut]
            truncated = True
    try:
        pairs = getaddresses([value])
    except Exception:  # e.g. RecursionError on pathological input: salvage bare addresses
        errors.append(f"{label}: unparseable address list, kept bare addresses")
        pairs = [("", addr) for addr in _ADDR_TOKEN.findall(value)]
    result: list[Address] = []
    for name, addr in pairs:
        name = _clean_display(decode_rfc2047(name)) if name else ""
        addr = _CTRL.sub("", addr).strip().lower()
        if name or addr:
            result.append((name, addr))
    some_valid = any(_ADDR_SPEC.match(addr) for _name, addr in result)
    if any(_is_mangled(addr) for _name, addr in result) or (
        some_valid and any(not addr for _name, addr in result)
    ):
        # "a@x.test b@x.test" (a missing comma) comes back as "@x.test", "Bo <<bo@x.test>>"
        # as a name without address beside the address: keep the addresses that are really
        # there instead (a local address such as "foo" stays, as the email package keeps it).
        kept = {addr: name for name, addr in result if addr and not _is_mangled(addr)}
        names = " ".join(name.lower() for name, _addr in result)
        written = [token for token in _address_tokens(value) if token in kept or token not in names]
        result = [(kept.get(addr, ""), addr) for addr in written]
        result += [(name, addr) for addr, name in kept.items() if addr not in written]
    if truncated or len(result) > MAX_ADDRESSES:
        result = result[:MAX_ADDRESSES]
        errors.append(f"{label}: too many recipients, kept the first {len(result)}")
    return result


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
# An RFC 2047 encoded word whose text holds a character that separates addresses: mailers
# write "=?utf-8?q?Berg,_Bo?=" unquoted, where the comma is no separator.
_ENCODED_WORD_WITH_SPECIALS = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*[,;:<>@\[\]()][^?\s]*\?=")


def _quote_encoded_words(value: str) -> str:
    """Put such encoded words (outside quoted strings) in quotes, where they are one name."""
    masked = _mask_quoted(value)
    pieces, position = [], 0
    for match in _ENCODED_WORD_WITH_SPECIALS.finditer(masked):
        pieces += [value[position : match.start()], f'"{match.group()}"']
        position = match.end()
    return "".join(pieces) + value[position:] if pieces else value


def _mask_quoted(value: str) -> str:
    """Blank out quoted strings, keeping positions ("Doe, Jane" or "a@b" are no separators)."""
    return _QUOTED.sub(lambda match: " " * len(match.group()), value)


def _address_total(headers: Headers, name: str, value: str | None, kept: list[Address]) -> int:
    """Return how many addresses a header names, counting those cut by MAX_ADDRESSES."""
    if len(kept) < MAX_ADDRESSES or not value:
        return len(kept)
    before_cut = headers.get(_CUT_ADDRESSES + name)
    counted = int(before_cut[0]) if before_cut else _count_addresses(value)
    return max(len(kept), counted)


def _count_addresses(value: str) -> int:
    """Count the addresses of an address list cheaply (quoted names are not addresses)."""
    return len(_ADDR_TOKEN.findall(_mask_quoted(value)))


_ISO_DATE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
# Zone names some mailers and scripts write instead of an offset. RFC 5322 knows only the
# North American ones (and reads any other as +0000): Central European mail came in an hour
# or two off. Names shared by several zones (IST, CST for China) are left to the RFC.
_ZONE_OFFSETS = {
    "CET": "+0100", "CEST": "+0200", "MET": "+0100", "MEST": "+0200", "WET": "+0000",
    "WEST": "+0100", "BST": "+0100", "EET": "+0200", "EEST": "+0300", "MSK": "+0300",
    "JST": "+0900", "KST": "+0900", "HKT": "+0800", "SGT": "+0800", "AWST": "+0800",
    "ACST": "+0930", "ACDT": "+1030", "AEST": "+1000", "AEDT": "+1100", "NZST": "+1200",
    "NZDT": "+1300", "HST": "-1000", "AKST": "-0900", "AKDT": "-0800",
}  # fmt: skip
_ZONE_NAME = re.compile(r"(?<=\d)\s+([A-Za-z]{3,4})\s*$")
_ISO_ZONE_GAP = re.compile(r"\s+([+-]\d{2}:?\d{2})$")  # "... 10:00:00.123 +02:00"


def _parse_date(value: str | None) -> datetime | None:
    """Parse a Date header to an aware UTC datetime, or None if missing or garbage."""
    if not value:
        return None
    try:
        if _ISO_DATE.match(value):  # "2026-04-07 10:00:00+02:00" from scripts: not RFC 5322
            iso = _ISO_ZONE_GAP.sub(r"\1", value.strip().replace("Z", "+00:00"))
            parsed = datetime.fromisoformat(iso)
            parsed = parsed.replace(microsecond=0)
        else:
            named = _ZONE_NAME.search(value)
            if named and (offset := _ZONE_OFFSETS.get(named.group(1).upper())):
                value = f"{value[: named.start()]} {offset}"
            parsed = parsedate_to_datetime(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed = parsed.astimezone(UTC)
    except Exception:
        return None
    if not 1900 <= parsed.year <= 2200:
        return None
    return parsed


# ---------------------------------------------------------------------------------------------
# Content-Type / Content-Disposition parameters (RFC 2045, RFC 2231)

_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")
_RFC2231_NAME = re.compile(r"^(.+?)\*(\d+)?(\*)?$")


def _parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Return (lowercased main token, params) with RFC 2231 continuations and charsets decoded."""
    main, _, rest = value.partition(";")
    main = main.strip()
    if not rest and " " not in main and "\t" not in main:
        return main.lower(), {}
    if " " in main or "\t" in main:  # "multipart/mixed boundary=x": a missing ";"
        main, extra = main.split(None, 1)
        rest = f"{extra};{rest}"
    params: dict[str, str] = {}
    extended: dict[str, list[tuple[int, str, bool]]] = {}
    for match in _PARAM.finditer(";" + rest):
        key = match.group(1).lower()
        raw = match.group(2).strip()
        if raw.startswith('"'):
            raw = raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
            if "\\" in raw:
                raw = _QUOTED_PAIR.sub(r"\1", raw)
        star = _RFC2231_NAME.match(key)
        if star:
            index = int(star.group(2) or 0)
            encoded = bool(star.group(3)) or star.group(2) is None  # "name*" and "name*0*"
            extended.setdefault(star.group(1), []).append((index, raw, encoded))
        elif key not in params:  # first occurrence wins on duplicates
            params[key] = raw
    for name, pieces in extended.items():
        pieces.sort(key=lambda piece: piece[0])
        charset = None
        chunks = bytearray()
        for position, (_, raw, encoded) in enumerate(pieces):
            if encoded:
                if position == 0 and raw.count("'") >= 2:
                    charset, _lang, raw = raw.split("'", 2)
                chunks += re.sub(
                    r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), raw
                ).encode("latin-1", "replace")
            else:
                chunks += raw.encode("utf-8", "replace")
        params[name] = decode_text(bytes(chunks), charset or "utf-8")
    return main.strip().lower(), params


def normalize_content_id(value: str | None) -> str | None:
    """Return a Content-ID or cid: URL without <>, "cid:", %-escapes and case, or None."""
    if not value:
        return None
    text = value.strip()
    if text[:4].lower() == "cid:":
        text = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text[4:])
    text = text.strip().strip("<>").strip().lower()
    return text or None


# ---------------------------------------------------------------------------------------------
# MIME walking


@dataclass(slots=True)
class _Leaf:
    part_id: str
    headers: Headers
    body: bytes
    content_type: str
    params: dict[str, str]
    alt_group: str | None  # part id of the nearest multipart/alternative ancestor
    is_root: bool = False  # the message itself is this single leaf
    alt_branch: str | None = None  # part id of the child of that alternative holding the leaf


def _content_type(headers: Headers, default: str) -> tuple[str, dict[str, str]]:
    """Return the (type/subtype, params) of an entity, falling back to default if invalid."""
    value = _first(headers, "content-type")
    if not value:
        return default, {}
    ctype, params = _parse_params(value)
    if "/" not in ctype:
        return default, params
    return ctype, params


# A line that looks like a boundary delimiter followed by a header line: used to recover the
# parts of a multipart whose boundary parameter is missing or wrong.
_DELIMITER_BEFORE_HEADER = re.compile(rb"^--([!-~]{1,200})[ \t]*\r?\n(?=[!-9;-~]+[ \t]*:)", re.M)
# Any delimiter-like line, for the flat walk beyond MAX_DEPTH.
_ANY_DELIMITER = re.compile(rb"^--[!-~]*[ \t]*\r?$\n?", re.M)
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*\r?(?:\n|\Z)")


def _find_delimiters(body: bytes, needle: bytes) -> Iterator[tuple[int, int, bool]]:
    """Yield (line start, line end, is_closing) for each boundary delimiter line."""
    pos = 0 if body.startswith(needle[1:]) else body.find(needle)
    while pos >= 0:
        start = pos if pos == 0 and body[0:1] != b"\n" else pos + 1
        tail = _DELIMITER_TAIL.match(body, start + len(needle) - 1)
        if tail is not None:
            yield start, tail.end(), tail.group(1) is not None
        pos = body.find(needle, start + 1)


def _split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """Cut a multipart body at its boundary lines; preamble and epilogue are dropped."""
    needle = b"\n--" + boundary.encode("utf-8", "replace")
    parts: list[bytes] = []
    start: int | None = None
    for line_start, line_end, closing in _find_delimiters(body, needle):
        if start is not None:
            end = line_start - 1 if line_start else 0  # the CRLF before a delimiter is its own
            if end > start and body[end - 1 : end] == b"\r":
                end -= 1
            parts.append(body[start : max(start, end)])
        if closing or len(parts) > MAX_PARTS:
            return parts
        start = line_end
    if start is not None:
        parts.append(body[start:])  # no closing delimiter: the last part runs to the end
    return parts


def _before_closing(body: bytes, params: dict[str, str]) -> bytes:
    """Return a multipart body without parts up to its closing delimiter line, if it has one.

    The text before it is what such a message says (the standard library keeps it too); the
    delimiter line itself is not (an empty multipart showed "--boundary--" as its text).
    """
    boundary = (params.get("boundary") or "").rstrip()
    if not boundary:
        return body
    needle = b"\n--" + boundary.encode("utf-8", "replace")
    for line_start, _line_end, _closing in _find_delimiters(body, needle):
        return body[:line_start]
    return body


class _Walker:
    """Depth-first walk over MIME leaves with part, depth and time limits."""

    def __init__(self, errors: list[str], deadline: float | None = None) -> None:
        self.errors = errors
        self.count = 0
        self.deadline = deadline or time.monotonic() + PARSE_TIME_BUDGET
        self.stopped = False

    def walk(
        self,
        headers: Headers,
        body: bytes,
        part_id: str,
        depth: int,
        default: str,
        alt: str | None,
        branch: str | None = None,
    ) -> Iterator[_Leaf]:
        """Yield the leaves of one entity."""
        self.count += 1
        if self.count > MAX_PARTS:
            self._stop(f"more than {MAX_PARTS} MIME parts, rest not shown")
            return
        ctype, params = _content_type(headers, default)
        leaf_id = part_id or "1"  # a single-part message is section "1" in IMAP
        is_root = not part_id
        if not ctype.startswith("multipart/"):
            leaf = _Leaf(leaf_id, headers, body, ctype, params, alt, is_root, branch)
            yield leaf
            if _may_be_signed(leaf) and depth < MAX_DEPTH and time.monotonic() < self.deadline:
                # An opaque S/MIME signature wraps the mail itself: its parts are walked
                # as the signature part's, under "<part>.0" (IMAP numbers from 1).
                signed = _signed_content(_transfer_decode(leaf))
                errors: list[str] = []
                inner_block, inner_body = _split_entity(signed or b"", errors)
                inner_headers = _parse_header_block(inner_block, errors)
                # A signed file (an Italian "document.pdf.p7m") is no MIME entity: it stays
                # a file to download, not a text to show.
                if "content-type" in inner_headers:
                    self.errors += errors
                    yield from self.walk(
                        inner_headers,
                        inner_body,
                        f"{leaf_id}.0",
                        depth + 1,
                        "text/plain",
                        alt,
                        branch,
                    )
            return
        if depth >= MAX_DEPTH:  # degrade this entity only; its siblings are walked as usual
            self.errors.append(f"MIME nesting deeper than {MAX_DEPTH}, only its text shown")
            yield from self._flat_text_leaves(body, part_id, alt, branch)
            return
        chunks = self._split(body, params)
        if not chunks and "base64" in (_first(headers, "content-transfer-encoding") or "").lower():
            # A multipart may not be encoded (RFC 2045 6.4), but some mailers base64-encode
            # the whole of it: its parts are inside the encoding.
            decoded = _b64decode(body)
            chunks = self._split(decoded, params)
            body = decoded if chunks else body
        if not chunks:  # no part: show its text, without a MIME header block
            inner_block, text = _split_entity(_before_closing(body, params), self.errors)
            if inner_block:
                headers = _parse_header_block(inner_block, self.errors)
            _ctype, text_params = _content_type(headers, "text/plain")
            yield _Leaf(leaf_id, headers, text, "text/plain", text_params, alt, is_root, branch)
            return
        child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        is_alternative = ctype == "multipart/alternative"
        child_alt = part_id if is_alternative else alt
        prefix = "" if part_id == "" else part_id + "."
        for index, chunk in enumerate(chunks, 1):
            if self.stopped:
                return
            if time.monotonic() > self.deadline:
                self._stop("parse time budget exceeded, rest not shown")
                return
            child_headers, child_body = _split_entity(chunk, self.errors)
            yield from self.walk(
                _parse_header_block(child_headers, self.errors),
                child_body,
                f"{prefix}{index}",
                depth + 1,
                child_default,
                child_alt,
                f"{prefix}{index}" if is_alternative else branch,
            )

    def _split(self, body: bytes, params: dict[str, str]) -> list[bytes]:
        """Cut a multipart body at its boundary, else at the delimiter lines found in it."""
        boundary = (params.get("boundary") or "").rstrip()  # RFC 2046: no trailing space
        chunks = _split_multipart(body, boundary) if boundary else []
        if chunks:
            return chunks
        found = _DELIMITER_BEFORE_HEADER.search(body)
        if found is None:
            return []
        self.errors.append("multipart boundary missing or wrong, parts recovered")
        return _split_multipart(body, found.group(1).decode("ascii"))

    def _flat_text_leaves(
        self, body: bytes, part_id: str, alt: str | None, branch: str | None
    ) -> Iterator[_Leaf]:
        """Yield the text parts of a too-deep entity, cutting at every delimiter-like line.

        Structure is not followed (that is what the depth limit bounds), so the innermost
        text, usually the message itself, is still found; other parts are not listed.
        """
        index = 0
        for chunk in _ANY_DELIMITER.split(body):
            if self.count >= MAX_PARTS:
                self._stop(f"more than {MAX_PARTS} MIME parts, rest not shown")
                return
            block, text = _split_entity(chunk, self.errors)
            if not block:
                continue
            headers = _parse_header_block(block, self.errors)
            ctype, params = _content_type(headers, "text/plain")
            if ctype in ("text/plain", "text/html"):
                self.count += 1
                index += 1
                text = text[:-2] if text.endswith(b"\r\n") else text.removesuffix(b"\n")
                yield _Leaf(f"{part_id}.{index}", headers, text, ctype, params, alt, False, branch)

    def _stop(self, message: str) -> None:
        """Record why the walk stopped early (once) and stop it."""
        if not self.stopped:
            self.stopped = True
            self.errors.append(message)


def _iter_leaves(raw: bytes, errors: list[str]) -> Iterator[_Leaf]:
    """Yield every MIME leaf of a raw message, with IMAP-style part ids."""
    header_block, body = _split_entity(_strip_mbox_line(raw), errors)
    return _leaves_of(_parse_header_block(header_block, errors), body, errors)


def _leaves_of(
    headers: Headers, body: bytes, errors: list[str], deadline: float | None = None
) -> Iterator[_Leaf]:
    """Yield the leaves of a message given its parsed top-level headers and body."""
    return _Walker(errors, deadline).walk(headers, body, "", 0, "text/plain", None)


def _strip_mbox_line(raw: bytes) -> bytes:
    """Drop a leading mbox "From " separator line and normalize bare-CR line endings."""
    if raw.startswith(b"From "):
        newline = raw.find(b"\n")
        raw = raw[newline + 1 :] if newline >= 0 else b""
    if b"\n" not in raw[:65536] and b"\r" in raw:
        raw = raw.replace(b"\r", b"\n")
    return raw


def _forwarded_filename(leaf: _Leaf) -> str:
    """Name an attached message after its subject, reading only the start of its body."""
    head = _Leaf(leaf.part_id, leaf.headers, leaf.body[:65536], "", {}, None)
    inner = _parse_header_block(_split_entity(_transfer_decode(head), [])[0], [])
    subject = _clean_display(decode_rfc2047((_first(inner, "subject") or "")[:1000]))
    return (subject[:200] or "message") + ".eml"


def _transfer_decode(leaf: _Leaf) -> bytes:
    """Return the leaf body with its Content-Transfer-Encoding removed."""
    cte = (_first(leaf.headers, "content-transfer-encoding") or "").lower()
    if "base64" in cte:
        if leaf.content_type.startswith("text/") and _looks_unencoded(leaf.body):
            return leaf.body  # mislabelled plain text (enmime bad-content-transfer-encoding)
        return _b64decode(leaf.body)
    if "quoted-printable" in cte:
        return binascii.a2b_qp(leaf.body)
    if cte.strip() in _UUENCODE:
        return _uudecode(leaf.body)
    return leaf.body


# Content-Transfer-Encoding names older mail programs give uuencoded parts (not in RFC 2045,
# but common enough that the standard library decodes them too).
_UUENCODE = ("x-uuencode", "uuencode", "x-uue", "uue")
_UU_BEGIN = re.compile(rb"^begin [0-7]+ ", re.MULTILINE)


def _uu_lines(body: bytes) -> list[bytes]:
    """Return the encoded lines between "begin <mode> <name>" and "end" (all after "begin"
    when "end" is missing), or [] without a "begin" line."""
    begin = _UU_BEGIN.search(body)
    if begin is None:
        return []
    lines = []
    for line in body[begin.end() :].splitlines()[1:]:
        if line.strip() == b"end":
            break
        if line.strip():  # a blank line is a broken encoder's, not data
            lines.append(line.rstrip(b"\r\n"))
    return lines


def _uudecode(body: bytes) -> bytes:
    """Decode a uuencoded body leniently; without a "begin" line it is left as it came."""
    if _UU_BEGIN.search(body) is None:
        return body
    decoded = (_uu_line(line) for line in _uu_lines(body))
    return b"".join(line for line in decoded if line is not None)


def _uu_line(line: bytes) -> bytes | None:
    """Decode one uuencoded line, or None when it is not one."""
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        # Encoders that pad lines past their length byte (the standard library's fix).
        length = (((line[0] - 32) & 63) * 4 + 5) // 3
        try:
            return binascii.a2b_uu(line[:length])
        except binascii.Error:
            return None


# Files old mail programs (Outlook Express, Unix mail) uuencoded into the text itself:
# "begin 644 name" ... "end". Mail programs list them as attachments, not as text.
_UU_TEXT_BEGIN = re.compile(r"^begin [0-7]{3,4} ([^\n]*\S)[ \t]*\n", re.MULTILINE)
_UU_TEXT_END = re.compile(r"^end[ \t]*(?:\n|$)", re.MULTILINE)
_PACKED_PART = re.compile(r"^(.+)\.(uu|tnef)([0-9]{1,3})$")
MAX_UU_FILES = 100
MAX_TNEF_DEPTH = 3  # messages inside messages inside a winmail.dat whose files are listed


def _uu_files_in_text(text: str) -> list[tuple[int, int, str, bytes]]:
    """Return (start, end, file name, bytes) of each file uuencoded inside `text`, whose
    every line decodes; "\n" line ends."""
    found: list[tuple[int, int, str, bytes]] = []
    if "begin " not in text:
        return found  # nearly every text: a substring search is cheaper than the pattern
    position = 0
    while len(found) < MAX_UU_FILES:
        begin = _UU_TEXT_BEGIN.search(text, position)
        if begin is None:
            break
        end = _UU_TEXT_END.search(text, begin.end())
        if end is None:
            break  # no "end" after this "begin": none after a later one either
        data = _uu_text_bytes(text[begin.end() : end.start()])
        if data is None:
            position = begin.end()  # plain text that happens to start with "begin 644 x"
            continue
        found.append((begin.start(), end.end(), begin.group(1), data))
        position = end.end()
    return found


def _uu_text_bytes(lines: str) -> bytes | None:
    """Decode the lines of one uuencoded file, or None when a line is not uuencoding."""
    decoded = []
    for line in lines.split("\n"):
        if not line.strip():
            continue
        try:
            data = _uu_line(line.rstrip("\r").encode("ascii"))
        except UnicodeEncodeError:
            return None
        if data is None:
            return None
        decoded.append(data)
    return b"".join(decoded)


def _without_uu_files(text: str, files: list[tuple[int, int, str, bytes]]) -> str:
    kept, position = [], 0
    for start, end, _name, _data in files:
        kept.append(text[position:start])
        position = end
    kept.append(text[position:])
    return "".join(kept)


def _uu_attachments(part_id: str, files: list[tuple[int, int, str, bytes]]) -> list:
    return _packed_attachments(part_id, [(name, data) for _start, _end, name, data in files], "uu")


def _packed_attachments(part_id: str, files: list[tuple], kind: str = "tnef") -> list:
    """List files packed inside a part (uuencoded in a text, or in an Outlook winmail.dat)
    as attachments "<part>.<kind><n>" that extract_part finds again; each file is
    (name, bytes) or (name, bytes, content id)."""
    return [
        AttachmentInfo(
            part_id=f"{part_id}.{kind}{number}",
            filename=_clean_display(name)[:200] or "file",
            content_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
            size=len(data),
            content_id=content_id[0] if content_id else None,
            is_inline=False,
        )
        for number, (name, data, *content_id) in enumerate(files, start=1)
    ]


def _is_tnef(content_type: str, filename: str | None) -> bool:
    return content_type in ("application/ms-tnef", "application/vnd.ms-tnef") or (
        (filename or "").lower() == "winmail.dat"
    )


def _tnef_package(data: bytes) -> tnefparse.TNEF | None:
    """Read an Outlook winmail.dat (TNEF); None when it cannot be read (a damaged package:
    winmail.dat is still there to download)."""
    data = _with_last_object_whole(data)
    if not _tnef_counts_fit(data):
        return None
    try:
        return tnefparse.TNEF(data)
    except Exception:  # tnefparse raises several kinds on damaged packages
        return None


def _tnef_objects(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(attribute id, data, end offset) of each object of a TNEF stream, as tnefparse reads
    them: from after the signature and key, while more than 12 bytes are left; an object is
    11 bytes of framing plus the length it declares (cut at the end of the stream)."""
    offset = 6
    while offset + 12 < len(data):
        name = int.from_bytes(data[offset + 1 : offset + 3], "little")
        declared = int.from_bytes(data[offset + 5 : offset + 9], "little")
        end = offset + min(len(data) - offset, declared + 11)
        yield name, data[offset + 9 : end - 2], end
        offset = end


def _with_last_object_whole(data: bytes) -> bytes:
    """`data`, padded so that tnefparse reads its last object when that holds 0 or 1 bytes.

    tnefparse stops with 12 bytes left, but an object is 11 bytes plus its data: a 1-byte
    file (or an empty one) written last was lost. Two bytes after it let the loop read it,
    and no more (the padding is shorter than any object).
    """
    offset = max((end for _name, _block, end in _tnef_objects(data)), default=6)
    left = len(data) - offset
    if left >= 11 and int.from_bytes(data[offset + 5 : offset + 9], "little") + 11 == left:
        return data + b"\0\0"
    return data


# MAPI property types by the bytes one value takes (tnefparse.mapi.parse_property); the
# variable-length types (strings, binary, objects) start with a 4-byte length.
_MAPI_FIXED_SIZES = {
    0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8,
    0x0014: 8, 0x0040: 8, 0x0048: 16,
}  # fmt: skip
_MAPI_VARIABLE = (0x0000, 0x000D, 0x001E, 0x001F, 0x0102)
_MAPI_BLOCKS = (0x9003, 0x9005)  # attMAPIProps, attAttachment: one MAPI property block each
_RECIPIENT_TABLE = 0x9004  # rows of MAPI property blocks
_IID_IMESSAGE = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
_MAX_TNEF_NESTING = 10  # messages inside messages a package may hold before it is refused


def _tnef_counts_fit(data: bytes, depth: int = 0) -> bool:
    """Whether every count in this TNEF stream fits in the bytes it counts.

    tnefparse loops as many times as a MAPI block's property, value or row count says, without
    looking at the bytes left: a damaged or hostile count (4 billion) kept a sync busy for
    hours, logging a line each time, or filled memory. Packages that could not hold what they
    count are refused (winmail.dat stays listed), here before tnefparse reads them; messages
    held inside are checked too, as tnefparse reads them at once.
    """
    if depth > _MAX_TNEF_NESTING or len(data) < 6:
        return depth <= _MAX_TNEF_NESTING
    for name, block, _end in _tnef_objects(data):
        if name in _MAPI_BLOCKS and _mapi_block_end(block, 0, depth) is None:
            return False
        if name == _RECIPIENT_TABLE:
            rows = int.from_bytes(block[:4], "little")
            if rows * 4 > len(block):
                return False
            position: int | None = 4
            for _ in range(rows):
                position = _mapi_block_end(block, position, depth)
                if position is None:
                    return False
    return True


def _mapi_block_end(block: bytes, offset: int, depth: int) -> int | None:
    """Where a MAPI property block read from `offset` ends (where tnefparse stops reading
    it), or None when a count in it exceeds the bytes left."""

    def number(at: int) -> int:
        return int.from_bytes(block[at : at + 4], "little")

    if offset + 4 > len(block):
        return len(block)  # tnefparse fails on it, quickly
    count = number(offset)
    offset += 4
    if count * 4 > len(block) - offset:
        return None
    for _ in range(count):
        if offset + 4 > len(block):
            return offset  # the rest is skipped, one quick step per property
        kind = int.from_bytes(block[offset : offset + 2], "little")
        prop_id = int.from_bytes(block[offset + 2 : offset + 4], "little")
        offset += 4
        if prop_id >= 0x8000:  # a named property: GUID, then an id or a name
            named_kind = number(offset + 16)
            offset += 24 if named_kind == 0 else 24 + (number(offset + 20) + 3) // 4 * 4
        multi, values = bool(kind & 0x1000), 1
        if multi:
            kind ^= 0x1000
            values = number(offset)
            offset += 4
        if kind in _MAPI_FIXED_SIZES:
            size = _MAPI_FIXED_SIZES[kind]
            if multi and values * size > len(block) - offset:
                return None
            offset += values * size + (2 if size == 2 and values % 2 else 0)
            continue
        if kind not in _MAPI_VARIABLE:
            return offset  # tnefparse stops at a type it does not know
        if multi and values * 4 > len(block) - offset:
            return None
        for _ in range(values):
            items = 1  # a multi-valued property: one length and value each
            if not multi:  # a single value: a count of items, then each
                items = number(offset)
                offset += 4
                if items * 4 > len(block) - offset:
                    return None
            for _ in range(items):
                size = number(offset)
                value = block[offset + 4 : offset + 4 + size]
                offset += 4 + (size + 3) // 4 * 4
                if value.startswith(_IID_IMESSAGE) and not _tnef_counts_fit(
                    value[len(_IID_IMESSAGE) :], depth + 1
                ):
                    return None
    return offset


def _tnef_files(
    package: tnefparse.TNEF | None, depth: int = 0
) -> list[tuple[str, bytes, str | None]]:
    """Return (name, bytes, content id) of the files in a winmail.dat, then those of the
    messages it holds (an Outlook item attached in rich text mode), in that order (their part
    ids count on from the package's own); [] when it holds none or cannot be read.
    winmail.dat itself stays listed. The content id is how the body's HTML shows an image."""
    if package is None:
        return []
    try:
        files = [
            (
                attachment.long_filename() or attachment.name or "file",
                bytes(attachment.data),
                _tnef_content_id(attachment),
            )
            for attachment in package.attachments
            # An empty file is still one the sender attached (Outlook lists it too).
            if (attachment.data or attachment.long_filename() or attachment.name)
            and _tnef_attach_method(attachment) in (None, 1)
        ]
    except Exception:  # a damaged attachment record: winmail.dat is still there
        return []
    if depth < MAX_TNEF_DEPTH:
        for message in _tnef_messages(package):
            files += _tnef_files(message, depth + 1)
    return files[:MAX_UU_FILES]


def _tnef_messages(package: tnefparse.TNEF | None) -> list[tnefparse.TNEF]:
    """The messages a winmail.dat holds as attachments (PR_ATTACH_METHOD 5), read."""
    if package is None:
        return []
    return [
        attachment.embed
        for attachment in package.attachments
        if getattr(attachment, "embed", None) is not None
    ]


def _tnef_attached_message(package: tnefparse.TNEF) -> ParsedMessage:
    """A message held in a winmail.dat as _attached_text shows it: its sender, date, subject
    (MAPI properties) and text."""
    props = {prop.name: prop for prop in package.mapiprops}

    def value_of(prop_id: int):
        try:
            return props[prop_id].data if prop_id in props else None
        except Exception:  # a damaged property
            return None

    def text_of(*prop_ids: int) -> str:
        for prop_id in prop_ids:
            value = value_of(prop_id)
            if isinstance(value, str) and value.strip():
                return value.replace("\x00", "").strip()
        return ""

    # PR_CLIENT_SUBMIT_TIME, else PR_MESSAGE_DELIVERY_TIME
    times = [value_of(0x0039), value_of(0x0E06)]
    sent = next((t.replace(tzinfo=UTC) for t in times if isinstance(t, datetime)), None)
    # PR_SENDER_EMAIL_ADDRESS is an Exchange DN for internal senders: only taken if an address.
    address = text_of(0x5D01, 0x5D02) or next(
        (found for found in (text_of(0x0C1F), text_of(0x0065)) if "@" in found), ""
    )
    html_body, plain = _tnef_body(package)
    text = plain or (html_to_text(html_body) if html_body else "")
    return ParsedMessage(
        subject=text_of(0x0037)[:MAX_SUBJECT],
        from_name=text_of(0x0C1A, 0x0042),
        from_address=address,
        date=sent,
        text_body=text[:MAX_TEXT_CHARS],
    )


def _tnef_body(package: tnefparse.TNEF | None) -> tuple[str | None, str | None]:
    """(HTML, plain text) of the message body a winmail.dat carries: its HTML (PR_HTML, else
    the HTML Outlook kept inside its rich text), else its plain text, else the text of its rich
    text (RTF, compressed: compressed_rtf)."""
    if package is None:
        return None, None

    def text(value) -> str | None:
        if not value:
            return None
        # attBody is in the sender's Windows code page; decode_text reads UTF-8, else cp1252.
        decoded = value if isinstance(value, str) else decode_text(bytes(value), None)
        return decoded.replace("\x00", "").strip() or None

    html_body = text(package.htmlbody)
    if html_body is not None:
        return html_body, text(package.body)
    rtf = _rtf_body(package)
    if rtf is not None and is_encapsulated_html(rtf):
        html_body = encapsulated_html(rtf)
        if html_body is not None:
            return html_body, text(package.body)
    plain = text(package.body)
    if plain is None and rtf is not None:
        plain = _rtf_text(rtf)
    return None, plain


def _rtf_body(package) -> bytes | None:
    """A TNEF package's rich text body, decompressed and cut at MAX_RTF_CHARS, or None."""
    try:
        rtf = package.rtfbody  # decompressed by tnefparse with compressed_rtf
    except Exception:  # damaged rich text: the original still downloads
        return None
    if not rtf or not bytes(rtf).startswith(b"{\\rtf"):
        return None
    return bytes(rtf)[:MAX_RTF_CHARS]


def _rtf_text(rtf: bytes) -> str | None:
    """The text of rich text (its formatting dropped), or None."""
    try:
        # \'xx escapes are read in the code page \ansicpg names (striprtf follows it).
        text = rtf_to_text(rtf.decode("latin-1"), errors="replace")
    except Exception:  # damaged rich text: the original still downloads
        return None
    return text.replace("\x00", "").strip() or None


def _tnef_content_id(attachment) -> str | None:
    """PR_ATTACH_CONTENT_ID, normalized as a MIME part's Content-ID is, or None."""
    for attribute in attachment.mapi_attrs:
        if attribute.name == 0x3712 and isinstance(attribute.data, str):
            return normalize_content_id(attribute.data)
    return None


def _tnef_attach_method(attachment) -> int | None:
    """Return PR_ATTACH_METHOD (1: a file by value; 5: an embedded message)."""
    for attribute in attachment.mapi_attrs:
        if attribute.name == 0x3705:
            return attribute.data
    return None


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=\s]")
# A line of base64: 20 characters or more, whole groups of 4 (8 or more), or padded.
_BASE64_LINE = re.compile(
    rb"\s*(?:[A-Za-z0-9+/]{20,}=*|(?:[A-Za-z0-9+/]{4}){2,}"
    rb"|(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=))\r?(?:\n|$)"
)


def _text_format(leaf: _Leaf) -> tuple[bool, bool]:
    """(format=flowed, delsp=yes) of a text/plain leaf (RFC 3676)."""
    flowed = leaf.params.get("format", "").lower() == "flowed"
    return flowed, flowed and leaf.params.get("delsp", "").lower() == "yes"


_SMIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_ENCRYPTED_SMIME = ("enveloped-data", "authenveloped-data")
_ENCRYPTED_CMS = (
    "enveloped_data",
    "authenticated_enveloped_data",
    "signed_and_enveloped_data",
    "encrypted_data",
)


def _may_be_signed(leaf: _Leaf) -> bool:
    """Tell whether a leaf may be an opaque S/MIME signature (smime-type signed-data, or
    none given: old clients leave it out)."""
    return leaf.content_type in _SMIME_TYPES and leaf.params.get("smime-type", "").lower() in (
        "signed-data",
        "",
    )


def _is_encrypted(leaf: _Leaf) -> bool:
    """Tell whether a leaf is mail encrypted for its recipient (S/MIME or PGP/MIME)."""
    if leaf.content_type == "application/pgp-encrypted":
        return True
    if leaf.content_type not in _SMIME_TYPES:
        return False
    smime_type = leaf.params.get("smime-type", "").lower()
    if smime_type:
        return smime_type in _ENCRYPTED_SMIME
    # Old clients name no smime-type: the CMS structure tells.
    return _cms_content_type(_transfer_decode(leaf)) in _ENCRYPTED_CMS


_SIGNATURE_TYPES = (
    "application/pkcs7-signature",
    "application/x-pkcs7-signature",
    "application/pgp-signature",
)


def _is_signature(attachment: AttachmentInfo, leaf_ids: set[str]) -> bool:
    """Tell whether an attachment is a signature rather than a file the sender attached: a
    detached one (smime.p7s, signature.asc) or an opaque S/MIME signature whose mail was
    read from it (parts "<its part>.0..."). Such mail is signed, it has no attachment."""
    if attachment.content_type in _SIGNATURE_TYPES:
        return True
    inside = f"{attachment.part_id}.0"
    return attachment.content_type in _SMIME_TYPES and any(
        part_id == inside or part_id.startswith(inside + ".") for part_id in leaf_ids
    )


def _cms_content_type(data: bytes) -> str | None:
    """The content type of a CMS structure ("signed_data", "enveloped_data", ...), or None."""
    try:
        return cms.ContentInfo.load(data)["content_type"].native
    except Exception:  # asn1crypto raises ValueError, TypeError, ... on malformed DER/BER
        return None


def _signed_content(data: bytes) -> bytes | None:
    """Return the MIME entity an opaque S/MIME signature wraps (CMS SignedData, RFC 8551
    3.5.2), or None when `data` is not one. The signature is not checked: the mail's text is
    shown as it arrived, and the original stays downloadable for a mail program to verify."""
    try:
        info = cms.ContentInfo.load(data)
        if info["content_type"].native != "signed_data":
            return None
        content = info["content"]["encap_content_info"]["content"].native
    except Exception:  # asn1crypto raises ValueError, TypeError, ... on malformed DER/BER
        return None
    return content if isinstance(content, bytes) and content else None


def _looks_unencoded(body: bytes) -> bool:
    """Return True if a "base64" body is mostly not base64 (spaces inside lines, punctuation).

    A body that starts with a line of base64 is base64, whatever follows it: a short part
    with a stray delimiter or a footer after its base64 would otherwise count as mostly junk.
    """
    sample = body[:4096]
    if _BASE64_LINE.match(sample):
        return False
    junk = len(_NOT_BASE64.findall(sample)) + sample.count(b" ")
    return junk > max(8, len(sample) // 50)


def _estimate_size(leaf: _Leaf) -> int:
    """Estimate the decoded size of a leaf without decoding it."""
    cte = (_first(leaf.headers, "content-transfer-encoding") or "").lower()
    size = len(leaf.body)
    if "quoted-printable" in cte:
        # "=XX" is one byte and a soft line break ("=" at a line end) none (RFC 2045 §6.7).
        return max(0, size - 2 * leaf.body.count(b"=") - leaf.body.count(b"=\r\n"))
    if "base64" in cte:
        # Every 4 characters are 3 bytes, less one per "=" of padding (also of chunks padded
        # one by one); counting is cheap, decoding is not.
        body = leaf.body
        spaces = body.count(b"\n") + body.count(b"\r") + body.count(b" ") + body.count(b"\t")
        return max(0, (size - spaces) * 3 // 4 - body.count(b"="))
    if cte.strip() in _UUENCODE and _UU_BEGIN.search(leaf.body):
        return sum((line[0] - 32) & 63 for line in _uu_lines(leaf.body))  # each line's length
    return size


def _leaf_meta(leaf: _Leaf) -> tuple[str, str | None, str | None]:
    """Return (disposition, filename, content_id) for a leaf."""
    disposition = ""
    filename = None
    value = _first(leaf.headers, "content-disposition")
    if value:
        disposition, dparams = _parse_params(value)
        filename = dparams.get("filename")
    if not filename:
        filename = leaf.params.get("name")
    if filename:
        filename = _clean_display(decode_rfc2047(filename)) or None
    content_id = normalize_content_id(_first(leaf.headers, "content-id"))
    return disposition, filename, content_id


def _content_location(leaf: _Leaf) -> str | None:
    """A leaf's Content-Location (RFC 2557: folded anywhere, its whitespace removed)."""
    value = "".join((_first(leaf.headers, "content-location") or "").split())
    return value.strip("<>\"'") or None


def _locations_as_content_ids(
    html_body: str, attachments: list[AttachmentInfo], locations: dict[str, str]
) -> tuple[str, list[AttachmentInfo]]:
    """Point the HTML's references to parts by Content-Location (MHTML, RFC 2557: the
    <img src="image1"> of Word, Lotus Notes and saved web pages) at a content id, so they
    show as cid: images do, from the mail itself and not from the web."""
    by_part = {attachment.part_id: index for index, attachment in enumerate(attachments)}
    attachments = list(attachments)
    for location, part_id in locations.items():
        index = by_part.get(part_id)
        reference = re.compile(
            r"""(\b(?:src|background)\s*=\s*["']?)""" + re.escape(location) + r"""(?=["'\s>])""",
            re.IGNORECASE,
        )
        if index is None or reference.search(html_body) is None:
            continue
        content_id = f"location.{part_id}@threadline.invalid"
        html_body = reference.sub(lambda m, cid=content_id: m.group(1) + "cid:" + cid, html_body)
        attachments[index] = replace(attachments[index], content_id=content_id)
    return html_body, attachments


def _are_alternatives(first: _Leaf, other: _Leaf) -> bool:
    """Tell whether two leaves render the same content: they sit in different parts of one
    multipart/alternative (RFC 2046 §5.1.4)."""
    return (
        first.alt_group is not None
        and first.alt_group == other.alt_group
        and first.alt_branch != other.alt_branch
    )


def _offered_as_attachment(disposition: str, filename: str | None) -> bool:
    """Return whether mail clients offer a part as an attachment: it is named or says so.

    Wherever it sits in the tree: Apple Mail puts attachments inside multipart/alternative,
    and Thunderbird's detached attachments are named text/* stubs there.
    """
    return disposition == "attachment" or bool(filename)


_META_CHARSET = re.compile(rb"""charset\s*=\s*["']?\s*([A-Za-z0-9._:\-]+)""", re.IGNORECASE)


def _leaf_text(leaf: _Leaf) -> str:
    """Decode a text leaf to str with its declared (or sniffed HTML meta) charset."""
    data = _transfer_decode(leaf)
    charset = leaf.params.get("charset")
    if not charset and leaf.content_type == "text/html":
        match = _META_CHARSET.search(data, 0, 4096)
        charset = match.group(1).decode("ascii") if match else None
    return decode_text(data, charset).replace("\x00", "")


# ---------------------------------------------------------------------------------------------
# HTML to text (for search/snippets only; display uses the sanitized HTML)

_HTML_BLOCK_OPEN = re.compile(r"<(script|style|title)\b", re.IGNORECASE)
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_HTML_BREAK = re.compile(
    r"<(?:br|/?p|/?div|/?tr|/?li|/?h[1-6]|hr|/?table|/?blockquote)\b[^<>]*>", re.I
)
_HTML_TAG = re.compile(r"<[^<>]*>")  # [^<>] keeps a run of unclosed "<" linear
_SPACES = re.compile(r"[ \t\r\f\v\xa0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")


def html_to_text(markup: str) -> str:
    """Return readable plain text from HTML (scripts/styles dropped, tags stripped)."""
    markup = markup[:MAX_HTML_FOR_TEXT]
    lowered = markup.lower()
    pieces: list[str] = []
    pos = 0
    for match in _HTML_BLOCK_OPEN.finditer(markup):
        if match.start() < pos:
            continue
        pieces.append(markup[pos : match.start()])
        close = lowered.find(f"</{match.group(1).lower()}", match.end())
        if close < 0:
            pos = len(markup)
            break
        end = lowered.find(">", close)
        pos = len(markup) if end < 0 else end + 1
    pieces.append(markup[pos:])
    text = _HTML_COMMENT.sub("", "".join(pieces))
    text = _HTML_BREAK.sub("\n", text)
    text = html.unescape(_HTML_TAG.sub("", text))
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


_RTL = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]")


def _snippet(text: str) -> str:
    """Return about SNIPPET_CHARS characters of whitespace-collapsed text."""
    collapsed = " ".join(text[: SNIPPET_CHARS * 8].split())
    if len(collapsed) <= SNIPPET_CHARS:
        return collapsed
    return collapsed[: SNIPPET_CHARS - 1].rstrip() + "…"


# ---------------------------------------------------------------------------------------------
# Public API


def _envelope(
    headers: Headers, errors: list[str], charset_hint: str | None = None
) -> ParsedMessage:
    """Return a ParsedMessage with only the header-derived fields filled in.

    charset_hint (the body's declared charset) decodes raw 8-bit subjects and addresses.
    """
    message_id = normalize_msgid(_first(headers, "message-id"))
    aliases: list[str] = []
    for name in ("x-microsoft-original-message-id", "x-ms-exchange-parent-message-id"):
        for raw_value in headers.get(name, []):
            alias = normalize_msgid(_header_str(raw_value))
            if alias and alias != message_id and alias not in aliases:
                aliases.append(alias)
    in_reply_to_ids = parse_id_list(_first(headers, "in-reply-to"))
    references = parse_id_list(_first(headers, "references"))[-MAX_CHAIN:]
    raw_subject = (_first(headers, "subject", charset_hint) or "")[:MAX_RAW_SUBJECT]
    subject = _clean_display(decode_rfc2047(raw_subject))[:MAX_SUBJECT]
    senders = _parse_addresses(_first(headers, "from", charset_hint), "from", errors)
    # The sender is the first real address ("Berg; Bo <bo@x.test>" also yields "berg").
    real = [sender for sender in senders if "@" in sender[1]]
    from_name, from_address = (real or senders or [("", "")])[0]
    to_value = _first(headers, "to", charset_hint)
    cc_value = _first(headers, "cc", charset_hint)
    to = _parse_addresses(to_value, "to", errors)
    cc = _parse_addresses(cc_value, "cc", errors)
    return ParsedMessage(
        message_id=message_id,
        alias_message_ids=aliases,
        in_reply_to=in_reply_to_ids[0] if in_reply_to_ids else None,
        references=references,
        subject=subject,
        from_name=from_name,
        from_address=from_address,
        to=to,
        cc=cc,
        to_total=_address_total(headers, "to", to_value, to),
        cc_total=_address_total(headers, "cc", cc_value, cc),
        bcc=_parse_addresses(_first(headers, "bcc", charset_hint), "bcc", errors),
        reply_to=_parse_addresses(_first(headers, "reply-to", charset_hint), "reply-to", errors),
        date=_parse_date(_first(headers, "date")),
        is_rtl_hint=bool(_RTL.search(subject)),
    )


def _error_text(errors: list[str]) -> str | None:
    """Join distinct error notes, or None when there are none."""
    return "; ".join(dict.fromkeys(errors)) if errors else None


def _parse(raw: bytes) -> ParsedMessage:
    """Parse a whole message; may raise on bugs, which parse_message() turns into a result."""
    return _parse_with_envelope(raw)[0]


def _parse_with_envelope(
    raw: bytes, *, deadline: float | None = None, attached: bool = True
) -> tuple[ParsedMessage, ParsedMessage]:
    """_parse(raw), and the envelope read from the headers alone as parse_headers_only
    reads it (without the body's charset hint), for the identity keys.

    `attached`: read the text of attached messages (one level: not for those inside them).
    """
    deadline = deadline or time.monotonic() + PARSE_TIME_BUDGET
    errors: list[str] = []
    header_block, body = _split_entity(_strip_mbox_line(raw), errors)
    headers = _parse_header_block(header_block, errors)
    body_charset: str | None = None  # the first text part's known charset, for raw headers
    texts: list[str] = []
    html_body: str | None = None
    attachments: list[AttachmentInfo] = []
    inline_text: _Leaf | None = None
    html_leaf: _Leaf | None = None
    text_groups: set[str | None] = set()
    text_chars = 0
    text_skipped = False
    encrypted = False
    leaf_ids: set[str] = set()
    tnef: tnefparse.TNEF | None = None  # the first winmail.dat, read once
    tnef_messages: list[tnefparse.TNEF] = []  # messages attached inside winmail.dat files
    calendar_leaf: _Leaf | None = None  # the first calendar part (an invitation)
    returned_headers: _Leaf | None = None  # a report's copy of the original's headers
    locations: dict[str, str] = {}  # Content-Location -> part id (of parts with no Content-ID)
    text_formats: set[tuple[bool, bool]] = set()  # (flowed, delsp) of the texts shown
    attached_leaves: list[_Leaf] = []
    for leaf in _leaves_of(headers, body, errors, deadline):
        ctype = leaf.content_type
        leaf_ids.add(leaf.part_id)
        encrypted = encrypted or _is_encrypted(leaf)
        charset = leaf.params.get("charset")
        if body_charset is None and ctype.startswith("text/") and _codec_for(charset):
            body_charset = charset
        disposition, filename, content_id = _leaf_meta(leaf)
        # text/enriched outside an alternative is a body of its own (inside one, the plain or
        # HTML rendering beside it is shown).
        is_body_type = ctype in ("text/plain", "text/html") or (
            ctype in ENRICHED_TYPES and leaf.alt_group is None
        )
        offered = _offered_as_attachment(disposition, filename)
        # Inline text parts without a filename are body (SYNC.md §9); so is a lone root part.
        if is_body_type and (not offered or leaf.is_root and disposition != "attachment"):
            if ctype == "text/html":
                if html_leaf is None:
                    html_leaf, html_body = leaf, _leaf_text(leaf)
                elif not _are_alternatives(html_leaf, leaf):
                    # Apple Mail: the HTML goes on after a file put into it, in a second
                    # part; mail clients show every inline HTML part, one after the other.
                    html_body = f"{html_body}\n{_leaf_text(leaf)}"
            elif leaf.alt_group is None or leaf.alt_group not in text_groups:
                text_groups.add(leaf.alt_group)  # one plain rendering per alternative
                if text_chars < MAX_TEXT_CHARS:
                    text = _leaf_text(leaf).replace("\r\n", "\n")
                    if ctype in ENRICHED_TYPES:
                        text = enriched_to_text(text, ctype)
                    if ctype == "text/plain" and (files := _uu_files_in_text(text)):
                        text = _without_uu_files(text, files)
                        attachments += _uu_attachments(leaf.part_id, files)
                    texts.append(text)
                    text_formats.add(_text_format(leaf))
                    text_chars += len(text)
                else:
                    text_skipped = True
            if not offered:
                continue  # a named lone root part is shown and offered as a download too
        elif leaf.alt_group is not None and ctype.startswith("text/") and not offered:
            if ctype != "text/calendar":
                continue  # text/enriched, text/watch-html, ...: other renderings of the body
        if ctype == "text/plain" and disposition != "attachment" and inline_text is None:
            inline_text = leaf
        if ctype == "text/calendar" and not filename:
            filename = "invite.ics"  # as mail programs offer a meeting request to save
        if calendar_leaf is None and (
            ctype in ("text/calendar", "application/ics")
            or (filename or "").lower().endswith(".ics")
        ):
            calendar_leaf = leaf
        if ctype in _RETURNED_HEADERS and returned_headers is None:
            returned_headers = leaf
        if ctype in ("message/rfc822", "message/global"):  # global: UTF-8 headers (RFC 6532)
            filename = filename or _forwarded_filename(leaf)
            attached_leaves.append(leaf)
        location = _content_location(leaf)
        if location and content_id is None:
            locations.setdefault(location, leaf.part_id)
        attachments.append(
            AttachmentInfo(
                part_id=leaf.part_id,
                filename=filename,
                content_type=ctype,
                size=_estimate_size(leaf),
                content_id=content_id,
                is_inline=False,
            )
        )
        if _is_tnef(ctype, filename):
            package = _tnef_package(_transfer_decode(leaf))
            tnef = tnef or package
            attachments += _packed_attachments(leaf.part_id, _tnef_files(package))
            tnef_messages += _tnef_messages(package)
    attachments = _without_resource_forks(attachments)
    text_body = "\n".join(texts)
    if not text_body.strip() and html_body is None and tnef is not None:
        # Outlook sent the body only inside winmail.dat (Exchange's rich text mode).
        tnef_html, tnef_text = _tnef_body(tnef)
        if tnef_html is not None:
            html_body = tnef_html  # its text is read from it below
        elif tnef_text is not None:
            text_body, text_formats = tnef_text, set()
    if html_body and locations:
        html_body, attachments = _locations_as_content_ids(html_body, attachments, locations)
    if html_body and any(a.content_id for a in attachments):
        # "inline" means: shown inside the HTML through a cid: reference (RFC 2392)
        html_lower = html_body.lower()
        attachments = [
            replace(a, is_inline=f"cid:{a.content_id}" in html_lower) if a.content_id else a
            for a in attachments
        ]
    if not text_body.strip() and html_body:
        text_body = html_to_text(html_body)
        text_formats = set()
    elif not text_body.strip() and inline_text is not None:  # only an inline .txt "attachment"
        text_body = _leaf_text(inline_text).replace("\r\n", "\n")
        text_formats = {_text_format(inline_text)}
    # Joined only when every text shown says so (one format for text_body as a whole).
    flowed, delsp = text_formats.pop() if len(text_formats) == 1 else (False, False)
    text_cut = text_skipped or len(text_body) > MAX_TEXT_CHARS
    text_body = text_body[:MAX_TEXT_CHARS]
    attached_texts: list[str] = []
    snippet_text = text_body
    attached_messages = [*attached_leaves, *tnef_messages]
    for item in attached_messages[:MAX_ATTACHED_SHOWN] if attached else []:
        if time.monotonic() > deadline:
            break
        if isinstance(item, _Leaf):
            raw_inner = _transfer_decode(item)
            inner = _parse_with_envelope(raw_inner, deadline=deadline, attached=False)[0]
        else:
            inner = _tnef_attached_message(item)
        attached_texts.append(_attached_text(inner))
        if not snippet_text.strip():
            snippet_text = inner.text_body
    if attached_texts and len(attached_messages) > len(attached_texts):
        more = len(attached_messages) - len(attached_texts)
        attached_texts.append(
            f"({more} more attached message{'s' if more > 1 else ''}: "
            "open them from the attachments.)"
        )
    invitation = invitation_text(_leaf_text(calendar_leaf)) if calendar_leaf is not None else ""
    snippet = _snippet(snippet_text if snippet_text.strip() else invitation)
    envelope = _envelope(headers, errors, body_charset)
    # The hint only changes header values in raw 8-bit bytes, which few mails have.
    alone = envelope if body_charset is None or header_block.isascii() else None
    if (  # after `alone`: the identity keys read the headers as they are
        returned_headers is not None
        and _content_type(headers, "text/plain")[0] == "multipart/report"
    ):
        envelope = _answering_the_returned_mail(envelope, returned_headers)
    parsed = replace(
        envelope,
        text_body=text_body,
        html_body=html_body,
        snippet=snippet,
        attachments=attachments,
        has_attachments=any(
            not a.is_inline and not _is_signature(a, leaf_ids) for a in attachments
        ),
        is_rtl_hint=envelope.is_rtl_hint or bool(_RTL.search(snippet)),
        size=len(raw),
        parse_error=_error_text(errors),
        text_cut=text_cut,
        encrypted=encrypted,
        flowed=flowed,
        delsp=delsp,
        attached_texts=attached_texts,
        invitation=invitation,
    )
    return parsed, alone if alone is not None else _envelope(headers, [])


# The parts of a delivery report (RFC 6522) that return the original mail, or its headers.
_RETURNED_HEADERS = (
    "message/rfc822",
    "message/global",
    "text/rfc822-headers",
    "message/global-headers",
    "message/disposition-notification",  # a read receipt (RFC 8098): Original-Message-ID
)


def _answering_the_returned_mail(envelope: ParsedMessage, returned: _Leaf) -> ParsedMessage:
    """A bounce or read receipt that names no mail it answers (most mail servers' do not)
    answers the mail it returns: so it joins that mail's conversation, where the sender
    looks for it."""
    if envelope.in_reply_to or envelope.references:
        return envelope
    errors: list[str] = []
    header_block, _body = _split_entity(_transfer_decode(returned), errors)
    fields = _parse_header_block(header_block, errors)
    ids = parse_id_list(_first(fields, "message-id") or _first(fields, "original-message-id"))
    if not ids:
        return envelope
    return replace(envelope, in_reply_to=ids[0], references=[ids[0]])


def _without_resource_forks(attachments: list[AttachmentInfo]) -> list[AttachmentInfo]:
    """Drop the Mac resource fork of an AppleDouble file (RFC 1740): the first part of a
    multipart/appledouble, application/applefile, is Finder metadata listed under the file's
    own name, and downloading it gave a broken "report.pdf". The file itself is the part
    after it. A lone application/applefile (AppleSingle) holds the file and stays."""
    kept = []
    for index, attachment in enumerate(attachments):
        following = attachments[index + 1] if index + 1 < len(attachments) else None
        parent, _, number = attachment.part_id.rpartition(".")
        if (
            attachment.content_type == "application/applefile"
            and following is not None
            and number == "1"
            and following.part_id == f"{parent}.2"
            and attachment.filename in (None, following.filename)
        ):
            continue
        kept.append(attachment)
    return kept


def _attached_text(inner: ParsedMessage) -> str:
    """An attached message as a mail program shows it inline: a few header lines, its text."""

    def named(name: str, address: str) -> str:
        # Not email.utils.formataddr: it refuses a non-ASCII address (and the parse with it).
        return f"{name} <{address}>" if name and address else name or address

    lines = ["---------- Attached message ----------"]
    if inner.from_address or inner.from_name:
        lines.append(f"From: {named(inner.from_name, inner.from_address)}")
    if inner.date is not None:
        lines.append(f"Date: {inner.date.strftime('%a, %d %b %Y %H:%M %z')}")
    if inner.subject:
        lines.append(f"Subject: {inner.subject}")
    if inner.to:
        lines.append("To: " + ", ".join(named(*pair) for pair in inner.to[:10]))
    body = inner.text_body.strip() or "(no text)"
    return "\n".join(lines) + "\n\n" + body[: MAX_TEXT_CHARS // MAX_ATTACHED_SHOWN]


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw message bytes; never raises, failures give a best-effort result + parse_error."""
    try:
        return _parse(raw)
    except Exception as exc:  # R16: parsing never crashes and never loses mail
        try:
            fallback = parse_headers_only(raw)
            note = f"parse failed: {type(exc).__name__}: {str(exc)[:200]}"
            return _replace_error(fallback, note, headers_only=False)
        except Exception:
            return ParsedMessage(size=len(raw), parse_error=f"parse failed: {type(exc).__name__}")


def _replace_error(parsed: ParsedMessage, message: str, *, headers_only: bool) -> ParsedMessage:
    """Return parsed with message appended to parse_error and headers_only set."""
    error = f"{parsed.parse_error}; {message}" if parsed.parse_error else message
    return replace(parsed, parse_error=error, headers_only=headers_only)


def parse_headers_only(raw_header_bytes: bytes) -> ParsedMessage:
    """Parse just a header block (e.g. for an oversized-message placeholder); never raises."""
    try:
        errors: list[str] = []
        header_block, _ = _split_entity(_strip_mbox_line(raw_header_bytes), errors)
        envelope = _envelope(_parse_header_block(header_block, errors), errors)
        return replace(
            envelope,
            size=len(raw_header_bytes),
            parse_error=_error_text(errors),
            headers_only=True,
        )
    except Exception as exc:
        return ParsedMessage(
            size=len(raw_header_bytes),
            parse_error=f"header parse failed: {type(exc).__name__}",
            headers_only=True,
        )


def _header_fields(parsed: ParsedMessage) -> list[str]:
    date = parsed.date.isoformat() if parsed.date else ""
    first_to = parsed.to[0][1] if parsed.to else ""
    return [parsed.message_id or "", date, parsed.from_address, parsed.subject, first_to]


def _hash(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


_BODY_START = re.compile(rb"\r?\n\r?\n")


def body_digest(raw: bytes) -> str:
    """Return sha256 of the message body (everything after the header block).

    Line endings are normalized and trailing white space dropped, so the same message stored
    by two servers or two folders digests the same even where a server rewrote CRLF or added
    a header (Received, X-Spam...). A message without a blank line digests whole.
    """
    match = _BODY_START.search(raw)
    body = raw[match.end() :] if match else raw
    return hashlib.sha256(body.replace(b"\r\n", b"\n").rstrip()).hexdigest()


def dedup_key(raw: bytes) -> str:
    """Return a message's identity within one account (see mailsync/IDENTITY.md).

    The header fields (Message-ID, Date, From, Subject, first To) plus a digest of the body:
    the same message in two folders or under two Gmail labels is one message; two different
    mails that share those headers (forwarded copies, list resends, tools that reuse a
    Message-ID) stay two. The fields are read from the headers alone, without the body's
    charset hint parse_message uses for raw 8-bit headers, as header_key() reads them.
    """
    return identity_keys(raw)[0]


def identity_keys(raw: bytes) -> tuple[str, str | None]:
    """Return (dedup_key(raw), header_key(raw)) from one parse of the header block (a first
    sync computes both for every message)."""
    return _identity(parse_headers_only(raw), raw)


def _identity(envelope: ParsedMessage, raw: bytes) -> tuple[str, str | None]:
    fields = _header_fields(envelope)
    dedup = _hash(["v2", *fields, body_digest(raw)])
    return dedup, (_hash(fields) if fields[0] else None)


def parse_with_identity(raw: bytes) -> tuple[ParsedMessage, str, str | None]:
    """Return (parse_message(raw), *identity_keys(raw)), reading the header block once: a
    first sync needs all three for every message. Never raises."""
    try:
        parsed, envelope = _parse_with_envelope(raw)
    except Exception:
        return (parse_message(raw), *identity_keys(raw))
    return (parsed, *_identity(envelope, raw))


def placeholder_dedup_key(parsed: ParsedMessage, size: int) -> str:
    """Return the identity of an oversized message stored as headers only (no body digest):
    the header fields plus its exact size. `parsed` is a parse_headers_only() result."""
    return _hash(["v2-headers", *_header_fields(parsed), str(size)])


def header_key(raw: bytes) -> str | None:
    """Return the hash of the header fields alone, or None without a Message-ID.

    Not an identity: a *candidate* that lets sync link a new location to a stored message
    without downloading it, when the size agrees too (mailsync/IDENTITY.md). Equal to
    header_dedup_key() of the same message's header fields.
    """
    return _header_key(parse_headers_only(raw))


def _header_key(envelope: ParsedMessage) -> str | None:
    return _hash(_header_fields(envelope)) if envelope.message_id else None


# The header fields header_dedup_key reads: what a sync or a move FETCHes to know a mail
# without downloading it.
IDENTITY_HEADER_FIELDS = "MESSAGE-ID DATE FROM TO SUBJECT X-MICROSOFT-ORIGINAL-MESSAGE-ID"


def header_dedup_key(header_bytes: bytes) -> str | None:
    """Return header_key() from BODY.PEEK[HEADER.FIELDS (...)] bytes; None without a Message-ID.

    Equal to header_key(raw) for the same message, so a sync can find the stored copy of a
    message before downloading its body.
    """
    return _header_key(parse_headers_only(header_bytes))


def extract_part(raw: bytes, part_id: str) -> tuple[bytes, str, str | None]:
    """Return (decoded bytes, content type, filename) of one MIME leaf, or of a file
    uuencoded inside a text leaf ("<leaf>.uu<n>"); KeyError if absent."""
    packed = _PACKED_PART.match(part_id)
    if packed is not None:
        container, kind, number = packed.group(1), packed.group(2), int(packed.group(3))
        for leaf in _iter_leaves(raw, []):
            if leaf.part_id == container:
                if kind == "uu":
                    text = _leaf_text(leaf).replace("\r\n", "\n")
                    files = [(name, data) for _s, _e, name, data in _uu_files_in_text(text)]
                else:
                    files = _tnef_files(_tnef_package(_transfer_decode(leaf)))
                if 1 <= number <= len(files):
                    (info,) = _packed_attachments(container, [files[number - 1]], kind)
                    return files[number - 1][1], info.content_type, info.filename
        raise KeyError(part_id)
    for leaf in _iter_leaves(raw, []):
        if leaf.part_id == part_id:
            _, filename, _ = _leaf_meta(leaf)
            return _transfer_decode(leaf), leaf.content_type, filename
    raise KeyError(part_id)


def find_content_id(raw: bytes, cid: str) -> str | None:
    """Return the part id whose Content-ID matches cid (with or without <>/"cid:"), or None."""
    wanted = normalize_content_id(cid)
    if wanted is None:
        return None
    for leaf in _iter_leaves(raw, []):
        if normalize_content_id(_first(leaf.headers, "content-id")) == wanted:
            return leaf.part_id
    return None
