"""Read back the HTML that Outlook keeps inside rich text (RTF "encapsulated HTML").

Outlook and Exchange send an HTML mail as compressed RTF inside winmail.dat (TNEF) when the
mail is in "rich text" mode. That RTF carries the original HTML: every tag in a
``{\\*\\htmltag<N> ...}`` group, the text between tags as ordinary RTF text, and the RTF-only
formatting that stands in for the tags wrapped in ``\\htmlrtf ... \\htmlrtf0`` (so an HTML
reader skips it). This follows [MS-OXRTFEX] 2.2.3 ("Extracting Encapsulated HTML from RTF"):
copy what the htmltag groups hold and the text outside them that \\htmlrtf does not hide,
unescaping ``\\'hh`` bytes in the code page in effect (the header's ``\\ansicpg``, or the
current font's ``\\fcharset``) and ``\\uN`` characters.

Pure and total: damaged or cut rich text gives what could be read, never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    rb"\\([a-zA-Z]{1,32})(-?\d{1,10})? ?"  # control word, optional parameter, its delimiter
    rb"|\\'([0-9a-fA-F]{2})"  # a byte in the current code page
    rb"|\\(.)"  # control symbol: \{ \} \\ \~ \* ...
    rb"|([{}])"
    rb"|[\r\n]+"  # line breaks in RTF source mean nothing
    rb"|([^\\{}\r\n]+)",  # plain text
    re.DOTALL,
)
_FROM_HTML = re.compile(rb"\\fromhtml1?(?![a-zA-Z0-9])")
_HEADER_LOOKAHEAD = 4096  # \fromhtml comes right after \rtf1 and the code page words

# Destinations whose content is not text (the header tables, pictures, document info...).
_SKIPPED_DESTINATIONS = frozenset(
    b"fonttbl colortbl stylesheet info pict object header footer headerl headerr footerl footerr "
    b"listtable listoverridetable rsidtbl generator xmlnstbl themedata colorschememapping "
    b"latentstyles datastore fldinst mhtmltag".split()
)
# \fcharset -> Windows code page ([MSFT-RTF] font table); others use the header's \ansicpg.
_CHARSET_CODE_PAGES = {
    128: 932, 129: 949, 130: 1361, 134: 936, 136: 950, 161: 1253, 162: 1254, 163: 1258,
    177: 1255, 178: 1256, 186: 1257, 204: 1251, 222: 874, 238: 1250,
}  # fmt: skip
_CONTROL_TEXT = {
    b"par": "\r\n", b"line": "\r\n", b"tab": "\t", b"lquote": "\u2018", b"rquote": "\u2019",
    b"ldblquote": "\u201c", b"rdblquote": "\u201d", b"bullet": "\u2022", b"endash": "\u2013",
    b"emdash": "\u2014", b"emspace": "\u2003", b"enspace": "\u2002", b"qmspace": "\u2005",
}  # fmt: skip
_SYMBOL_TEXT = {b"{": "{", b"}": "}", b"\\": "\\", b"~": "\u00a0", b"_": "\u2011", b"-": "\u00ad"}
_MAX_GROUP_DEPTH = 1000


def is_encapsulated_html(rtf: bytes) -> bool:
    """Whether this rich text says it holds an HTML document (\\fromhtml1 in its header)."""
    return rtf.startswith(b"{\\rtf") and _FROM_HTML.search(rtf, 0, _HEADER_LOOKAHEAD) is not None


@dataclass
class _State:
    """What a group inherits from its parent and may change for itself."""

    in_html_tag: bool = False  # inside {\*\htmltag...}: copied whatever \htmlrtf says
    hidden: bool = False  # \htmlrtf: RTF-only formatting an HTML reader skips
    skipped: bool = False  # a destination that is no text (font table, picture, unknown \*)
    font_table: bool = False
    unicode_skip: int = 1  # \ucN: how many fallback characters follow each \uN
    code_page: int | None = None  # of the current font, when it names one


def _decode(data: bytes, code_page: int) -> str:
    try:
        return data.decode(f"cp{code_page}", "replace")
    except LookupError:  # a code page Python does not know: Windows' default
        return data.decode("cp1252", "replace")


def encapsulated_html(rtf: bytes) -> str | None:
    """The HTML document held in this rich text, or None when it holds none."""
    if not is_encapsulated_html(rtf):
        return None
    default_code_page = 1252
    font_code_pages: dict[int, int] = {}
    out: list[str] = []
    pending_bytes = bytearray()  # \'hh bytes, decoded together (double-byte code pages)
    pending_units: list[int] = []  # \uN UTF-16 code units, decoded together (surrogate pairs)
    state = _State()
    stack: list[_State] = []
    skip_fallback = 0  # fallback characters still to drop after a \uN
    destination_next = False  # after \*: the next control word names a destination
    group_start = False  # the next token is the first of a group
    font_number: int | None = None  # of the font table entry being read

    def flush() -> None:
        if pending_bytes:
            out.append(_decode(bytes(pending_bytes), state.code_page or default_code_page))
            pending_bytes.clear()
        if pending_units:
            data = b"".join(unit.to_bytes(2, "little") for unit in pending_units)
            out.append(data.decode("utf-16-le", "replace"))
            pending_units.clear()

    def shown() -> bool:
        return not state.skipped and (state.in_html_tag or not state.hidden)

    for match in _TOKEN.finditer(rtf):
        word, parameter, hex_byte, symbol, brace, text = match.groups()
        if match.lastindex is None:
            continue  # a line break in the RTF source
        first_in_group, group_start = group_start, False
        if brace == b"{":
            flush()
            if len(stack) >= _MAX_GROUP_DEPTH:
                break
            stack.append(state)
            state = _State(**vars(state))
            group_start, destination_next, skip_fallback = True, False, 0
            continue
        if brace == b"}":
            flush()
            if not stack:
                break  # the document's closing brace
            state = stack.pop()
            destination_next, skip_fallback = False, 0
            continue
        if skip_fallback and (text or hex_byte or symbol or word):
            if text:  # a fallback run may be longer than the characters it stands for
                dropped = min(skip_fallback, len(text))
                skip_fallback -= dropped
                text = text[dropped:]
                if not text:
                    continue
            else:
                skip_fallback -= 1
                continue
        if word is not None:
            value = int(parameter) if parameter is not None else None
            is_destination, destination_next = destination_next, False
            if word == b"htmltag" and (is_destination or first_in_group):
                flush()
                state.in_html_tag = True
            elif is_destination or (first_in_group and word in _SKIPPED_DESTINATIONS):
                flush()
                if word == b"fonttbl":
                    state.font_table = True
                state.skipped = True
            elif word == b"htmlrtf":
                flush()
                state.hidden = value != 0
            elif word == b"ansicpg" and value:
                default_code_page = value
            elif word == b"f" and value is not None:
                if state.font_table:
                    font_number = value
                else:
                    flush()
                    state.code_page = font_code_pages.get(value)
            elif word == b"fcharset" and state.font_table and font_number is not None:
                code_page = _CHARSET_CODE_PAGES.get(value or 0)
                if code_page:
                    font_code_pages[font_number] = code_page
            elif word == b"uc" and value is not None:
                state.unicode_skip = max(0, min(value, 10))
            elif word == b"u" and value is not None:
                if shown():
                    if pending_bytes:
                        flush()
                    pending_units.append(value % 65536)
                skip_fallback = state.unicode_skip
            elif word in _CONTROL_TEXT and shown():
                flush()
                out.append(_CONTROL_TEXT[word])
            continue
        if symbol is not None:
            if symbol == b"*":
                destination_next = True
            elif symbol in (b"\n", b"\r") and shown():  # "\" before a line break: a \par
                flush()
                out.append("\r\n")
            elif symbol in _SYMBOL_TEXT and shown():
                flush()
                out.append(_SYMBOL_TEXT[symbol])
            continue
        if hex_byte is not None:
            if shown():
                if pending_units:
                    flush()
                pending_bytes.append(int(hex_byte, 16))
            continue
        if text and shown():
            flush()
            out.append(_decode(text, state.code_page or default_code_page))
    flush()
    html = "".join(out).replace("\x00", "")
    return html if html.strip() else None
