"""THE visibility rules. Every list, detail, fragment, count and search starts here.

Records: visibility "everyone" lets every signed-in user access a record; "owner" lets only
its owner. Mail visibility rules are added here too (PRODUCT.md, Sharing and visibility).
"""

from __future__ import annotations

from typing import TypeVar

from flask import abort
from sqlalchemy import Select, or_, select

from extensions import db
from models import VISIBILITY_EVERYONE, MailAccount, MailFolder, Message, User

T = TypeVar("T")


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
    record = db.session.get(model, record_id)
    if record is None or not can_access_record(user, record):
        abort(404)
    return record


def can_edit_record(user: User, record: object) -> bool:
    """Tell whether `user` may change `record`: anyone who can access it (team CRM)."""
    return can_access_record(user, record)


# --------------------------------------------------------------------------- mail accounts
# A mailbox is its owner's alone: nobody else, admins included, sees its accounts, folders or
# Mail tab (PRODUCT.md, Sharing and visibility). Shared conversations on record pages are a
# separate rule, added with the record mail panels.


def visible_accounts(user: User) -> Select[tuple[MailAccount]]:
    """Return a select of the mail accounts `user` owns, removed ones included."""
    return select(MailAccount).where(MailAccount.user_id == user.id).order_by(MailAccount.id)


def account_for(user: User, account_id: int) -> MailAccount:
    """Return the user's own mail account or abort 404."""
    account = db.session.get(MailAccount, account_id)
    if account is None or account.user_id != user.id:
        abort(404)
    return account


def folders_for_owner(user: User) -> Select[tuple[MailFolder]]:
    """Return a select of the folders of the user's own accounts."""
    return (
        select(MailFolder)
        .join(MailAccount, MailFolder.account_id == MailAccount.id)
        .where(MailAccount.user_id == user.id)
    )


def folder_for_owner(user: User, folder_id: int) -> MailFolder:
    """Return a folder of the user's own accounts or abort 404."""
    folder = db.session.get(MailFolder, folder_id)
    if folder is None or folder.account.user_id != user.id:
        abort(404)
    return folder


def visible_messages_for_owner(user: User) -> Select[tuple[Message]]:
    """Return a select of the non-deleted messages in the user's own mailboxes (Mail tab)."""
    return (
        select(Message)
        .join(MailAccount, Message.account_id == MailAccount.id)
        .where(MailAccount.user_id == user.id, Message.deleted_at.is_(None))
    )


def message_for_owner(user: User, message_id: int) -> Message:
    """Return a message of the user's own mailboxes or abort 404 (admins included)."""
    message = db.session.scalar(visible_messages_for_owner(user).where(Message.id == message_id))
    if message is None:
        abort(404)
    return message
