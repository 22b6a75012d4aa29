"""Persist fetched mail batches: messages, locations, JWZ threads, person links (SYNC.md §4.1.7).

Every function here runs inside the caller's session and does NOT touch the network; the
sync engine calls one of them per fetched batch and commits right after. All writes are
idempotent: messages are keyed by (account_id, dedup_key), locations by (folder_id, uid),
the thread id table by (account_id, msgid), person links by (message_id, person_id), so a
retried batch inserts nothing twice. SQLAlchemy Core is used on this hot path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)

import dialect
from extensions import db
from mailsync import threading as jwz
from mailsync.prepare import for_search
from models import (
    GMAIL_LABEL,
    FailedUid,
    MailAccount,
    MailFolder,
    Message,
    MessageIdIndex,
    MessageLabel,
    MessageLocation,
    MessagePerson,
    SyncRunEntry,
    Thread,
    User,
    UTCDateTime,
)
from services import linking, search
from services.linking_rules import message_is_hidden
from services.preferences import get_preference

CHUNK = 500  # bound IN (...) lists well under SQLite's variable limit
LOCAL_CHANGE_GUARD_SECONDS = 90  # a sync keeps a \Seen the user changed this recently
SYSTEM_FLAGS = {b"\\seen", b"\\flagged", b"\\answered", b"\\draft", b"\\deleted", b"\\recent"}

message_t = Message.__table__
location_t = MessageLocation.__table__
label_t = MessageLabel.__table__
folder_t = MailFolder.__table__
# X-GM-LABELS names Gmail's system labels so; their folders are found by role (the names are
# localized, e.g. "[Google Mail]/Gesendet"). User labels are named as their folders.
SYSTEM_LABEL_ROLES = {
    "\\Inbox": "inbox",
    "\\Sent": "sent",
    "\\Starred": "flagged",
    "\\Important": "important",
    "\\Draft": "drafts",
}
index_t = MessageIdIndex.__table__
thread_t = Thread.__table__
person_link_t = MessagePerson.__table__


class ParsedLike(Protocol):
    """The fields of mailsync.parse.ParsedMessage this module reads."""

    message_id: str | None
    alias_message_ids: list[str]
    in_reply_to: str | None
    references: list[str]
    subject: str
    text_body: str
    from_name: str
    from_address: str
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    bcc: list[tuple[str, str]]
    reply_to: list[tuple[str, str]]
    date: datetime | None
    snippet: str
    has_attachments: bool
    parse_error: str | None


@dataclass(frozen=True)
class StoreContext:
    """What persisting needs to know about the account, read once per sync run."""

    account_id: int
    owner_id: int  # the mailbox's user: mail links only to records they can access
    own_addresses: frozenset[str]
    share_by_default: bool
    blocked_entries: tuple[str, ...] = ()  # the owner's blocked addresses and domains
    auto_link: bool = False  # the owner's auto-linking preference is Automatic


def context_for(account: MailAccount) -> StoreContext:
    """Read what storing mail of `account` needs from its owner (once per sync run)."""
    user = db.session.get(User, account.user_id)
    return StoreContext(
        account_id=account.id,
        owner_id=user.id,
        own_addresses=frozenset(linking.own_addresses(user)),
        share_by_default=get_preference(user, "default_email_sharing") == "shared",
        blocked_entries=tuple(entry.entry for entry in linking.blocked_entries(user)),
        auto_link=get_preference(user, "auto_linking") == "automatic",
    )


@dataclass
class Fetched:
    """One downloaded (or placeholder) message at one location."""

    folder_id: int
    uid: int
    flags: Sequence[bytes]
    dedup_key: str
    parsed: ParsedLike
    raw_sha256: str | None
    size: int
    internaldate: datetime | None
    is_placeholder: bool = False
    gm_msgid: int | None = None
    gm_thrid: int | None = None
    gm_labels: list[str] = field(default_factory=list)
    header_key: str | None = None  # parse.header_key: finds this message's copies (IDENTITY.md)


@dataclass
class RunLog:
    """What one sync pass did, message by message, for the account's sync log.

    Keeps the first `limit` entries (a first sync adds thousands; the counts on the run stay
    exact). Each entry is (kind, folder_id, uid, message_id) with kind added | changed |
    removed: "removed" means gone from that folder (expunged, or moved elsewhere).
    """

    limit: int = 200
    entries: list[tuple[str, int, int, int]] = field(default_factory=list)
    more: int = 0  # entries beyond the limit

    def add(self, kind: str, folder_id: int, uid: int, message_id: int) -> None:
        if len(self.entries) < self.limit:
            self.entries.append((kind, folder_id, uid, message_id))
        else:
            self.more += 1


@dataclass
class Link:
    """A new location of a message Threadline already stores (no body download)."""

    folder_id: int
    uid: int
    message_id: int
    flags: Sequence[bytes]
    gm_labels: list[str] = field(default_factory=list)


def _insert(table):
    """Return a dialect INSERT that supports ON CONFLICT (SQLite or PostgreSQL)."""
    return dialect.upsert_insert(table, db.session.connection().dialect.name)


# The raw sqlite3 path below; tests turn it off to compare it with the portable Core path.
SQLITE_FAST_PATH = True


def _sqlite_cursor() -> Any | None:
    """Return a DB-API cursor of the session's own connection when it is SQLite, else None.

    Same connection, so the same transaction as every other statement of the batch.
    """
    connection = db.session.connection()
    if not SQLITE_FAST_PATH or not dialect.is_sqlite(connection):
        return None
    return connection.connection.driver_connection.cursor()


def _sqlite_datetime(value: datetime | None) -> str | None:
    """Encode like UTCDateTime on SQLite: naive UTC in SQLAlchemy's DATETIME text format."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}"
    )


def _sqlite_encoder(column) -> Any:
    if isinstance(column.type, UTCDateTime):
        return _sqlite_datetime
    if isinstance(column.type, JSON):
        return json.dumps  # SQLAlchemy's default JSON serializer
    return None


def _bulk_insert(
    table, rows: Sequence[dict[str, Any]], keys: Sequence[str], update_columns: Sequence[str] = ()
) -> None:
    """INSERT rows; on a conflict over `keys` do nothing, or update `update_columns`.

    Every row must carry the same keys, including the columns whose Python-side default
    matters. On SQLite the rows go straight to the driver with values pre-encoded exactly
    as SQLAlchemy stores them (JSON text, DATETIME text): the per-row bind processing of
    Core executemany was about half of store_batch. Other databases use Core.
    """
    if not rows:
        return
    cursor = _sqlite_cursor()
    if cursor is None:
        statement = _insert(table)
        if update_columns:
            statement = statement.on_conflict_do_update(
                index_elements=list(keys),
                set_={name: statement.excluded[name] for name in update_columns},
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=list(keys))
        db.session.execute(statement, list(rows))
        return
    rows = [_with_defaults(table, row) for row in rows]
    names = list(rows[0])
    encoders = [_sqlite_encoder(table.c[name]) for name in names]
    if update_columns:
        action = "DO UPDATE SET " + ", ".join(f'"{n}" = excluded."{n}"' for n in update_columns)
    else:
        action = "DO NOTHING"
    conflict = ", ".join(f'"{key}"' for key in keys)
    cursor.executemany(
        f"{_sqlite_insert_sql(table, names)} ON CONFLICT ({conflict}) {action}",
        [_sqlite_values(encoders, names, row) for row in rows],
    )


def _insert_one(table, row: dict[str, Any]) -> int:
    """INSERT one row and return its new id (on SQLite straight to the driver, as above)."""
    cursor = _sqlite_cursor()
    if cursor is None:
        return int(db.session.execute(insert(table), row).inserted_primary_key[0])
    row = _with_defaults(table, row)
    names = list(row)
    encoders = [_sqlite_encoder(table.c[name]) for name in names]
    cursor.execute(_sqlite_insert_sql(table, names), _sqlite_values(encoders, names, row))
    return int(cursor.lastrowid)


def _with_defaults(table, row: dict[str, Any]) -> dict[str, Any]:
    """Return `row` plus the Python-side column defaults it leaves out.

    The raw driver path skips SQLAlchemy, which would otherwise apply them; a column added
    to a model later then still gets its default instead of NULL.
    """
    missing = [
        column
        for column in table.columns
        if column.name not in row and column.default is not None and not column.primary_key
    ]
    if not missing:
        return row
    filled = dict(row)
    for column in missing:
        default = column.default
        filled[column.name] = default.arg(None) if default.is_callable else default.arg
    return filled


def _sqlite_insert_sql(table, names: Sequence[str]) -> str:
    columns = ", ".join(f'"{name}"' for name in names)
    return f'INSERT INTO "{table.name}" ({columns}) VALUES ({", ".join("?" * len(names))})'


def _sqlite_values(encoders: Sequence[Any], names: Sequence[str], row: dict[str, Any]) -> tuple:
    return tuple(
        value if encode is None or value is None else encode(value)
        for encode, value in zip(encoders, (row[name] for name in names), strict=True)
    )


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _now() -> datetime:
    return datetime.now(UTC)


def flag_columns(flags: Iterable[bytes | str]) -> dict[str, Any]:
    """Map IMAP flags to MessageLocation columns (keywords keep the non-system flags)."""
    lowered = {(f.encode() if isinstance(f, str) else f).lower(): f for f in flags}
    keywords = sorted(
        (f.decode(errors="replace") if isinstance(f, bytes) else f)
        for low, f in lowered.items()
        if low not in SYSTEM_FLAGS
    )
    return {
        "seen": b"\\seen" in lowered,
        "flagged": b"\\flagged" in lowered,
        "answered": b"\\answered" in lowered,
        "draft": b"\\draft" in lowered,
        "deleted": b"\\deleted" in lowered,
        "keywords": keywords,
    }


# --------------------------------------------------------------------------- lookups


def existing_by_dedup_key(account_id: int, keys: Iterable[str]) -> dict[str, int]:
    """Return {dedup_key: message id} for keys already stored in the account."""
    return _existing_by(message_t.c.dedup_key, account_id, keys)


def copies_by_header_key(
    account_id: int, folder_id: int, keys: Iterable[str]
) -> dict[str, list[tuple[int, int, bool]]]:
    """Return {header key: [(message id, size, has a live location in folder_id)]}: the stored
    messages a new location may be a copy of (mailsync/IDENTITY.md)."""
    in_folder = (
        select(location_t.c.message_id)
        .where(
            location_t.c.folder_id == folder_id,
            location_t.c.stale.is_(False),
            location_t.c.message_id == message_t.c.id,
        )
        .exists()
    )
    found: dict[str, list[tuple[int, int, bool]]] = {}
    for chunk in _chunks(sorted(set(keys))):
        rows = db.session.execute(
            select(message_t.c.header_key, message_t.c.id, message_t.c.size, in_folder).where(
                message_t.c.account_id == account_id, message_t.c.header_key.in_(chunk)
            )
        )
        for key, message_id, size, located in rows:
            found.setdefault(key, []).append((message_id, size, bool(located)))
    return found


def existing_by_gm_msgid(account_id: int, msgids: Iterable[int]) -> dict[int, int]:
    """Return {X-GM-MSGID: message id} for Gmail messages already stored."""
    return _existing_by(message_t.c.gm_msgid, account_id, msgids)


def _existing_by(column, account_id: int, values: Iterable) -> dict:
    """Return {value: message id} for the account's messages whose `column` is in `values`."""
    found: dict = {}
    for chunk in _chunks(sorted(set(values))):
        rows = db.session.execute(
            select(column, message_t.c.id).where(
                message_t.c.account_id == account_id, column.in_(chunk)
            )
        )
        found.update(dict(rows.all()))
    return found


def location_count(folder_id: int) -> int:
    """Return how many non-stale locations the folder has (\\Deleted ones included)."""
    return (
        db.session.scalar(
            select(func.count())
            .select_from(location_t)
            .where(location_t.c.folder_id == folder_id, location_t.c.stale.is_(False))
        )
        or 0
    )


def failed_uids_to_skip(folder_id: int) -> set[int]:
    """Return the UIDs whose download failed and is not due again yet (or never will be)."""
    return set(db.session.scalars(select(FailedUid.uid).where(FailedUid.folder_id == folder_id)))


def location_sizes(folder_id: int, *, high: int) -> dict[int, int]:
    """Return {uid: size of its message} for the folder's non-stale locations up to `high`."""
    rows = db.session.execute(
        select(location_t.c.uid, message_t.c.size)
        .join(message_t, message_t.c.id == location_t.c.message_id)
        .where(
            location_t.c.folder_id == folder_id,
            location_t.c.stale.is_(False),
            location_t.c.uid <= high,
        )
    )
    return dict(rows.all())


def local_uids(folder_id: int, *, low: int = 1, high: int | None = None) -> set[int]:
    """Return the non-stale UIDs stored for a folder, optionally within [low, high]."""
    query = select(location_t.c.uid).where(
        location_t.c.folder_id == folder_id, location_t.c.stale.is_(False), location_t.c.uid >= low
    )
    if high is not None:
        query = query.where(location_t.c.uid <= high)
    return set(db.session.scalars(query))


def local_uids_in_ranges(folder_id: int, ranges: Sequence[tuple[int, int]]) -> set[int]:
    """Return the non-stale UIDs stored for a folder within any of the (low, high) ranges.

    One indexed range condition per range, so a few ranges in a folder of 100,000 UIDs read
    only the rows they name (callers pass at most a few hundred ranges at a time).
    """
    if not ranges:
        return set()
    query = select(location_t.c.uid).where(
        location_t.c.folder_id == folder_id,
        location_t.c.stale.is_(False),
        or_(*(location_t.c.uid.between(low, high) for low, high in ranges)),
    )
    return set(db.session.scalars(query))


# --------------------------------------------------------------------------- locations


def _location_rows(folder_id: int, uid: int, message_id: int, flags, labels) -> dict[str, Any]:
    return {
        "folder_id": folder_id,
        "uid": uid,
        "message_id": message_id,
        "gm_labels": labels,
        "stale": False,
        **flag_columns(flags),
    }


def _upsert_locations(rows: list[dict[str, Any]], *, takeover: bool) -> set[int]:
    """Insert locations; a stale row at the same (folder, uid) is taken over (UIDVALIDITY rebuild).

    With `takeover`, returns the message ids that lost a location to the takeover, so they
    get refreshed; without it (no stale rows in the folder) that lookup is skipped.

    Each row is written with its \\Seen state (_seen_state): the user's change still on its
    way stays with the mail it was meant for.
    """
    if not rows:
        return set()
    there = _rows_at(rows) if takeover else {}
    # A row another mail takes over: the user's \Seen change on it was meant for the mail
    # that was there, which keeps it for where it is now.
    leaving: dict[int, list[int]] = {}
    for row in rows:
        before = there.get((row["folder_id"], row["uid"]))
        if before is not None and before.message_id != row["message_id"]:
            leaving.setdefault(row["folder_id"], []).append(before.id)
    for folder_id, location_ids in leaving.items():
        keep_pending_seen(folder_id, location_t.c.id.in_(location_ids))
    wanted = _pending_seen_of({row["message_id"] for row in rows})
    now = _now()
    rows = [
        _seen_state(row, there.get((row["folder_id"], row["uid"])), wanted, now) for row in rows
    ]
    _bulk_insert(
        location_t,
        rows,
        ("folder_id", "uid"),
        (
            "message_id",
            "seen",
            "seen_pending",
            "seen_changed_at",
            "flagged",
            "answered",
            "draft",
            "deleted",
            "keywords",
            "gm_labels",
            "stale",
        ),
    )
    if wanted:  # given to the rows: nothing waits on the messages any more
        dialect.lock_rows_in_order(db.session.connection(), message_t, wanted)
        db.session.execute(
            update(message_t)
            .where(message_t.c.id.in_(sorted(wanted)), message_t.c.seen_wanted.is_not(None))
            .values(seen_wanted=None)
        )
    return {before.message_id for before in there.values()}


def _rows_at(rows: list[dict[str, Any]]) -> dict[tuple[int, int], Any]:
    """The locations stored at the rows' (folder, uid) places: stale ones a rebuild leaves."""
    by_folder: dict[int, list[int]] = {}
    for row in rows:
        by_folder.setdefault(row["folder_id"], []).append(row["uid"])
    found = {}
    for folder_id, uids in by_folder.items():
        for chunk in _chunks(uids):
            for before in db.session.execute(
                select(
                    location_t.c.id,
                    location_t.c.uid,
                    location_t.c.message_id,
                    location_t.c.seen,
                    location_t.c.seen_pending,
                    location_t.c.seen_changed_at,
                ).where(location_t.c.folder_id == folder_id, location_t.c.uid.in_(chunk))
            ):
                found[(folder_id, before.uid)] = before
    return found


def _seen_state(
    row: dict[str, Any], before: Any, wanted: dict[int, bool], now: datetime
) -> dict[str, Any]:
    """`row` with the \\Seen state it is written with.

    The same mail back at its place keeps its state there (a change still pending stays,
    not overwritten by the server's flags; a recent one keeps its guard). A mail whose change
    was left by a location that went (Message.seen_wanted) takes it, pending, for the sync's
    write-back to put on the server. Otherwise the server's flags, and no change of the
    user's (another mail now at a stale row's UID must not get that mail's change).
    """
    if before is not None and before.message_id == row["message_id"] and before.seen_pending:
        return {**row, "seen": before.seen, "seen_pending": True,
                "seen_changed_at": before.seen_changed_at}  # fmt: skip
    if row["message_id"] in wanted:
        return {**row, "seen": wanted[row["message_id"]], "seen_pending": True,
                "seen_changed_at": now}  # fmt: skip
    if before is not None and before.message_id == row["message_id"]:
        return {**row, "seen_pending": False, "seen_changed_at": before.seen_changed_at}
    return {**row, "seen_pending": False, "seen_changed_at": None}


def _pending_seen_of(message_ids: set[int]) -> dict[int, bool]:
    """Return {message id: the \\Seen the user wants} of these messages whose change was
    left by a location that went before the change reached the server (Message.seen_wanted;
    see keep_pending_seen). One read of an index that is almost always empty."""
    # The whole (tiny) partial index, not a probe per id: this runs for every stored batch.
    rows = db.session.execute(
        select(message_t.c.id, message_t.c.seen_wanted).where(message_t.c.seen_wanted.is_not(None))
    )
    return {message_id: bool(seen) for message_id, seen in rows if message_id in message_ids}


def keep_pending_seen(folder_id: int, condition) -> None:
    """Before a folder's locations matching `condition` are deleted: a user's \\Seen change
    on one of them that is not on the server yet follows the mail.

    Another mail program moved the mail (or the folder was renumbered) before the
    write-back: a location the mail got after the user's change (found by this pass) has the
    flags from before it, and takes the change, pending, for the next write-back. With no
    other location yet the message keeps it (Message.seen_wanted) for the location it turns
    up at (_upsert_locations). Locations it had before keep what they have: a change there
    since is another mail program's, and newer.
    """
    leaving = and_(location_t.c.folder_id == folder_id, condition)
    going_now = and_(leaving, GUARDED, location_t.c.seen_pending.is_(True))
    messages = sorted(set(db.session.scalars(select(location_t.c.message_id).where(going_now))))
    if not messages:
        return
    # Every location of these messages, then the messages, each in id order (as a request
    # marking mail read takes them), before their values are read: a change committed
    # meanwhile is the one carried.
    connection = db.session.connection()
    all_rows = location_t.c.message_id.in_(messages)
    dialect.lock_rows_in_order(
        connection, location_t, db.session.scalars(select(location_t.c.id).where(all_rows))
    )
    rows = db.session.execute(
        select(
            location_t.c.id,
            location_t.c.message_id,
            location_t.c.seen,
            location_t.c.seen_pending,
            location_t.c.seen_changed_at,
            location_t.c.created_at,
            location_t.c.stale,
            leaving.label("leaving"),
            going_now.label("going"),
        ).where(all_rows)
    ).all()
    going = {row.id for row in rows if row.going}
    newer: dict[bool, list[int]] = {}
    kept: dict[bool, list[int]] = {}
    for message_id in messages:
        mine = [row for row in rows if row.message_id == message_id]
        wishes = [row for row in mine if row.id in going]
        if not wishes:
            continue  # written meanwhile
        wish = max(wishes, key=lambda row: row.seen_changed_at or datetime.min.replace(tzinfo=UTC))
        others = [row for row in mine if not row.leaving and not row.stale]
        if not others:
            kept.setdefault(bool(wish.seen), []).append(message_id)
            continue
        for row in others:
            found_after = (
                row.created_at is not None
                and wish.seen_changed_at is not None
                and row.created_at > wish.seen_changed_at
            )
            if found_after and not row.seen_pending and bool(row.seen) != bool(wish.seen):
                newer.setdefault(bool(wish.seen), []).append(row.id)
    for seen, location_ids in newer.items():
        db.session.execute(
            update(location_t)
            .where(location_t.c.id.in_(location_ids), location_t.c.seen_pending.is_(False))
            .values(seen=seen, seen_pending=True, seen_changed_at=_now())
        )
    dialect.lock_rows_in_order(connection, message_t, [i for ids in kept.values() for i in ids])
    for seen, message_ids in kept.items():
        db.session.execute(
            update(message_t).where(message_t.c.id.in_(message_ids)).values(seen_wanted=seen)
        )


def link_locations(links: Sequence[Link], *, takeover: bool = True) -> set[int]:
    """Attach new locations to stored messages; return the message ids touched."""
    rows = [
        _location_rows(li.folder_id, li.uid, li.message_id, li.flags, li.gm_labels) for li in links
    ]
    displaced = _upsert_locations(rows, takeover=takeover)
    touched = {li.message_id for li in links} | displaced
    refresh_messages(touched)
    mark_inbox_threads({li.message_id for li in links})
    return touched


def remove_locations(folder_id: int, uids: Iterable[int], *, log: RunLog | None = None) -> int:
    """Delete a folder's locations for `uids` (expunged on the server); return how many."""
    uid_list = sorted(set(uids))
    touched: set[int] = set()
    removed = 0
    for chunk in _chunks(uid_list):
        rows = db.session.execute(
            select(location_t.c.uid, location_t.c.message_id).where(
                location_t.c.folder_id == folder_id, location_t.c.uid.in_(chunk)
            )
        ).all()
        touched.update(message_id for _uid, message_id in rows)
        _log_removed(log, folder_id, rows)
        keep_pending_seen(folder_id, location_t.c.uid.in_(chunk))
        removed += db.session.execute(
            delete(location_t).where(
                location_t.c.folder_id == folder_id, location_t.c.uid.in_(chunk)
            )
        ).rowcount
    refresh_messages(touched)
    return removed


def save_run_log(run_id: int, log: RunLog) -> None:
    """Write a pass's RunLog as sync_run_entry rows, with folder names and subjects copied
    (so the log still reads after the mail is collected). Does not commit."""
    if not log.entries:
        return
    folder_ids = {folder_id for _kind, folder_id, _uid, _message_id in log.entries}
    message_ids = {message_id for _kind, _folder_id, _uid, message_id in log.entries}
    folders = dict(
        db.session.execute(
            select(MailFolder.id, MailFolder.name).where(MailFolder.id.in_(folder_ids))
        ).all()
    )
    subjects: dict[int, str] = {}
    for chunk in _chunks(sorted(message_ids)):
        subjects.update(
            db.session.execute(
                select(message_t.c.id, message_t.c.subject).where(message_t.c.id.in_(chunk))
            ).all()
        )
    db.session.execute(
        insert(SyncRunEntry),
        [
            {
                "run_id": run_id,
                "kind": kind,
                "folder": folders.get(folder_id, ""),
                "uid": uid,
                "message_id": message_id if message_id in subjects else None,
                "subject": (subjects.get(message_id) or "")[:255],
            }
            for kind, folder_id, uid, message_id in log.entries
        ],
    )


def _log_removed(log: RunLog | None, folder_id: int, rows) -> None:
    if log is not None:
        for uid, message_id in rows:
            log.add("removed", folder_id, uid, message_id)


def location_sample(folder_id: int, size: int) -> dict[int, tuple[str | None, int | None, int]]:
    """Return {uid: (header key, X-GM-MSGID, message size)} for up to `size` non-stale
    locations of a folder, spread evenly over its UIDs (lowest first)."""
    total = db.session.scalar(
        select(func.count())
        .select_from(location_t)
        .where(location_t.c.folder_id == folder_id, location_t.c.stale.is_(False))
    )
    if not total:
        return {}
    step = -(-total // size)  # ceil: every step-th UID gives at most `size` of them
    numbered = (
        select(
            location_t.c.uid,
            location_t.c.message_id,
            func.row_number().over(order_by=location_t.c.uid).label("n"),
        )
        .where(location_t.c.folder_id == folder_id, location_t.c.stale.is_(False))
        .subquery()
    )
    rows = db.session.execute(
        select(numbered.c.uid, message_t.c.header_key, message_t.c.gm_msgid, message_t.c.size)
        .join(message_t, message_t.c.id == numbered.c.message_id)
        .where((numbered.c.n - 1) % step == 0)
        .order_by(numbered.c.uid)
        .limit(size)
    )
    return {uid: (key, gm_msgid, stored_size) for uid, key, gm_msgid, stored_size in rows}


def has_stale_locations(folder_id: int) -> bool:
    """Tell whether a folder still has locations from before a UIDVALIDITY change."""
    return (
        db.session.scalar(
            select(location_t.c.id)
            .where(location_t.c.folder_id == folder_id, location_t.c.stale.is_(True))
            .limit(1)
        )
        is not None
    )


def has_failed_uids(folder_id: int) -> bool:
    """Tell whether a folder has any UID recorded as failed."""
    return (
        db.session.scalar(select(FailedUid.id).where(FailedUid.folder_id == folder_id).limit(1))
        is not None
    )


def remove_stale_locations(folder_id: int, *, log: RunLog | None = None) -> int:
    """Delete the stale locations left after a UIDVALIDITY rebuild; return how many."""
    rows = db.session.execute(
        select(location_t.c.uid, location_t.c.message_id).where(
            location_t.c.folder_id == folder_id, location_t.c.stale.is_(True)
        )
    ).all()
    _log_removed(log, folder_id, rows)
    keep_pending_seen(folder_id, location_t.c.stale.is_(True))
    removed = db.session.execute(
        delete(location_t).where(location_t.c.folder_id == folder_id, location_t.c.stale.is_(True))
    ).rowcount
    refresh_messages({message_id for _uid, message_id in rows})
    return removed


def remove_folder_locations(folder_id: int, *, log: RunLog | None = None) -> int:
    """Delete every location of a folder that vanished from the server; return how many."""
    rows = db.session.execute(
        select(location_t.c.uid, location_t.c.message_id).where(location_t.c.folder_id == folder_id)
    ).all()
    _log_removed(log, folder_id, rows)
    keep_pending_seen(folder_id, true())
    removed = db.session.execute(
        delete(location_t).where(location_t.c.folder_id == folder_id)
    ).rowcount
    refresh_messages({message_id for _uid, message_id in rows})
    return removed


def apply_flag_changes(
    folder_id: int,
    changes: dict[int, tuple[Sequence[bytes], list[str] | None]],
    *,
    log: RunLog | None = None,
) -> int:
    """Update locations whose server flags differ from the stored ones; return how many changed.

    `changes` maps UID -> (flags, gm_labels). Unknown UIDs are ignored.
    """
    uids = sorted(changes)
    changed_rows: list[dict[str, Any]] = []
    touched: set[int] = set()
    columns = ("seen", "flagged", "answered", "draft", "deleted", "keywords")
    guard_since = _now() - timedelta(seconds=LOCAL_CHANGE_GUARD_SECONDS)
    for chunk in _chunks(uids):
        rows = db.session.execute(
            select(
                location_t.c.id,
                location_t.c.uid,
                location_t.c.message_id,
                location_t.c.gm_labels,
                location_t.c.seen_changed_at,
                location_t.c.seen_pending,
                *[location_t.c[name] for name in columns],
            ).where(location_t.c.folder_id == folder_id, location_t.c.uid.in_(chunk))
        ).mappings()
        for row in rows:
            flags, labels = changes[row["uid"]]
            wanted = flag_columns(flags)
            # None: the response had no X-GM-LABELS (kept); [] : every label was removed.
            wanted["gm_labels"] = labels if labels is not None else row["gm_labels"]
            changed_at = row["seen_changed_at"]
            if row["seen_pending"] or (changed_at is not None and changed_at > guard_since):
                # The user's change wins while it is not on the server yet, or so recent
                # that these flags may predate its write-back (SYNC.md §4.3). Once the guard
                # is over the location is read again (guard_expired_uids): the server wins.
                wanted["seen"] = row["seen"]
            if any(row[name] != wanted[name] for name in (*columns, "gm_labels")):
                changed_rows.append({"b_id": row["id"], **wanted})
                touched.add(row["message_id"])
                if log is not None:
                    log.add("changed", folder_id, row["uid"], row["message_id"])
    if changed_rows:
        # The guard is decided again by the UPDATE itself, on the row as it is then: the user
        # may have marked the mail read or unread since the SELECT above (a web request of
        # another process commits at any time, PostgreSQL locks only rows), and writing the
        # server's older \Seen over it would lose that change.
        guarded = or_(
            location_t.c.seen_pending.is_(True),
            location_t.c.seen_changed_at
            > bindparam("b_guard_since", type_=location_t.c.seen_changed_at.type),
        )
        values = {name: bindparam(name) for name in (*columns, "gm_labels") if name != "seen"}
        values["seen"] = case((guarded, location_t.c.seen), else_=bindparam("b_seen"))
        for row in changed_rows:
            row["b_seen"] = row.pop("seen")
            row["b_guard_since"] = guard_since
        # In id order, as every writer of these rows takes them (dialect.lock_rows_in_order).
        changed_rows.sort(key=lambda row: row["b_id"])
        db.session.execute(
            update(location_t).where(location_t.c.id == bindparam("b_id")).values(values),
            changed_rows,
        )
        refresh_messages(touched)
    return len(changed_rows)


# Spelled as ix_message_location_guarded's WHERE, so the queries below use that index.
GUARDED = or_(location_t.c.seen_changed_at.is_not(None), location_t.c.seen_pending.is_(True))


def has_guarded_changes(folder_id: int) -> bool:
    """Tell whether a location of the folder has a user \\Seen change to write or re-read."""
    return (
        db.session.scalar(
            select(location_t.c.id).where(location_t.c.folder_id == folder_id, GUARDED).limit(1)
        )
        is not None
    )


def guard_expired_uids(folder_id: int, *, high: int) -> set[int]:
    """Return the UIDs whose user \\Seen change is on the server and whose guard is over."""
    guard_since = _now() - timedelta(seconds=LOCAL_CHANGE_GUARD_SECONDS)
    return set(
        db.session.scalars(
            select(location_t.c.uid).where(
                location_t.c.folder_id == folder_id,
                GUARDED,
                location_t.c.uid <= high,
                location_t.c.seen_changed_at <= guard_since,
                location_t.c.seen_pending.is_(False),
            )
        )
    )


def end_guard(folder_id: int, uids: Iterable[int]) -> None:
    """Forget the user's \\Seen change on these locations: the server's flags rule again."""
    db.session.execute(
        update(location_t)
        .where(
            location_t.c.folder_id == folder_id,
            location_t.c.uid.in_(list(uids)),
            location_t.c.seen_pending.is_(False),
        )
        .values(seen_changed_at=None)
    )


def pending_seen_writes(account_id: int) -> dict[bool, list[tuple[int, str, int]]]:
    """Return {wanted \\Seen: [(location id, folder name, uid)]} of the write-backs to retry."""
    folder_t = MailFolder.__table__
    rows = db.session.execute(
        select(location_t.c.id, folder_t.c.name, location_t.c.uid, location_t.c.seen)
        .join(folder_t, folder_t.c.id == location_t.c.folder_id)
        .where(
            folder_t.c.account_id == account_id,
            GUARDED,
            location_t.c.seen_pending,
            location_t.c.stale.is_(False),
        )
    )
    pending: dict[bool, list[tuple[int, str, int]]] = {}
    for location_id, folder, uid, seen in rows:
        pending.setdefault(bool(seen), []).append((location_id, folder, uid))
    return pending


def seen_written(location_ids: Iterable[int], seen: bool) -> None:
    """The server has the user's \\Seen now: stop retrying; the guard window starts again.

    Only where the wanted value is still the one written: a newer opposite change made while
    the write was on its way stays pending for its own write-back job.
    """
    location_ids = sorted(location_ids)
    dialect.lock_rows_in_order(db.session.connection(), location_t, location_ids)
    db.session.execute(
        update(location_t)
        .where(location_t.c.id.in_(location_ids), location_t.c.seen.is_(seen))
        .values(seen_pending=False, seen_changed_at=_now())
    )


def record_failed_uid(folder_id: int, uid: int, error: str, *, retry_after_seconds: int) -> None:
    """Remember a UID whose fetch failed; it is retried later and never blocks the watermark."""

    existing = db.session.scalar(
        select(FailedUid).where(FailedUid.folder_id == folder_id, FailedUid.uid == uid)
    )
    if existing is None:
        existing = FailedUid(folder_id=folder_id, uid=uid, attempts=0)
        db.session.add(existing)
    existing.attempts += 1
    existing.last_error = error[:1000]
    existing.next_retry_at = _now() + timedelta(seconds=retry_after_seconds * existing.attempts)


def forget_failed_uids(folder_id: int) -> None:
    """Forget every failed UID of a folder whose UIDs now name other mail (a UIDVALIDITY
    reset, a folder gone): a new mail at a reused UID must be fetched like any other."""
    db.session.execute(delete(FailedUid).where(FailedUid.folder_id == folder_id))


def clear_failed_uids(folder_id: int, uids: Iterable[int]) -> None:
    """Forget failures of UIDs that have now been stored."""
    for chunk in _chunks(sorted(set(uids))):
        db.session.execute(
            delete(FailedUid).where(FailedUid.folder_id == folder_id, FailedUid.uid.in_(chunk))
        )


# --------------------------------------------------------------------------- derived state


# A copy flagged as deleted (a moved original on a server without MOVE) counts only when
# there is no other: the user's later read/unread goes to the live copy.
_COUNTING_COPY = """(NOT l.deleted OR NOT EXISTS (
    SELECT 1 FROM message_location k WHERE k.message_id = message.id
    AND NOT k.deleted AND NOT k.stale))"""

_REFRESH_MESSAGES = text(
    f"""
    UPDATE message SET
      is_read = EXISTS (SELECT 1 FROM message_location l
                        WHERE l.message_id = message.id AND l.seen AND NOT l.stale
                          AND {_COUNTING_COPY}),
      is_flagged = EXISTS (SELECT 1 FROM message_location l
                           WHERE l.message_id = message.id AND l.flagged AND NOT l.stale
                             AND {_COUNTING_COPY}),
      is_draft = EXISTS (SELECT 1 FROM message_location l
                         WHERE l.message_id = message.id AND l.draft AND NOT l.stale),
      is_sent = EXISTS (SELECT 1 FROM message_location l JOIN mail_folder f ON f.id = l.folder_id
                        WHERE l.message_id = message.id AND f.role = 'sent'),
      deleted_at = CASE
        WHEN NOT EXISTS (SELECT 1 FROM message_location l WHERE l.message_id = message.id)
          THEN COALESCE(deleted_at, :now)
        -- A location again: back, unless the user deleted it in Threadline.
        ELSE user_deleted_at END,
      orphaned_at = CASE
        WHEN EXISTS (SELECT 1 FROM message_location l WHERE l.message_id = message.id) THEN NULL
        ELSE COALESCE(orphaned_at, :now) END
    WHERE id IN :ids
    """
).bindparams(bindparam("ids", expanding=True), bindparam("now", type_=UTCDateTime()))

_REFRESH_THREADS = text(
    """
    UPDATE thread SET
      message_count = (SELECT count(*) FROM message m
                       WHERE m.thread_id = thread.id AND m.deleted_at IS NULL),
      first_date = (SELECT min(coalesce(m.date, m.internaldate)) FROM message m
                    WHERE m.thread_id = thread.id AND m.deleted_at IS NULL),
      -- The newest mail the owner's blocks do not hide (services/linking.py keeps it so
      -- when blocks change): hidden mail must not move a conversation up for anyone.
      last_date = COALESCE(
        (SELECT max(coalesce(m.date, m.internaldate)) FROM message m
         WHERE m.thread_id = thread.id AND m.deleted_at IS NULL AND NOT m.blocked),
        (SELECT max(coalesce(m.date, m.internaldate)) FROM message m
         WHERE m.thread_id = thread.id AND m.deleted_at IS NULL))
    WHERE id IN :ids
    """
).bindparams(bindparam("ids", expanding=True))


def refresh_messages(message_ids: Iterable[int]) -> None:
    """Recompute read/flagged/draft/sent as ANY over locations, soft-(un)delete, fix threads.

    A message that lost its last location gets `deleted_at` and `orphaned_at` (garbage
    collection hard-deletes it after a TTL, mailsync.gc); one that regained a location (a move
    seen as vanish-then-appear) is undeleted and no longer orphaned (SYNC.md §2.4), unless
    the user deleted it in Threadline (`user_deleted_at`).
    """
    ids = sorted(set(message_ids))
    refresh_labels(ids)
    thread_ids: set[int] = set()
    for chunk in _chunks(ids):
        dialect.lock_rows_in_order(db.session.connection(), message_t, chunk)
        db.session.execute(_REFRESH_MESSAGES, {"ids": list(chunk), "now": _now()})
        thread_ids.update(
            tid
            for tid in db.session.scalars(
                select(message_t.c.thread_id).where(message_t.c.id.in_(chunk))
            )
            if tid is not None
        )
    refresh_threads(thread_ids)


def refresh_labels(message_ids: Iterable[int]) -> None:
    """Make the messages' MessageLabel rows those of their live locations' Gmail labels.

    Only rows that differ are written, so the unread triggers note real changes only. For
    mail without labels (every server but Gmail) this is two index reads per chunk.
    """
    folders: dict[int, dict[str, int]] = {}
    for chunk in _chunks(sorted(set(message_ids))):
        rows = db.session.execute(
            select(location_t.c.message_id, folder_t.c.account_id, location_t.c.gm_labels)
            .join(folder_t, folder_t.c.id == location_t.c.folder_id)
            .where(location_t.c.message_id.in_(chunk), location_t.c.deleted.is_(False))
        ).all()
        wanted: set[tuple[int, int]] = set()
        for message_id, account_id, labels in rows:
            if not labels:
                continue
            if account_id not in folders:
                folders[account_id] = _label_folders(account_id)
            for label in labels:
                key = SYSTEM_LABEL_ROLES.get(label, label)
                folder_id = folders[account_id].get(key)
                if folder_id is not None:
                    wanted.add((folder_id, message_id))
        have = {
            (folder_id, message_id)
            for folder_id, message_id in db.session.execute(
                select(label_t.c.folder_id, label_t.c.message_id).where(
                    label_t.c.message_id.in_(chunk)
                )
            )
        }
        if have - wanted:
            pairs = tuple_(label_t.c.folder_id, label_t.c.message_id)
            db.session.execute(delete(label_t).where(pairs.in_(sorted(have - wanted))))
        if wanted - have:
            db.session.execute(
                insert(label_t),
                [{"folder_id": f, "message_id": m} for f, m in sorted(wanted - have)],
            )


def refresh_account_labels(account_id: int, *, inbox: bool = False) -> None:
    """Run refresh_labels over every message of an account, a chunk at a time; with `inbox`
    (the \\Inbox label's folder is new) also put \\Inbox-labelled threads in the Inbox."""
    last = 0
    while True:
        ids = list(
            db.session.scalars(
                select(message_t.c.id)
                .where(message_t.c.account_id == account_id, message_t.c.id > last)
                .order_by(message_t.c.id)
                .limit(CHUNK)
            )
        )
        if not ids:
            return
        refresh_labels(ids)
        if inbox:
            mark_inbox_threads(ids)
        last = ids[-1]


def _label_folders(account_id: int) -> dict[str, int]:
    """Return {label name or system role: folder id} of an account's Gmail label folders."""
    found: dict[str, int] = {}
    for folder_id, name, role in db.session.execute(
        select(folder_t.c.id, folder_t.c.name, folder_t.c.role).where(
            folder_t.c.account_id == account_id, folder_t.c.state == GMAIL_LABEL
        )
    ):
        found[name] = folder_id
        if role:
            found.setdefault(role, folder_id)
    return found


# A message is in the inbox when a location is in an inbox folder, or (Gmail) it carries the
# \Inbox label.
_IN_INBOX = """(EXISTS (SELECT 1 FROM message_location l JOIN mail_folder f ON f.id = l.folder_id
                 WHERE l.message_id = m.id AND f.role = 'inbox')
         OR EXISTS (SELECT 1 FROM message_label g JOIN mail_folder f ON f.id = g.folder_id
                    WHERE g.message_id = m.id AND f.role = 'inbox'))"""

_MARK_INBOX = text(
    """
    UPDATE thread SET in_inbox = TRUE
    WHERE in_inbox = FALSE AND id IN (
      SELECT m.thread_id FROM message m
      WHERE m.id IN :ids AND """
    + _IN_INBOX
    + """)
    """
).bindparams(bindparam("ids", expanding=True))


# New mail in an inbox folder brings its conversation back when the user had archived or
# deleted it in Threadline (a customer's reply must never land out of sight). Only mail the
# server received after the conversation's last message (or its deletion) does: backfill of
# older messages leaves the user's choice alone. INTERNALDATE first: a sender's Date header
# can run behind our clock; it has whole seconds, so the deletion time is kept in whole
# seconds and mail of that same second counts as new. Deleted messages stay deleted.
_REVIVE = text(
    """
    UPDATE thread SET archived = FALSE, deleted_at = NULL
    WHERE (archived = TRUE OR deleted_at IS NOT NULL) AND id IN (
      SELECT m.thread_id FROM message m
      WHERE m.id IN :ids AND """
    + _IN_INBOX
    + """
        AND (coalesce(m.internaldate, m.date) >= thread.deleted_at
             OR (thread.deleted_at IS NULL
                 AND coalesce(m.internaldate, m.date) > thread.last_date)))
    """
).bindparams(bindparam("ids", expanding=True))


def revive_threads(message_ids: Iterable[int]) -> None:
    """Bring archived or deleted conversations back for new inbox mail (see _REVIVE).

    Runs before the threads' dates are refreshed, so last_date is still the previous one.
    """
    for chunk in _chunks(sorted(set(message_ids))):
        db.session.execute(_REVIVE, {"ids": list(chunk)})


def mark_inbox_threads(message_ids: Iterable[int]) -> None:
    """Put the threads of messages that have an inbox location into Threadline's Inbox."""
    for chunk in _chunks(sorted(set(message_ids))):
        db.session.execute(_MARK_INBOX, {"ids": list(chunk)})


def refresh_threads(thread_ids: Iterable[int]) -> None:
    """Recompute message_count and first/last date of threads."""
    for chunk in _chunks(sorted(set(thread_ids))):
        # In id order, as a request archiving or moving conversations updates them.
        dialect.lock_rows_in_order(db.session.connection(), thread_t, chunk)
        db.session.execute(_REFRESH_THREADS, {"ids": list(chunk)})


# --------------------------------------------------------------------------- threading


def _participants(parsed: ParsedLike) -> set[str]:
    addresses = {parsed.from_address.lower()} if parsed.from_address else set()
    for _name, address in (*parsed.to, *parsed.cc):
        if address:
            addresses.add(address.lower())
    return addresses


def _message_ids(parsed: ParsedLike) -> tuple[list[str], list[str]]:
    """Return (own ids incl. aliases, parent chain), normalized."""
    own = [
        i
        for i in (jwz.normalize_msgid(x) for x in [parsed.message_id, *parsed.alias_message_ids])
        if i
    ]
    refs = [jwz.normalize_msgid(x) for x in parsed.references]
    in_reply_to = jwz.normalize_msgid(parsed.in_reply_to)
    chain = [r for r in jwz.parent_chain([r for r in refs if r], in_reply_to) if r not in own]
    return list(dict.fromkeys(own)), list(dict.fromkeys(chain))


_THREAD_PARTICIPANTS = (
    select(message_t.c.from_address, message_t.c.to, message_t.c.cc)
    .where(message_t.c.thread_id == bindparam("t"))
    .limit(50)
)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class _Threader:
    """Assign threads for one batch: JWZ id table with phantoms, merges, subject fallback."""

    def __init__(self, ctx: StoreContext, items: Sequence[Fetched]):
        self.ctx = ctx
        self.ids = {id(item): _message_ids(item.parsed) for item in items}
        wanted = sorted({i for own, refs in self.ids.values() for i in (*own, *refs)})
        self.index: dict[str, int] = {}
        for chunk in _chunks(wanted):
            rows = db.session.execute(
                select(index_t.c.msgid, index_t.c.thread_id).where(
                    index_t.c.account_id == ctx.account_id, index_t.c.msgid.in_(chunk)
                )
            )
            self.index.update(dict(rows.all()))
        self.real: dict[str, int] = {}  # own ids seen in this batch -> thread
        self.phantom: dict[str, int] = {}  # referenced ids first seen in this batch
        self.batch_participants: dict[int, set[str]] = {}
        self.gm_threads: dict[int, int] = {}
        gm = sorted({item.gm_thrid for item in items if item.gm_thrid})
        for chunk in _chunks(gm):
            rows = db.session.execute(
                select(thread_t.c.gm_thrid, thread_t.c.id)
                .where(thread_t.c.account_id == ctx.account_id, thread_t.c.gm_thrid.in_(chunk))
                .order_by(thread_t.c.id)
            )
            # A Gmail thread that outgrew the length cap continues in a newer thread row.
            self.gm_threads.update(dict(rows.all()))
        self.merged: dict[int, int] = {}
        self.by_subject: dict[str, tuple[int, datetime | None, str]] = {}
        subjects = sorted(
            {
                jwz.normalize_subject(item.parsed.subject)[:255]
                for item in items
                if self._fallback_possible(item)
            }
        )
        for chunk in _chunks(subjects):
            rows = db.session.execute(
                select(
                    thread_t.c.normalized_subject,
                    thread_t.c.id,
                    thread_t.c.last_date,
                    thread_t.c.subject,
                )
                .where(
                    thread_t.c.account_id == ctx.account_id,
                    thread_t.c.normalized_subject.in_(chunk),
                )
                # Undated first, as SQLite sorts NULL anyway (PostgreSQL: last).
                .order_by(thread_t.c.last_date.asc().nulls_first(), thread_t.c.id)
            )
            for normalized, thread_id, last_date, subject in rows:
                self.by_subject[normalized] = (thread_id, _aware(last_date), subject)  # latest wins
        # Live message counts of every thread this batch may join (SYNC.md §8 step 6).
        self.sizes: dict[int, int] = {}
        candidates = {
            *self.index.values(),
            *self.gm_threads.values(),
            *(thread_id for thread_id, _date, _subject in self.by_subject.values()),
        }
        for chunk in _chunks(sorted(candidates)):
            rows = db.session.execute(
                select(thread_t.c.id, thread_t.c.message_count).where(thread_t.c.id.in_(chunk))
            )
            self.sizes.update(dict(rows.all()))

    @staticmethod
    def _fallback_possible(item: Fetched) -> bool:
        """Cheap precheck of SYNC.md §8 step 5 before any query (generic subject, dates)."""
        parsed = item.parsed
        when = parsed.date or item.internaldate
        normalized = jwz.normalize_subject(parsed.subject)[:255]
        return jwz.subject_fallback_allowed(normalized, True, when, when, 2)

    def _resolve(self, thread_id: int) -> int:
        while thread_id in self.merged:
            thread_id = self.merged[thread_id]
        return thread_id

    def _create(self, item: Fetched) -> int:
        parsed = item.parsed
        when = parsed.date or item.internaldate
        normalized = jwz.normalize_subject(parsed.subject)[:255]
        thread_id = _insert_one(
            thread_t,
            {
                "account_id": self.ctx.account_id,
                "gm_thrid": item.gm_thrid,
                "subject": (parsed.subject or "")[:255],
                "normalized_subject": normalized,
                "first_date": when,
                "last_date": when,
                "message_count": 0,
                "shared": self.ctx.share_by_default,
                "archived": False,
                "needs_link_choice": False,
                "blocked": False,
            },
        )
        if normalized:
            self.by_subject[normalized] = (thread_id, _aware(when), parsed.subject or "")
        self.sizes[thread_id] = 0
        return thread_id

    def _size(self, thread_id: int) -> int:
        if thread_id not in self.sizes:
            count = db.session.scalar(
                select(thread_t.c.message_count).where(thread_t.c.id == thread_id)
            )
            self.sizes[thread_id] = count or 0
        return self.sizes[thread_id]

    def _join(self, candidates: set[int]) -> int | None:
        """Return the thread to join among `candidates`, merging them; None if all are full.

        The one place of the length cap (SYNC.md §8 step 6, Nylas MAX_THREAD_LENGTH): a full
        thread takes no more messages, and threads merge only while the result stays under
        the cap. The caller then starts a new thread, which later replies can join.
        """
        open_threads = sorted(
            thread_id
            for thread_id in {self._resolve(c) for c in candidates}
            if self._size(thread_id) < jwz.MAX_THREAD_LENGTH
        )
        if not open_threads:
            return None
        keep, *others = open_threads  # the oldest thread survives a merge (§8 step 3)
        fitting: set[int] = set()
        for other in others:
            if self._size(keep) + self._size(other) < jwz.MAX_THREAD_LENGTH:
                self.sizes[keep] += self._size(other)
                fitting.add(other)
        if fitting:
            self._merge(keep, fitting)
        return keep

    def _merge(self, keep: int, others: set[int]) -> None:
        # SYNC.md §8 step 3: several threads matched, so they are one conversation.
        keep_row = (
            db.session.execute(select(thread_t).where(thread_t.c.id == keep)).mappings().one()
        )
        other_rows = (
            db.session.execute(select(thread_t).where(thread_t.c.id.in_(sorted(others))))
            .mappings()
            .all()
        )
        carry = {}
        for name in ("deal_id", "lead_id", "project_id"):
            if keep_row[name] is None:
                value = next((row[name] for row in other_rows if row[name] is not None), None)
                if value is not None:
                    carry[name] = value
        if any(row["shared"] for row in other_rows) and not keep_row["shared"]:
            carry["shared"] = True
        if carry:
            db.session.execute(update(thread_t).where(thread_t.c.id == keep).values(**carry))
        ids = sorted(others)
        db.session.execute(
            update(message_t).where(message_t.c.thread_id.in_(ids)).values(thread_id=keep)
        )
        db.session.execute(
            update(index_t).where(index_t.c.thread_id.in_(ids)).values(thread_id=keep)
        )
        db.session.execute(delete(thread_t).where(thread_t.c.id.in_(ids)))
        for other in others:
            self.merged[other] = keep
            self.batch_participants.setdefault(keep, set()).update(
                self.batch_participants.pop(other, set())
            )
        for table in (self.index, self.real, self.phantom):
            for key, value in table.items():
                if value in others:
                    table[key] = keep

    def _subject_match(self, item: Fetched) -> int | None:
        parsed = item.parsed
        if not self._fallback_possible(item):
            return None
        normalized = jwz.normalize_subject(parsed.subject)[:255]
        candidate = self.by_subject.get(normalized)
        if candidate is None:
            return None
        thread_id, last_date, thread_subject = candidate
        thread_id = self._resolve(thread_id)
        people = set(self.batch_participants.get(thread_id, set()))
        for from_address, to, cc in db.session.execute(_THREAD_PARTICIPANTS, {"t": thread_id}):
            people.add((from_address or "").lower())
            people.update((address or "").lower() for _n, address in (*(to or []), *(cc or [])))
        overlap = len((people - {""}) & _participants(parsed))
        when = parsed.date or item.internaldate
        # JWZ wants a "Re:" for subject-only joins; either side may carry it, so a reply
        # synced before its (unreferenced) original still converges (newest-first backfill).
        prefix = jwz.has_reply_prefix(parsed.subject) or jwz.has_reply_prefix(thread_subject)
        if jwz.subject_fallback_allowed(normalized, prefix, last_date, _aware(when), overlap):
            return thread_id
        return None

    def assign(self, item: Fetched) -> int:
        """Return the thread id for `item`, creating, joining or merging threads."""
        own, refs = self.ids[id(item)]
        if item.gm_thrid:
            known = self.gm_threads.get(item.gm_thrid)
            thread_id = self._join({known}) if known is not None else None
            if thread_id is None:
                thread_id = self._create(item)
                self.gm_threads[item.gm_thrid] = thread_id
        else:
            found = {self.index[i] for i in (*own, *refs) if i in self.index}
            if found:
                thread_id = self._join(found) or self._create(item)
            else:
                match = self._subject_match(item)
                thread_id = (self._join({match}) if match else None) or self._create(item)
        self.sizes[thread_id] = self._size(thread_id) + 1
        for msgid in own:
            self.index[msgid] = thread_id
            self.real[msgid] = thread_id
            self.phantom.pop(msgid, None)
        for msgid in refs:
            if msgid not in self.index:
                self.index[msgid] = thread_id
                self.phantom[msgid] = thread_id
        self.batch_participants.setdefault(thread_id, set()).update(_participants(item.parsed))
        return thread_id

    def flush(self) -> None:
        """Write the id table: own ids become real entries, new references phantoms."""
        account_id = self.ctx.account_id
        _bulk_insert(
            index_t,
            [
                {"account_id": account_id, "msgid": m, "thread_id": t, "is_phantom": False}
                for m, t in self.real.items()
            ],
            ("account_id", "msgid"),
            ("thread_id", "is_phantom"),
        )
        _bulk_insert(
            index_t,
            [
                {"account_id": account_id, "msgid": m, "thread_id": t, "is_phantom": True}
                for m, t in self.phantom.items()
            ],
            ("account_id", "msgid"),
        )


# --------------------------------------------------------------------------- batches


def parsed_columns(parsed: ParsedLike) -> dict[str, Any]:
    """The message columns read from the parsed mail (sync and mailsync/reparse.py)."""
    return {
        "message_id_header": jwz.normalize_msgid(parsed.message_id),
        "in_reply_to": jwz.normalize_msgid(parsed.in_reply_to),
        "references": [r for r in (jwz.normalize_msgid(x) for x in parsed.references) if r][-50:],
        "subject": (parsed.subject or "")[:255],
        "from_name": (parsed.from_name or "")[:255],
        "from_address": (parsed.from_address or "").lower()[:320],
        "to": [list(pair) for pair in parsed.to],
        "cc": [list(pair) for pair in parsed.cc],
        "bcc": [list(pair) for pair in parsed.bcc],
        "reply_to": [list(pair) for pair in parsed.reply_to],
        "date": parsed.date,
        "snippet": (parsed.snippet or "")[:300],
        "has_attachments": bool(parsed.has_attachments),
        "parse_error": parsed.parse_error,
    }


def _message_row(ctx: StoreContext, item: Fetched, thread_id: int) -> dict[str, Any]:
    parsed = item.parsed
    return {
        "account_id": ctx.account_id,
        "thread_id": thread_id,
        "dedup_key": item.dedup_key,
        "header_key": item.header_key,
        "gm_msgid": item.gm_msgid,
        **parsed_columns(parsed),
        "internaldate": item.internaldate,
        "size": item.size,
        "raw_sha256": item.raw_sha256,
        "is_placeholder": item.is_placeholder,
        "blocked": message_is_hidden(
            _person_addresses(parsed), ctx.own_addresses, ctx.blocked_entries
        ),
        "is_read": False,
        "is_flagged": False,
        "is_draft": False,
        "is_sent": False,
        "created_at": _now(),
    }


def _person_addresses(parsed: ParsedLike) -> set[str]:
    addresses = {parsed.from_address.lower()} if parsed.from_address else set()
    for _name, address in (*parsed.to, *parsed.cc, *parsed.reply_to):
        if address:
            addresses.add(address.lower())
    return addresses


def _with_sent_aliases(ctx: StoreContext, items: Sequence[Fetched]) -> StoreContext:
    """Learn the From addresses of mail in the Sent folder as the owner's own (aliases), so
    they are never matched to persons, counted for blocking or offered as contacts."""
    sent = set(
        db.session.scalars(
            select(MailFolder.id).where(
                MailFolder.account_id == ctx.account_id, MailFolder.role == "sent"
            )
        )
    )
    senders = {
        item.parsed.from_address
        for item in items
        if item.folder_id in sent and item.parsed.from_address
    }
    if not senders - ctx.own_addresses:
        return ctx
    own = linking.learn_own_addresses(ctx.owner_id, ctx.account_id, senders - ctx.own_addresses)
    return replace(ctx, own_addresses=ctx.own_addresses | own)


def store_batch(
    ctx: StoreContext,
    items: Sequence[Fetched],
    *,
    takeover: bool = True,
    log: RunLog | None = None,
) -> int:
    """Persist downloaded messages and their locations; return how many messages are new.

    Blobs must already be written. Idempotent: a message whose dedup key is stored is only
    linked to the new location. Pass takeover=False when the folder has no stale locations.
    New messages go into `log`. Does not commit.
    """
    if not items:
        return 0
    ctx = _with_sent_aliases(ctx, items)
    existing = existing_by_dedup_key(ctx.account_id, (item.dedup_key for item in items))
    fresh: dict[str, Fetched] = {}
    for item in items:
        if item.dedup_key not in existing and item.dedup_key not in fresh:
            fresh[item.dedup_key] = item
    if fresh:
        threader = _Threader(ctx, list(fresh.values()))
        thread_of = {key: threader.assign(item) for key, item in fresh.items()}
        threader.flush()
        rows = [
            _message_row(ctx, item, threader._resolve(thread_of[key]))
            for key, item in fresh.items()
        ]
        _bulk_insert(message_t, rows, ("account_id", "dedup_key"))
        existing = existing_by_dedup_key(ctx.account_id, (item.dedup_key for item in items))
        _link_persons(ctx, {existing[key]: item.parsed for key, item in fresh.items()})
        index_for_search({existing[key]: item.parsed for key, item in fresh.items()})
        if log is not None:
            for key, item in fresh.items():
                log.add("added", item.folder_id, item.uid, existing[key])
    location_rows = [
        _location_rows(
            item.folder_id, item.uid, existing[item.dedup_key], item.flags, item.gm_labels
        )
        for item in items
    ]
    displaced = _upsert_locations(location_rows, takeover=takeover)
    if fresh:
        if any(item.gm_labels for item in items):
            refresh_labels(existing[key] for key in fresh)  # the \Inbox label revives too
        revive_threads(existing[key] for key in fresh)
    refresh_messages({existing[item.dedup_key] for item in items} | displaced)
    mark_inbox_threads({existing[item.dedup_key] for item in items})
    if fresh:
        new_threads = set(
            db.session.scalars(
                select(message_t.c.thread_id).where(
                    message_t.c.id.in_([existing[key] for key in fresh])
                )
            )
        )
        if ctx.blocked_entries:
            linking.refresh_thread_blocked(Thread.id.in_(new_threads))
        if ctx.auto_link:
            linking.auto_link_threads(new_threads, ctx.owner_id)
    return len(fresh)


def index_for_search(parsed_by_message: dict[int, ParsedLike]) -> None:
    def participants(parsed: ParsedLike) -> str:
        pairs = [(parsed.from_name, parsed.from_address), *parsed.to, *parsed.cc]
        return " ".join(f"{name} {address}" for name, address in pairs)

    search.index_messages(
        db.session.connection(),
        (
            search.SearchDocument(
                message_id, parsed.subject, participants(parsed), parsed.text_body
            )
            for message_id, parsed in parsed_by_message.items()
        ),
    )


def _link_persons(ctx: StoreContext, parsed_by_message: dict[int, ParsedLike]) -> None:
    addresses_of = {
        message_id: _person_addresses(parsed) - ctx.own_addresses
        for message_id, parsed in parsed_by_message.items()
    }
    persons = linking.persons_for_addresses(
        {address for addresses in addresses_of.values() for address in addresses},
        visible_to=ctx.owner_id,
    )
    rows = [
        {"message_id": message_id, "person_id": persons[address]}
        for message_id, addresses in addresses_of.items()
        for address in addresses
        if address in persons
    ]
    unique = list({(r["message_id"], r["person_id"]): r for r in rows}.values())
    _bulk_insert(person_link_t, unique, ("message_id", "person_id"))


def folder_stored_counts(account_id: int) -> dict[int, int]:
    """Return {folder id: non-stale locations of non-deleted messages} for an account."""
    rows = db.session.execute(
        select(location_t.c.folder_id, db.func.count())
        .join(MailFolder.__table__, MailFolder.__table__.c.id == location_t.c.folder_id)
        .join(message_t, message_t.c.id == location_t.c.message_id)
        .where(
            MailFolder.__table__.c.account_id == account_id,
            location_t.c.stale.is_(False),
            message_t.c.deleted_at.is_(None),
        )
        .group_by(location_t.c.folder_id)
    )
    return dict(rows.all())


def replace_placeholder(message_id: int, raw_sha256: str, parsed: ParsedLike, size: int) -> None:
    """Turn a header-only placeholder into a full message once its body is stored (no commit).

    The blob must already be written (blob before row).
    """
    db.session.execute(
        update(message_t)
        .where(message_t.c.id == message_id)
        .values(
            raw_sha256=raw_sha256,
            is_placeholder=False,
            size=size,
            snippet=(parsed.snippet or "")[:300],
            has_attachments=bool(parsed.has_attachments),
            parse_error=parsed.parse_error,
        )
    )
    index_for_search({message_id: for_search(parsed)})


ANALYZE_AFTER_NEW = 2000  # a run that stored this many messages refreshes all statistics


def refresh_statistics(new_messages: int) -> None:
    """Refresh planner statistics after a sync run.

    Without sqlite_stat1 the planner walks low-selectivity indexes (bench/RESULTS.md "Web").
    A large backfill runs ANALYZE; otherwise the cheap PRAGMA optimize re-analyzes only the
    tables whose size changed a lot. PostgreSQL's autovacuum analyzes by itself, but only a
    minute or more later: a large backfill analyzes at once there too.
    """
    connection = db.session.connection()
    if db.engine.dialect.name != "sqlite":
        if new_messages >= ANALYZE_AFTER_NEW:
            connection.exec_driver_sql("ANALYZE")
        return
    if new_messages >= ANALYZE_AFTER_NEW:
        # A full ANALYZE takes ~0.2 s at 100,000 messages; analysis_limit's sampled
        # statistics misled the planner (e.g. counting unread in archived threads).
        connection.exec_driver_sql("ANALYZE")
    else:
        connection.exec_driver_sql("PRAGMA optimize")
