"""THE visibility rules. Every list, detail, fragment, count and search starts here.

Records: visibility "everyone" lets every signed-in user access a record; "owner" lets only
its owner. Mail visibility rules are added here too (PRODUCT.md, Sharing and visibility).
"""

from __future__ import annotations

from typing import TypeVar

from flask import abort
from sqlalchemy import Select, and_, or_, select

from extensions import db
from models import (
    VISIBILITY_EVERYONE,
    Deal,
    GroupSend,
    Lead,
    MailAccount,
    MailFolder,
    Message,
    MessagePerson,
    OutgoingAttachment,
    OutgoingMail,
    Person,
    Project,
    Thread,
    User,
)
from services.inputs import is_database_id
from services.request_memo import forget, remembered

T = TypeVar("T")


def accessible_to(model: type, user_id: int):
    """The SQL condition "the user with `user_id` can access this record of `model`"."""
    return or_(model.visibility == VISIBILITY_EVERYONE, model.owner_id == user_id)  # type: ignore[attr-defined]


def visible_records(user: User, model: type[T]) -> Select[tuple[T]]:
    """Return a select of the records of `model` that `user` can access."""
    return select(model).where(accessible_to(model, user.id))


def can_access_record(user: User, record: object) -> bool:
    """Tell whether `user` can access `record` (a person, organization, deal, lead, project)."""
    return record.visibility == VISIBILITY_EVERYONE or record.owner_id == user.id  # type: ignore[attr-defined]


def can_manage_records_of(user: User, owner_id: int) -> bool:
    """Tell whether `user` may manage records owned by `owner_id`: themselves, or an admin.

    Managing is changing a record's owner or visibility, deleting it, or converting it (a
    lead). Others who can access a record may edit its other fields. The same rule decides
    whom a new record may be created for, so nobody plants records in a teammate's name.
    """
    return user.is_admin or owner_id == user.id


def can_manage_record(user: User, record: object) -> bool:
    """Tell whether `user` may change `record`'s owner or visibility, or delete it."""
    return can_manage_records_of(user, record.owner_id)  # type: ignore[attr-defined]


def record_for(user: User, model: type[T], record_id: int, *, manage: str | None = None) -> T:
    """Return the record or abort 404 when it does not exist or `user` cannot access it.

    404 rather than 403, so existence of a private record is not leaked. With `manage` (the
    action, e.g. "delete"), also abort 403 unless `user` may manage the record: they can see
    it already, so the refusal may say why.
    """
    record = db.session.get(model, record_id) if is_database_id(record_id) else None
    if record is None or not can_access_record(user, record):
        abort(404)
    if manage and not can_manage_record(user, record):
        noun = model.__tablename__  # type: ignore[attr-defined]
        abort(403, description=f"Only the owner or an admin can {manage} this {noun}.")
    return record


def linked_record_for(user: User, record: T | None) -> T | None:
    """Return a record linked from another one (a deal's person or organization, a lead's
    deal) when `user` can access it, else None.

    A record everyone can open may link to someone's owner-only record; its page and list
    rows name the linked record only to those who could open it (PRODUCT.md "Sharing and
    visibility"), as the pickers and related lists already do.
    """
    if record is None or not can_access_record(user, record):
        return None
    return record


def record_or_none(user: User, model: type[T], record_id: int | None) -> T | None:
    """Return the record when it exists and `user` can access it, else None (for pickers)."""
    if record_id is None or not is_database_id(record_id):
        return None
    record = db.session.get(model, record_id)
    if record is None or not can_access_record(user, record):
        return None
    return record


# --------------------------------------------------------------------------- mail
#
# PRODUCT.md "Sharing and visibility":
# - A user's Mail tab shows only threads of their own mail accounts. Nobody else, admins
#   included, ever sees another user's Mail tab or private conversations.
# - A teammate sees a thread only when it is shared, linked to a record (person, deal, lead,
#   project; organizations through their persons and deals) and the teammate can access that
#   record; only on that record's page, read-only.
# - Deleted threads are gone everywhere; threads hidden by the owner's blocked addresses are
#   hidden everywhere too. So is, for teammates, a message those blocks hide inside a shared
#   thread (it links the thread to nobody), and a thread with no message left to show (one
#   deleted in the mailbox waits for garbage collection with deleted_at unset).


def owned_threads(user: User) -> Select[tuple[Thread]]:
    """Return a select of the user's own live threads (their Mail tab)."""
    return (
        select(Thread)
        .join(MailAccount, MailAccount.id == Thread.account_id)
        .where(MailAccount.user_id == user.id, Thread.deleted_at.is_(None))
    )


def owned_messages(user: User) -> Select[tuple[Message]]:
    """Return a select of the user's own live messages."""
    return (
        select(Message)
        .join(MailAccount, MailAccount.id == Message.account_id)
        .where(MailAccount.user_id == user.id, Message.deleted_at.is_(None))
    )


def thread_for_owner(user: User, thread_id: int) -> Thread:
    """Return one of the user's own threads or abort 404."""
    if not is_database_id(thread_id):
        abort(404)
    thread = db.session.scalar(owned_threads(user).where(Thread.id == thread_id))
    if thread is None:
        abort(404)
    return thread


def message_for_owner(user: User, message_id: int) -> Message:
    """Return one of the user's own messages or abort 404."""
    message = db.session.scalar(owned_messages(user).where(Message.id == message_id))
    if message is None:
        abort(404)
    return message


def _shown_message():
    """The SQL condition "this message shows in its conversation": not deleted, and not hidden
    by its owner's blocks. Only such a message links its conversation to a person: a hidden
    one must not open a shared conversation to teammates (PRODUCT.md "Blocked addresses")."""
    return and_(Message.deleted_at.is_(None), Message.blocked.is_(False))


def _shows_a_message():
    """The SQL condition "this conversation still has a message to show". One whose every
    message was deleted in the mailbox keeps its row (and deleted_at unset) until garbage
    collection, so without this it stayed on record pages, subject and all."""
    return select(Message.id).where(Message.thread_id == Thread.id, _shown_message()).exists()


def _person_thread_ids(person_ids) -> Select:
    return (
        select(Message.thread_id)
        .join(MessagePerson, MessagePerson.message_id == Message.id)
        .where(MessagePerson.person_id.in_(person_ids), _shown_message())
    )


def record_thread_condition(user: User, kind: str, record_id: int):
    """Return the SQL condition selecting threads linked to one record, as `user` may follow it.

    An organization's conversations are those of its persons and deals, and only through the
    persons and deals `user` can access: a thread linked to someone's private deal of a public
    organization must not show on that organization's page (it would not open either).
    """
    if kind == "deal":
        return Thread.deal_id == record_id
    if kind == "lead":
        return Thread.lead_id == record_id
    if kind == "project":
        return Thread.project_id == record_id
    if kind == "person":
        return Thread.id.in_(_person_thread_ids([record_id]))
    if kind == "organization":
        org_persons = (
            visible_records(user, Person)
            .with_only_columns(Person.id)
            .where(Person.organization_id == record_id)
        )
        org_deals = (
            visible_records(user, Deal)
            .with_only_columns(Deal.id)
            .where(Deal.organization_id == record_id)
        )
        return or_(Thread.id.in_(_person_thread_ids(org_persons)), Thread.deal_id.in_(org_deals))
    raise ValueError(f"unknown record kind {kind!r}")


def record_threads(user: User, kind: str, record_id: int) -> Select[tuple[Thread]]:
    """Return the threads `user` may see on the page of a record they can access.

    The caller must have loaded the record through `record_for` (which 404s otherwise). Every
    thread returned is one `can_view_thread` allows: the owner's own, or a shared one reached
    through a record `user` can access (the record itself, or for an organization one of its
    persons or deals that `user` can access).
    """
    return (
        select(Thread)
        .join(MailAccount, MailAccount.id == Thread.account_id)
        .where(
            record_thread_condition(user, kind, record_id),
            Thread.deleted_at.is_(None),
            Thread.blocked.is_(False),
            _shows_a_message(),
            or_(MailAccount.user_id == user.id, Thread.shared.is_(True)),
        )
    )


def _linked_records_accessible(user: User, thread: Thread) -> bool:
    """Tell whether the thread is linked to at least one record `user` can access."""
    for model, record_id in (
        (Deal, thread.deal_id),
        (Lead, thread.lead_id),
        (Project, thread.project_id),
    ):
        if record_id is not None:
            record = db.session.get(model, record_id)
            if record is not None and can_access_record(user, record):
                return True
    person_ids = db.session.scalars(
        select(MessagePerson.person_id)
        .join(Message, Message.id == MessagePerson.message_id)
        .where(Message.thread_id == thread.id, _shown_message())
        .distinct()
    ).all()
    if person_ids:
        visible = db.session.scalar(
            visible_records(user, Person).where(Person.id.in_(person_ids)).limit(1)
        )
        if visible is not None:
            return True
    return False


def can_view_thread(user: User, thread: Thread) -> bool:
    """Tell whether `user` may read `thread` (owner, or teammate through a shared link)."""
    if thread.deleted_at is not None:
        return False
    if owns_thread(user, thread):
        return True
    if not thread.shared or thread.blocked:
        return False
    shows_a_message = db.session.scalar(
        select(Thread.id).where(Thread.id == thread.id, _shows_a_message())
    )
    return shows_a_message is not None and _linked_records_accessible(user, thread)


def thread_for_viewer(user: User, thread_id: int) -> tuple[Thread, bool]:
    """Return (thread, is_owner) for anyone allowed to read it, or abort 404."""
    thread = db.session.get(Thread, thread_id) if is_database_id(thread_id) else None
    if thread is None or not can_view_thread(user, thread):
        abort(404)
    return thread, owns_thread(user, thread)


def message_for_viewer(user: User, message_id: int) -> tuple[Message, bool]:
    """Return (message, is_owner) for anyone allowed to read its thread, or abort 404."""
    message = db.session.get(Message, message_id) if is_database_id(message_id) else None
    if message is None or message.deleted_at is not None or message.thread is None:
        abort(404)
    if not can_view_thread(user, message.thread):
        abort(404)
    is_owner = owns_thread(user, message.thread)
    # A message the owner's blocks hide is left out of a shared conversation for teammates
    # (PRODUCT.md "Blocked addresses"), so its source, files and quote are hidden as well.
    if message.blocked and not is_owner:
        abort(404)
    return message, is_owner


def account_for(user: User, account_id: int) -> MailAccount:
    """Return one of the user's own mail accounts or abort 404."""
    account = db.session.get(MailAccount, account_id)
    if account is None or account.user_id != user.id:
        abort(404)
    return account


def own_accounts(user_id: int) -> list[MailAccount]:
    """Return the mail accounts the user owns, removed ones included, by id; read once per
    web request (a Mail tab page needs them for its list, the own addresses, the re-auth
    banner and the saving state, a conversation for its owner check: one round trip, not
    four). Code that adds or deletes an account calls forget_own_accounts."""
    query = select(MailAccount).where(MailAccount.user_id == user_id).order_by(MailAccount.id)
    return remembered("own_accounts", user_id, lambda: list(db.session.scalars(query)))


def forget_own_accounts(user_id: int) -> None:
    """Make the next own_accounts read afresh (after an account was added or deleted)."""
    forget("own_accounts", user_id)


def owns_thread(user: User, thread: Thread) -> bool:
    """Tell whether the conversation is in one of the user's own mailboxes."""
    return any(account.id == thread.account_id for account in own_accounts(user.id))


def owned_folders(user: User) -> Select[tuple[MailFolder]]:
    """Return a select of the folders of the user's own mail accounts."""
    return (
        select(MailFolder)
        .join(MailAccount, MailAccount.id == MailFolder.account_id)
        .where(MailAccount.user_id == user.id)
    )


def folder_for_owner(user: User, folder_id: int) -> MailFolder:
    """Return one of the user's own mail folders or abort 404."""
    folder = db.session.scalar(owned_folders(user).where(MailFolder.id == folder_id))
    if folder is None:
        abort(404)
    return folder


# Outgoing mail (drafts, the Outbox): only its author ever sees or changes it, admins
# included in "no" (R30); anyone else gets the same 404 as for an id that does not exist.


def outgoing_for_owner(user: User, mail_id: int) -> OutgoingMail:
    """Return one of the user's own outgoing mails (any state) or abort 404."""
    mail = db.session.get(OutgoingMail, mail_id) if is_database_id(mail_id) else None
    if mail is None or mail.user_id != user.id:
        abort(404)
    return mail


def group_send_for_owner(user: User, group_id: int) -> GroupSend:
    """Return one of the user's own group emails or abort 404 (admins included in "no")."""
    group = db.session.get(GroupSend, group_id) if is_database_id(group_id) else None
    if group is None or group.user_id != user.id:
        abort(404)
    return group


def outgoing_attachment_for_owner(
    user: User, mail_id: int, attachment_id: int
) -> tuple[OutgoingMail, OutgoingAttachment]:
    """Return (mail, attachment) of one of the user's own outgoing mails or abort 404."""
    mail = outgoing_for_owner(user, mail_id)
    attachment = db.session.get(OutgoingAttachment, attachment_id)
    if attachment is None or attachment.mail_id != mail.id:
        abort(404)
    return mail, attachment


def own_sending_accounts(user: User) -> Select[tuple[MailAccount]]:
    """Return a select of the accounts the user may send from (own, not removed)."""
    return (
        select(MailAccount)
        .where(MailAccount.user_id == user.id, MailAccount.removed_at.is_(None))
        .order_by(MailAccount.id)
    )
