"""The conversation search index on PostgreSQL: one tsvector per conversation, GIN-indexed.

Words are split and folded here, in Python, the way SQLite's FTS5 tokenizer does it
(`unicode61 remove_diacritics 2`: runs of letters and digits, lowercased, without
diacritics), and handed to PostgreSQL as ready lexemes (a tsvector / tsquery literal), so
neither PostgreSQL's parser nor the database's locale or text search configuration changes
what matches: both databases find the same conversations for the same query.

A term of several words ("carla@customer.test") is a phrase of adjacent words, as in FTS5;
positions run on across a column and skip one between columns, so a phrase never spans two.
PostgreSQL keeps positions up to 16,383 and 256 per word: a phrase deeper in a very long
conversation may match a little more loosely than on SQLite. Single words always match.
"""

from __future__ import annotations

import re
import unicodedata

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT

from services import search
from services.search import (
    _THREAD_ID_MASK,
    MIN_PREFIX,
    SEARCH_ROWID_SQL,
    may_spell_out,
    spelled_out,
    text_after_prefix,
)

_WORD_RE = re.compile(r"[^\W_]+")
MAX_POSITION = 16_383  # PostgreSQL's largest tsvector position
MAX_POSITIONS_PER_WORD = 256  # and the most positions it keeps per lexeme
MAX_WORD_CHARS = 500  # a lexeme must stay under 2 KB
MAX_DOCUMENT_BYTES = 900_000  # a tsvector must stay under 1 MB

_NOTE_STALE = (
    "IF {m}.thread_id IS NOT NULL THEN "
    "INSERT INTO thread_search_stale (search_rowid) VALUES (" + SEARCH_ROWID_SQL + ") "
    "ON CONFLICT DO NOTHING; END IF;"
)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS thread_search_stale (search_rowid BIGINT PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS thread_search_pending (search_rowid BIGINT PRIMARY KEY)",
    # As the SQLite triggers: note the conversations whose live messages changed.
    "CREATE OR REPLACE FUNCTION thread_search_note_stale() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_OP = 'DELETE' THEN " + _NOTE_STALE.format(m="OLD") + " RETURN NULL; END IF; "
    "IF OLD.thread_id IS DISTINCT FROM NEW.thread_id "
    "OR (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL) "
    "OR OLD.blocked <> NEW.blocked THEN "
    + _NOTE_STALE.format(m="OLD")
    + " "
    + _NOTE_STALE.format(m="NEW")
    + " END IF; RETURN NULL; END $$",
    "CREATE OR REPLACE TRIGGER message_thread_search_update "
    "AFTER UPDATE OF thread_id, deleted_at, blocked ON message "
    "FOR EACH ROW EXECUTE FUNCTION thread_search_note_stale()",
    "CREATE OR REPLACE TRIGGER message_thread_search_delete AFTER DELETE ON message "
    "FOR EACH ROW EXECUTE FUNCTION thread_search_note_stale()",
)


def words(value: str) -> list[str]:
    """The words of `value` as FTS5's unicode61 tokenizer (remove_diacritics 2) yields them."""
    found = []
    for word in _WORD_RE.findall(unicodedata.normalize("NFC", value)):
        decomposed = unicodedata.normalize("NFD", word.lower())
        folded = "".join(char for char in decomposed if not unicodedata.combining(char))
        if folded:
            found.append(folded[:MAX_WORD_CHARS])
    return found


def _quote(word: str) -> str:
    # Words are letters and digits only; quoting still keeps any lexeme literal.
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def tsvector_literal(columns: list[str]) -> str:
    """A tsvector of the columns' words with their positions (see the module docstring)."""
    return _literal(_positions(columns))


def _literal(positions: dict[str, list[int]]) -> str:
    return " ".join(
        f"{_quote(word)}:{','.join(map(str, places))}" for word, places in positions.items()
    )


def _positions(columns: list[str]) -> dict[str, list[int]]:
    """Each word of the columns with its positions, as the tsvector keeps them."""
    positions: dict[str, list[int]] = {}
    position, size = 0, 0
    for value in columns:
        for word in words(value):
            position = min(position + 1, MAX_POSITION)
            found = positions.get(word)
            if found is None:
                size += len(word.encode()) + 8
                if size > MAX_DOCUMENT_BYTES:
                    continue
                positions[word] = [position]
            elif len(found) < MAX_POSITIONS_PER_WORD and found[-1] != position:
                found.append(position)
        position = min(position + 1, MAX_POSITION)  # no phrase across two columns
    return positions


DOCUMENT_INDEX = "ix_thread_search_document"
# Every indexed word a prefix may be spelled out into (search.may_spell_out), for
# match_expression. Words are never removed: one no document has any more matches nothing.
VOCABULARY_TABLE = (
    'CREATE TABLE IF NOT EXISTS thread_search_vocabulary (word TEXT COLLATE "C" PRIMARY KEY)'
)
# The most a search reads of GIN's pending list between merges (kB; PostgreSQL's default is
# 4,096): a long first sync adds entries faster than a run's end merges them.
PENDING_LIST_KB = 256


class PostgresIndex:
    def create(self, connection: Connection) -> bool:
        new = not connection.execute(text("SELECT to_regclass('thread_search')")).scalar()
        connection.execute(
            text(
                "CREATE TABLE IF NOT EXISTS thread_search ("
                "search_rowid BIGINT PRIMARY KEY, document TSVECTOR NOT NULL)"
            )
        )
        connection.execute(
            text(
                f"CREATE INDEX IF NOT EXISTS {DOCUMENT_INDEX} ON thread_search USING GIN (document)"
            )
        )
        for statement in (*_SCHEMA, VOCABULARY_TABLE):
            connection.execute(text(statement))
        return new

    def merge_pending(self, connection: Connection) -> None:
        # GIN queues new entries in a pending list that every search reads through: at
        # 300 pages (what a sync of 1,500 conversations left) a search word cost 25 ms
        # instead of 2. The sync's worker merges them into the index after a run.
        connection.execute(text(f"SELECT gin_clean_pending_list('{DOCUMENT_INDEX}'::regclass)"))

    def delete_rows(self, connection: Connection, rowids: list[int]) -> None:
        connection.execute(
            text("DELETE FROM thread_search WHERE search_rowid = ANY(:rowids)").bindparams(
                bindparam("rowids", type_=ARRAY(BIGINT))
            ),
            {"rowids": rowids},
        )

    def write_rows(self, connection: Connection, documents: list[dict[str, object]]) -> None:
        rows, long_words = [], set()
        for document in documents:
            positions = _positions(
                [document["subject"], document["participants"], document["body"]]
            )
            long_words.update(word for word in positions if may_spell_out(word))
            rows.append({"rowid": document["rowid"], "document": _literal(positions)})
        # An upsert: another transaction may have rewritten the same conversation meanwhile.
        connection.execute(
            text(
                "INSERT INTO thread_search (search_rowid, document) "
                "VALUES (:rowid, CAST(:document AS tsvector)) "
                "ON CONFLICT (search_rowid) DO UPDATE SET document = excluded.document"
            ),
            rows,
        )
        if long_words:  # sorted: two writers then take the new words' locks in one order
            connection.execute(
                text(
                    "INSERT INTO thread_search_vocabulary (word) "
                    "SELECT unnest(CAST(:words AS text[])) ON CONFLICT DO NOTHING"
                ),
                {"words": sorted(long_words)},
            )

    def match_expression(self, terms: list[str], connection: Connection) -> str | None:
        """A tsquery literal: every term required, a term of several words a phrase.

        A term's last word matches the words it starts (as you type). When that word is
        longer than LONGEST_PREFIX_INDEX and starts at most MAX_EXPANDED_WORDS indexed
        words, they are spelled out (`'example' | 'examples'`) instead of a prefix
        (`'example':*`): GIN collects every entry of a prefix before it intersects, so a
        participant's address, whose last word is in every conversation, cost 15 ms at
        1,000,000 messages; exact words are skipped through (1.6 ms).
        """
        parts = []
        for term in terms:
            found = words(term)
            if not found:
                continue  # FTS5 ignores a term with no word in it, too
            quoted = [_quote(word) for word in found]
            if len(term) >= MIN_PREFIX:
                endings = self._words_starting(connection, found[-1])
                if endings is None:
                    quoted[-1] += ":*"
                else:
                    quoted[-1] = "(" + " | ".join(map(_quote, endings)) + ")"
            parts.append("(" + " <-> ".join(quoted) + ")")
        return " & ".join(parts) if parts else None

    @staticmethod
    def _words_starting(connection: Connection, word: str) -> list[str] | None:
        """The words `word` is spelled out into (search.spelled_out), or None to keep the
        prefix match."""
        if not may_spell_out(word):
            return None
        found = (
            connection.execute(
                text(
                    "SELECT word FROM thread_search_vocabulary "
                    "WHERE word >= :word AND word < :after ORDER BY word LIMIT :limit"
                ),
                {
                    "word": word,
                    "after": text_after_prefix(word),
                    "limit": search.MAX_EXPANDED_WORDS + 1,
                },
            )
            .scalars()
            .all()
        )
        return spelled_out(word, list(found))

    def matching_threads_sql(self) -> str:
        return (
            f"SELECT search_rowid & {_THREAD_ID_MASK} AS thread_id FROM thread_search "
            "WHERE document @@ CAST(:match AS tsquery) "
            "AND search_rowid BETWEEN :first AND :last"
        )

    def first_matching_ids(self, connection: Connection, bound: dict) -> list[int]:
        listed = connection.execute(
            text(
                f"SELECT array_agg(thread_id) FROM ({self.matching_threads_sql()} LIMIT :limit)"
                " AS matches"
            ),
            bound,
        ).scalar()
        return listed or []
