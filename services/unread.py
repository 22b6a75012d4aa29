"""Unread counts of the Mail tab, kept current instead of counted on every request.

`thread_unread` holds one row per (conversation, place it counts in) for every live
conversation with an unread live message: Threadline's lists ("inbox", "archive", "later")
and each server folder holding one of those unread messages ("f<folder id>"). The sidebar's
counts are then one GROUP BY over an index of these rows, never a walk over the messages.

Keeping it current works like the search index (services/search.py): triggers on `message`,
`message_location`, `thread` and `mail_folder` note every conversation whose unread state or
place may have changed in `thread_unread_stale`, whichever code path changed it (sync store,
flag changes, expunges, moves and write-backs, blocking, deleting, archiving, sending), and
before any session commits `refresh_unread` recomputes the noted conversations' rows from
their messages. A conversation's rows depend on its own messages only, so a recompute costs
the size of the conversation, not of the mailbox.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, bindparam, event, false, func, select, text, union_all
from sqlalchemy.orm import Session

from extensions import db
from models import MailFolder, Message, MessageLabel, MessageLocation, Thread, ThreadUnread

LISTS = ("inbox", "later", "archive")
_CHUNK = 500


def folder_key(folder_id: int) -> str:
    """The `counted_in` value of a server folder."""
    return f"f{folder_id}"


def thread_places(rows: Iterable[Sequence]) -> dict[int, set[str]]:
    """Where each conversation counts, from rows of its unread live messages:
    (thread id, archived, in_inbox, reply_later, folder id, location deleted, folder role).

    The rule of the sidebar: an unread conversation counts in Archive when archived, else in
    the Inbox when it is in Threadline's Inbox; in Reply later when on that list; and in each
    folder holding one of its unread messages, except that a server Inbox folder never
    counts conversations archived in Threadline.
    """
    places: dict[int, set[str]] = defaultdict(set)
    for thread_id, archived, in_inbox, reply_later, folder_id, deleted, role in rows:
        found = places[thread_id]
        if archived:
            found.add("archive")
        elif in_inbox:
            found.add("inbox")
        if reply_later:
            found.add("later")
        if folder_id is None or deleted or (archived and role == "inbox"):
            continue
        found.add(folder_key(folder_id))
    return places


def unread_rows(thread_ids: Sequence[int] | None = None, *, labels: bool = True):
    """Select the rows `thread_places` takes: the unread live messages of live, unblocked
    conversations (of `thread_ids`, or all), one row per message location and (unless
    `labels` is False: migrations before message_label existed) per Gmail label."""
    live = (
        Thread.deleted_at.is_(None),
        Thread.blocked.is_(False),
        Message.is_read.is_(False),
        Message.deleted_at.is_(None),
        Message.blocked.is_(False),
    )
    columns = (Thread.id, Thread.archived, Thread.in_inbox, Thread.reply_later)
    stmt = (
        select(*columns, MessageLocation.folder_id, MessageLocation.deleted, MailFolder.role)
        .join(Message, Message.thread_id == Thread.id)
        .outerjoin(MessageLocation, MessageLocation.message_id == Message.id)
        .outerjoin(MailFolder, MailFolder.id == MessageLocation.folder_id)
        .where(*live)
    )
    # A Gmail label counts like a folder holding the message (models.MessageLabel).
    labelled = (
        select(*columns, MessageLabel.folder_id, false(), MailFolder.role)
        .join(Message, Message.thread_id == Thread.id)
        .join(MessageLabel, MessageLabel.message_id == Message.id)
        .join(MailFolder, MailFolder.id == MessageLabel.folder_id)
        .where(*live)
    )
    if thread_ids is not None:
        stmt = stmt.where(Thread.id.in_(list(thread_ids)))
        labelled = labelled.where(Thread.id.in_(list(thread_ids)))
    return union_all(stmt, labelled) if labels else stmt


def refresh_unread(connection: Connection, *, labels: bool = True) -> int:
    """Recompute the `thread_unread` rows of the conversations noted as stale; return how
    many conversations were recomputed. Runs inside the caller's transaction. (`labels`:
    see unread_rows.)"""
    stale = sorted(
        {
            row[0]
            for row in connection.execute(
                text("DELETE FROM thread_unread_stale RETURNING thread_id")
            )
        }
    )
    for start in range(0, len(stale), _CHUNK):
        chunk = stale[start : start + _CHUNK]
        if connection.dialect.name == "postgresql":
            # One recompute of a conversation at a time: two transactions rewriting the same
            # rows at once could otherwise each keep what the other removed. Advisory locks,
            # taken in id order and only here, never wait on a row another transaction
            # updated (locking the thread rows could: a deadlock with a sync beside a
            # request). SQLite has one writer at a time already.
            connection.execute(_LOCK_THREADS, {"space": _LOCK_SPACE, "ids": chunk})
        places = thread_places(connection.execute(unread_rows(chunk, labels=labels)))
        accounts: dict[int, int] = {}
        if places:
            found = select(Thread.id, Thread.account_id).where(Thread.id.in_(list(places)))
            accounts = {
                thread_id: account_id for thread_id, account_id in connection.execute(found)
            }
        connection.execute(_DELETE_ROWS, {"ids": chunk})
        rows = [
            {"thread_id": thread_id, "account_id": accounts[thread_id], "counted_in": key}
            for thread_id, keys in places.items()
            for key in sorted(keys)
        ]
        if rows:
            connection.execute(_INSERT_ROW, rows)
    return len(stale)


# The first key of the two-key advisory locks of conversations (the second: the thread id).
_LOCK_SPACE = 7_001
_LOCK_THREADS = text(
    "SELECT pg_advisory_xact_lock(:space, id) FROM unnest(CAST(:ids AS integer[])) AS t(id) "
    "ORDER BY id"
)
_DELETE_ROWS = text("DELETE FROM thread_unread WHERE thread_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_INSERT_ROW = text(
    "INSERT INTO thread_unread (account_id, counted_in, thread_id) "
    "VALUES (:account_id, :counted_in, :thread_id) ON CONFLICT DO NOTHING"
)


def unread_counts(account_ids: Sequence[int]) -> tuple[dict[int, int], dict[str, int]]:
    """Count unread conversations per server folder id and per Threadline list (LISTS)."""
    per_folder: dict[int, int] = {}
    lists = dict.fromkeys(LISTS, 0)
    if not account_ids:
        return per_folder, lists
    found = db.session.execute(
        select(ThreadUnread.counted_in, func.count())
        .where(ThreadUnread.account_id.in_(list(account_ids)))
        .group_by(ThreadUnread.counted_in)
    )
    for key, count in found:
        if key in lists:
            lists[key] = count
        else:
            per_folder[int(key[1:])] = count
    return per_folder, lists


def _refresh_before_commit(session: Session) -> None:
    session.flush()  # ORM changes reach the triggers first
    connection = session.connection()
    # (Checked first: a DELETE takes SQLite's write lock even when it finds no row.)
    if connection.execute(text("SELECT 1 FROM thread_unread_stale LIMIT 1")).first():
        refresh_unread(connection)


def keep_unread_current(session_class: type[Session]) -> None:
    """Recompute stale unread rows before every commit of a `session_class` session."""
    if not event.contains(session_class, "before_commit", _refresh_before_commit):
        event.listen(session_class, "before_commit", _refresh_before_commit)


# --------------------------------------------------------------------------- triggers

# A message counts while it is unread and live; spelled for both databases' booleans.
_UNREAD_LIVE = "NOT {m}.is_read AND {m}.deleted_at IS NULL AND NOT {m}.blocked"
_THREAD_OF_MESSAGE = (
    "m.thread_id FROM message m WHERE m.id = {r}.message_id AND m.thread_id IS NOT NULL AND "
    + _UNREAD_LIVE.format(m="m")
)
_CHANGED = "{o}.{c} IS DISTINCT FROM {n}.{c}"

# (name, event, table, WHEN condition, what to note: SELECT expressions after "SELECT")
TRIGGERS = (
    (
        "thread_unread_message_insert",
        "INSERT",
        "message",
        _UNREAD_LIVE.format(m="new"),
        ["new.thread_id WHERE new.thread_id IS NOT NULL"],
    ),
    (
        "thread_unread_message_update",
        "UPDATE OF thread_id, is_read, deleted_at, blocked",
        "message",
        "("
        + " OR ".join(
            _CHANGED.format(o="old", n="new", c=c)
            for c in ("thread_id", "is_read", "blocked", "deleted_at")
        )
        + f") AND (({_UNREAD_LIVE.format(m='old')}) OR ({_UNREAD_LIVE.format(m='new')}))",
        [
            "old.thread_id WHERE old.thread_id IS NOT NULL",
            "new.thread_id WHERE new.thread_id IS NOT NULL",
        ],
    ),
    (
        "thread_unread_message_delete",
        "DELETE",
        "message",
        _UNREAD_LIVE.format(m="old"),
        ["old.thread_id WHERE old.thread_id IS NOT NULL"],
    ),
    (
        "thread_unread_location_insert",
        "INSERT",
        "message_location",
        "NOT new.deleted",
        [_THREAD_OF_MESSAGE.format(r="new")],
    ),
    (
        "thread_unread_location_update",
        "UPDATE OF folder_id, deleted, message_id",
        "message_location",
        " OR ".join(
            _CHANGED.format(o="old", n="new", c=c) for c in ("folder_id", "deleted", "message_id")
        ),
        [_THREAD_OF_MESSAGE.format(r="old"), _THREAD_OF_MESSAGE.format(r="new")],
    ),
    (
        "thread_unread_location_delete",
        "DELETE",
        "message_location",
        "NOT old.deleted",
        [_THREAD_OF_MESSAGE.format(r="old")],
    ),
    (
        "thread_unread_thread_update",
        "UPDATE OF archived, in_inbox, reply_later, blocked, deleted_at",
        "thread",
        " OR ".join(
            _CHANGED.format(o="old", n="new", c=c)
            for c in ("archived", "in_inbox", "reply_later", "blocked", "deleted_at")
        ),
        ["new.id"],
    ),
    ("thread_unread_thread_delete", "DELETE", "thread", "true", ["old.id"]),
    (
        "thread_unread_folder_role",
        "UPDATE OF role",
        "mail_folder",
        _CHANGED.format(o="old", n="new", c="role"),
        [
            "m.thread_id FROM message_location l JOIN message m ON m.id = l.message_id "
            "WHERE l.folder_id = new.id AND NOT l.deleted AND m.thread_id IS NOT NULL AND "
            + _UNREAD_LIVE.format(m="m")
        ],
    ),
)


# Gmail labels (models.MessageLabel, migration 0012): created after that table exists.
_THREAD_OF_LABELLED = (
    "m.thread_id FROM message_label g JOIN message m ON m.id = g.message_id "
    "WHERE g.folder_id = new.id AND m.thread_id IS NOT NULL AND " + _UNREAD_LIVE.format(m="m")
)
LABEL_TRIGGERS = (
    (
        "thread_unread_label_insert",
        "INSERT",
        "message_label",
        "true",
        [_THREAD_OF_MESSAGE.format(r="new")],
    ),
    (
        "thread_unread_label_delete",
        "DELETE",
        "message_label",
        "true",
        [_THREAD_OF_MESSAGE.format(r="old")],
    ),
    (
        "thread_unread_label_folder_role",
        "UPDATE OF role",
        "mail_folder",
        _CHANGED.format(o="old", n="new", c="role"),
        [_THREAD_OF_LABELLED],
    ),
)


def create_triggers(connection: Connection, triggers: Sequence[tuple] = TRIGGERS) -> None:
    """Create the triggers that note stale conversations (idempotent), on either database."""
    postgres = connection.dialect.name == "postgresql"
    for name, when_event, table, condition, notes in triggers:
        if postgres:
            body = " ".join(
                f"INSERT INTO thread_unread_stale (thread_id) SELECT {note};" for note in notes
            )
            connection.execute(
                text(
                    f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
                    f"AS $$ BEGIN {body} RETURN NULL; END $$"
                )
            )
            connection.execute(
                text(
                    f"CREATE OR REPLACE TRIGGER {name} AFTER {when_event} ON {table} "
                    f"FOR EACH ROW WHEN ({condition}) EXECUTE FUNCTION {name}()"
                )
            )
        else:
            body = " ".join(
                f"INSERT INTO thread_unread_stale (thread_id) SELECT {note};" for note in notes
            )
            connection.execute(
                text(
                    f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {when_event} ON {table} "
                    f"WHEN {condition} BEGIN {body} END"
                )
            )


def drop_triggers(connection: Connection, triggers: Sequence[tuple] = TRIGGERS) -> None:
    """Drop the triggers `create_triggers` made."""
    postgres = connection.dialect.name == "postgresql"
    for name, _event, table, _condition, _notes in triggers:
        if postgres:
            connection.execute(text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
            connection.execute(text(f"DROP FUNCTION IF EXISTS {name}()"))
        else:
            connection.execute(text(f"DROP TRIGGER IF EXISTS {name}"))


def rebuild(connection: Connection, *, labels: bool = True) -> int:
    """Note every conversation with an unread live message and recompute them all."""
    connection.execute(text("DELETE FROM thread_unread"))
    connection.execute(
        text(
            "INSERT INTO thread_unread_stale (thread_id) SELECT DISTINCT m.thread_id "
            "FROM message m WHERE m.thread_id IS NOT NULL AND " + _UNREAD_LIVE.format(m="m")
        )
    )
    return refresh_unread(connection, labels=labels)
