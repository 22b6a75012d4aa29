"""Pure Message-ID / subject helpers for JWZ-style threading (SYNC.md §8).

The DB-backed part (message_id_index lookups, merges, phantoms) lives elsewhere; everything
here is a side-effect-free function over strings and dates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

MAX_MSGID_LEN = 998  # RFC 5322 line limit; Nylas truncates here too
MAX_CHAIN = 50  # SYNC.md §8 step 2: keep only the last 20-50 parent ids
MAX_THREAD_LENGTH = 500  # SYNC.md §8 step 6 (Nylas MAX_THREAD_LENGTH)
SUBJECT_FALLBACK_MAX_DAYS = 45  # SYNC.md §8 step 5: "within about 30-60 days"
MIN_SHARED_PARTICIPANTS = 2  # SYNC.md §8 step 5: participants share at least 2 addresses

_BRACKETED = re.compile(r"<([^<>]*)>")
_WS = re.compile(r"\s+")
_PREFIX = re.compile(
    r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|antw|回复|答复|转发)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]"
    r"|\[[^\[\]]*\])\s*",
    re.IGNORECASE,
)
_TAG = re.compile(r"^\s*\[[^\[\]]*\]\s*")

GENERIC_SUBJECTS: frozenset[str] = frozenset(
    {
        "",
        "(no subject)",
        "no subject",
        "(sans objet)",
        "kein betreff",
        "(kein betreff)",
        "sin asunto",
        "hi",
        "hello",
        "hey",
        "hola",
        "test",
        "testing",
        "invoice",
        "receipt",
        "payment",
        "order",
        "your order",
        "question",
        "quick question",
        "meeting",
        "update",
        "info",
        "information",
        "fyi",
        "thanks",
        "thank you",
        "follow up",
        "follow-up",
        "followup",
        "document",
        "documents",
        "scan",
        "scanned document",
        "photos",
        "untitled",
        "contact",
        "request",
        "reminder",
    }
)


def normalize_msgid(token: str | None) -> str | None:
    """Return the bare, lowercased Message-ID in token, or None if missing or garbage."""
    if not token:
        return None
    match = _BRACKETED.search(token)
    candidate = match.group(1) if match else token
    candidate = _WS.sub("", candidate).lower()
    if "@" not in candidate or len(candidate) > MAX_MSGID_LEN or "<" in candidate:
        return None
    return candidate


def parse_id_list(header_value: str | None) -> list[str]:
    """Return the normalized ids of a References/In-Reply-To value, in order, without repeats."""
    if not header_value:
        return []
    tokens = _BRACKETED.findall(header_value)
    if not tokens:  # some mailers omit the angle brackets
        tokens = [t for t in re.split(r"[\s,]+", header_value) if t]
    seen: set[str] = set()
    ids: list[str] = []
    for token in tokens:
        msgid = normalize_msgid(token)
        if msgid is not None and msgid not in seen:
            seen.add(msgid)
            ids.append(msgid)
    return ids


def parent_chain(references: Sequence[str], in_reply_to: str | None) -> list[str]:
    """Return References plus In-Reply-To (appended unless already last), capped to the last 50."""
    chain = list(references)
    if in_reply_to and (not chain or chain[-1] != in_reply_to):
        chain.append(in_reply_to)
    return chain[-MAX_CHAIN:]


def normalize_subject(subject: str | None) -> str:
    """Strip reply/forward prefixes and [list-tags] repeatedly, collapse whitespace, casefold."""
    if not subject:
        return ""
    text = subject
    while True:
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return _WS.sub(" ", text).strip().casefold()


def has_reply_prefix(subject: str | None) -> bool:
    """Return True if the subject starts (after any [list-tags]) with a reply/forward prefix."""
    text = subject or ""
    while True:
        stripped = _TAG.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    match = _PREFIX.match(text)
    return bool(match) and not match.group(0).lstrip().startswith("[")


def subject_fallback_allowed(
    normalized_subject: str,
    has_prefix: bool,
    candidate_last_date: datetime | None,
    this_date: datetime | None,
    participants_overlap: int,
    *,
    max_age_days: int = SUBJECT_FALLBACK_MAX_DAYS,
) -> bool:
    """Return True if a message may join a thread by subject alone (SYNC.md §8 step 5).

    All must hold: a non-generic subject, a reply/forward prefix, the candidate's last message
    within max_age_days of this one (pass INTERNALDATE when the Date header is missing; unknown
    dates refuse), and at least 2 shared participants (the caller excludes BCC).
    """
    if not normalized_subject or normalized_subject in GENERIC_SUBJECTS:
        return False
    if not has_prefix:
        return False
    if candidate_last_date is None or this_date is None:
        return False
    try:
        if abs(this_date - candidate_last_date) > timedelta(days=max_age_days):
            return False
    except TypeError:  # naive vs aware datetimes: refuse rather than guess
        return False
    return participants_overlap >= MIN_SHARED_PARTICIPANTS
