"""Bring mail stored by an older release up to date from its stored raw mail.

`MailAccount.parse_version` says which release's parser and identity rule stored an account's
messages. When the parser learns to read more of a mail (attachments inside alternatives,
bodies of broken or deeply nested mail, charsets) or the identity rule changes
(mailsync/IDENTITY.md), PARSE_VERSION goes up and each older account is re-parsed once:
display fields, attachment mark, search text and keys are rewritten from the raw mail.
`init-db` (run by `make run`) does every account; a sync pass does its own account first, so
the copies it downloads find the messages they belong to.
"""

from __future__ import annotations

import logging

import zstandard
from flask import Flask
from sqlalchemy import select, update

from extensions import db
from mailsync import store
from mailsync.blobstore import app_blob_store
from mailsync.parse import ParsedMessage, parse_with_identity
from mailsync.prepare import for_search
from models import PARSE_VERSION, MailAccount, Message

log = logging.getLogger("threadline.sync")
BATCH = 500


def reparse_account(app: Flask, account_id: int) -> int:
    """Re-parse one older account's messages from their raw mail; commits; returns how many.

    Header-only placeholders keep what they have (no body yet) and get a header key. Two
    stored messages that now share one identity (same content, once told apart by headers a
    server added) keep their old keys: nothing is merged after the fact.
    """
    account = db.session.get(MailAccount, account_id)
    if account is None or account.parse_version >= PARSE_VERSION:
        return 0
    blobs = app_blob_store(app)
    taken = set(
        db.session.scalars(select(Message.dedup_key).where(Message.account_id == account_id))
    )
    done = 0
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
        texts: dict[int, ParsedMessage] = {}
        for message_id, old_key, sha, is_placeholder, message_id_header in rows:
            if is_placeholder or not sha:
                # No body to read: with a Message-ID the old key was the header fields' hash,
                # which is exactly the header key.
                if message_id_header:
                    _update(message_id, header_key=old_key)
                continue
            raw = _raw(blobs, sha)
            if raw is None:
                continue
            parsed, key, header_key = parse_with_identity(raw)
            values = store.parsed_columns(parsed)
            values["header_key"] = header_key
            if key == old_key or key not in taken:
                taken.discard(old_key)
                taken.add(key)
                values["dedup_key"] = key
            _update(message_id, **values)
            texts[message_id] = for_search(parsed)
            done += 1
        store.index_for_search(texts)
        db.session.commit()
    account = db.session.get(MailAccount, account_id)
    account.parse_version = PARSE_VERSION
    db.session.commit()
    log.info("account %s: %s stored messages parsed again", account_id, done)
    return done


def _raw(blobs, sha: str) -> bytes | None:
    try:
        return blobs.get(sha)
    except (OSError, zstandard.ZstdError) as exc:
        log.warning("blob %s unreadable, message left as stored: %s", sha, exc)
        return None


def _update(message_id: int, **values) -> None:
    db.session.execute(update(Message).where(Message.id == message_id).values(**values))


def reparse_all(app: Flask) -> int:
    """Re-parse every account stored by an older release; returns the messages re-parsed."""
    accounts = db.session.scalars(
        select(MailAccount.id).where(MailAccount.parse_version < PARSE_VERSION)
    ).all()
    return sum(reparse_account(app, account_id) for account_id in accounts)
