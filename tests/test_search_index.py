"""The FTS5 mail index: safe queries, prefix matching, replace and remove."""

import pytest
from sqlalchemy import text

from extensions import db
from services.search import (
    SearchDocument,
    ensure_search_index,
    index_messages,
    match_expression,
    matching_message_ids_sql,
    remove_from_index,
)


@pytest.fixture
def connection(app):
    with db.engine.begin() as connection:
        ensure_search_index(connection)
        yield connection


def search(connection, query):
    expression = match_expression(query)
    if expression is None:
        return []
    rows = connection.execute(text(matching_message_ids_sql()), {"match": expression})
    return sorted(row[0] for row in rows)


def test_prefix_search_over_subject_participants_and_body(connection):
    index_messages(
        connection,
        [
            SearchDocument(
                1, "Quarterly proposal", "carla@customer.test Carla Diaz", "Pricing attached"
            ),
            SearchDocument(2, "Lunch", "bo@team.test", "See you at noon. Résumé inside."),
        ],
    )
    assert search(connection, "propo") == [1]
    assert search(connection, "carla@customer") == [1]
    assert search(connection, "resume") == [2]
    assert search(connection, "noon lunch") == [2]
    assert search(connection, "nothing-like-this") == []


def test_short_terms_match_whole_words_only(connection):
    index_messages(
        connection,
        [
            SearchDocument(1, "Proposal", "", "Meet at the pub"),
            SearchDocument(2, "Pricing", "", "Plan B"),
        ],
    )
    assert search(connection, "pro") == [1]  # three letters: a prefix
    assert search(connection, "pr") == []  # two letters: only the word "pr"
    assert search(connection, "b") == [2]  # a one-letter word still matches itself


def test_hostile_query_syntax_never_errors(connection):
    index_messages(connection, [SearchDocument(1, "a b", "", "NEAR OR AND")])
    for query in ['"', "NEAR(", "a OR", "*", "subject:x", "-x", "(((", "'; DROP TABLE x", "\r\n"]:
        search(connection, query)  # no OperationalError
    assert match_expression("   ") is None


def test_reindex_replaces_and_remove_drops(connection):
    index_messages(connection, [SearchDocument(7, "old subject", "", "")])
    index_messages(connection, [SearchDocument(7, "new subject", "", "")])
    assert search(connection, "old") == [] and search(connection, "new") == [7]
    remove_from_index(connection, [7])
    assert search(connection, "new") == []
