"""The FTS5 conversation index: safe queries, prefix matching, replace and remove."""

import pytest
from sqlalchemy import text

from extensions import db
from services.search import (
    SearchDocument,
    account_rows,
    index_messages,
    match_expression,
    matching_threads_sql,
    remove_from_index,
)


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
