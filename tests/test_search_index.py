"""The FTS5 conversation index: safe queries, prefix matching, replace and remove."""

from pathlib import Path

import pytest
from sqlalchemy import text

from extensions import db
from services.search import (
    SearchDocument,
    account_rows,
    first_matching_ids,
    index_messages,
    match_expression,
    matching_threads_sql,
    remove_from_index,
)
from tests.conftest import ON_POSTGRESQL


@pytest.fixture
def store(make_user, make_stored_account, make_stored_message):
    """Store a message with the given text in a thread of its own; return its thread id."""
    account = make_stored_account(make_user())

    def factory(subject: str, participants: str, body: str, *, message=None) -> int:
        message = message or make_stored_message(account, subject=subject)
        index_messages(
            db.session.connection(), [SearchDocument(message.id, subject, participants, body)]
        )
        db.session.commit()
        return message

    factory.account = account
    return factory


def search(store, query):
    expression = match_expression(db.session.connection(), query)
    if expression is None:
        return []
    rows = db.session.execute(
        text(matching_threads_sql(db.session.connection())),
        {"match": expression, **account_rows(store.account.id)},
    )
    return sorted(row[0] for row in rows)


def test_the_first_matching_ids_are_the_matches_read_row_by_row(store):
    """first_matching_ids reads the ids as one value (a list in SQL): the same ids as the
    rows of the plain query, at most `limit` of them, none when nothing matches."""
    threads = {store(f"Walnut order {n}", "", "crate").thread_id for n in range(7)}
    store("Kiwi order", "", "crate")
    connection = db.session.connection()
    rows = account_rows(store.account.id)
    walnut = match_expression(connection, "walnut")
    assert sorted(first_matching_ids(connection, walnut, rows, limit=100)) == sorted(threads)
    assert sorted(first_matching_ids(connection, walnut, rows, limit=100)) == search(
        store, "walnut"
    )
    some = first_matching_ids(connection, walnut, rows, limit=3)
    assert len(some) == 3 and set(some) <= threads
    assert (
        len(first_matching_ids(connection, match_expression(connection, "crate"), rows, limit=100))
        == 8
    )
    assert (
        first_matching_ids(connection, match_expression(connection, "zebra"), rows, limit=5) == []
    )
    other = account_rows(store.account.id + 1)  # another mailbox's range: none of these
    assert first_matching_ids(connection, walnut, other, limit=100) == []


def test_prefix_search_over_subject_participants_and_body(store):
    first = store("Quarterly proposal", "carla@customer.test Carla Diaz", "Pricing attached")
    second = store("Lunch", "bo@team.test", "See you at noon. Résumé inside.")
    assert search(store, "propo") == [first.thread_id]
    assert search(store, "carla@customer") == [first.thread_id]
    assert search(store, "resume") == [second.thread_id]
    assert search(store, "noon lunch") == [second.thread_id]
    assert search(store, "nothing-like-this") == []


def test_short_terms_match_whole_words_only(store):
    first = store("Proposal", "", "Meet at the pub")
    second = store("Pricing", "", "Plan B")
    assert search(store, "pro") == [first.thread_id]  # three letters: a prefix
    assert search(store, "prop") == [first.thread_id]  # four letters: a prefix
    assert search(store, "pr") == []  # two letters: only the word "pr"
    assert search(store, "b") == [second.thread_id]  # a one-letter word still matches itself


def test_hostile_query_syntax_never_errors(store):
    store("a b", "", "NEAR OR AND")
    for query in ['"', "NEAR(", "a OR", "*", "subject:x", "-x", "(((", "'; DROP TABLE x", "\r\n"]:
        search(store, query)  # no OperationalError
    assert match_expression(db.session.connection(), "   ") is None


def test_reindex_replaces_and_remove_drops(store):
    message = store("old subject", "", "")
    store("new subject", "", "", message=message)
    assert search(store, "old") == [] and search(store, "new") == [message.thread_id]
    remove_from_index(db.session.connection(), [message.id])
    db.session.commit()
    assert search(store, "new") == []


@pytest.mark.sqlite_only("compares with FTS5's own prefix match")
@pytest.mark.parametrize("most_words", [16, 2], ids=["spelled out", "too many: a prefix"])
def test_longer_prefixes_find_what_a_plain_prefix_match_finds(store, monkeypatch, most_words):
    """On SQLite a term longer than the prefix indexes is spelled out into the indexed words
    it starts (an OR of exact words, cheap within a rowid range); it must find exactly what
    FTS5's own prefix match finds, also for words it does not spell out (not plain ASCII)
    and when too many words start with it."""
    from services import search

    monkeypatch.setattr(search, "MAX_EXPANDED_WORDS", most_words)
    texts = [
        "proposal", "proposals attached", "Proposál signed", "propose", "PROPOSALZ9",
        "proposal-draft", "unrelated words", "prop", "proposa", "Zürich proposals",
    ]  # fmt: skip
    threads = [store(f"Mail {n}", "ann@x.test", body).thread_id for n, body in enumerate(texts)]
    queries = [
        "propos", "proposa", "proposal", "proposals", "proposalz", "PROPOSAL", "proposál",
        "zurich", "zürich", "proposal draft", "missingword", "prop", "pro",
        "ann@x.test", "x.tes", "proposal-drafts", "proposal-dra", "unrelated-wor",
        "proposals-attac", "unrelated-attac", "mail-1", "signed.propos",
    ]  # fmt: skip
    for query in queries:
        words = query.split()  # each a term; FTS5 splits a term's own words (a phrase)
        plain = " ".join(f'"{w}"*' if len(w) >= search.MIN_PREFIX else f'"{w}"' for w in words)
        expected = sorted(
            row[0]
            for row in db.session.execute(
                text(matching_threads_sql(db.session.connection())),
                {"match": plain, **account_rows(store.account.id)},
            )
        )
        assert search_threads(store, query) == expected, query
    assert search_threads(store, "proposal") != [] and len(threads) == len(texts)


def search_threads(store, query):
    return search(store, query)


@pytest.mark.skipif(not ON_POSTGRESQL, reason="compares with PostgreSQL's own prefix match")
@pytest.mark.parametrize("most_words", [16, 2], ids=["spelled out", "too many: a prefix"])
def test_on_postgresql_longer_prefixes_find_what_a_plain_prefix_match_finds(
    store, monkeypatch, most_words
):
    """On PostgreSQL a term whose last word is longer than LONGEST_PREFIX_INDEX is spelled
    out into the indexed words it starts (thread_search_vocabulary); it must find exactly
    what the tsquery prefix (:*) finds, for accented and other text too, and when too many
    words start with it."""
    from services import search as search_rules
    from services import search_postgres
    from services.search_postgres import _quote, words

    monkeypatch.setattr(search_rules, "MAX_EXPANDED_WORDS", most_words)
    texts = [
        "proposal", "proposals attached", "Proposál signed", "propose", "PROPOSALZ9",
        "proposal-draft", "unrelated words", "prop", "proposa", "Zürich proposals",
        "Zürichsee Angebot", "zurichtal", "naïve-résumé",
    ]  # fmt: skip
    threads = [store(f"Mail {n}", "ann@x.test", body).thread_id for n, body in enumerate(texts)]
    queries = [
        "propos", "proposa", "proposal", "proposals", "proposalz", "PROPOSAL", "proposál",
        "zurich", "zürich", "zürichs", "proposal draft", "missingword", "prop", "pro",
        "ann@x.test", "x.tes", "proposal-drafts", "proposal-dra", "unrelated-wor",
        "proposals-attac", "unrelated-attac", "mail-1", "signed.propos", "naive-resum",
    ]  # fmt: skip
    connection = db.session.connection()
    for query in queries:
        plain = []
        for term in query.split():
            quoted = [_quote(word) for word in words(term)]
            if len(term) >= search_postgres.MIN_PREFIX:
                quoted[-1] += ":*"
            plain.append("(" + " <-> ".join(quoted) + ")")
        expected = sorted(
            row[0]
            for row in db.session.execute(
                text(matching_threads_sql(connection)),
                {"match": " & ".join(plain), **account_rows(store.account.id)},
            )
        )
        assert search(store, query) == expected, query
    spelled = search_postgres.PostgresIndex().match_expression(["proposal"], connection)
    assert (":*" in spelled) == (most_words == 2), spelled
    assert search(store, "proposal") != [] and len(threads) == len(texts)


@pytest.mark.skipif(not ON_POSTGRESQL, reason="PostgreSQL's word list")
def test_on_postgresql_the_word_list_holds_every_longer_indexed_word(store):
    store("Quarterly proposal", "carla@customer.test Carla Diaz", "Pricing attached, Zürich")
    listed = set(db.session.scalars(text("SELECT word FROM thread_search_vocabulary")))
    assert {"quarterly", "proposal", "carla", "customer", "pricing", "zurich"} <= listed
    assert not {"diaz", "test"} & listed  # four letters or fewer: the prefix match stays


@pytest.mark.skipif(not ON_POSTGRESQL, reason="PostgreSQL's word list")
def test_on_postgresql_migration_0013_lists_the_words_of_conversations_indexed_before(store):
    """A database indexed before the word list existed gets it filled by migration 0013, so
    its longer prefixes are spelled out and still find every conversation (twice: idempotent)."""
    import importlib.util

    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    first = store("Quarterly proposal", "carla@customer.test", "Pricing attached")
    second = store("Proposals, revised", "bo@team.test", "Zürich office")
    db.session.execute(text("DELETE FROM thread_search_vocabulary"))
    db.session.commit()
    path = Path(__file__).parents[1] / "migrations" / "versions" / "0013_postgres_search.py"
    spec = importlib.util.spec_from_file_location("migration_0013", path)
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    for _ in range(2):
        with Operations.context(MigrationContext.configure(db.session.connection())):
            migration.upgrade()
        db.session.commit()
    listed = set(db.session.scalars(text("SELECT word FROM thread_search_vocabulary")))
    assert {"quarterly", "proposal", "proposals", "revised", "zurich", "office"} <= listed
    assert search(store, "proposa") == sorted([first.thread_id, second.thread_id])
    assert search(store, "zuric") == [second.thread_id]
