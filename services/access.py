"""THE visibility rules. Every list, detail, fragment, count and search starts here.

Records: visibility "everyone" lets every signed-in user access a record; "owner" lets only
its owner. Mail visibility rules are added here too (PRODUCT.md, Sharing and visibility).
"""

from __future__ import annotations

from typing import TypeVar

from flask import abort
from sqlalchemy import Select, or_, select

from extensions import db
from models import VISIBILITY_EVERYONE, User

T = TypeVar("T")
MAX_ID = 2**63 - 1  # larger ids cannot exist, and SQLite would raise on them


def visible_records(user: User, model: type[T]) -> Select[tuple[T]]:
    """Return a select of the records of `model` that `user` can access."""
    return select(model).where(
        or_(model.visibility == VISIBILITY_EVERYONE, model.owner_id == user.id)  # type: ignore[attr-defined]
    )


def can_access_record(user: User, record: object) -> bool:
    """Tell whether `user` can access `record` (a person, organization, deal, lead, project)."""
    return record.visibility == VISIBILITY_EVERYONE or record.owner_id == user.id  # type: ignore[attr-defined]


def record_for(user: User, model: type[T], record_id: int) -> T:
    """Return the record or abort 404 when it does not exist or `user` cannot access it.

    404 rather than 403, so existence of a private record is not leaked.
    """
    record = db.session.get(model, record_id) if 0 < record_id <= MAX_ID else None
    if record is None or not can_access_record(user, record):
        abort(404)
    return record


def can_edit_record(user: User, record: object) -> bool:
    """Tell whether `user` may change `record`: anyone who can access it (team CRM)."""
    return can_access_record(user, record)


def record_or_none(user: User, model: type[T], record_id: int | None) -> T | None:
    """Return the record when it exists and `user` can access it, else None (for pickers)."""
    if record_id is None or not 0 < record_id <= MAX_ID:
        return None
    record = db.session.get(model, record_id)
    if record is None or not can_access_record(user, record):
        return None
    return record
