"""mailsync.parse: hand-made fixtures for every rule, then the whole shared corpus."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import imaplib
import itertools
import os
import random
import re
import shutil
import struct
import tempfile
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from asn1crypto import cms

from mailsync import parse
from mailsync.parse import (
    MAX_ADDRESSES,
    MAX_ATTACHED_SHOWN,
    MAX_DEPTH,
    MAX_PARTS,
    MAX_TNEF_DEPTH,
    AttachmentInfo,
    ParsedMessage,
    dedup_key,
    extract_part,
    find_content_id,
    header_dedup_key,
    header_key,
    identity_keys,
    parse_headers_only,
    parse_message,
    parse_with_identity,
)
from tests.corpus import corpus_dir, corpus_files, read_message, skip_reason
from tests.mail_fixtures import OUTLOOK_RTF, PNG_1X1, tnef_package

HEAD = (
    b"From: Alice Example <Alice@Example.COM>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Date: Tue, 07 Apr 2026 10:00:01 +0200\r\n"
    b"Message-ID: <Abc.123@Example.COM>\r\n"
)

# A guard against pathological (quadratic or endless) inputs, not a speed measurement:
# parse speed is measured in bench/parse_bench.py. Generous, so a loaded CI machine passes.
HANG_GUARD_SECONDS = 10


def raw_message(body: bytes, *, headers: bytes = HEAD, extra: bytes = b"") -> bytes:
    """Return a CRLF message with the default headers plus extra ones."""
    return headers + extra + b"\r\n" + body


def single_part(text: bytes, charset: str, *, subject: bytes = b"Test") -> bytes:
    """Return a text/plain message whose body is text declared in charset."""
    return raw_message(
        text,
        extra=b"Subject: "
        + subject
        + b"\r\nContent-Type: text/plain; charset="
        + charset.encode()
        + b"\r\nContent-Transfer-Encoding: 8bit\r\n",
    )


# --- headers -------------------------------------------------------------------------------


def test_plain_message_fields():
    parsed = parse_message(
        raw_message(
            b"Hello Bob,\r\n\r\nsee you   tomorrow.\r\n",
            extra=b"Subject: Re: Lunch\r\nCc: Carol <carol@example.org>, dave@example.org\r\n"
            b"In-Reply-To: <Prev.1@example.org>\r\nReferences: <root@example.org>\r\n"
            b' <Prev.1@example.org>\r\nReply-To: "Alice (work)" <a@work.example>\r\n',
        )
    )
    assert isinstance(parsed, ParsedMessage)
    assert parsed.message_id == "abc.123@example.com"
    assert parsed.subject == "Re: Lunch"
    assert (parsed.from_name, parsed.from_address) == ("Alice Example", "alice@example.com")
    assert parsed.to == [("Bob", "bob@example.org")]
    assert parsed.cc == [("Carol", "carol@example.org"), ("", "dave@example.org")]
    assert parsed.reply_to == [("Alice (work)", "a@work.example")]
    assert parsed.in_reply_to == "prev.1@example.org"
    assert parsed.references == ["root@example.org", "prev.1@example.org"]
    assert parsed.date == datetime(2026, 4, 7, 8, 0, 1, tzinfo=UTC)
    assert parsed.text_body == "Hello Bob,\n\nsee you   tomorrow.\n"
    assert parsed.snippet == "Hello Bob, see you tomorrow."
    assert parsed.html_body is None
    assert parsed.attachments == [] and not parsed.has_attachments
    assert parsed.parse_error is None and not parsed.headers_only


def test_parsed_message_is_frozen():
    parsed = parse_message(raw_message(b"x"))
    with pytest.raises(AttributeError):
        parsed.subject = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b"=?utf-8?B?0J/RgNC40LLQtdGC?=", "Привет"),
        (b"=?iso-8859-1?Q?Gr=FC=DFe_aus_K=F6ln?=", "Grüße aus Köln"),
        (b"=?ISO-2022-JP?B?GyRCJF4kXyRgJGEkYhsoQg==?=", "まみむめも"),
        (b"=?windows-1255?B?+ezl7Q==?=", "שלום"),
        (b"=?gb2312?B?xOO6ww==?=", "你好"),
        (b"=?utf-8?Q?caf=C3?= =?utf-8?Q?=A9?= ok", "café ok"),  # split multibyte char
        (b"=?utf-8*en?Q?hi?=", "hi"),  # RFC 2231 language tag
        (b"=?x-unknown?Q?plain?=", "plain"),
        (b"=?_iso-2022-jp$ESC?B?GyRCJF4kXyRgJGEkYhsoQg==?=", "まみむめも"),
        (b"=?bogus-charset?Q?na=EFve?=", "naïve"),
    ],
)
def test_rfc2047_subjects(encoded, expected):
    parsed = parse_message(raw_message(b"x", extra=b"Subject: " + encoded + b"\r\n"))
    assert parsed.subject == expected


def test_subject_nul_removed_whitespace_collapsed_and_truncated():
    parsed = parse_message(raw_message(b"x", extra=b"Subject: a\x00b\r\n  " + b"y" * 400 + b"\r\n"))
    assert "\x00" not in parsed.subject
    assert parsed.subject.startswith("ab y")
    assert len(parsed.subject) == 255


def test_raw_8bit_headers_utf8_and_latin1():
    utf8 = parse_message(
        raw_message(
            b"x",
            extra="Subject: Grüße\r\n".encode(),
            headers=HEAD.replace(b"Alice Example", "Jörg Müller".encode()),
        )
    )
    assert utf8.subject == "Grüße" and utf8.from_name == "Jörg Müller"
    latin = parse_message(raw_message(b"x", extra="Subject: Grüße\r\n".encode("latin-1")))
    assert latin.subject == "Grüße"


def test_missing_message_id_and_date():
    parsed = parse_message(b"From: a@example.com\r\nSubject: hi\r\n\r\nbody")
    assert parsed.message_id is None and parsed.date is None
    assert parsed.text_body == "body"


@pytest.mark.parametrize(
    "value",
    [b"yesterday", b"Mon, 32 Foo 99999 25:61:00 +9999", b"", b"Tue, 07 Apr 1700 10:00 +0000"],
)
def test_garbage_date_is_none(value):
    headers = HEAD.replace(b"Tue, 07 Apr 2026 10:00:01 +0200", value)
    assert parse_message(raw_message(b"x", headers=headers)).date is None


def test_naive_date_is_utc():
    headers = HEAD.replace(b"+0200", b"-0000")
    assert parse_message(raw_message(b"x", headers=headers)).date.tzinfo is UTC


@pytest.mark.parametrize("value", [b"no-at-sign", b"<>", b"   ", b"<" + b"a" * 1000 + b"@x>"])
def test_garbage_message_id_is_none(value):
    headers = HEAD.replace(b"<Abc.123@Example.COM>", value)
    assert parse_message(raw_message(b"x", headers=headers)).message_id is None


def test_alias_message_ids():
    parsed = parse_message(
        raw_message(
            b"x",
            extra=b"X-Microsoft-Original-Message-ID: <Orig@Outlook.example>\r\n"
            b"X-MS-Exchange-Parent-Message-Id: <parent@exchange.example>\r\n",
        )
    )
    assert parsed.alias_message_ids == ["orig@outlook.example", "parent@exchange.example"]


def test_references_capped_to_last_50():
    refs = b" ".join(b"<r%d@example.org>" % i for i in range(80))
    parsed = parse_message(raw_message(b"x", extra=b"References: " + refs + b"\r\n"))
    assert len(parsed.references) == 50
    assert parsed.references[-1] == "r79@example.org" and parsed.references[0] == "r30@example.org"


def test_5000_recipients_truncated_with_parse_error():
    to = b", ".join(b"User %d <user%d@example.org>" % (i, i) for i in range(5000))
    started = time.perf_counter()
    parsed = parse_message(raw_message(b"x", extra=b"Cc: " + to + b"\r\n"))
    assert time.perf_counter() - started < HANG_GUARD_SECONDS
    assert len(parsed.cc) == MAX_ADDRESSES
    assert parsed.cc[0] == ("User 0", "user0@example.org")
    assert "cc" in parsed.parse_error
    assert parsed.to == [("Bob", "bob@example.org")]
    assert parsed.cc_total == 5000 and parsed.to_total == 1  # what "and N more" counts


@pytest.mark.parametrize("count", [3, 499, 500, 501, 1200, 5000, 20000])
def test_recipient_totals_match_the_standard_library(count):
    """Differential: the header's address count equals what email.utils.getaddresses finds."""
    from email import message_from_bytes
    from email.utils import getaddresses

    names = (
        b"User %d <user%d@example.org>",
        b'"Doe, J %d" <j%d@example.org>',
        b"u%d@x%d.test",
        b'"a%d@example.org" <a%d@example.org>',  # Outlook: the address as display name
    )
    to = b", ".join(names[i % 4] % (i, i) for i in range(count))
    raw = raw_message(b"x", extra=b"Cc: " + to + b"\r\n")
    reference = len(getaddresses(message_from_bytes(raw).get_all("cc")))
    parsed = parse_message(raw)
    assert reference == count
    assert parsed.cc_total == count
    assert len(parsed.cc) == min(count, MAX_ADDRESSES)


def test_encoded_display_name_and_group_syntax():
    parsed = parse_message(
        raw_message(
            b"x",
            headers=b"From: =?utf-8?Q?J=C3=B6rg?= <JOERG@example.com>\r\n"
            b"To: undisclosed-recipients:;\r\n",
        )
    )
    assert (parsed.from_name, parsed.from_address) == ("Jörg", "joerg@example.com")
    assert parsed.to == []


def test_nul_bytes_anywhere():
    parsed = parse_message(raw_message(b"he\x00llo\x00", extra=b"Subject: N\x00UL\r\n"))
    assert parsed.subject == "NUL"
    assert parsed.text_body == "hello"


def test_mbox_from_line_is_skipped():
    parsed = parse_message(b"From alice@example.com Sat Jan  3 01:05:34 1996\n" + HEAD + b"\r\nhi")
    assert parsed.from_address == "alice@example.com" and parsed.text_body == "hi"


# --- charsets (SECURITY.md R17) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "label"),
    [
        ("שלום עולם", "cp1255", "windows-1255"),
        ("שלום עולם", "iso-8859-8", "ISO-8859-8-I"),
        ("مرحبا بالعالم", "cp1256", "windows-1256"),
        ("你好，世界 朱镕基", "gbk", "GB2312"),  # 镕 is a GBK-only character
        ("你好", "gb18030", "gb18030"),
        ("สวัสดีครับ", "tis-620", "TIS-620"),
        ("สวัสดีครับ", "cp874", "windows-874"),
        ("안녕하세요", "cp949", "ks_c_5601-1987"),
        ("Grüße", "utf-8", "utf8"),
        ("Grüße", "utf-16-be", "unicodeFFFE".replace("FFFE", "big")),
        ("Grüße", "cp1252", "iso-8859-1"),
        ("まみむめも", "iso-2022-jp", '"_iso-2022-jp$ESC"'),
        ("Grüße", "cp1252", '"charset=windows-1252"'),
    ],
)
def test_charset_aliases_decode(text, encoding, label):
    parsed = parse_message(single_part(text.encode(encoding), label))
    assert parsed.text_body == text
    assert parsed.parse_error is None


@pytest.mark.parametrize("label", ["unknown-8bit", "x-unknown", "", "no-such-charset", "base64"])
def test_unknown_charset_tries_utf8_then_cp1252(label):
    assert parse_message(single_part("Grüße".encode(), label)).text_body == "Grüße"
    assert parse_message(single_part("Grüße".encode("cp1252"), label)).text_body == "Grüße"


def test_invalid_bytes_in_declared_charset_are_replaced():
    parsed = parse_message(single_part(b"ok \xff\xfe end", "utf-8"))
    assert parsed.text_body.startswith("ok ") and parsed.text_body.endswith(" end")


def test_rtl_hint():
    assert parse_message(single_part("שלום".encode("cp1255"), "windows-1255")).is_rtl_hint
    assert not parse_message(single_part(b"hello", "us-ascii")).is_rtl_hint


# --- bodies and attachments ---------------------------------------------------------------


def make_email(subject: str = "Report") -> EmailMessage:
    """Return an EmailMessage with the usual headers set."""
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = "bob@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = "<m1@example.com>"
    msg["Date"] = "Tue, 07 Apr 2026 10:00:01 +0000"
    return msg


def test_html_only_derives_text():
    msg = make_email()
    msg.set_content(
        "<html><head><style>p{color:red}</style><title>T</title></head><body>"
        "<p>Hello&nbsp;<b>Bob</b></p><script>alert(1)</script><p>Line&amp;two</p></body></html>",
        subtype="html",
    )
    parsed = parse_message(msg.as_bytes())
    assert "<script>alert(1)</script>" in parsed.html_body  # raw, unsanitized
    assert "Hello Bob" in parsed.text_body and "Line&two" in parsed.text_body
    assert "alert" not in parsed.text_body and "color" not in parsed.text_body
    assert parsed.snippet == "Hello Bob Line&two"


def test_multipart_alternative_picks_both_renderings():
    msg = make_email()
    msg.set_content("plain version")
    msg.add_alternative("<p>html version</p>", subtype="html")
    parsed = parse_message(msg.as_bytes())
    assert parsed.text_body.strip() == "plain version"
    assert parsed.html_body.strip() == "<p>html version</p>"
    assert parsed.attachments == []


def test_attachments_metadata_and_extract():
    msg = make_email()
    msg.set_content("see attached")
    pdf = b"%PDF-1.4 " + bytes(range(256)) * 200
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="מסמך חשוב.pdf")
    msg.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="data.csv")
    raw = msg.as_bytes()
    assert b"filename*=utf-8''" in raw  # really RFC 2231 encoded
    parsed = parse_message(raw)
    assert parsed.text_body.strip() == "see attached"
    assert parsed.has_attachments
    first, second = parsed.attachments
    assert isinstance(first, AttachmentInfo)
    assert (first.part_id, first.filename, first.content_type) == (
        "2",
        "מסמך חשוב.pdf",
        "application/pdf",
    )
    assert not first.is_inline and first.content_id is None
    assert abs(first.size - len(pdf)) <= len(pdf) // 50
    assert (second.part_id, second.filename, second.content_type) == ("3", "data.csv", "text/csv")
    assert extract_part(raw, "2") == (pdf, "application/pdf", "מסמך חשוב.pdf")
    assert extract_part(raw, "3")[0] == b"a,b\n1,2\n"
    with pytest.raises(KeyError):
        extract_part(raw, "9")


def test_rfc2231_continuations_and_quoted_printable_part():
    raw = raw_message(
        b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*0*=utf-8''%D7%9E%D7%A1;\r\n"
        b' filename*1*=%D7%9E%D7%9A; filename*2=".txt"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nsoft=\r\nbreak=3D\r\n--b--\r\n",
        extra=b"Content-Type: multipart/mixed; boundary=b\r\n",
    )
    parsed = parse_message(raw)
    assert parsed.attachments[0].filename == "מסמך.txt"
    assert extract_part(raw, "2")[0] == b"softbreak="


def test_inline_cid_image_in_related():
    msg = make_email()
    msg.set_content("text")
    msg.add_alternative('<p><img src="cid:logo@Example.COM"></p>', subtype="html")
    html_part = msg.get_payload()[1]
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300
    html_part.add_related(png, maintype="image", subtype="png", cid="<logo@Example.COM>")
    raw = msg.as_bytes()
    parsed = parse_message(raw)
    assert parsed.html_body is not None and "cid:logo" in parsed.html_body
    (image,) = parsed.attachments
    assert image.content_id == "logo@example.com" and image.is_inline
    assert image.content_type == "image/png"
    assert not parsed.has_attachments  # inline images are not "attachments" for the paperclip
    part_id = find_content_id(raw, "cid:logo@example.com")
    assert part_id == image.part_id == "2.2"
    assert find_content_id(raw, "<LOGO@example.com>") == part_id
    assert find_content_id(raw, "cid:logo%40example.com") == part_id  # URL-escaped (RFC 2392)
    assert find_content_id(raw, "missing@x") is None
    assert extract_part(raw, part_id)[:2] == (png, "image/png")


def test_inline_means_referenced_from_html():
    msg = make_email()
    msg.set_content("text")
    msg.add_alternative("<p>no images here</p>", subtype="html")
    msg.add_attachment(
        b"%PDF",
        maintype="application",
        subtype="pdf",
        filename="a.pdf",
        disposition="inline",
        cid="<pdf@x>",
    )
    (pdf,) = parse_message(msg.as_bytes()).attachments
    assert not pdf.is_inline and pdf.content_id == "pdf@x"


@pytest.mark.parametrize(
    "html",
    ["<" * 300_000, "<p" * 100_000, "<!--" * 50_000, "<script>" * 50_000, "<a href='" * 50_000],
)
def test_pathological_html_is_linear(html):
    raw = raw_message(html.encode(), extra=b"Content-Type: text/html\r\n")
    started = time.perf_counter()
    parse_message(raw)
    assert time.perf_counter() - started < HANG_GUARD_SECONDS


@pytest.mark.parametrize(
    "value",
    [b"a" + b" " * 100_000 + b"b <x@y>", b'"' + b"n " * 50_000 + b'" <x@y>', b"x@y" * 100_000],
)
def test_pathological_address_headers_are_fast(value):
    started = time.perf_counter()
    parse_message(raw_message(b"x", extra=b"Cc: " + value + b"\r\n"))
    assert time.perf_counter() - started < HANG_GUARD_SECONDS


def test_attachments_are_not_decoded_during_parse(monkeypatch):
    msg = make_email()
    msg.set_content("x")
    msg.add_attachment(b"\x00" * 60_000, maintype="application", subtype="zip", filename="a.zip")
    raw = msg.as_bytes()
    import binascii

    calls = []
    real = binascii.a2b_base64
    monkeypatch.setattr(binascii, "a2b_base64", lambda data, **kw: calls.append(1) or real(data))
    parsed = parse_message(raw)
    assert not calls
    assert abs(parsed.attachments[0].size - 60_000) < 600


def test_forwarded_message_is_an_attachment():
    inner = make_email("Original topic")
    inner.set_content("inner body")
    outer = make_email("Fwd: Original topic")
    outer.set_content("see below")
    outer.add_attachment(inner)
    parsed = parse_message(outer.as_bytes())
    assert parsed.text_body.strip() == "see below"
    assert [(a.content_type, a.filename) for a in parsed.attachments] == [
        ("message/rfc822", "Original topic.eml")
    ]


def test_single_part_base64_and_meta_charset_html():
    body = base64.encodebytes(
        b'<meta charset="windows-1256"><p>' + "مرحبا".encode("cp1256") + b"</p>"
    )
    raw = raw_message(
        body, extra=b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n"
    )
    parsed = parse_message(raw)
    assert "مرحبا" in parsed.html_body and parsed.text_body == "مرحبا"


def test_missing_closing_boundary_and_no_boundary_found():
    open_ended = raw_message(
        b"--b\r\nContent-Type: text/plain\r\n\r\nstill here",
        extra=b"Content-Type: multipart/mixed; boundary=b\r\n",
    )
    assert parse_message(open_ended).text_body == "still here"
    never = raw_message(b"just text", extra=b"Content-Type: multipart/mixed; boundary=zz\r\n")
    assert parse_message(never).text_body == "just text"


# --- limits and robustness (SECURITY.md R16) ----------------------------------------------


def nested(depth: int) -> bytes:
    """Return a message with multiparts nested depth levels deep."""
    body = b"Content-Type: text/plain\r\n\r\ndeepest\r\n"
    for level in range(depth, 0, -1):
        boundary = b"b%d" % level
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + boundary
            + b"\r\n\r\n--"
            + boundary
            + b"\r\n"
            + body
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
    return HEAD + body


def test_nesting_depth_limit():
    assert parse_message(nested(10)).text_body.strip() == "deepest"
    parsed = parse_message(nested(MAX_DEPTH + 20))
    assert "nesting" in parsed.parse_error
    assert parsed.message_id == "abc.123@example.com"


def test_part_count_limit():
    parts = b"".join(
        b"--b\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n"
        for _ in range(MAX_PARTS + 100)
    )
    raw = raw_message(parts + b"--b--\r\n", extra=b"Content-Type: multipart/mixed; boundary=b\r\n")
    parsed = parse_message(raw)
    assert "parts" in parsed.parse_error
    assert len(parsed.attachments) < MAX_PARTS


def test_huge_header_block_is_truncated():
    raw = HEAD + b"X-Junk: " + b"a" * 2_000_000
    parsed = parse_message(raw)
    assert parsed.message_id == "abc.123@example.com"
    assert "header" in parsed.parse_error


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"no headers at all, just text",
        b"\x00\xff\xfe" * 100,
        bytes(range(256)) * 50,
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n",
        b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n--a\r\n--a\r\n--a--',
        b"Content-Type: text/plain; charset=undefined\r\n\r\n\xff",
        b"Content-Type: text/plain; charset=rot13\r\n\r\nuryyb",
        b"Content-Transfer-Encoding: base64\r\n\r\n====!!!",
        b"Subject: =?utf-8?B?####?= =?utf-8?Q?=ZZ?=\r\n\r\n",
        b"Content-Disposition: attachment; filename*=\"''%\"\r\n\r\n",
    ],
)
def test_never_raises_on_garbage(raw):
    parsed = parse_message(raw)
    assert isinstance(parsed, ParsedMessage)
    assert isinstance(parsed.subject, str)


def test_unexpected_exception_gives_best_effort_result(monkeypatch):
    import mailsync.parse as parse_module

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(parse_module, "_leaf_meta", boom)
    parsed = parse_message(raw_message(b"x", extra=b"Subject: still here\r\n"))
    assert parsed.subject == "still here"
    assert "RuntimeError" in parsed.parse_error


def test_parse_headers_only():
    parsed = parse_headers_only(HEAD + b"Subject: big one\r\n\r\n")
    assert parsed.headers_only and parsed.subject == "big one"
    assert parsed.message_id == "abc.123@example.com" and parsed.text_body == ""


# --- dedup keys (SYNC.md §7) --------------------------------------------------------------


def header_fields(raw: bytes) -> bytes:
    """Mimic an IMAP server's BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]."""
    lines = re.split(rb"\r?\n", raw)
    wanted = {b"message-id", b"date", b"from", b"to", b"subject"}
    out: list[bytes] = []
    keep = False
    for line in lines:
        if line == b"":
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        keep = line.split(b":", 1)[0].strip().lower() in wanted
        if keep:
            out.append(line)
    return b"\r\n".join(out) + b"\r\n\r\n"


def test_dedup_key_ignores_added_headers_and_line_endings_but_not_content():
    one = raw_message(b"body", extra=b"Subject: S\r\nReceived: from a\r\n")
    two = b"Received: from b\r\n" + raw_message(b"body  ", extra=b"Subject: S\r\n")
    lf = one.replace(b"\r\n", b"\n")
    key = dedup_key(one)
    assert key == dedup_key(two) == dedup_key(lf)
    other = raw_message(b"body", extra=b"Subject: Different\r\n")
    assert key != dedup_key(other)
    # Same Message-ID, Date, From, Subject and To, other content: another mail (issue 10.4).
    resent = raw_message(b"body, with a list footer", extra=b"Subject: S\r\n")
    assert key != dedup_key(resent)


def test_dedup_key_without_message_id_still_covers_headers_and_body():
    raw = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody"
    other = b"From: a@example.com\r\nSubject: hi\r\n\r\nanother body"
    assert dedup_key(raw) != dedup_key(other)
    assert header_dedup_key(header_fields(raw)) is None and header_key(raw) is None


def test_header_dedup_key_matches_header_key():
    raw = raw_message(b"x", extra=b"Subject: =?utf-8?Q?Gr=C3=BC=C3=9Fe?=\r\n\tcontinued\r\n")
    assert header_dedup_key(header_fields(raw)) == header_key(raw) is not None


def test_identity_keys_are_those_already_stored():
    """Stored rows carry these keys: a changed formula would split every stored message
    from its next copy (mailsync/IDENTITY.md). The values were computed by the release
    that first stored them (two separate header parses, before identity_keys)."""
    raw = (
        b"From: Ann <ann@example.com>\r\nTo: bob@example.org\r\n"
        b"Subject: =?utf-8?Q?Gr=C3=BC=C3=9Fe?=\r\nDate: Tue, 07 Apr 2026 10:00:01 +0200\r\n"
        b"Message-ID: <pin.1@example.com>\r\n\r\nHello Bob,\r\nsee you.\r\n"
    )
    assert identity_keys(raw) == (
        "251f2fdceb7c2ba42b482739b124a951c784925085db6c63465e19f0b2b1783d",
        "c4d6526cccc511edd6edc53841f657908ebbaf5f735396e1fd2c31771036abdf",
    )
    assert identity_keys(raw) == (dedup_key(raw), header_key(raw))


def _mail_with_raw_headers(rng: random.Random) -> bytes:
    """A message whose headers may hold raw 8-bit text in another charset than the body's,
    sometimes multipart, sometimes broken: where reading the headers alone and reading them
    with the body's charset differ."""
    texts = ["Grüße aus Köln", "报价单 第二版", "見積書のご案内", "Ofertă", "plain words"]
    codecs = ["utf-8", "gb2312", "shift_jis", "iso-8859-2", "cp1252"]

    def raw_text() -> bytes:
        text, codec = rng.choice(texts), rng.choice(codecs)
        return text.encode(codec, "replace") if rng.random() < 0.8 else os.urandom(6)

    name = raw_text().replace(b"\r", b"").replace(b"\n", b"").replace(b"<", b"")
    head = (
        b"From: " + name + b" <anna@example.com>\r\n"
        b"To: " + raw_text() + b" <bob@example.org>\r\n"
        b"Subject: " + raw_text() + b"\r\n"
        b"Date: Tue, 07 Apr 2026 10:00:01 +0200\r\n"
    )
    if rng.random() < 0.7:
        head += b"Message-ID: <m." + str(rng.randrange(10**6)).encode() + b"@example.com>\r\n"
    charset = rng.choice(["gb2312", "shift_jis", "iso-8859-2", "utf-8", "x-bogus", None])
    declared = b"; charset=" + charset.encode() if charset else b""
    body = raw_text() + b"\r\n"
    shape = rng.choice(["single", "multipart", "broken"])
    if shape == "single":
        return head + b"Content-Type: text/plain" + declared + b"\r\n\r\n" + body
    boundary = b"b1" if shape == "multipart" else b"missing"
    return (
        head
        + b'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n--'
        + boundary
        + b"\r\nContent-Type: text/plain"
        + declared
        + b"\r\n\r\n"
        + body
        + b"--b1--\r\n"
    )


def test_parse_with_identity_equals_the_parse_and_keys_apart():
    """A first sync reads the header block once for the parse and the identity keys; the
    result is the two functions' own, also where the body's charset changes how raw 8-bit
    headers read (the identity keys read them without it)."""
    rng = random.Random(1414)
    hinted = 0
    for _ in range(400):
        raw = _mail_with_raw_headers(rng)
        parsed, key, candidate = parse_with_identity(raw)
        assert (parsed, key, candidate) == (parse_message(raw), *identity_keys(raw)), raw
        hinted += parsed.subject != parse_headers_only(raw).subject
    assert hinted > 20  # the case where the two readings differ was exercised


@pytest.mark.skipif(not corpus_files(), reason=skip_reason())
def test_parse_with_identity_equals_the_parse_and_keys_apart_on_the_corpus():
    for path in corpus_files():
        raw = read_message(path)
        assert parse_with_identity(raw) == (parse_message(raw), *identity_keys(raw)), path.name


# --- corpus ------------------------------------------------------------------------------

CORPUS = corpus_files()
CORE_SUBSET = (corpus_dir() or Path("/nonexistent")) / "CORE_SUBSET.txt"


@pytest.mark.skipif(not CORPUS, reason=skip_reason())
@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_message(path):
    raw = read_message(path)
    started = time.perf_counter()
    parsed = parse_message(raw)
    elapsed = time.perf_counter() - started
    assert isinstance(parsed, ParsedMessage)
    assert isinstance(parsed.subject, str) and isinstance(parsed.text_body, str)
    assert "\x00" not in parsed.subject + parsed.text_body
    assert elapsed < HANG_GUARD_SECONDS, f"{path.name} took {elapsed:.2f}s"
    assert parsed.date is None or parsed.date.tzinfo is UTC
    if parsed.message_id:
        assert header_dedup_key(header_fields(raw)) == header_key(raw)
    assert identity_keys(raw)[1] == header_key(raw)
    for attachment in parsed.attachments[:5]:
        data, content_type, _ = extract_part(raw, attachment.part_id)
        assert isinstance(data, bytes) and content_type == attachment.content_type


@pytest.mark.skipif(not CORPUS, reason=skip_reason())
def test_corpus_known_decodings():
    by_name = {p.name: p for p in CORPUS}
    name = "mikelmail__spec__fixtures__emails__multi_charset__japanese_iso_2022.eml"
    parsed = parse_message(read_message(by_name[name]))
    assert parsed.subject == "まみむめも" and "すみません" in parsed.text_body
    endless = [p for p in CORPUS if p.name.endswith("enclosed-endless.eml")]
    assert endless and parse_message(read_message(endless[0])).subject == "Wow"


# --- real server: the header-only key must match what Dovecot returns ---------------------

DOVECOT_IMAP = Path("/usr/lib/dovecot/imap")


@pytest.fixture
def dovecot_preauth():
    """Yield an imaplib connection to a preauthenticated Dovecot imap process over a pipe."""
    if not DOVECOT_IMAP.exists():
        pytest.skip("dovecot-imapd is not installed")
    # Not pytest's tmp_path: as root it lives in a 0700 directory that "nobody" cannot enter.
    with tempfile.TemporaryDirectory(prefix="threadline-parse-imap-") as tmp:
        home = Path(tmp)
        (home / "Maildir").mkdir()
        conf = home / "dovecot.conf"
        conf.write_text(
            f"base_dir = {home}/run\nstate_dir = {home}/state\nlog_path = {home}/log\n"
            f"mail_location = maildir:{home}/Maildir\nssl = no\nprotocols = imap\n"
        )
        command = f"env USER=mailtest HOME={home} {DOVECOT_IMAP} -c {conf}"
        if os.geteuid() == 0:  # Dovecot refuses mail access as root: run as nobody
            for path in (home, home / "Maildir", conf):
                shutil.chown(path, "nobody", "nogroup")
            command = f"setpriv --reuid=nobody --regid=nogroup --clear-groups {command}"
        imaplib._MAXLINE = 50_000_000  # big literals arrive as one line (SYNC.md §5)
        conn = imaplib.IMAP4_stream(command)
        conn.select("INBOX")
        yield conn
        conn.logout()


@pytest.mark.imap
@pytest.mark.skipif(not CORPUS, reason=skip_reason())
def test_header_dedup_key_matches_dovecot_header_fields(dovecot_preauth):
    subset = set(CORE_SUBSET.read_text().split()) if CORE_SUBSET.exists() else set()
    checked = 0
    for path in [p for p in CORPUS if p.name in subset]:
        raw = read_message(path)
        typ, data = dovecot_preauth.append("INBOX", None, None, raw)
        assert typ == "OK", path.name
        uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
        _, response = dovecot_preauth.uid(
            "FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)] BODY.PEEK[])"
        )
        literals = {meta: body for meta, body in (r for r in response if isinstance(r, tuple))}
        header = next(body for meta, body in literals.items() if b"HEADER.FIELDS" in meta)
        full = next(body for meta, body in literals.items() if b"BODY[]" in meta)
        parsed = parse_message(full)
        if parsed.message_id:
            assert header_dedup_key(header) == header_key(full), path.name
            checked += 1
    assert checked > 50


# ---------------------------------------------------------------------------------------------
# Audit fixtures: attachments, degraded bodies, charsets


def part(headers: bytes, body: bytes) -> bytes:
    """Return one MIME entity: its header lines (CRLF-separated) and body."""
    return headers + b"\r\n\r\n" + body


def multipart(subtype: str, boundary: str, *parts: bytes) -> bytes:
    """Return a multipart entity (headers included) with the given parts."""
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\r\n" + p + b"\r\n" for p in parts) + delimiter + b"--\r\n"
    return part(f"Content-Type: multipart/{subtype}; boundary={boundary}".encode(), body)


def message_of(entity: bytes, *, headers: bytes = HEAD) -> bytes:
    """Return a message whose top-level entity is `entity` (its headers join the message's)."""
    return headers + entity


def message_with_file(headers: bytes, body: bytes, *, text: bytes = b"see the file") -> bytes:
    """A mail with a short text and one file part (`headers`, `body`)."""
    return message_of(
        multipart("mixed", "outer", part(b"Content-Type: text/plain", text), part(headers, body))
    )


# Apple Mail: text/* attachments inside the related part of an alternative.
APPLE_ALTERNATIVE = multipart(
    "alternative",
    "alt",
    part(b"Content-Type: text/plain", b"see the notes"),
    multipart(
        "related",
        "rel",
        part(b"Content-Type: text/html", b"<p>see the notes</p>"),
        part(
            b'Content-Type: text/plain; name="notes.txt"\r\n'
            b'Content-Disposition: inline; filename="notes.txt"',
            b"the notes",
        ),
        part(b'Content-Type: text/x-vcard; name="ann.vcf"', b"BEGIN:VCARD"),
        part(
            b'Content-Type: application/pdf; name="a.pdf"\r\nContent-Disposition: attachment',
            b"%PDF",
        ),
    ),
)


def test_attachments_inside_multipart_alternative_are_listed():
    apple = message_of(APPLE_ALTERNATIVE)
    # Thunderbird, "Detach attachment": the parts become text stubs that keep their names.
    thunderbird = message_of(
        multipart(
            "alternative",
            "alt",
            part(b"Content-Type: text/plain", b"hello"),
            part(b"Content-Type: text/html", b"<p>hello</p>"),
            part(
                b'Content-Type: text/plain; charset=UTF-8; name="report.pdf"\r\n'
                b'Content-Disposition: attachment; filename="report.pdf"\r\n'
                b"X-Mozilla-External-Attachment-URL: file:///home/a/report.pdf",
                b"You detached this attachment.",
            ),
            part(
                b'Content-Type: text/x-moz-deleted; name="Deleted: b.doc"\r\n'
                b'Content-Disposition: attachment; filename="Deleted: b.doc"',
                b"You deleted this attachment.",
            ),
        )
    )
    parsed = parse_message(apple)
    assert [(a.part_id, a.filename) for a in parsed.attachments] == [
        ("2.2", "notes.txt"),
        ("2.3", "ann.vcf"),
        ("2.4", "a.pdf"),
    ]
    assert (parsed.text_body, parsed.html_body) == ("see the notes", "<p>see the notes</p>")
    assert extract_part(apple, "2.2")[0] == b"the notes"
    parsed = parse_message(thunderbird)
    assert [(a.part_id, a.filename) for a in parsed.attachments] == [
        ("3", "report.pdf"),
        ("4", "Deleted: b.doc"),
    ]
    assert (parsed.text_body, parsed.html_body) == ("hello", "<p>hello</p>")
    assert extract_part(thunderbird, "3")[0] == b"You detached this attachment."


def test_other_renderings_of_an_alternative_are_still_not_attachments():
    raw = message_of(
        multipart(
            "alternative",
            "alt",
            part(b"Content-Type: text/plain", b"plain"),
            part(b"Content-Type: text/enriched", b"<bold>rich</bold>"),
            part(b"Content-Type: text/html", b"<b>html</b>"),
        )
    )
    assert parse_message(raw).attachments == []


def test_huge_header_block_keeps_the_body():
    raw = HEAD + b"X-Junk: " + b"a" * 2_000_000 + b"\r\nSubject: Hi\r\n\r\nthe body"
    parsed = parse_message(raw)
    assert (parsed.subject, parsed.text_body) == ("Hi", "the body")


def test_huge_subject_is_cut_and_the_structure_kept():
    entity = multipart(
        "mixed",
        "b",
        part(b"Content-Type: text/plain", b"the body"),
        part(b'Content-Type: application/pdf; name="a.pdf"', b"%PDF"),
    )
    raw = message_of(entity, headers=HEAD + b"Subject: " + b"s" * 1_000_000 + b"\r\n")
    parsed = parse_message(raw)
    assert parsed.subject == "s" * 255
    assert parsed.text_body == "the body"
    assert [a.filename for a in parsed.attachments] == ["a.pdf"]


def test_text_beyond_the_depth_limit_is_kept_and_siblings_too():
    assert parse_message(nested(MAX_DEPTH + 20)).text_body.strip() == "deepest"
    deep = nested(MAX_DEPTH + 5)[len(HEAD) :]
    raw = message_of(
        multipart(
            "mixed",
            "top",
            deep.rstrip(b"\r\n"),
            part(b"Content-Type: text/plain", b"sibling"),
            part(b'Content-Type: application/pdf; name="a.pdf"', b"%PDF"),
        )
    )
    parsed = parse_message(raw)
    assert parsed.text_body.split() == ["deepest", "sibling"]
    assert [a.filename for a in parsed.attachments] == ["a.pdf"]
    assert "nesting" in parsed.parse_error


@pytest.mark.parametrize(
    "content_type",
    [b"multipart/mixed; boundary=declared", b"multipart/mixed", b"multipart/mixed; boundary="],
)
def test_multipart_with_unusable_boundary_recovers_its_parts(content_type):
    body = (
        b"--real\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
        b'--real\r\nContent-Type: application/pdf; name="a.pdf"\r\n\r\n%PDF\r\n--real--\r\n'
    )
    parsed = parse_message(raw_message(body, extra=b"Content-Type: " + content_type + b"\r\n"))
    assert parsed.text_body == "first part"
    assert [a.filename for a in parsed.attachments] == ["a.pdf"]


def test_multipart_without_any_delimiter_shows_its_text_without_mime_headers():
    body = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\nonly text"
    raw = raw_message(body, extra=b"Content-Type: multipart/mixed; boundary=zz\r\n")
    assert parse_message(raw).text_body == "only text"


def test_text_labelled_utf8_but_written_in_latin1_keeps_every_character():
    assert parse_message(single_part("Grüße, café".encode("latin-1"), "utf-8")).text_body == (
        "Grüße, café"
    )
    mixed = "Grüße ".encode() + "café ".encode("cp1252") + "€".encode()
    assert parse_message(single_part(mixed, "utf-8")).text_body == "Grüße café €"


def test_one_bad_byte_in_a_multibyte_charset_spoils_only_itself():
    data = "日本語".encode("shift_jis") + b"\xff" + "テキスト".encode("shift_jis")
    text = parse_message(single_part(data, "shift_jis")).text_body
    assert text.startswith("日本語") and text.endswith("テキスト")
    assert "\ufffd" not in text


@pytest.mark.parametrize(("encoding", "label"), [("big5", "big5"), ("gb2312", "GB2312")])
def test_raw_8bit_headers_use_the_body_charset(encoding, label):
    subject, name = "會議通知" if encoding == "big5" else "会议通知", "王小明"
    headers = (
        b"From: " + name.encode(encoding) + b" <wang@example.cn>\r\n"
        b"Subject: " + subject.encode(encoding) + b"\r\nMessage-ID: <big5@x>\r\n"
    )
    entity = multipart(
        "mixed",
        "b",
        part(f"Content-Type: text/plain; charset={label}".encode(), "正文".encode(encoding)),
    )
    raw = message_of(entity, headers=headers)
    parsed = parse_message(raw)
    assert (parsed.subject, parsed.from_name) == (subject, name)
    # The dedup key is computed from the headers alone, as the sync's header-only fetch is.
    assert header_dedup_key(header_fields(raw)) == header_key(raw)


def test_iso_2022_jp_with_nec_special_characters():
    jis = b"\x1b$B-b\x1b(B1 \x1b$B2q5D\x1b(B"  # "№1 会議": № is NEC row 13, as in CP50221
    encoded = b"=?ISO-2022-JP?B?" + base64.b64encode(jis) + b"?="
    parsed = parse_message(
        raw_message(
            jis,
            extra=b"Subject: " + encoded + b"\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\n",
        )
    )
    assert parsed.subject == "№1 会議"
    assert parsed.text_body == "№1 会議"


def test_a_named_single_part_message_is_shown_and_offered():
    raw = raw_message(b"the notes", extra=b'Content-Type: text/plain; name="notes.txt"\r\n')
    parsed = parse_message(raw)
    assert parsed.text_body == "the notes"
    assert [(a.part_id, a.filename) for a in parsed.attachments] == [("1", "notes.txt")]
    assert extract_part(raw, "1")[0] == b"the notes"


def test_addresses_run_together_are_kept_apart():
    parsed = parse_message(raw_message(b"x", headers=b"From: a@x.test b@x.test\r\n"))
    assert parsed.from_address == "a@x.test"
    raw = raw_message(b"x", headers=b"To: c@x.test d@x.test, Ann <ann@x.test>\r\n")
    to = parse_message(raw).to
    assert sorted(address for _name, address in to) == ["ann@x.test", "c@x.test", "d@x.test"]


def test_raw_utf8_header_cut_in_the_middle_of_a_character_keeps_the_rest():
    name = "Картинка".encode() + "ч".encode()[:1]
    raw = raw_message(b"x", extra=b"Subject: " + name + b"\r\n")
    assert parse_message(raw).subject.startswith("Картинка")


def test_address_token_scan_matches_the_plain_pattern_without_its_backtracking():
    """_ADDR_TOKEN only adds a token-start lookbehind to the plain pattern (reference below):
    the same matches on random address-like text, and a long run without "@" (a hostile
    header) costs one scan instead of one per position."""
    import random

    from mailsync.parse import _ADDR_TOKEN

    reference = re.compile(r"[^\s<>,;:\"\\()]+@[^\s<>,;:\"\\()]+")
    rnd = random.Random(20261206)
    alphabet = 'ab@. ,;:<>"\\()x\té'
    for _ in range(5000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))
        assert _ADDR_TOKEN.findall(text) == reference.findall(text), text
    hostile = "x" * 200_000 + " a@b.test"
    assert _ADDR_TOKEN.findall(hostile) == ["a@b.test"]


def test_quoted_printable_attachment_size_is_its_decoded_size():
    data = bytes(range(256)) * 8  # mostly "=XX" escapes when quoted-printable
    msg = make_email()
    msg.set_content("see attached")
    msg.add_attachment(
        data, maintype="application", subtype="pdf", cte="quoted-printable", filename="scan.pdf"
    )
    raw = msg.as_bytes()
    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    (attachment,) = parse_message(raw).attachments
    assert extract_part(raw, attachment.part_id)[0] == data
    assert abs(attachment.size - len(data)) <= 4  # shown as 2 KB, not about 5 KB


def test_base64_text_with_a_stray_line_after_it_is_still_decoded():
    # A delimiter of an inner multipart left behind in a part (the inner part was cut off).
    html = "<html><body><p>Se\u00f1or, the offer</p></body></html>"
    encoded = base64.b64encode(html.encode("cp1252"))
    stray = b"------=_Part_2f67ea68dcaf3.'()+_,-./:=?--"
    body = part(
        b"Content-Type: text/html; charset=windows-1252\r\nContent-Transfer-Encoding: base64",
        encoded + b"\r\n\r\n" + stray,
    )
    parsed = parse_message(message_of(multipart("mixed", "outer", body)))
    assert html in parsed.html_body
    for short in (b"cXVhcnRlcmx5Cg==", b"cmVwb3J0CtPeo9QK"):  # padded; whole groups of 4
        text = part(b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64", short)
        stray_after = multipart("mixed", "outer", text + b"\r\n" + stray)
        shown = parse_message(message_of(stray_after)).text_body
        assert shown.startswith(base64.b64decode(short)[:6].decode())


# Apple Mail, rich text with a file put into it: the HTML goes on in a second part after it.
APPLE_RICH_SPLIT = multipart(
    "alternative",
    "alt",
    part(b"Content-Type: text/plain", b"Here is the contract.\r\n\r\nCall me about it."),
    multipart(
        "mixed",
        "mix",
        part(b"Content-Type: text/html", b"<div>Here is the contract.</div>"),
        part(
            b'Content-Type: application/pdf; name="contract.pdf"\r\n'
            b'Content-Disposition: inline; filename="contract.pdf"',
            b"%PDF",
        ),
        part(b"Content-Type: text/html", b"<div>Call me about it.</div>"),
    ),
)


def test_html_split_around_a_file_is_shown_whole_but_alternatives_once():
    parsed = parse_message(message_of(APPLE_RICH_SPLIT))
    assert parsed.html_body == "<div>Here is the contract.</div>\n<div>Call me about it.</div>"
    assert [a.filename for a in parsed.attachments] == ["contract.pdf"]
    two_renderings = multipart(
        "alternative",
        "alt",
        part(b"Content-Type: text/html", b"<p>first rendering</p>"),
        part(b"Content-Type: text/html", b"<p>second rendering</p>"),
    )
    assert parse_message(message_of(two_renderings)).html_body == "<p>first rendering</p>"


@pytest.mark.parametrize(
    "body",
    [b"--b--\n", b"--b--\r\n", b"Hello there\n--b--\n", b"Hello there\n", b"\n--b--  \n"],
)
def test_a_multipart_without_parts_shows_its_text_as_the_standard_library_does(body):
    """No opening delimiter: what comes before the closing one is the message's text, and
    the closing line is not (an empty multipart showed "--b--" as its body)."""
    raw = b'Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n' + body
    reference = email.message_from_bytes(raw, policy=email.policy.compat32).get_payload()
    parsed = parse_message(raw)
    assert parsed.text_body.strip() == reference.strip()
    assert "--b--" not in parsed.text_body + parsed.snippet


@pytest.mark.parametrize("seed", range(20))
def test_base64_encoded_in_padded_chunks_decodes_to_the_end(seed):
    # Some encoders pad every chunk they write; the standard library stops at the first
    # padding, which silently cut the attachment (and its text) short.
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(1, 6000))
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    bounds = [0, *cuts, len(data)]
    chunks = [data[start:end] for start, end in itertools.pairwise(bounds)]
    encoded = b"".join(base64.encodebytes(chunk).replace(b"\n", b"\r\n") for chunk in chunks)
    raw = message_with_file(
        b'Content-Type: application/octet-stream; name="scan.bin"\r\n'
        b"Content-Transfer-Encoding: base64",
        encoded,
    )
    (attachment,) = parse_message(raw).attachments
    assert extract_part(raw, attachment.part_id)[0] == data
    assert abs(attachment.size - len(data)) <= max(8, len(data) // 50)


def test_text_after_padding_that_is_not_base64_is_left_out():
    encoded = base64.b64encode(b"Quarterly numbers attached")
    assert encoded.endswith(b"=")
    body = part(
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64",
        encoded + b"\r\n-- \r\nSent from my phone, see you = soon",
    )
    shown = parse_message(message_of(multipart("mixed", "outer", body))).text_body
    assert shown.strip() == "Quarterly numbers attached"


@pytest.mark.parametrize("encoding", ["x-uuencode", "uuencode", "x-uue", "UUE"])
def test_uuencoded_attachments_decode_as_the_standard_library_does(encoding):
    data = random.Random(encoding).randbytes(3000)
    lines = [binascii.b2a_uu(data[at : at + 45]).rstrip(b"\n") for at in range(0, len(data), 45)]
    encoded = b"begin 644 scan.png\r\n" + b"\r\n".join(lines) + b"\r\n`\r\nend\r\n"
    raw = message_with_file(
        b'Content-Type: image/png; name="scan.png"\r\n'
        b"Content-Transfer-Encoding: " + encoding.encode(),
        encoded,
        text=b"the scan",
    )
    (attachment,) = parse_message(raw).attachments
    reference = email.message_from_bytes(raw).get_payload(1).get_payload(decode=True)
    assert reference == data  # the standard library reads the fixture as meant
    assert extract_part(raw, attachment.part_id)[0] == data
    assert attachment.size == len(data)


def test_uuencoded_part_without_begin_line_is_kept_as_it_came():
    body = b"M9&]E<R!N;W0@<W1A<G0@=VET:\r\n"
    raw = message_with_file(
        b'Content-Type: application/octet-stream; name="a.bin"\r\n'
        b"Content-Transfer-Encoding: x-uuencode",
        body,
    )
    (attachment,) = parse_message(raw).attachments
    assert extract_part(raw, attachment.part_id)[0].strip() == body.strip()


def test_text_past_the_limit_is_marked_cut(monkeypatch):
    monkeypatch.setattr(parse, "MAX_TEXT_CHARS", 100)
    first = part(b"Content-Type: text/plain", b"a" * 60)
    second = part(b"Content-Type: text/plain", b"b" * 60)
    third = part(b"Content-Type: text/plain", b"c" * 10)
    two = parse_message(message_of(multipart("mixed", "outer", first, second)))
    assert two.text_cut and len(two.text_body) == 100
    three = parse_message(message_of(multipart("mixed", "outer", first, second, third)))
    assert three.text_cut and "c" not in three.text_body
    one = parse_message(message_of(multipart("mixed", "outer", first)))
    assert not one.text_cut and one.text_body.strip() == "a" * 60


def uuencoded_file(name: str, data: bytes) -> bytes:
    lines = [binascii.b2a_uu(data[at : at + 45]).rstrip(b"\n") for at in range(0, len(data), 45)]
    return b"begin 644 " + name.encode() + b"\r\n" + b"\r\n".join(lines) + b"\r\n`\r\nend\r\n"


@pytest.mark.parametrize("seed", range(10))
def test_files_uuencoded_inside_the_text_are_attachments(seed):
    # Outlook Express and Unix mail put files into the text itself; mail programs list them
    # as attachments and show the text around them.
    rng = random.Random(seed)
    files = [
        (f"scan{n}.png", rng.randbytes(rng.randint(1, 3000))) for n in range(rng.randint(1, 3))
    ]
    body = b"Hello Carla,\r\n\r\n" + b"".join(
        uuencoded_file(name, data) + b"\r\nand then\r\n" for name, data in files
    )
    raw = message_of(part(b"Content-Type: text/plain; charset=us-ascii", body))
    parsed = parse_message(raw)
    assert [(a.filename, a.content_type, a.size) for a in parsed.attachments] == [
        (name, "image/png", len(data)) for name, data in files
    ]
    assert parsed.has_attachments
    for attachment, (name, data) in zip(parsed.attachments, files, strict=True):
        assert extract_part(raw, attachment.part_id) == (data, "image/png", name)
    assert "begin 644" not in parsed.text_body
    assert parsed.text_body.startswith("Hello Carla,") and "and then" in parsed.text_body


def test_text_that_only_looks_like_uuencoding_stays_text():
    body = b"Steps:\r\nbegin 644 the install, then\r\nrun the tool as usual\r\nend\r\n"
    parsed = parse_message(message_of(part(b"Content-Type: text/plain", body)))
    assert parsed.attachments == []
    assert "run the tool as usual" in parsed.text_body
    with pytest.raises(KeyError):
        extract_part(message_of(part(b"Content-Type: text/plain", body)), "1.uu1")


def winmail_message(package: bytes) -> bytes:
    return message_with_file(
        b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
        b"Content-Transfer-Encoding: base64",
        base64.encodebytes(package),
        text=b"Please see the quote.",
    )


def test_files_inside_an_outlook_winmail_dat_are_listed_beside_it():
    files = [("Quote 2027.pdf", b"%PDF-1.4 " + bytes(range(256)) * 4), ("notes.txt", b"hello")]
    raw = winmail_message(tnef_package(files))
    listed = parse_message(raw).attachments
    assert [(a.filename, a.content_type, a.size) for a in listed[1:]] == [
        ("Quote 2027.pdf", "application/pdf", len(files[0][1])),
        ("notes.txt", "text/plain", 5),
    ]
    assert listed[0].filename == "winmail.dat"  # still there: what else it holds stays in it
    for attachment, (_name, data) in zip(listed[1:], files, strict=True):
        assert extract_part(raw, attachment.part_id)[0] == data
    with pytest.raises(KeyError):
        extract_part(raw, "2.tnef3")


@pytest.mark.parametrize(
    "files",
    [
        [("a.txt", b"x")],  # a 1-byte file written last: tnefparse stopped before it
        [("empty.txt", b""), ("b.txt", b"hello")],  # an empty file the sender attached
        [("b.txt", b"hello"), ("empty.txt", b"")],
        [("b.txt", b"hello"), ("y.txt", b"y")],
    ],
)
def test_small_and_empty_files_inside_a_winmail_dat_are_listed(files):
    raw = winmail_message(tnef_package(files))
    listed = parse_message(raw).attachments[1:]
    assert [(a.filename, a.size) for a in listed] == [(name, len(data)) for name, data in files]
    for attachment, (_name, data) in zip(listed, files, strict=True):
        assert extract_part(raw, attachment.part_id)[0] == data


def test_an_outlook_item_attached_inside_a_winmail_dat_is_shown_with_its_files():
    """Outlook in rich text mode attaches a mail (an "item") inside winmail.dat."""
    quote = tnef_package(
        [("Quote 2027.pdf", b"%PDF-1.4 quote")],
        body="The quote you asked for, Zoë.".encode("cp1252"),
        subject="Quote 2027",
        sender=("Bo Berg", "bo@vendor.test"),
        sent=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
    )
    styled = tnef_package([], rtf=OUTLOOK_RTF, subject="Prices")
    deeper = tnef_package([("deep.txt", b"deep")], subject="Deeper")
    wrapper = tnef_package([], subject="Wrapper", embedded=[deeper])
    package = tnef_package([("order.pdf", b"%PDF-1.4 order")], embedded=[quote, styled, wrapper])
    raw = winmail_message(package)
    parsed = parse_message(raw)
    assert parsed.parse_error is None
    assert parsed.text_body.strip() == "Please see the quote."
    first, second, third = parsed.attached_texts
    assert first == (
        "---------- Attached message ----------\n"
        "From: Bo Berg <bo@vendor.test>\n"
        "Date: Tue, 01 Dec 2026 09:30 +0000\n"
        "Subject: Quote 2027\n\n"
        "The quote you asked for, Zoë."
    )
    assert "Subject: Prices" in second and "our prices" in second and "MsoNormal" not in second
    assert third.endswith("Subject: Wrapper\n\n(no text)")  # the message inside it: not shown
    # Every file is listed, its own first, and downloads: also those of the attached items.
    listed = [(a.filename, extract_part(raw, a.part_id)[0]) for a in parsed.attachments[1:]]
    assert listed == [
        ("order.pdf", b"%PDF-1.4 order"),
        ("Quote 2027.pdf", b"%PDF-1.4 quote"),
        ("deep.txt", b"deep"),
    ]


def test_an_image_in_the_html_of_a_winmail_dat_is_inline():
    """Outlook's rich text keeps the HTML's images as winmail.dat files with a content id."""
    rtf = (
        rb"{\rtf1\ansi\ansicpg1252\fromhtml1 {\*\htmltag64 <p>}Logo: "
        rb'{\*\htmltag84 <img src="cid:image001.png@01D9A3B2.5C4E7F80">}{\*\htmltag72 </p>}}'
    )
    files = [("image001.png", PNG_1X1, "<image001.png@01D9A3B2.5C4E7F80>"), ("terms.pdf", b"%PDF")]
    raw = winmail_message(tnef_package(files, rtf=rtf))
    raw = raw.replace(b"Please see the quote.", b"")  # the body is the one in winmail.dat
    parsed = parse_message(raw)
    assert "cid:image001.png@01D9A3B2.5C4E7F80" in parsed.html_body
    listed = [(a.filename, a.content_id, a.is_inline) for a in parsed.attachments[1:]]
    assert listed == [
        ("image001.png", "image001.png@01d9a3b2.5c4e7f80", True),
        ("terms.pdf", None, False),
    ]
    image = parsed.attachments[1]
    assert extract_part(raw, image.part_id)[0] == PNG_1X1


def test_images_named_by_content_location_are_inline():
    """MHTML (RFC 2557): Word, Lotus Notes and saved web pages name images by location."""
    html = (
        b'<p>Logo <img src="image1"> and <IMG SRC=http://www.example.test/a/chart.png alt=c>'
        b" <img src='http://www.example.test/a/elsewhere.png'></p>"
    )
    related = multipart(
        "related",
        "rel",
        part(b"Content-Type: text/html", html),
        part(b"Content-Type: image/png\r\nContent-Location: image1", PNG_1X1),
        part(
            b"Content-Type: image/png\r\nContent-Location: http://www.example.test/a/\r\n chart.png",
            PNG_1X1,
        ),
        part(
            b"Content-Type: image/png\r\nContent-ID: <own@x>\r\nContent-Location: own.png", PNG_1X1
        ),
        part(
            b"Content-Type: application/pdf; name=terms.pdf\r\nContent-Location: terms.pdf", b"%PDF"
        ),
    )
    parsed = parse_message(message_of(related))
    assert 'src="cid:location.2@threadline.invalid"' in parsed.html_body
    assert "SRC=cid:location.3@threadline.invalid alt=c" in parsed.html_body
    assert "src='http://www.example.test/a/elsewhere.png'" in parsed.html_body  # no such part
    listed = [(a.part_id, a.content_id, a.is_inline) for a in parsed.attachments]
    assert listed == [
        ("2", "location.2@threadline.invalid", True),
        ("3", "location.3@threadline.invalid", True),
        ("4", "own@x", False),  # its own Content-ID stays; the HTML does not show it
        ("5", None, False),  # a located file the HTML does not show stays a download
    ]


def test_items_nested_deep_inside_a_winmail_dat_are_bounded():
    package = tnef_package([("bottom.txt", b"bottom")], subject="Bottom")
    for level in range(8):
        package = tnef_package([(f"level{level}.txt", b"x")], embedded=[package])
    parsed = parse_message(winmail_message(package))
    names = [a.filename for a in parsed.attachments]
    assert names[:2] == ["winmail.dat", "level7.txt"]  # the package's own file first
    assert len(names) == 2 + MAX_TNEF_DEPTH and "bottom.txt" not in names
    assert len(parsed.attached_texts) == 1  # one level, as for attached mail
    for _ in range(30):  # no Outlook nests this deep: read as a damaged package
        package = tnef_package([], embedded=[package])
    parsed = parse_message(winmail_message(package))
    assert [a.filename for a in parsed.attachments] == ["winmail.dat"]


def test_a_damaged_item_inside_a_winmail_dat_never_fails_the_mail():
    rng = random.Random(4711)
    item = tnef_package([("q.pdf", b"%PDF-1.4 q")], body=b"item text", subject="Item")
    package = tnef_package([("order.pdf", b"%PDF-1.4 order")], embedded=[item])
    for _ in range(200):
        damaged = bytearray(package)
        for _ in range(rng.randint(1, 6)):
            damaged[rng.randrange(len(package) - len(item), len(damaged))] = rng.randrange(256)
        parsed = parse_message(winmail_message(bytes(damaged)))
        assert parsed.text_body.strip() == "Please see the quote."
        assert parsed.attachments[0].filename == "winmail.dat"


def tnef_with(level: int, attribute_id: int, data: bytes, *, inside: bool = False) -> bytes:
    """A winmail.dat holding one attribute (`inside`: held in a message attached in it)."""
    stream = struct.pack("<IH", 0x223E9F78, 0x0101)
    stream += struct.pack("<BII", level, attribute_id, len(data)) + data
    stream += struct.pack("<H", sum(data) & 0xFFFF)
    return tnef_package([("own.txt", b"own")], embedded=[stream]) if inside else stream


HOSTILE_COUNTS = {  # each count far beyond the bytes that follow it
    "properties": (1, 0x00069003, struct.pack("<I", 0xFFFFFFFF) + b"\x02\x00\x01\x00" * 2),
    "multi-values": (1, 0x00069003, struct.pack("<IHHI", 1, 0x1002, 0x6001, 0x7FFFFFFF)),
    "items": (1, 0x00069003, struct.pack("<IHHI", 1, 0x0102, 0x6002, 0xFFFFFFFF)),
    "recipients": (1, 0x00069004, struct.pack("<I", 0xFFFFFFFF) + b"\x00" * 8),
    "attachment": (2, 0x00069005, struct.pack("<IHHI", 1, 0x101F, 0x3707, 0x3FFFFFFF)),
}


# A hang guard: before the counts were checked, a count of properties or of fixed-size values
# kept tnefparse busy for hours (logging a line each time) or filled memory.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("inside", [False, True], ids=["package", "attached-item"])
@pytest.mark.parametrize("hostile", HOSTILE_COUNTS.values(), ids=HOSTILE_COUNTS.keys())
def test_a_winmail_dat_counting_more_than_it_holds_is_refused_at_once(hostile, inside):
    level, attribute_id, data = hostile
    parsed = parse_message(winmail_message(tnef_with(level, attribute_id, data, inside=inside)))
    assert parsed.text_body.strip() == "Please see the quote."
    # Read as a damaged package: listed alone, to download as it came.
    assert [a.filename for a in parsed.attachments] == ["winmail.dat"]


def test_counts_that_fit_are_read_as_before():
    props = struct.pack("<IHHI", 1, 0x1002, 0x6001, 3) + struct.pack("<3h", 1, 2, 3) + b"\x00\x00"
    package = tnef_with(1, 0x00069003, props) + tnef_package([("a.txt", b"ab")])[6:]
    assert [a.filename for a in parse_message(winmail_message(package)).attachments] == [
        "winmail.dat",
        "a.txt",
    ]


def test_a_body_sent_only_inside_a_winmail_dat_is_shown():
    """Exchange's rich text mode: no text part, the body travels in winmail.dat."""
    package = tnef_package([("q.pdf", b"%PDF-1.4 q")], body="Price list for Zoë.".encode("cp1252"))
    raw = message_of(
        multipart(
            "mixed",
            "t",
            part(
                b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
                b"Content-Transfer-Encoding: base64",
                base64.encodebytes(package),
            ),
        )
    )
    parsed = parse_message(raw)
    assert parsed.text_body == "Price list for Zoë." and parsed.html_body is None
    assert [a.filename for a in parsed.attachments] == ["winmail.dat", "q.pdf"]
    # A mail with its own text keeps it: the package's copy of the body is not added.
    assert parse_message(winmail_message(package)).text_body.strip() == "Please see the quote."
    # An HTML body in the package is shown as HTML (sanitized like any), its text searched.
    styled = tnef_package([], html=b"<p>Price <b>list</b></p>")
    raw = message_of(
        part(
            b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
            b"Content-Transfer-Encoding: base64",
            base64.encodebytes(styled),
        )
    )
    parsed = parse_message(raw)
    assert parsed.html_body == "<p>Price <b>list</b></p>"
    assert parsed.text_body.strip() == "Price list"


@pytest.mark.parametrize(
    ("rtf", "text"),
    [
        (
            rb"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Calibri;}}\f0 Price list for Zo\'eb."
            rb"\par Second \b line\b0.}",
            "Price list for Zo\u00eb.\nSecond line.",
        ),
        (  # Cyrillic: the \'xx escapes are in the code page \ansicpg names
            rb"{\rtf1\ansi\ansicpg1251 \'cf\'f0\'e8\'e2\'e5\'f2}",
            "\u041f\u0440\u0438\u0432\u0435\u0442",
        ),
        (  # encapsulated plain text: read as rich text
            rb"{\rtf1\ansi\ansicpg1252\fromtext \htmlrtf {\b\htmlrtf0 Plain words}}",
            "Plain words",
        ),
    ],
    ids=["cp1252", "cp1251", "encapsulated-text"],
)
def test_a_rich_text_body_inside_a_winmail_dat_is_shown_as_text(rtf, text):
    raw = message_of(
        part(
            b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
            b"Content-Transfer-Encoding: base64",
            base64.encodebytes(tnef_package([], rtf=rtf)),
        )
    )
    parsed = parse_message(raw)
    assert parsed.text_body.strip() == text and parsed.html_body is None
    for cut in (7, 20, len(rtf) // 2):  # cut inside the rich text: never an error
        damaged = tnef_package([], rtf=rtf)[:-cut]
        broken = message_of(part(b'Content-Type: application/ms-tnef; name="winmail.dat"', damaged))
        parsed = parse_message(broken)
        assert parsed.parse_error is None
        assert [a.filename for a in parsed.attachments] == ["winmail.dat"]


def test_html_outlook_kept_in_the_rich_text_of_a_winmail_dat_is_the_html_body():
    raw = message_of(
        part(
            b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
            b"Content-Transfer-Encoding: base64",
            base64.encodebytes(tnef_package([("prices.pdf", b"%PDF-1.4")], rtf=OUTLOOK_RTF)),
        )
    )
    parsed = parse_message(raw)
    assert '<a href="https://quillwort.test/prices?a=1&amp;b=2">our prices</a>' in parsed.html_body
    assert (
        "Dear Zo\u00eb," in parsed.text_body
        and "\u041f\u0440\u0438\u0432\u0435\u0442" in parsed.text_body
    )
    assert "<o:p>" not in parsed.text_body and "MsoNormal" not in parsed.text_body
    assert parsed.snippet.startswith("Dear Zo\u00eb, The price is \u20ac120")
    assert [a.filename for a in parsed.attachments] == ["winmail.dat", "prices.pdf"]


def test_a_damaged_winmail_dat_is_listed_alone():
    raw = winmail_message(b"\x78\x9f\x3e\x22" + os.urandom(300))
    (attachment,) = parse_message(raw).attachments
    assert attachment.filename == "winmail.dat"
    assert extract_part(raw, attachment.part_id)[0].startswith(b"\x78\x9f\x3e\x22")


# --------------------------------------------------------------------------- S/MIME, PGP/MIME

SMIME = Path(__file__).parent / "fixtures" / "smime"


@pytest.mark.parametrize(
    ("fixture", "text", "html", "files"),
    [
        (
            "signed-opaque.eml",
            "The signed contract text, Zanzibarite 42.",
            None,
            [("contract.pdf", "application/pdf", b"%PDF-1.4\n%\xc7\xec\x8f\xa2\n")],
        ),
        (
            "signed-opaque-streamed.eml",  # BER with indefinite lengths, as clients stream it
            "Streamed signed text, Quixotal 7.",
            "<p>Streamed signed <b>text</b>, Quixotal 7.</p>",
            [],
        ),
    ],
)
def test_an_opaque_smime_signed_mail_shows_the_text_and_files_inside(fixture, text, html, files):
    raw = (SMIME / fixture).read_bytes()
    parsed = parse_message(raw)
    assert parsed.text_body.strip() == text
    assert (parsed.html_body or "").strip() == (html or "")
    assert parsed.parse_error is None and not parsed.encrypted
    signature, *inside = parsed.attachments
    assert (signature.filename, signature.content_type) == ("smime.p7m", "application/x-pkcs7-mime")
    assert [(a.filename, a.content_type) for a in inside] == [(n, t) for n, t, _ in files]
    for attachment, (_name, _type, data) in zip(inside, files, strict=True):
        assert attachment.size == len(data)
        assert extract_part(raw, attachment.part_id) == (data, attachment.content_type, _name)
    assert extract_part(raw, signature.part_id)[0].startswith(b"\x30")  # the original CMS


def test_a_signed_file_is_offered_as_a_file_not_shown_as_text():
    """A .p7m that wraps a PDF (Italian certified mail) is no mail: its bytes stay a download."""
    signed = (SMIME / "document.pdf.p7m").read_bytes()
    raw = message_with_file(
        b'Content-Type: application/pkcs7-mime; name="document.pdf.p7m"\r\n'
        b"Content-Transfer-Encoding: base64",
        base64.encodebytes(signed),
        text=b"The signed document is attached.",
    )
    parsed = parse_message(raw)
    assert parsed.text_body.strip() == "The signed document is attached."
    assert "PDF" not in parsed.text_body
    (attachment,) = parsed.attachments
    assert attachment.filename == "document.pdf.p7m"
    assert extract_part(raw, attachment.part_id)[0] == signed


PGP_ENCRYPTED = (
    b"From: ann@example.com\r\nSubject: Secret\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="e"\r\n'
    b"\r\n--e\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
    b'--e\r\nContent-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n'
    b"-----BEGIN PGP MESSAGE-----\r\nhQEMA0xyz\r\n-----END PGP MESSAGE-----\r\n--e--\r\n"
)


@pytest.mark.parametrize(
    ("raw", "encrypted"),
    [
        ((SMIME / "encrypted.eml").read_bytes(), True),
        ((SMIME / "encrypted.eml").read_bytes().replace(b" smime-type=enveloped-data;", b""), True),
        (PGP_ENCRYPTED, True),
        ((SMIME / "signed-opaque.eml").read_bytes(), False),
        (b"Subject: plain\r\n\r\nHello\r\n", False),
    ],
    ids=["smime-enveloped", "smime-type-unnamed", "pgp-mime", "smime-signed", "plain"],
)
def test_encrypted_mail_is_told_apart(raw, encrypted):
    parsed = parse_message(raw)
    assert parsed.encrypted is encrypted
    assert parsed.attachments or not encrypted  # the encrypted original stays a download


def test_a_damaged_smime_signature_never_raises_and_stays_a_download():
    """Random damage to a signed mail's CMS bytes: the parse never raises and the .p7m stays
    listed, first, with exactly its bytes."""
    raw = (SMIME / "signed-opaque.eml").read_bytes()
    head, _, body = raw.partition(b"\n\n")
    der = base64.b64decode(body)
    rng = random.Random(8551)
    for _ in range(300):
        damaged = bytearray(der)
        if rng.random() < 0.5:
            del damaged[rng.randrange(len(damaged)) :]
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        mail = head + b"\n\n" + base64.encodebytes(bytes(damaged))
        parsed = parse_message(mail)
        assert parsed.attachments[0].filename == "smime.p7m"
        assert extract_part(mail, parsed.attachments[0].part_id)[0] == bytes(damaged)


# --------------------------------------------------------------------------- attached messages


def customer_mail(n: int, body: bytes = b"What does the gold plan cost?") -> bytes:
    return (
        b"From: Carla <carla@customer.test>\r\nTo: Bob <bob@agency.test>\r\n"
        b"Subject: Price question %d\r\nDate: Tue, 07 Apr 2026 10:%02d:00 +0000\r\n"
        % (n, n)
        + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + body
        + b"\r\n"
    )


def forwarded(
    *inners: bytes, text: bytes | None = None, html: bytes | None = None, boundary: str = "fw"
) -> bytes:
    """A mail forwarding `inners` as attachments (Outlook's "Forward as attachment")."""
    own = []
    if text is not None:
        own.append(part(b"Content-Type: text/plain", text))
    if html is not None:
        own.append(part(b"Content-Type: text/html", html))
    attached = [part(b"Content-Type: message/rfc822", inner) for inner in inners]
    return message_of(multipart("mixed", boundary, *own, *attached))


def test_a_mail_forwarded_as_an_attachment_shows_the_attached_text():
    parsed = parse_message(forwarded(customer_mail(1)))
    assert parsed.text_body == "" and parsed.html_body is None  # the mail's own: none
    assert parsed.attached_texts == [
        "---------- Attached message ----------\n"
        "From: Carla <carla@customer.test>\n"
        "Date: Tue, 07 Apr 2026 10:01 +0000\n"
        "Subject: Price question 1\n"
        "To: Bob <bob@agency.test>\n\n"
        "What does the gold plan cost?"
    ]
    assert parsed.snippet == "What does the gold plan cost?"  # the list shows what it is
    (attachment,) = parsed.attachments  # the attached message still downloads whole
    assert attachment.filename == "Price question 1.eml"


def test_attached_messages_are_shown_below_the_mails_own_text_and_html():
    html_only = (
        b"From: dan@customer.test\r\nSubject: Styled\r\nContent-Type: text/html\r\n\r\n"
        b"<p>Styled <b>question</b></p>\r\n"
    )
    parsed = parse_message(
        forwarded(customer_mail(2), html_only, text=b"FYI, see below", html=b"<p>FYI</p>")
    )
    assert parsed.text_body.strip() == "FYI, see below"
    assert parsed.html_body.strip() == "<p>FYI</p>"
    first, second = parsed.attached_texts
    assert first.endswith("What does the gold plan cost?") and "Subject: Styled" in second
    assert second.endswith("Styled question")  # an HTML-only message is shown as its text
    assert "Date:" not in second and "To:" not in second  # lines it has no value for


def test_an_attached_message_with_utf8_headers_is_shown_too():
    inner = (
        "From: Zoë <zoe@kunde.test>\r\nSubject: Preisfrage für Größe M\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nWas kostet Größe M?\r\n"
    ).encode()
    raw = message_of(multipart("mixed", "g", part(b"Content-Type: message/global", inner)))
    parsed = parse_message(raw)
    (shown,) = parsed.attached_texts
    assert "From: Zoë <zoe@kunde.test>" in shown and shown.endswith("Was kostet Größe M?")
    assert parsed.attachments[0].filename == "Preisfrage für Größe M.eml"


def test_attached_messages_are_read_one_level_deep_and_a_few_at_a_time():
    nested = forwarded(forwarded(customer_mail(3), boundary="inner"), text=b"outer")
    (shown,) = parse_message(nested).attached_texts
    assert "Attached message" in shown and "gold plan" not in shown  # not the one inside it
    many = parse_message(forwarded(*[customer_mail(n) for n in range(1, 9)]))
    *shown, more = many.attached_texts
    assert len(shown) == MAX_ATTACHED_SHOWN
    assert more == "(3 more attached messages: open them from the attachments.)"
    assert len(many.attachments) == 8  # every one still listed and downloadable


def test_a_broken_attached_message_never_raises():
    rng = random.Random(2046)
    for _ in range(200):
        inner = bytearray(customer_mail(4))
        for _ in range(rng.randint(1, 12)):
            inner[rng.randrange(len(inner))] = rng.choice(b"\r\n:;<>=\x00\xff ")
        raw = forwarded(bytes(inner), text=b"own")
        parsed = parse_message(raw)
        assert parsed.text_body.strip() == "own"
        (shown,) = parsed.attached_texts
        assert shown.startswith("---------- Attached message ----------\n")
        assert extract_part(raw, parsed.attachments[0].part_id)[0] == bytes(inner)


def signed_entity(inner: bytes, *, binary: bool = False) -> bytes:
    """`inner` wrapped in an opaque S/MIME signature (CMS SignedData without signers: the
    parser reads the content and never checks a signature), in base64 or binary."""
    der = cms.ContentInfo(
        {
            "content_type": "signed_data",
            "content": cms.SignedData(
                {
                    "version": "v1",
                    "digest_algorithms": [],
                    "encap_content_info": {"content_type": "data", "content": inner},
                    "signer_infos": [],
                }
            ),
        }
    ).dump()
    return part(
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
        b"Content-Transfer-Encoding: " + (b"binary" if binary else b"base64"),
        der if binary else base64.encodebytes(der),
    )


@pytest.mark.parametrize(
    "inner",
    [
        part(b"Content-Type: text/plain; charset=utf-8", "Grüße, the plan".encode()),
        APPLE_ALTERNATIVE,
        APPLE_RICH_SPLIT,
        multipart(
            "mixed",
            "m",
            part(b"Content-Type: text/html", b"<p>see <img src=cid:logo></p>"),
            part(b"Content-Type: image/png\r\nContent-ID: <logo>", PNG_1X1),
            part(b'Content-Type: application/pdf; name="a.pdf"', b"%PDF-1.4 a"),
        ),
    ],
    ids=["plain", "apple-alternative", "apple-rich-split", "html-inline-image"],
)
def test_a_signed_mail_reads_as_the_mail_it_wraps(inner):
    """Differential: the same entity, signed or not, shows the same text, HTML and files."""
    plain = message_of(inner)
    signed = message_of(signed_entity(inner))
    theirs, ours = parse_message(plain), parse_message(signed)
    assert (ours.text_body, ours.html_body) == (theirs.text_body, theirs.html_body)
    assert ours.attachments[0].filename == "smime.p7m"
    assert len(ours.attachments) == len(theirs.attachments) + 1
    for mine, reference in zip(ours.attachments[1:], theirs.attachments, strict=True):
        assert (mine.filename, mine.content_type, mine.content_id, mine.is_inline) == (
            reference.filename,
            reference.content_type,
            reference.content_id,
            reference.is_inline,
        )
        assert extract_part(signed, mine.part_id)[0] == extract_part(plain, reference.part_id)[0]


def test_signatures_inside_signatures_stop_at_the_depth_limit():
    entity = part(b"Content-Type: text/plain", b"innermost words")
    for _ in range(MAX_DEPTH + 10):
        entity = signed_entity(entity, binary=True)  # base64 would grow it 4/3 a layer
    started = time.monotonic()
    parsed = parse_message(message_of(entity))
    assert time.monotonic() - started < HANG_GUARD_SECONDS
    assert "innermost words" not in parsed.text_body  # beyond the limit: not walked
    assert len(parsed.attachments) == MAX_DEPTH + 1  # each signature still listed


@pytest.mark.parametrize(
    ("entity", "flowed", "delsp"),
    [
        (part(b"Content-Type: text/plain; format=flowed", b"soft \r\nbreak"), True, False),
        (part(b"Content-Type: text/plain; Format=Flowed; DelSp=Yes", b"a \r\nb"), True, True),
        (part(b"Content-Type: text/plain", b"hard \r\nbreak"), False, False),
        (part(b"Content-Type: text/plain; delsp=yes", b"not flowed \r\nat all"), False, False),
        (
            multipart(
                "mixed",
                "two",
                part(b"Content-Type: text/plain; format=flowed", b"one \r\n"),
                part(b"Content-Type: text/plain", b"two \r\n"),
            ),
            False,  # one text_body for both: joined only when every text is flowed
            False,
        ),
        (
            multipart(
                "alternative",
                "alt",
                part(b"Content-Type: text/plain; format=flowed", b""),
                part(b"Content-Type: text/html", b"<p>the HTML's text</p>"),
            ),
            False,  # the text shown comes from the HTML
            False,
        ),
    ],
    ids=["flowed", "delsp", "plain", "delsp-alone", "mixed", "from-html"],
)
def test_format_flowed_is_told_for_the_text_shown(entity, flowed, delsp):
    parsed = parse_message(message_of(entity))
    assert (parsed.flowed, parsed.delsp) == (flowed, delsp)


def test_a_mac_resource_fork_is_not_offered_as_the_file():
    fork = part(
        b'Content-Type: application/applefile; name="report.pdf"\r\n'
        b"Content-Transfer-Encoding: base64",
        b"AAUWBwACAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    data = part(b'Content-Type: application/pdf; name="report.pdf"', b"%PDF-1.4 report")
    raw = message_of(
        multipart(
            "mixed",
            "m",
            part(b"Content-Type: text/plain", b"see the report"),
            multipart("appledouble", "ad", fork, data),
        )
    )
    (attachment,) = parse_message(raw).attachments
    assert (attachment.filename, attachment.content_type) == ("report.pdf", "application/pdf")
    assert extract_part(raw, attachment.part_id)[0] == b"%PDF-1.4 report"
    # AppleSingle (a lone application/applefile) holds the file itself: still offered, also
    # when another file follows it.
    other = part(b'Content-Type: application/pdf; name="other.pdf"', b"%PDF-1.4 other")
    for single in (
        message_of(multipart("mixed", "m", part(b"Content-Type: text/plain", b"x"), fork)),
        message_of(multipart("mixed", "m", multipart("mixed", "n", fork, other))),
    ):
        listed = [a.content_type for a in parse_message(single).attachments]
        assert listed[0] == "application/applefile"


CLEAR_SIGNED = multipart(
    "signed",
    "sig",
    part(b"Content-Type: text/plain", b"signed words"),
    part(b'Content-Type: application/pkcs7-signature; name="smime.p7s"', b"MIIB"),
)


@pytest.mark.parametrize(
    ("raw", "has_attachments"),
    [
        (message_of(CLEAR_SIGNED), False),
        (message_of(CLEAR_SIGNED.replace(b"pkcs7-signature", b"pgp-signature")), False),
        ((SMIME / "signed-opaque-streamed.eml").read_bytes(), False),  # text and HTML only
        ((SMIME / "signed-opaque.eml").read_bytes(), True),  # contract.pdf inside
        (
            message_of(
                signed_entity(
                    multipart(
                        "mixed",
                        "in",
                        CLEAR_SIGNED,
                        part(b'Content-Type: application/pdf; name="a.pdf"', b"%PDF"),
                    )
                )
            ),
            True,
        ),
        (
            message_with_file(
                b'Content-Type: application/pkcs7-mime; name="document.pdf.p7m"\r\n'
                b"Content-Transfer-Encoding: base64",
                base64.encodebytes((SMIME / "document.pdf.p7m").read_bytes()),
            ),
            True,  # a signed file is a file
        ),
    ],
    ids=["clear-smime", "clear-pgp", "opaque-text", "opaque-file", "nested-file", "signed-file"],
)
def test_a_signature_is_no_attachment_but_stays_a_download(raw, has_attachments):
    parsed = parse_message(raw)
    assert parsed.has_attachments is has_attachments
    assert any(a.content_type.endswith(("signature", "pkcs7-mime")) for a in parsed.attachments)


def test_a_base64_encoded_multipart_shows_its_parts():
    """RFC 2045 forbids encoding a multipart; some mailers base64-encode it all anyway."""
    inner = multipart(
        "mixed",
        "m",
        part(b"Content-Type: text/plain", b"hello there"),
        part(b'Content-Type: application/pdf; name="a.pdf"', b"%PDF-1.4 a"),
    )
    headers, _, body = inner.partition(b"\r\n\r\n")
    raw = message_of(
        headers + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(body)
    )
    parsed = parse_message(raw)
    assert parsed.text_body.strip() == "hello there"
    (attachment,) = parsed.attachments
    assert attachment.filename == "a.pdf"
    assert extract_part(raw, attachment.part_id)[0] == b"%PDF-1.4 a"
    # A multipart that only says base64 (its parts in plain sight) is read as it is.
    mislabelled = message_of(headers + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body)
    assert parse_message(mislabelled).text_body.strip() == "hello there"


def bounce(
    returned: bytes, *, returned_type: bytes = b"message/rfc822", extra: bytes = b""
) -> bytes:
    """A delivery report as Postfix writes it (RFC 3464), returning `returned`."""
    return message_of(
        multipart(
            "report; report-type=delivery-status",
            "dsn",
            part(
                b"Content-Type: text/plain",
                b"I'm sorry to have to inform you that your message could not be delivered.",
            ),
            part(
                b"Content-Type: message/delivery-status",
                b"Reporting-MTA: dns; mx.team.test\r\n\r\nFinal-Recipient: rfc822; gone@customer.test\r\nAction: failed\r\nStatus: 5.1.1",
            ),
            part(b"Content-Type: " + returned_type, returned),
        ),
        headers=b"From: MAILER-DAEMON@mx.team.test (Mail Delivery System)\r\nTo: owner@team.test\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <bounce1@mx.team.test>\r\n"
        + extra,
    )


def test_a_bounce_answers_the_mail_it_returns():
    """Mail servers name no mail their reports answer: the returned copy tells, so the bounce
    joins the conversation of the mail that failed."""
    original = b"From: owner@team.test\r\nTo: gone@customer.test\r\nSubject: Offer\r\nMessage-ID: <Offer-42@team.test>\r\n\r\nHello"
    parsed = parse_message(bounce(original))
    assert (parsed.in_reply_to, parsed.references) == (
        "offer-42@team.test",
        ["offer-42@team.test"],
    )
    headers_only = parse_message(
        bounce(original.split(b"\r\n\r\n")[0], returned_type=b"text/rfc822-headers")
    )
    assert headers_only.in_reply_to == "offer-42@team.test"
    # A report that says what it answers keeps that; a forward is no report.
    said = parse_message(bounce(original, extra=b"In-Reply-To: <other@team.test>\r\n"))
    assert said.in_reply_to == "other@team.test"
    forward = message_of(
        multipart(
            "mixed",
            "fw",
            part(b"Content-Type: text/plain", b"FYI"),
            part(b"Content-Type: message/rfc822", original),
        )
    )
    assert parse_message(forward).in_reply_to is None
    assert parse_message(bounce(b"no headers at all")).in_reply_to is None


def test_a_read_receipt_answers_the_mail_it_reports_on():
    receipt = message_of(
        multipart(
            "report; report-type=disposition-notification",
            "mdn",
            part(b"Content-Type: text/plain", b"Your message was displayed."),
            part(
                b"Content-Type: message/disposition-notification",
                b"Reporting-UA: mail.customer.test\r\nFinal-Recipient: rfc822;carla@customer.test\r\n"
                b"Original-Message-ID: <Offer-42@team.test>\r\n"
                b"Disposition: manual-action/MDN-sent-manually; displayed",
            ),
        ),
        headers=b"From: carla@customer.test\r\nTo: owner@team.test\r\nSubject: Read: Offer\r\n",
    )
    assert parse_message(receipt).in_reply_to == "offer-42@team.test"


def test_an_encoded_name_holding_a_comma_is_one_name():
    """Some mailers leave the comma of "Berg, Bo" raw inside an encoded word (RFC 2047 wants
    it encoded); it separated two broken addresses, so the sender was "=?utf-8?q?berg"."""
    raw = (
        b"From: =?utf-8?q?Berg,_Bo?= <bo@vendor.test>\r\n"
        b'To: =?iso-8859-1?q?M=FCller,_J=FCrgen?= <jm@customer.test>, "Doe, Jane" <jd@x.test>\r\n'
        b'Cc: "Dr. =?utf-8?q?Berg,_Bo?=" <bo2@vendor.test>, =?utf-8?b?QmVyZywgQm8=?= <b3@v.test>\r\n'
        b"Subject: s\r\n\r\nbody"
    )
    parsed = parse_message(raw)
    assert (parsed.from_name, parsed.from_address) == ("Berg, Bo", "bo@vendor.test")
    assert parsed.to == [("Müller, Jürgen", "jm@customer.test"), ("Doe, Jane", "jd@x.test")]
    assert parsed.cc == [("Dr. Berg, Bo", "bo2@vendor.test"), ("Berg, Bo", "b3@v.test")]


@pytest.mark.parametrize(
    ("written", "sender"),
    [
        (b"Bo Berg bo@vendor.test", "bo@vendor.test"),  # no angle brackets
        (b"<'bo@vendor.test'>", "bo@vendor.test"),  # quotes inside the brackets
        (b"Bo Berg [bo@vendor.test]", "bo@vendor.test"),
        (b"Bo Berg <<bo@vendor.test>>", "bo@vendor.test"),
        (b"Bo Berg <mailto:bo@vendor.test>", "bo@vendor.test"),
        (b"Berg; Bo <bo@vendor.test>", "bo@vendor.test"),  # "berg" comes first
        (b"foo", "foo"),  # a local address stays, as the email package keeps it
    ],
)
def test_a_malformed_sender_still_gives_the_address_written(written, sender):
    """Broken mailers and spam write these; the sender was "bo berg bo@vendor.test", "'bo@
    vendor.test'", "bo", "" or "berg", so the mail matched no contact."""
    parsed = parse_message(b"From: " + written + b"\r\nTo: " + written + b"\r\nSubject: s\r\n\r\nb")
    assert parsed.from_address == sender
    assert sender in [address for _name, address in parsed.to]
    assert all(" " not in address and "'" not in address for _name, address in parsed.to)


@pytest.mark.parametrize(
    ("written", "read"),
    [
        (b"2026-04-07 10:00:00", datetime(2026, 4, 7, 10, 0, tzinfo=UTC)),  # no zone: UTC
        (b"2026-04-07T10:00:00Z", datetime(2026, 4, 7, 10, 0, tzinfo=UTC)),
        (b"2026-04-07 10:00:00.123 +02:00", datetime(2026, 4, 7, 8, 0, tzinfo=UTC)),
        (b"2026-13-07 10:00", None),  # no such month: the arrival time is used
    ],
)
def test_an_iso_date_header_from_a_script_is_read(written, read):
    parsed = parse_message(b"From: a@b.test\r\nDate: " + written + b"\r\nSubject: s\r\n\r\nb")
    assert parsed.date == read


@pytest.mark.parametrize(
    ("written", "read"),
    [
        (b"Tue, 8 Dec 2026 10:00:00 CET", datetime(2026, 12, 8, 9, 0, tzinfo=UTC)),
        (b"Mon, 6 Jul 2026 10:00:00 cest", datetime(2026, 7, 6, 8, 0, tzinfo=UTC)),
        (b"6 Jul 2026 10:00 BST", datetime(2026, 7, 6, 9, 0, tzinfo=UTC)),
        (b"Tue, 8 Dec 2026 10:00:00 JST", datetime(2026, 12, 8, 1, 0, tzinfo=UTC)),
        (b"Tue, 8 Dec 2026 10:00:00 AEDT", datetime(2026, 12, 7, 23, 0, tzinfo=UTC)),
        # What RFC 5322 itself defines stays as it says; a comment names no zone.
        (b"Tue, 8 Dec 2026 10:00:00 EST", datetime(2026, 12, 8, 15, 0, tzinfo=UTC)),
        (b"Tue, 8 Dec 2026 10:00:00 +0100 (CEST)", datetime(2026, 12, 8, 9, 0, tzinfo=UTC)),
        (b"Tue, 8 Dec 2026 10:00:00 XYZ", datetime(2026, 12, 8, 10, 0, tzinfo=UTC)),
    ],
)
def test_a_date_with_a_zone_name_instead_of_an_offset_is_read_in_that_zone(written, read):
    parsed = parse_message(b"From: a@b.test\r\nDate: " + written + b"\r\nSubject: s\r\n\r\nb")
    assert parsed.date == read
