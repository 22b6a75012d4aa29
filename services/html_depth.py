"""Bound the work mail HTML can make the sanitizer's HTML parser do, before it reads it.

nh3's parser (html5ever) follows the HTML standard, whose costs grow with what is open: every
block start tag looks through the stack of open elements for a <p>, so 100,000 unclosed
<div> tags (500 kB) took two minutes of CPU; and a formatting element a block end tag closed
is opened again at each later insertion ("reconstruct the active formatting elements"), so
8,000 `<div><b id=N></div>` (150 kB) came out as 224 MB of HTML after 34 seconds.

`limit_nesting` rewrites the HTML in one pass so neither can grow past a bound: a start tag
that would nest deeper than MAX_HTML_DEPTH (Chromium's parser stops at 512 too) or open more
than MAX_OPEN_FORMATTING formatting elements is dropped (its text stays). To count what the
parser will hold open, it keeps a model of the parser's stack, on the deep side so markup
cannot cheat it: an end tag only closes what the parser surely closes; elements the parser
closes by itself (<p>, <li>, table cells...) and void elements are not counted. So that the
parser sees exactly the tags the model saw, every other "<" is written as "&lt;" (in text,
and in the content of script, style, textarea and the other raw-text elements) and comments
and CDATA sections are left out: the sanitizer drops all of those anyway. Below the bounds
the sanitized result is the same as without this pass.
"""

from __future__ import annotations

import re

MAX_HTML_DEPTH = 512  # Chromium's kMaximumHTMLParserDOMTreeDepth
MAX_OPEN_FORMATTING = 8  # formatting elements not surely closed (each may be reopened)

_TAG_NAME = re.compile(r"[A-Za-z][^\s/>]*")
_COMMENT_END = re.compile(r"--!?>")
# Elements whose content is text to the parser, up to their own end tag.
_RAW_TEXT = frozenset(
    "script style textarea title xmp iframe noembed noframes noscript plaintext".split()
)
# Of those, the ones whose content the sanitizer drops (mail_render._CLEAN_CONTENT_TAGS):
# their content is left out here already (a <title> never closed held a whole 1 MB mail).
_CONTENT_DROPPED = frozenset("script style textarea title xmp noembed noframes noscript".split())
# Never on the stack (void), or closed by the next one of their kind or by their container.
_NOT_COUNTED = frozenset(
    "area base br col embed hr img input keygen link meta param source track wbr image "
    "p li dd dt option optgroup rb rp rt rtc tr td th tbody thead tfoot colgroup caption "
    "html head body frameset frame".split()
)
# An end tag does not reach past these (the parser's "scope" boundaries).
_BOUNDARIES = frozenset(
    "table button object marquee applet template "
    "mi mo mn ms mtext annotation-xml foreignobject desc".split()
)
# Closing one of these clears the formatting elements opened inside it (a "marker").
_MARKERS = frozenset("object marquee applet template".split())
# Their end tags run the adoption agency: only closed here when no other element is above.
_FORMATTING = frozenset("a b big code em font i nobr s small strike strong tt u".split())
# The parser's "special" elements: an end tag of any other element stops at one of them.
_SPECIAL = frozenset(
    "address applet area article aside base basefont bgsound blockquote body br button "
    "caption center col colgroup dd details dir div dl dt embed fieldset figcaption figure "
    "footer form frame frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html iframe img "
    "input keygen li link listing main marquee menu meta nav noembed noframes noscript "
    "object ol p param plaintext pre script search section select source style summary "
    "table tbody td template textarea tfoot th thead title tr track ul wbr xmp "
    "mi mo mn ms mtext annotation-xml foreignobject desc".split()
)


class _Stack:
    """The model of the parser's stack of open elements, with O(1) scope questions."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.positions: dict[str, list[int]] = {}  # name -> where it is open
        self.marks: dict[str, list[int]] = {"block": [], "special": [], "boundary": []}
        self.formatting_at: list[int] = []  # open formatting count when each was pushed
        self.open_formatting = 0

    def push(self, name: str) -> None:
        index = len(self.names)
        self.names.append(name)
        self.positions.setdefault(name, []).append(index)
        self.formatting_at.append(self.open_formatting)
        for kind, member in (
            ("block", name not in _FORMATTING),
            ("special", name in _SPECIAL),
            ("boundary", name in _BOUNDARIES),
        ):
            if member:
                self.marks[kind].append(index)
        if name in _FORMATTING:
            self.open_formatting += 1

    def above(self, kind: str, index: int) -> bool:
        marks = self.marks[kind]
        return bool(marks) and marks[-1] > index

    def close(self, name: str) -> None:
        """An end tag: pop to its element when the parser surely would."""
        open_at = self.positions.get(name)
        if not open_at:
            return
        index = open_at[-1]
        if self.above("boundary", index):
            return  # out of scope: the parser ignores it
        if name in _FORMATTING:
            if self.above("block", index):
                return  # the adoption agency may keep as many elements open
        elif name not in _SPECIAL and self.above("special", index):
            return  # "any other end tag" stops at a special element
        restored = self.formatting_at[index] if name in _MARKERS else None
        while len(self.names) > index:
            popped = self.names.pop()
            self.positions[popped].pop()
            self.formatting_at.pop()
            for marks in self.marks.values():
                if marks and marks[-1] == len(self.names):
                    marks.pop()
        if name in _FORMATTING:
            self.open_formatting -= 1  # it leaves the list; others popped above it stay
        if restored is not None:
            self.open_formatting = restored

    def room_for(self, name: str) -> bool:
        if len(self.names) >= MAX_HTML_DEPTH:
            return False
        return name not in _FORMATTING or self.open_formatting < MAX_OPEN_FORMATTING


def limit_nesting(html: str) -> str:
    """Return `html` as the sanitizer should read it: within the bounds above.

    One pass with str.find, never a regex that could backtrack: every search moves on from
    where the last one stopped (an earlier version's tag regex took 57 s for "<a" x 5,000).
    """
    stack = _Stack()
    out: list[str] = []
    position = 0
    while True:
        start = html.find("<", position)
        if start < 0:
            out.append(html[position:])
            break
        out.append(html[position:start])
        if html.startswith("<!--", start):
            position = _comment_end(html, start)  # the sanitizer drops comments
            continue
        if html.startswith("<![CDATA[", start):
            close = html.find("]]>", start + 9)
            position = len(html) if close < 0 else close + 3
            continue
        is_end = html.startswith("</", start)
        name = _TAG_NAME.match(html, start + (2 if is_end else 1))
        if name is None:
            if html.startswith(("<!", "<?", "</"), start):  # a bogus comment, to its ">"
                close = html.find(">", start + 1)
                position = len(html) if close < 0 else close + 1
            else:
                out.append("&lt;")
                position = start + 1
            continue
        close = html.find(">", name.end())
        if close < 0:  # no ">" anywhere after: what is left is text
            out.append(html[start:].replace("<", "&lt;"))
            break
        tag, position = html[start : close + 1], close + 1
        tag_name = name.group().lower()
        if is_end:
            if tag_name not in _NOT_COUNTED:
                stack.close(tag_name)
            out.append(tag)
            continue
        if tag_name in ("a", "nobr"):  # a new one closes the one still open, if it can
            stack.close(tag_name)
        kept = tag_name in _NOT_COUNTED or stack.room_for(tag_name)
        if kept:
            out.append(tag)
            if tag_name not in _NOT_COUNTED:
                stack.push(tag_name)
        if tag_name in _RAW_TEXT:
            end = _raw_text_end(html, tag_name, position)
            if kept and tag_name not in _CONTENT_DROPPED:
                out.append(html[position:end].replace("<", "&lt;"))
            position = end
    return "".join(out)


def _comment_end(html: str, start: int) -> int:
    """Where a comment starting at `start` ends, as the parser reads it (to the end if open)."""
    for empty in ("<!-->", "<!--->"):
        if html.startswith(empty, start):
            return start + len(empty)
    found = _COMMENT_END.search(html, start + 4)
    return len(html) if found is None else found.end()


def _raw_text_end(html: str, name: str, position: int) -> int:
    """Where the text of a raw-text element ends: at its own end tag, or the end."""
    if name == "plaintext":
        return len(html)
    found = re.compile(rf"</{re.escape(name)}(?=[\s/>])", re.IGNORECASE).search(html, position)
    return found.start() if found else len(html)
