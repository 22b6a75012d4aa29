"""The owner's Mail tab: folders, newest-first message pages, a message's plain text.

Every query starts from services.access (owner-only visibility).
"""

from __future__ import annotations

import email
import logging
from email import policy
from pathlib import Path

from flask import Flask
from sqlalchemy import exists, func, select

from extensions import db
from mailsync.folders import sort_folders
from models import MailAccount, MailFolder, Message, MessageLocation, User
from services.access import folders_for_owner, owned_messages, visible_accounts

log = logging.getLogger("threadline.mailbox")

PAGE_SIZE = 50


def folder_tree(user: User) -> list[tuple[MailAccount, list[MailFolder]]]:
    """Return each of the user's accounts with its synced folders, Inbox first."""
    folders = db.session.scalars(folders_for_owner(user).where(MailFolder.sync_enabled.is_(True)))
    by_account: dict[int, list[MailFolder]] = {}
    for folder in folders:
        by_account.setdefault(folder.account_id, []).append(folder)
    return [
        (account, sort_folders(by_account.get(account.id, [])))
        for account in db.session.scalars(visible_accounts(user))
    ]


def unread_counts(user: User) -> dict[int, int]:
    """Return unread message counts per folder id of the user's folders."""
    rows = db.session.execute(
        select(MessageLocation.folder_id, func.count())
        .join(Message, MessageLocation.message_id == Message.id)
        .where(
            MessageLocation.folder_id.in_(folders_for_owner(user).with_only_columns(MailFolder.id)),
            MessageLocation.seen.is_(False),
            MessageLocation.deleted.is_(False),
            Message.deleted_at.is_(None),
        )
        .group_by(MessageLocation.folder_id)
    )
    return dict(rows.all())


def message_page(
    user: User, *, folder: MailFolder | None = None, page: int = 1, per_page: int = PAGE_SIZE
) -> tuple[list[Message], bool]:
    """Return one page of the user's messages (newest first) and whether more follow."""
    query = owned_messages(user)
    if folder is not None:
        query = query.where(
            exists().where(
                MessageLocation.message_id == Message.id,
                MessageLocation.folder_id == folder.id,
                MessageLocation.deleted.is_(False),
            )
        )
    page = max(page, 1)
    rows = list(
        db.session.scalars(
            query.order_by(Message.date.desc(), Message.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page + 1)
        )
    )
    return rows[:per_page], len(rows) > per_page


def message_text(app: Flask, message: Message) -> str | None:
    """Return the message's plain-text body from its raw blob, or None when unavailable."""
    raw = _raw_bytes(app, message)
    if raw is None:
        return None
    try:
        from mailsync.parse import parse_message  # branch "parse"; stdlib fallback until merged
    except ImportError:
        return _stdlib_text(raw)
    parsed = parse_message(raw)
    for name in ("text", "text_body", "body_text", "plain"):
        value = getattr(parsed, name, None)
        if isinstance(value, str):
            return value
    return _stdlib_text(raw)


def _raw_bytes(app: Flask, message: Message) -> bytes | None:
    if not message.raw_sha256:
        return None
    try:
        from mailsync.blobstore import BlobStore  # branch "parse"
    except ImportError:
        return None
    try:
        return BlobStore(Path(app.instance_path) / "blobs").get(message.raw_sha256)
    except (OSError, KeyError, ValueError):
        log.warning("raw message %s missing from the blob store", message.id)
        return None


def _stdlib_text(raw: bytes) -> str:
    parsed = email.message_from_bytes(raw, policy=policy.default)
    body = parsed.get_body(preferencelist=("plain",))
    if body is None:
        return ""
    try:
        return body.get_content()
    except (LookupError, ValueError):
        payload = body.get_payload(decode=True) or b""
        return payload.decode("utf-8", errors="replace")
