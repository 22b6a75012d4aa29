"""Garbage collection of mail that left the server (SYNC.md §2.4 "Soft delete", §1 cadence).

Sync never hard-deletes: a message whose last location disappeared is soft-deleted
(`deleted_at`) and stamped `orphaned_at`, and a location that comes back (a move, seen as
vanish-then-appear) undoes both (mailsync.store.refresh_messages). This module removes what
stayed orphaned longer than a TTL: the message row (its person links cascade), its search
index row and its blob unless another row uses the same bytes. A message the user deleted in
Threadline but that is still on the server keeps its location and is never collected: the
next sync would otherwise download it again and it would reappear.

Threads left without messages are kept for a week (`emptied_at`), links and id table
included, so mail that comes back later rejoins the same conversation; then they go too.
Works in small batches, one short transaction each; no network I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, select, update

from extensions import db
from mailsync.blobstore import BlobStore
from models import (
    SYNC_RUNNING,
    MailAccount,
    Message,
    MessageLocation,
    OutgoingAttachment,
    TemplateAttachment,
    Thread,
)

# Longer than OTHER_FOLDERS_INTERVAL_SECONDS (600 s) plus a pass: a message moved into a
# folder synced every 10 minutes is seen leaving its old folder up to that long before it is
# seen arriving. (Nylas used 2 minutes, polling every folder every 30 s.)
MESSAGE_TTL_SECONDS = 30 * 60
THREAD_TTL_SECONDS = 7 * 24 * 3600  # Nylas: 7 days for empty threads
BATCH = 200
# A blob put this recently is kept even when no row uses it yet: the sync writes blobs
# first and commits their rows a few seconds later (blob-then-row, SYNC.md §1).
BLOB_GRACE_SECONDS = 10 * 60

message_t = Message.__table__
location_t = MessageLocation.__table__
thread_t = Thread.__table__
attachment_t = OutgoingAttachment.__table__
# Every other table naming blobs by sha: a blob any of them uses is kept.
BLOB_COLUMNS = (attachment_t.c.blob_sha256, TemplateAttachment.__table__.c.blob_sha256)


@dataclass
class Collected:
    """What one collection removed."""

    messages: int = 0
    blobs: int = 0
    threads: int = 0


def _soft_deleted():
    # IS NOT NULL spelled as a range: SQLite walks ix_message_deleted_at for a range but scans
    # the whole table for IS NOT NULL. Soft-deleted messages are few; all messages are not.
    return message_t.c.deleted_at >= datetime(1970, 1, 1, tzinfo=UTC)


def _has_location():
    return exists().where(location_t.c.message_id == message_t.c.id)


def _has_message():
    return exists().where(message_t.c.thread_id == thread_t.c.id)


def collect_garbage(
    blobs: BlobStore,
    *,
    message_ttl_seconds: float = MESSAGE_TTL_SECONDS,
    thread_ttl_seconds: float = THREAD_TTL_SECONDS,
    now: datetime | None = None,
    batch_size: int = BATCH,
) -> Collected:
    """Hard-delete messages orphaned longer than the TTL, their blobs, then old empty threads.

    Commits once per batch. Only accounts whose sync runs are collected: while an account is
    paused or waits for new credentials, Threadline cannot see where a message moved to.
    """
    now = now or datetime.now(UTC)
    collected = Collected()
    _stamp_unrecorded_orphans(now)
    cutoff = now - timedelta(seconds=message_ttl_seconds)
    while True:
        rows = _delete_message_batch(cutoff, now, batch_size)
        collected.messages += len(rows)
        for sha in sorted({sha for _id, sha, _thread in rows if sha}):
            if blobs.discard(
                sha, in_use=lambda sha=sha: _blob_in_use(sha), grace_seconds=BLOB_GRACE_SECONDS
            ):
                collected.blobs += 1
        db.session.commit()
        if len(rows) < batch_size:
            break
    thread_cutoff = now - timedelta(seconds=thread_ttl_seconds)
    while True:
        removed = _delete_thread_batch(thread_cutoff, batch_size)
        collected.threads += removed
        if removed < batch_size:
            break
    return collected


def _stamp_unrecorded_orphans(now: datetime) -> None:
    """Give `orphaned_at` to soft-deleted messages without a location that lack one.

    Messages soft-deleted before `orphaned_at` existed, and those whose locations went with
    their folder row, start their TTL now.
    """
    db.session.execute(
        update(message_t)
        .where(
            _soft_deleted(),
            message_t.c.orphaned_at.is_(None),
            ~_has_location(),
        )
        .values(orphaned_at=now)
    )
    db.session.commit()


def _delete_message_batch(cutoff: datetime, now: datetime, batch_size: int) -> list[tuple]:
    """Delete one batch of expired orphans (and their index rows); return (id, sha, thread)."""
    # Accounts as NOT IN, so SQLite walks the soft-deleted rows rather than every message of
    # the running accounts (ix_message_account_id).
    not_running = select(MailAccount.id).where(MailAccount.sync_state != SYNC_RUNNING)
    ids = list(
        db.session.scalars(
            select(message_t.c.id)
            .where(
                _soft_deleted(),
                message_t.c.orphaned_at < cutoff,
                message_t.c.account_id.not_in(not_running),
                ~_has_location(),
            )
            .limit(batch_size)
        )
    )
    if not ids:
        db.session.commit()
        return []
    # The conditions again, in the DELETE itself: a sync may have re-linked one meanwhile.
    rows = db.session.execute(
        delete(message_t)
        .where(message_t.c.id.in_(ids), message_t.c.orphaned_at < cutoff, ~_has_location())
        .returning(message_t.c.id, message_t.c.raw_sha256, message_t.c.thread_id)
    ).all()
    # Their stored text and search rows go with them (services.search: cascade, trigger).
    emptied = sorted({row[2] for row in rows if row[2] is not None})
    if emptied:
        db.session.execute(
            update(thread_t)
            .where(thread_t.c.id.in_(emptied), ~_has_message())
            .values(emptied_at=now)
        )
    db.session.commit()
    return [tuple(row) for row in rows]


def _blob_in_use(sha: str) -> bool:
    """Tell whether any message row (of any account), outgoing or template attachment uses
    the blob."""
    if (
        db.session.scalar(select(message_t.c.id).where(message_t.c.raw_sha256 == sha).limit(1))
        is not None
    ):
        return True
    return any(
        db.session.scalar(select(column).where(column == sha).limit(1)) is not None
        for column in BLOB_COLUMNS
    )


def _delete_thread_batch(cutoff: datetime, batch_size: int) -> int:
    """Delete one batch of threads empty since before `cutoff`; return how many."""
    ids = list(
        db.session.scalars(
            select(thread_t.c.id)
            .where(thread_t.c.emptied_at < cutoff, ~_has_message())
            .limit(batch_size)
        )
    )
    if not ids:
        db.session.commit()
        return 0
    # Its message_id_index rows cascade.
    removed = db.session.execute(
        delete(thread_t).where(thread_t.c.id.in_(ids), ~_has_message())
    ).rowcount
    db.session.commit()
    return removed


def sweep_unreferenced_blobs(blobs: BlobStore, *, batch_size: int = 500) -> int:
    """Delete stored blobs no message row or attachment row uses; return how many went.

    Catches what row-by-row collection cannot: the mail of a removed account (its rows went
    with the account), and a blob whose row was collected just before a crash. Blobs put
    within BLOB_GRACE_SECONDS are kept: their rows may not be committed yet.
    """
    removed = 0
    batch: list[str] = []
    for path in blobs.root.glob("??/??/*"):
        if len(path.name) == 64 and not path.name.startswith("."):
            batch.append(path.name)
        if len(batch) >= batch_size:
            removed += _sweep_batch(blobs, batch)
            batch = []
    if batch:
        removed += _sweep_batch(blobs, batch)
    return removed


def _sweep_batch(blobs: BlobStore, shas: list[str]) -> int:
    used = set(
        db.session.scalars(select(message_t.c.raw_sha256).where(message_t.c.raw_sha256.in_(shas)))
    )
    for column in BLOB_COLUMNS:
        used |= set(db.session.scalars(select(column).where(column.in_(shas))))
    db.session.rollback()  # no transaction left open while touching files
    removed = 0
    for sha in shas:
        if sha in used:
            continue
        if blobs.discard(
            sha, in_use=lambda sha=sha: _blob_in_use(sha), grace_seconds=BLOB_GRACE_SECONDS
        ):
            removed += 1
    db.session.rollback()
    return removed
