"""Bring messages stored before content-based identity up to date (mailsync/IDENTITY.md).

An account whose `identity_version` is below models.IDENTITY_VERSION has messages keyed by
their header fields alone. Before such an account syncs again, each message is re-keyed from
its stored raw mail: otherwise the next copy of it the sync downloads would not find it and
would be stored twice. `init-db` re-keys every account; a sync pass re-keys its own first.
"""

from __future__ import annotations

import logging

import zstandard
from flask import Flask
from sqlalchemy import select, update

from extensions import db
from mailsync.blobstore import app_blob_store
from mailsync.parse import dedup_key, header_key
from models import IDENTITY_VERSION, MailAccount, Message

log = logging.getLogger("threadline.sync")
BATCH = 500


def rekey_account(app: Flask, account_id: int) -> int:
    """Re-key one account's messages from their stored raw mail; commits; returns how many.

    Header-only placeholders keep their key (no body to digest) and get a header key. Two
    stored messages that now share one identity (same content, once told apart by headers a
    server added) keep their old keys: nothing is merged after the fact.
    """
    account = db.session.get(MailAccount, account_id)
    if account is None or account.identity_version >= IDENTITY_VERSION:
        return 0
    blobs = app_blob_store(app)
    taken = set(
        db.session.scalars(select(Message.dedup_key).where(Message.account_id == account_id))
    )
    changed = 0
    last_id = 0
    while True:
        rows = db.session.execute(
            select(
                Message.id,
                Message.dedup_key,
                Message.raw_sha256,
                Message.is_placeholder,
                Message.message_id_header,
            )
            .where(Message.account_id == account_id, Message.id > last_id)
            .order_by(Message.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        last_id = rows[-1].id
        for message_id, old_key, sha, is_placeholder, message_id_header in rows:
            if is_placeholder or not sha:
                # No body to digest: the key stays; with a Message-ID the old key was the
                # header fields' hash, which is exactly the header key.
                if message_id_header:
                    db.session.execute(
                        update(Message).where(Message.id == message_id).values(header_key=old_key)
                    )
                continue
            values = _rekeyed(blobs, old_key, sha, taken)
            if values is None:
                continue
            if values["dedup_key"] != old_key:
                taken.discard(old_key)
                taken.add(values["dedup_key"])
            db.session.execute(update(Message).where(Message.id == message_id).values(**values))
            changed += 1
        db.session.commit()
    account = db.session.get(MailAccount, account_id)
    account.identity_version = IDENTITY_VERSION
    db.session.commit()
    log.info("account %s: %s messages re-keyed by content", account_id, changed)
    return changed


def _rekeyed(blobs, old_key: str, sha: str, taken: set[str]) -> dict | None:
    """Return the new key columns of one message, or None to leave it as it is."""
    try:
        raw = blobs.get(sha)
    except (OSError, zstandard.ZstdError) as exc:
        log.warning("blob %s unreadable, key kept: %s", sha, exc)
        return None
    key, headers = dedup_key(raw), header_key(raw)
    if key != old_key and key in taken:
        return {"header_key": headers}
    return {"dedup_key": key, "header_key": headers}


def rekey_all(app: Flask) -> int:
    """Re-key every account still on an older identity; returns the messages re-keyed."""
    accounts = db.session.scalars(
        select(MailAccount.id).where(MailAccount.identity_version < IDENTITY_VERSION)
    ).all()
    return sum(rekey_account(app, account_id) for account_id in accounts)
