"""Full-text search over mail, in SQLite FTS5.

Two tables:
- `message_text`: one row per message with its subject, participants and body text, as
  sync extracted them (`index_messages`). A plain table: the text conversations are
  indexed from, without parsing the stored MIME again.
- `thread_search`: the FTS5 index, one row per conversation, the text of its live messages
  (not deleted, not blocked) together. A word maps straight to the conversations that
  contain it (a common word is in ~20,000 conversations rather than ~38,000 messages at
  100,000 messages), and a conversation matches when its messages together hold every
  term. Its row id is `account_id << 32 | thread_id`, so a search is scoped to one mailbox
  by a row id range, which FTS5 seeks to directly.

Keeping `thread_search` current: triggers on `message` note the conversations whose live
messages changed (added to a thread, moved between threads, deleted, undeleted, blocked,
unblocked) in `thread_search_stale`, and `index_messages` notes those whose text arrived.
Before any session commits, `refresh_thread_index` rewrites the noted rows, so the index
is current in the same transaction, whichever code path changed the mail. A sync pass puts
its rewrites off for a few seconds at a time (`thread_index_every`).

User input never reaches FTS5 query syntax directly (`match_expression` quotes every term).

Two implementations of the index itself, picked by the connection's database: FTS5 on
SQLite (`Fts5Index`, below) and PostgreSQL full-text search (services/search_postgres.py:
a tsvector per conversation with a GIN index). The tables around it (`message_text`, the
stale lists) and the matching rule are shared: a conversation matches when its messages
together hold every term, terms of MIN_PREFIX letters or more also match longer words.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, event, inspect, text
from sqlalchemy.orm import Session

from services.request_memo import remembered

MAX_INDEXED_BODY = 20_000  # characters of one message's body
MAX_THREAD_BODY = 200_000  # characters of a conversation's bodies, newest message first
MIN_PREFIX = 3  # shortest term that also matches longer words (as you type)
LONGEST_PREFIX_INDEX = 4  # thread_search's prefix = '3 4'
MAX_EXPANDED_WORDS = 16  # words a longer prefix is spelled out into (Fts5Index._words_starting)
# thread_search keeps prefix indexes of 3 and 4 letters: the first letters typed expand to
# the most words ("pro": 3.5 -> 1.0 ms at 38,000 conversations; rows take ~3x to write).
ACCOUNT_SHIFT = 32  # thread_search row id = account_id << ACCOUNT_SHIFT | thread_id
_THREAD_ID_MASK = (1 << ACCOUNT_SHIFT) - 1
_CHUNK = 500
_TERM_RE = re.compile(r"[\w@.+'-]+", re.UNICODE)
_WORD_CHAR_RE = re.compile(r"[^\W_]")  # a letter or digit: what the tokenizer keeps
_ASCII_WORD_RE = re.compile(r"[a-z0-9]+")
log = logging.getLogger("threadline.search")
_TOKENIZE = "tokenize = 'unicode61 remove_diacritics 2'"


@dataclass(frozen=True)
class SearchDocument:
    message_id: int
    subject: str
    participants: str
    body: str


def search_rowid(account_id: int, thread_id: int) -> int:
    """The `thread_search` row id of a conversation (as `SEARCH_ROWID_SQL` spells it)."""
    return account_id << ACCOUNT_SHIFT | thread_id


# A message's conversation row, as an SQL expression over a message row (old. or new.).
# CAST: on PostgreSQL an INTEGER shifted by 32 bits overflows.
SEARCH_ROWID_SQL = (
    "((CAST({m}.account_id AS BIGINT) << " + str(ACCOUNT_SHIFT) + ") | {m}.thread_id)"
)
_MESSAGE_TEXT = (
    "CREATE TABLE IF NOT EXISTS message_text ("
    "message_id INTEGER PRIMARY KEY REFERENCES message (id) ON DELETE CASCADE, "
    "subject TEXT NOT NULL, participants TEXT NOT NULL, body TEXT NOT NULL)"
)


class Fts5Index:
    """The conversation index in SQLite: an FTS5 table whose row id is the search row id."""

    _NOTE_STALE = (
        "INSERT OR IGNORE INTO thread_search_stale (search_rowid) "
        "SELECT " + SEARCH_ROWID_SQL + " WHERE {m}.thread_id IS NOT NULL;"
    )
    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS thread_search_stale (search_rowid INTEGER PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS thread_search_pending (search_rowid INTEGER PRIMARY KEY)",
        "CREATE TRIGGER IF NOT EXISTS message_thread_search_update "
        "AFTER UPDATE OF thread_id, deleted_at, blocked ON message "
        "WHEN old.thread_id IS NOT new.thread_id "
        "OR (old.deleted_at IS NULL) != (new.deleted_at IS NULL) "
        "OR old.blocked != new.blocked "
        "BEGIN " + _NOTE_STALE.format(m="old") + " " + _NOTE_STALE.format(m="new") + " END",
        "CREATE TRIGGER IF NOT EXISTS message_thread_search_delete AFTER DELETE ON message "
        "BEGIN " + _NOTE_STALE.format(m="old") + " END",
    )

    def create(self, connection: Connection) -> bool:
        """Create the index, its stale lists and triggers when missing; True when new.

        A database from before `thread_search` gets it built from the per-message FTS5
        table `message_search` of that time, which becomes `message_text`.
        """
        if inspect(connection).has_table("message_search"):
            connection.execute(
                text(
                    "INSERT OR IGNORE INTO message_text "
                    "(message_id, subject, participants, body) "
                    "SELECT rowid, subject, participants, body FROM message_search "
                    "WHERE rowid IN (SELECT id FROM message)"
                )
            )
            connection.execute(text("DROP TABLE message_search"))
            # The delete trigger of that time removed message_search rows: recreated below.
            connection.execute(text("DROP TRIGGER IF EXISTS message_thread_search_delete"))
        new = not inspect(connection).has_table("thread_search")
        if new:
            connection.execute(
                text(
                    "CREATE VIRTUAL TABLE thread_search USING fts5("
                    f"subject, participants, body, {_TOKENIZE}, prefix = '3 4')"
                )
            )
        for statement in self._SCHEMA:
            connection.execute(text(statement))
        return new

    def delete_rows(self, connection: Connection, rowids: list[int]) -> None:
        connection.execute(
            text("DELETE FROM thread_search WHERE rowid = :rowid"),
            [{"rowid": rowid} for rowid in rowids],
        )

    def write_rows(self, connection: Connection, documents: list[dict[str, object]]) -> None:
        """Insert conversation rows (their old rows were deleted in this transaction)."""
        connection.execute(
            text(
                "INSERT INTO thread_search (rowid, subject, participants, body) "
                "VALUES (:rowid, :subject, :participants, :body)"
            ),
            documents,
        )

    def match_expression(self, terms: list[str], connection: Connection) -> str | None:
        parts = []
        for term in terms:
            if not _WORD_CHAR_RE.search(term):
                continue  # no word in it ("@@"): FTS5 would read it as a phrase that never matches
            quoted = term.replace('"', '""')
            if len(term) < MIN_PREFIX:
                parts.append(f'"{quoted}"')
            else:
                parts.append(self._words_starting(connection, term) or f'"{quoted}"*')
        # FTS5 reads "a" (b) as a syntax error: the AND is spelled out.
        return " AND ".join(parts) if parts else None

    @staticmethod
    def _words_starting(connection: Connection, term: str) -> str | None:
        """`term` as FTS5 would prefix-match it, with its last word spelled out into the
        indexed words it starts: an OR of exact words (or of phrases, for a term of several
        words such as an address). None when the term is not plain ASCII, or its last word
        is short enough for the prefix indexes (prefix = '3 4'), or too many words start so.

        FTS5 answers a longer prefix ("proposal"*) by merging the whole doclist of every
        word it starts, whatever rowid range the query asks for: 6-13 ms per MATCH at
        1,000,000 messages, and a search page runs several (one per mailbox, one per walk
        chunk). Exact words are read lazily within the range (0.1-0.8 ms), and listing the
        words takes a seek each in fts5vocab's instance table (0.2 ms for "proposal").
        """
        lowered = term.lower()
        if not lowered.isascii():
            return None  # the tokenizer's folding of other text is not redone here
        words = _ASCII_WORD_RE.findall(lowered)  # as unicode61 splits ASCII text
        if not words or not may_spell_out(words[-1]):
            return None
        if not connection.info.get("thread_search_words"):
            connection.execute(
                text(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS temp.thread_search_words "
                    "USING fts5vocab(main, thread_search, 'instance')"
                )
            )
            connection.info["thread_search_words"] = True
        last = words[-1]
        found: list[str] = []
        at, after = last, text_after_prefix(last)
        while len(found) <= MAX_EXPANDED_WORDS:
            # One word at a time, each a seek: "term > x" would read every instance of x.
            word = connection.execute(
                text(
                    "SELECT term FROM temp.thread_search_words "
                    "WHERE term >= :at AND term < :after LIMIT 1"
                ),
                {"at": at, "after": after},
            ).scalar()
            if word is None:
                break
            found.append(word)
            at = word + "\x00"  # the least text after `word`: the next word, if any
        endings = spelled_out(last, found)
        if endings is None:
            return None
        lead = "".join(word + " " for word in words[:-1])
        return "(" + " OR ".join(f'"{lead}{ending}"' for ending in endings) + ")"

    def merge_pending(self, connection: Connection) -> None:
        pass  # FTS5 merges its segments as it writes (automerge)

    def matching_threads_sql(self) -> str:
        return (
            f"SELECT rowid & {_THREAD_ID_MASK} AS thread_id FROM thread_search "
            "WHERE thread_search MATCH :match AND rowid BETWEEN :first AND :last"
        )

    def first_matching_ids(self, connection: Connection, bound: dict) -> list[int]:
        listed = connection.execute(
            text(
                f"SELECT group_concat(thread_id) FROM ({self.matching_threads_sql()} LIMIT :limit)"
            ),
            bound,
        ).scalar()
        return [int(thread_id) for thread_id in listed.split(",")] if listed else []


def may_spell_out(word: str) -> bool:
    """Tell whether a term's last word is long enough to be spelled out into the indexed
    words it starts (shorter ones start too many; FTS5 has prefix indexes for them)."""
    return len(word) > LONGEST_PREFIX_INDEX


def text_after_prefix(word: str) -> str:
    """The least text after every text that starts with `word`, in code point order (which
    both databases' word lists sort by: UTF-8 bytes): the end of the range to list."""
    last = ord(word[-1])
    if last == 0x10FFFF:
        return word + chr(0x10FFFF)  # no code point follows; no word has one (not a letter)
    following = 0xE000 if 0xD7FF <= last < 0xE000 else last + 1  # surrogates are no text
    return word[:-1] + chr(following)


def spelled_out(last: str, found: list[str]) -> list[str] | None:
    """The words `last` is spelled out into, given the indexed words it starts (`found`,
    listed up to MAX_EXPANDED_WORDS + 1): None when there are too many (an OR of many
    words costs more than the prefix match); the word itself when none (it matches
    nothing, as the prefix would)."""
    if len(found) > MAX_EXPANDED_WORDS:
        return None
    return found or [last]


def search_index(connection: Connection) -> Fts5Index:
    """The conversation index implementation of the connection's database (same methods)."""
    if connection.dialect.name == "postgresql":
        from services.search_postgres import PostgresIndex

        return PostgresIndex()
    return Fts5Index()


def ensure_search_index(connection: Connection) -> None:
    """Create the search tables (and triggers) when missing (idempotent), on either database."""
    connection.execute(text(_MESSAGE_TEXT))
    if search_index(connection).create(connection):
        connection.execute(
            text(
                "INSERT INTO thread_search_stale (search_rowid) "
                "SELECT DISTINCT " + SEARCH_ROWID_SQL.format(m="message") + " FROM message "
                "WHERE thread_id IS NOT NULL ON CONFLICT DO NOTHING"
            )
        )
    refresh_thread_index(connection, pending=True)


def index_messages(connection: Connection, documents: Iterable[SearchDocument]) -> None:
    """Store or replace the text of `documents` (inside the caller's transaction).

    Their conversations' index rows are rewritten before the transaction commits.
    """
    rows = [
        {
            "id": doc.message_id,
            # (No NUL: PostgreSQL text cannot hold it, and it is no word.)
            "subject": (doc.subject or "").replace("\x00", ""),
            "participants": (doc.participants or "").replace("\x00", ""),
            "body": (doc.body or "")[:MAX_INDEXED_BODY].replace("\x00", ""),
        }
        for doc in documents
    ]
    if not rows:
        return
    connection.execute(
        text(
            "INSERT INTO message_text (message_id, subject, participants, body) "
            "VALUES (:id, :subject, :participants, :body) "
            "ON CONFLICT (message_id) DO UPDATE SET subject = excluded.subject, "
            "participants = excluded.participants, body = excluded.body"
        ),
        rows,
    )
    _note_threads_of(connection, [row["id"] for row in rows])


def remove_from_index(connection: Connection, message_ids: Iterable[int]) -> None:
    """Drop the text of messages deleted in Threadline but kept as rows (a message row
    deleted for good takes its text with it; its conversation's index row follows through
    the triggers either way)."""
    ids = list(message_ids)
    if ids:
        connection.execute(
            text("DELETE FROM message_text WHERE message_id = :id"), [{"id": i} for i in ids]
        )
        _note_threads_of(connection, ids)


def _note_threads_of(connection: Connection, message_ids: list[int]) -> None:
    for start in range(0, len(message_ids), _CHUNK):
        chunk = message_ids[start : start + _CHUNK]
        connection.execute(_NOTE_THREADS_OF_MESSAGES, {"ids": chunk})


_NOTE_THREADS_OF_MESSAGES = text(
    "INSERT INTO thread_search_stale (search_rowid) "
    "SELECT " + SEARCH_ROWID_SQL.format(m="message") + " FROM message "
    "WHERE id IN :ids AND thread_id IS NOT NULL ON CONFLICT DO NOTHING"
).bindparams(bindparam("ids", expanding=True))

_LIVE_TEXT = text(
    """
    SELECT m.account_id, m.thread_id, s.subject, s.participants, s.body
    FROM message m JOIN message_text s ON s.message_id = m.id
    WHERE m.thread_id IN :ids AND m.deleted_at IS NULL AND NOT m.blocked
    ORDER BY m.thread_id, coalesce(m.date, m.internaldate) DESC NULLS LAST, m.id DESC
    """
).bindparams(bindparam("ids", expanding=True))


def refresh_thread_index(connection: Connection, *, pending: bool = False) -> int:
    """Rewrite the `thread_search` rows noted as stale (and, with `pending`, those a sync
    pass put off); return how many were rewritten."""
    tables = (
        ("thread_search_stale", "thread_search_pending") if pending else ("thread_search_stale",)
    )
    stale = sorted(
        {
            row[0]
            for table in tables
            for row in connection.execute(text(f"DELETE FROM {table} RETURNING *"))
        }
    )
    index = search_index(connection)
    for start in range(0, len(stale), _CHUNK):
        chunk = stale[start : start + _CHUNK]
        index.delete_rows(connection, chunk)
        found = connection.execute(
            _LIVE_TEXT, {"ids": sorted({rowid & _THREAD_ID_MASK for rowid in chunk})}
        )
        documents = [
            _thread_document(key, list(messages))
            for key, messages in itertools.groupby(found, key=lambda row: (row[0], row[1]))
        ]
        if documents:
            index.write_rows(connection, documents)
    return len(stale)


def _thread_document(key: tuple[int, int], messages: list) -> dict[str, object]:
    """One conversation's row from its live messages' text, newest message first."""
    account_id, thread_id = key
    subjects = dict.fromkeys(row[2] for row in messages if row[2])
    participants = dict.fromkeys(row[3] for row in messages if row[3])
    body, size = [], 0
    for row in messages:
        if row[4] and size < MAX_THREAD_BODY:
            body.append(row[4][: MAX_THREAD_BODY - size])
            size += len(body[-1])
    return {
        "rowid": search_rowid(account_id, thread_id),
        "subject": "\n".join(subjects),
        "participants": "\n".join(participants),
        "body": "\n".join(body),
    }


_EVERY, _DUE = "thread_index_every", "thread_index_due"


def _refresh_before_commit(session: Session) -> None:
    session.flush()  # ORM changes reach the triggers first
    connection = session.connection()
    every = session.info.get(_EVERY)
    if every is not None and time.monotonic() >= session.info[_DUE]:
        session.info[_DUE] = time.monotonic() + every
        refresh_thread_index(connection, pending=True)
    elif connection.execute(text("SELECT 1 FROM thread_search_stale LIMIT 1")).first():
        # (Checked first: a DELETE takes SQLite's write lock even when it finds no row.)
        if every is None:
            refresh_thread_index(connection)
        else:
            # Put off, in a table of its own: another process's next commit rewrites only
            # the rows its own changes made stale, not this pass's backlog.
            connection.execute(text(_PUT_OFF))
            connection.execute(text("DELETE FROM thread_search_stale"))


_PUT_OFF = (
    "INSERT INTO thread_search_pending SELECT search_rowid FROM thread_search_stale "
    "WHERE true ON CONFLICT DO NOTHING"  # (WHERE: SQLite's parser needs it before ON CONFLICT)
)


def keep_thread_index_current(session_class: type[Session]) -> None:
    """Rewrite stale conversation rows before every commit of a `session_class` session."""
    if not event.contains(session_class, "before_commit", _refresh_before_commit):
        event.listen(session_class, "before_commit", _refresh_before_commit)


@contextmanager
def thread_index_every(session: Session, seconds: float) -> Iterator[None]:
    """Within, the session's commits rewrite stale conversation rows at most every `seconds`,
    and the last one on the way out.

    A sync pass commits every batch of messages, and a backfill (newest first) adds a long
    conversation's messages over many batches: rewriting its whole row at each of those
    commits would cost time growing with the square of its length. Search lags the stored
    mail by at most `seconds` meanwhile. Rows put off by a pass that died are rewritten by
    the end of the next pass (or at start-up).
    """
    session.info[_EVERY] = seconds
    session.info[_DUE] = time.monotonic() + seconds
    try:
        yield
    finally:
        session.info.pop(_EVERY, None)
        session.info.pop(_DUE, None)
        try:
            refresh_thread_index(session.connection(), pending=True)
            session.commit()
        except Exception:
            session.rollback()  # left noted as stale: the next commit rewrites them
            log.exception("could not bring the conversation search index up to date")


def match_expression(connection: Connection, query: str) -> str | None:
    """Turn what a user typed into a safe query of the connection's search index: every
    term quoted, prefix-matched, all of them required.

    Terms shorter than MIN_PREFIX match whole words only: "p"* expands to every word
    starting with p, which costs ~100 ms at 100,000 messages and finds nothing useful.

    Returns None when the query has no searchable term.
    """
    terms = _TERM_RE.findall(query or "")[:12]
    terms = [term.strip("'.-") for term in terms if term.strip("'.-")]
    if not terms:
        return None
    # Once per request: a page searches each of the user's mailboxes with the same query.
    return remembered(
        "search_match", query, lambda: search_index(connection).match_expression(terms, connection)
    )


def matching_threads_sql(connection: Connection) -> str:
    """SQL selecting the ids of one mailbox's conversations matching :match.

    Bind :match to a match_expression result and :first, :last to `account_rows(account_id)`.
    """
    return search_index(connection).matching_threads_sql()


def first_matching_ids(
    connection: Connection, match: str, rows: Mapping[str, int], *, limit: int
) -> list[int]:
    """Return the ids of up to `limit` conversations matching `match` (a match_expression
    result) within the search row id range `rows` (account_rows).

    The ids come back as one value (a list in SQL): read row by row through SQLAlchemy's
    result they cost about 0.7 microseconds each, 1.5 ms for the 2,000 a common word gives.
    """
    bound = {"match": match, "limit": limit, **rows}
    return search_index(connection).first_matching_ids(connection, bound)


def merge_pending_entries(connection: Connection) -> None:
    """Fold index entries written since the last merge into the search index proper, where
    searches find them fastest (the worker does it after a sync run that stored mail)."""
    search_index(connection).merge_pending(connection)


def account_rows(account_id: int) -> dict[str, int]:
    """The `thread_search` row id range of one mailbox, as parameters :first and :last."""
    return {
        "first": search_rowid(account_id, 0),
        "last": search_rowid(account_id, _THREAD_ID_MASK),
    }


def is_search_table(name: str) -> bool:
    """Tell whether `name` is one of the search tables (not models: migrations skip them).

    FTS5 keeps its index in shadow tables named after the virtual table (thread_search_data...).
    """
    return name == "message_text" or name.startswith("thread_search")
