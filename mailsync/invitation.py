"""A calendar invitation (text/calendar, RFC 5545 / iTIP RFC 5546) as a few lines of text.

Meeting requests, replies and cancellations often carry their only readable content in the
calendar part ("Accepted: Kick-off" from Outlook has no text at all). The first event is
summarized the way mail programs show it: what, when, where, who organizes it, and for a
reply who answered what. Pure and total: a broken calendar gives what could be read.
"""

from __future__ import annotations

import re

MAX_CALENDAR_CHARS = 200_000  # of a calendar part read (an invitation is a few kB)

_UNFOLD = re.compile(r"\r?\n[ \t]")
_ESCAPED = re.compile(r"\\([\\;,nN])")
_PARAMETER = re.compile(r';([A-Za-z0-9-]+)=("[^"]*"|[^;:]*)')
_DATE_TIME = re.compile(r"^(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2})\d{0,2}(Z?))?$")
_HEADINGS = {
    "REQUEST": "Invitation",
    "CANCEL": "Cancelled",
    "PUBLISH": "Event",
    "ADD": "Invitation",
    "COUNTER": "New time proposed",
    "DECLINECOUNTER": "New time declined",
    "REFRESH": "Update requested",
}
_ANSWERS = {
    "ACCEPTED": "Accepted",
    "DECLINED": "Declined",
    "TENTATIVE": "Tentatively accepted",
    "DELEGATED": "Delegated",
}


def invitation_text(calendar: str) -> str:
    """The summary of the first event in this iCalendar text, or "" when it has none."""
    method = ""
    event: list[tuple[str, dict[str, str], str]] = []
    in_event = False
    for line in _UNFOLD.sub("", calendar[:MAX_CALENDAR_CHARS]).splitlines():
        name, params, value = _content_line(line)
        if name == "METHOD" and not method:
            method = value.strip().upper()
        elif name == "BEGIN" and value.strip().upper() == "VEVENT":
            in_event = True
        elif name == "END" and value.strip().upper() == "VEVENT":
            break
        elif in_event:
            event.append((name, params, value))
    if not event:
        return ""
    first = {}
    for name, params, value in event:
        first.setdefault(name, (params, value))
    summary = _unescape(first.get("SUMMARY", ({}, ""))[1]).strip() or "(no title)"
    lines = [_heading(method, summary, event)]
    if "DTSTART" in first:
        lines.append("When: " + _when(first["DTSTART"], first.get("DTEND")))
    location = _unescape(first.get("LOCATION", ({}, ""))[1]).strip()
    if location:
        lines.append(f"Where: {location}")
    if "ORGANIZER" in first:
        lines.append(f"Organizer: {_person(*first['ORGANIZER'])}")
    return "\n".join(lines)


def _content_line(line: str) -> tuple[str, dict[str, str], str]:
    """NAME;PARAM=value;...:VALUE -> (NAME, params, VALUE); a quoted parameter may hold ':'."""
    head_end = len(line)
    position, in_quotes = 0, False
    for position, char in enumerate(line):
        if char == '"':
            in_quotes = not in_quotes
        elif char == ":" and not in_quotes:
            head_end = position
            break
    head, value = line[:head_end], line[head_end + 1 :]
    name = head.split(";", 1)[0].strip().upper()
    params = {key.upper(): raw.strip('"') for key, raw in _PARAMETER.findall(head)}
    return name, params, value


def _unescape(value: str) -> str:
    return _ESCAPED.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1), value)


def _heading(method: str, summary: str, event: list[tuple[str, dict[str, str], str]]) -> str:
    if method == "REPLY":
        for name, params, value in event:
            if name == "ATTENDEE":
                answer = _ANSWERS.get(params.get("PARTSTAT", "").upper(), "Replied")
                return f"{answer}: {summary} ({_person(params, value)})"
        return f"Reply: {summary}"
    return f"{_HEADINGS.get(method, 'Event')}: {summary}"


def _person(params: dict[str, str], value: str) -> str:
    address = value.strip()
    if address.lower().startswith("mailto:"):
        address = address[len("mailto:") :]
    name = params.get("CN", "").strip()
    return f"{name} <{address}>" if name and address else name or address


def _when(start: tuple[dict[str, str], str], end: tuple[dict[str, str], str] | None) -> str:
    """ "2026-12-08 10:00-11:00 (Europe/Berlin)", "2026-12-08 (all day)", or the raw value."""
    start_params, start_value = start
    begin = _DATE_TIME.match(start_value.strip())
    if begin is None:
        return start_value.strip()
    year, month, day, hour, minute, utc = begin.groups()
    text = f"{year}-{month}-{day}"
    if hour is None:
        return text + " (all day)"
    text += f" {hour}:{minute}"
    finish = _DATE_TIME.match(end[1].strip()) if end else None
    if finish is not None and finish.group(4) is not None:
        same_day = finish.group(1, 2, 3) == (year, month, day)
        until = f"{finish.group(4)}:{finish.group(5)}"
        text += f"-{until}" if same_day else f" - {'-'.join(finish.group(1, 2, 3))} {until}"
    zone = "UTC" if utc else start_params.get("TZID", "")
    return f"{text} ({zone})" if zone else text
