"""Per-user preferences: one registry of keys with defaults and allowed values.

Later features add keys here; the Preference table is key/value, so no schema churn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from extensions import db
from models import Preference, User
from services.errors import ValidationError
from services.request_memo import forget, remembered


@dataclass(frozen=True)
class PreferenceSpec:
    key: str
    label: str
    default: Any
    choices: tuple[tuple[Any, str], ...]
    help: str = ""


PREFERENCES: dict[str, PreferenceSpec] = {
    spec.key: spec
    for spec in (
        PreferenceSpec(
            "records_page_size",
            "Rows per page in record lists",
            25,
            ((25, "25"), (50, "50"), (100, "100")),
        ),
        PreferenceSpec(
            "date_format",
            "Date format in the Mail tab",
            "iso",
            (("iso", "2026-11-28"), ("us", "11/28/2026"), ("eu", "28.11.2026")),
        ),
        PreferenceSpec(
            "keyboard_shortcuts",
            "Keyboard shortcuts",
            True,
            (
                (True, "On: single keys (j, k, e, #...) act in the Mail tab"),
                (False, "Off: letters and symbols only type"),
            ),
            "Turn them off if you use speech input or tend to press keys by accident.",
        ),
        PreferenceSpec(
            "default_email_sharing",
            "Default email sharing",
            "private",
            (
                ("private", "Private: only I see my conversations"),
                ("shared", "Shared: teammates see conversations on records they can access"),
            ),
            "Applies to mail synced after you change it. You can change one conversation "
            "at any time from the conversation.",
        ),
        PreferenceSpec(
            "auto_linking",
            "Link conversations to deals",
            "automatic",
            (
                ("automatic", "Automatic: link to the person's only open deal, lead or project"),
                ("manual", "Manual: I link deals myself"),
            ),
            "With several open items nothing is linked and the conversation asks you to choose.",
        ),
        PreferenceSpec(
            "archive_in_mailbox",
            "When I archive in Threadline",
            False,
            (
                (False, "Keep the mail where it is in my mailbox"),
                (True, "Also archive it in my mailbox"),
            ),
        ),
        PreferenceSpec(
            "mark_read_on_open",
            "Mark as read when opened",
            True,
            (
                (True, "Opening a conversation marks it read, in my mailbox too"),
                (False, "Leave it unread until I mark it read"),
            ),
        ),
        PreferenceSpec(
            "delete_in_mailbox",
            "When I delete in Threadline",
            False,
            (
                (False, "Remove it from Threadline only"),
                (True, "Also move it to Trash in my mailbox"),
            ),
        ),
        PreferenceSpec(
            "email_links",
            "Clicking an email address",
            "threadline",
            (
                ("threadline", "Opens Threadline's compose"),
                ("mailto", "Opens my computer's mail app (mailto:)"),
            ),
        ),
        PreferenceSpec(
            "undo_send_seconds",
            "Undo send",
            10,
            (
                (0, "Off: send at once"),
                (5, "5 seconds"),
                (10, "10 seconds"),
                (30, "30 seconds"),
            ),
            "How long \u201cSending\u2026 Undo\u201d waits before a mail leaves.",
        ),
    )
}


def register(spec: PreferenceSpec) -> None:
    """Add a preference key (called by feature modules at import time)."""
    PREFERENCES[spec.key] = spec


def get_preference(user: User, key: str) -> Any:
    """Return the user's value for `key`, or its default."""
    return _stored(user).get(key, PREFERENCES[key].default)


def all_preferences(user: User) -> dict[str, Any]:
    """Return every preference of `user`, defaults filled in."""
    stored = _stored(user)
    return {key: stored.get(key, spec.default) for key, spec in PREFERENCES.items()}


def _stored(user: User) -> dict[str, Any]:
    """Return the user's stored values: one query, kept for the rest of a web request (a page
    asks for several, and on PostgreSQL each query is a round trip)."""

    def read() -> dict[str, Any]:
        rows = db.session.execute(
            select(Preference.key, Preference.value).where(Preference.user_id == user.id)
        )
        return {row.key: row.value for row in rows}

    return remembered("preferences", user.id, read)


def update_preferences(user: User, values: dict[str, str]) -> None:
    """Validate and store submitted preference values (strings from a form); commits."""
    errors: dict[str, str] = {}
    cleaned: dict[str, Any] = {}
    for key, raw in values.items():
        spec = PREFERENCES.get(key)
        if spec is None:
            continue
        allowed = {str(value): value for value, _label in spec.choices}
        if raw not in allowed:
            errors[key] = "Choose one of the listed options."
        else:
            cleaned[key] = allowed[raw]
    if errors:
        raise ValidationError(errors)
    for key, value in cleaned.items():
        row = db.session.scalar(
            select(Preference).where(Preference.user_id == user.id, Preference.key == key)
        )
        if row is None:
            db.session.add(Preference(user_id=user.id, key=key, value=value))
        else:
            row.value = value
    db.session.commit()
    forget("preferences", user.id)
