"""How stored mail headers are shown: the one home for fallbacks of missing values and for bidi.

Any header may be missing, empty or hostile; lists and pages show these labels instead, so one
odd message never breaks a page (the audit's Mail tab 500 on an empty From).
"""

from __future__ import annotations

import re
from datetime import datetime

UNKNOWN_SENDER = "(unknown sender)"
NO_SUBJECT = "(no subject)"

# Embeddings and overrides (U+202A-U+202E) and isolates (U+2066-U+2069) in a subject or name
# would reorder the text around it on our page ("Trojan Source", CVE-2021-42574); dir="auto"
# on the element keeps right-to-left names readable without them.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
_WHITESPACE = re.compile(r"\s+")


def display_text(value: str | None) -> str:
    """Return header text for display: bidi controls removed, whitespace collapsed."""
    if not value:
        return ""
    if value.isprintable() and "  " not in value and value[0] != " " and value[-1] != " ":
        # Nothing to change (most values, and a list page shows hundreds): bidi controls,
        # tabs, newlines and other whitespace but the plain space are not printable.
        return value
    return _WHITESPACE.sub(" ", _BIDI_CONTROLS.sub("", value)).strip()


def subject_label(subject: str | None) -> str:
    """Return a subject for display, "(no subject)" when missing or blank."""
    return display_text(subject) or NO_SUBJECT


def sender_label(name: str | None, address: str | None) -> str:
    """Return the sender's name, else address, else "(unknown sender)"."""
    return display_text(name) or display_text(address) or UNKNOWN_SENDER


def short_name(label: str) -> str:
    """Return the first word of a sender label ("Carla Diaz" -> "Carla"); labels in
    parentheses ("(unknown sender)") and addresses stay whole."""
    words = label.split()
    if not words or label.startswith("(") or "@" in words[0]:
        return label
    return words[0]


def message_date(date: datetime | None, internaldate: datetime | None) -> datetime | None:
    """Return the Date header's time, else the server's INTERNALDATE (when it arrived)."""
    return date or internaldate
