"""The words of text/enriched (RFC 1896) and text/richtext (RFC 1341) mail.

Old Mac and Eudora mailers sent some mail with no plain or HTML text at all, only one of
these: shown as they are, their formatting commands would read as noise, and taken as an
unnamed file, the mail showed no text. The commands are left out (bold, fonts, colours),
their parameters too, and the line breaks become what the formats mean by them.
"""

from __future__ import annotations

import re

ENRICHED_TYPES = ("text/enriched", "text/richtext")

# One token at a time, each told apart by its first characters (no backtracking): "<<",
# a command, a line break, a run of other text, or a lone "<".
_TOKEN = re.compile(r"<<|<(/?)([A-Za-z0-9-]{1,60})>|\r\n|\n|[^<\r\n]+|<")


def enriched_to_text(source: str, content_type: str = "text/enriched") -> str:
    """Return the text of a text/enriched or text/richtext body, without its commands.

    text/enriched: "<<" is "<"; one line break is a space and n in a row are n - 1 (inside
    <nofill> every break stays); what <param> holds is a command's argument, not text.
    text/richtext: every line break is a space; <nl> and <np> break the line, <lt> is "<".
    """
    richtext = content_type == "text/richtext"
    out: list[str] = []
    nofill = param = 0
    breaks = 0  # line breaks read in a row, written once the run ends

    def end_of_breaks() -> None:
        nonlocal breaks
        if breaks and not param:
            if breaks > 1 and not richtext:
                out.append("\n" * (breaks - 1))
            elif out and not out[-1].endswith("\n"):  # not a space to start a line with
                out.append(" ")
        breaks = 0

    for match in _TOKEN.finditer(source):
        token = match.group()
        if token in ("\r\n", "\n"):
            if nofill and not richtext:
                if not param:
                    out.append("\n")
            else:
                breaks += 1
            continue
        end_of_breaks()
        name = match.group(2)
        if name is None:
            if not param:
                out.append("<" if token == "<<" and not richtext else token)
            continue
        name, closing = name.lower(), bool(match.group(1))
        step = -1 if closing else 1
        if name == "param" and not richtext:
            param = max(0, param + step)
        elif name == "nofill":
            nofill = max(0, nofill + step)
        elif richtext and not closing and name in ("nl", "np"):
            out.append("\n")
        elif richtext and not closing and name == "lt":
            out.append("<")
    end_of_breaks()
    return "".join(out).strip()
