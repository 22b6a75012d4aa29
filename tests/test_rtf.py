"""Reading back the HTML Outlook keeps inside rich text (mailsync.rtf).

The property test writes HTML into rich text the way [MS-OXRTFEX] 2.1 says an encapsulating
writer does (a small reference writer, below) and checks that every document reads back
exactly, through the escapes, code pages, Unicode fallbacks and RTF-only formatting a real
Outlook body mixes in.
"""

from __future__ import annotations

import random

import pytest

from mailsync.rtf import encapsulated_html, is_encapsulated_html
from tests.mail_fixtures import OUTLOOK_RTF


def test_outlook_rich_text_gives_back_its_html():
    assert encapsulated_html(OUTLOOK_RTF) == (
        "<html><head>\r\n<style>"
        'p.MsoNormal {margin:0cm;font-family:"Calibri",sans-serif;}</style></head>\r\n'
        '<body lang="EN-US" link="#0563C1"><div class="WordSection1">'
        '<p class="MsoNormal">Dear Zo\u00eb,<o:p></o:p></p>'
        '<p class="MsoNormal">The price is \u20ac120&nbsp;see '
        '<a href="https://quillwort.test/prices?a=1&amp;b=2">our prices</a>.<o:p></o:p></p>'
        '<p class="MsoNormal">\u041f\u0440\u0438\u0432\u0435\u0442</p>'
        "</div></body></html>"
    )


@pytest.mark.parametrize(
    "rtf",
    [
        rb"{\rtf1\ansi\ansicpg1252 Plain rich text\par}",
        rb"{\rtf1\ansi\fromtext \htmlrtf {\htmlrtf0 Encapsulated plain text}}",
        rb"{\rtf1\ansi\fromhtml0 {\*\htmltag64 <p>}}",
        rb"<html>{\rtf1\fromhtml1}",
        b"",
    ],
    ids=["rtf", "fromtext", "fromhtml0", "not-rtf", "empty"],
)
def test_only_rich_text_that_says_it_holds_html_is_read_as_html(rtf):
    assert not is_encapsulated_html(rtf)
    assert encapsulated_html(rtf) is None


# --- the property test: a reference writer, random documents, an exact read-back -----------

TAGS = [
    "<p>", "</p>", '<a href="https://x.test/?q={1}&amp;r=\\2">', "</a>", "<br>",
    '<td style="font-family:\'Caf\u00e9\'">', "</td>", "<!-- {\\} -->", '<img alt="\u20ac">',
]  # fmt: skip
TEXT_CHARS = "abc xyz,.;-{}\\\u00e9\u00fc\u00df\u20ac\u2018\u041f\u0436\u4e2d\u6587\U0001f600\t"
HIDDEN_NOISE = [
    rb"\htmlrtf \par \htmlrtf0 ",
    rb"\htmlrtf {\b bold \'e9 copy}\htmlrtf0 ",
    rb"\htmlrtf {\field{\*\fldinst{HYPERLINK x}}{\fldrslt link}}\htmlrtf0 ",
    rb"{\*\generator Riched20 16.0;}",
    b"\r\n",
]


def escaped(text: str, code_page: str, rng: random.Random, unicode_skip: int) -> bytes:
    """Text as an RTF writer escapes it: \\ { } escaped, ASCII as is, a character the code
    page holds as \\'hh bytes, any other as \\uN (UTF-16 units) and `unicode_skip` fallbacks."""
    out = []
    for char in text:
        if char in "\\{}":
            out.append(b"\\" + char.encode())
        elif char == "\t":
            out.append(rb"\tab ")
        elif char.isascii():
            out.append(char.encode())
        else:
            try:
                encoded = char.encode(code_page)
            except UnicodeEncodeError:
                encoded = None
            if encoded is not None and rng.random() < 0.7:
                out.append(b"".join(b"\\'%02x" % byte for byte in encoded))
            else:
                units = char.encode("utf-16-le")
                for index in range(0, len(units), 2):
                    unit = int.from_bytes(units[index : index + 2], "little")
                    signed = unit - 65536 if unit > 32767 else unit
                    # the space ends the control word, as a letter or space may follow
                    out.append(b"\\u%d " % signed + b"?" * unicode_skip)
    return b"".join(out)


def encapsulate(pieces: list[tuple[str, str]], rng: random.Random) -> bytes:
    """Rich text holding the HTML these (kind, text) pieces make, "tag" or "text"."""
    rtf = [
        rb"{\rtf1\ansi\ansicpg1252\fromhtml1 \deff0{\fonttbl{\f0\fswiss Arial;}"
        rb"{\f1\fswiss\fcharset204 Arial Cyr;}{\f2\fnil\fcharset134 SimSun;}}"
        rb"{\colortbl\red0\green0\blue0;}\uc1\pard\plain\f0 "
    ]
    for kind, text in pieces:
        if rng.random() < 0.3:
            rtf.append(rng.choice(HIDDEN_NOISE))
        unicode_skip = rng.choice([0, 1, 2])
        uc = rb"\uc%d " % unicode_skip
        if kind == "tag":
            rtf.append(rb"{\*\htmltag%d " % rng.randrange(256) + uc)
            rtf.append(escaped(text, "cp1252", rng, unicode_skip) + b"}")
        else:
            font, code_page = rng.choice([(0, "cp1252"), (1, "cp1251"), (2, "cp936")])
            rtf.append(rb"{\f%d" % font + uc + escaped(text, code_page, rng, unicode_skip) + b"}")
    rtf.append(b"}")
    return b"".join(rtf)


def test_random_html_reads_back_exactly_from_its_rich_text():
    rng = random.Random(20261207)
    for _ in range(400):
        pieces = []
        for _ in range(rng.randrange(1, 12)):
            if rng.random() < 0.5:
                pieces.append(("tag", rng.choice(TAGS)))
            else:
                length = rng.randrange(1, 12)
                pieces.append(("text", "".join(rng.choice(TEXT_CHARS) for _ in range(length))))
        html = "".join(text for _, text in pieces)
        rtf = encapsulate(pieces, rng)
        assert encapsulated_html(rtf) == (html if html.strip() else None), rtf


def test_cut_or_damaged_rich_text_never_fails():
    rng = random.Random(7)
    pieces = [("tag", tag) for tag in TAGS] + [("text", TEXT_CHARS)] * 3
    rtf = encapsulate(pieces, rng)
    for _ in range(500):
        damaged = bytearray(rtf[: rng.randrange(len(rtf) + 1)])
        for _ in range(rng.randrange(4)):
            if damaged:
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        result = encapsulated_html(bytes(damaged))
        assert result is None or isinstance(result, str)
    # An unclosed document reads up to where it stops; extra closing braces end it.
    cut = OUTLOOK_RTF[: OUTLOOK_RTF.index(b"our prices") + len(b"our prices")]
    assert encapsulated_html(cut).endswith(
        '<a href="https://quillwort.test/prices?a=1&amp;b=2">our prices'
    )
    assert encapsulated_html(rb"{\rtf1\fromhtml1 {\*\htmltag1 <p>}}}}{\*\htmltag1 <q>}") == "<p>"
    deep = rb"{\rtf1\fromhtml1 " + b"{" * 5000 + rb"{\*\htmltag1 <p>}"
    assert encapsulated_html(deep) is None  # nesting past the limit stops the read
