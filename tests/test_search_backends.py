"""Both search implementations (FTS5 on SQLite, full text on PostgreSQL) find the same
conversations for the same queries over the same mail.

Runs whichever database the suite is on: it builds one app on SQLite and one on the
session's throwaway PostgreSQL and asks both.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from app import create_app
from extensions import db
from models import MailAccount, Message, Thread, User
from services.search import (
    SearchDocument,
    account_rows,
    index_messages,
    match_expression,
    matching_threads_sql,
)

# Conversations: subject -> the (participants, body) of each of its messages.
CONVERSATIONS = {
    "Quarterly proposal": [
        ("carla@customer.test Carla Diaz", "Pricing attached, see the e-mail from O'Brien."),
        ("me@team.test", "Thanks! The walnut shipment is late."),
    ],
    "Lunch": [("bo@team.test", "See you at noon. Résumé inside. Plan B.")],
    "Naïve café order": [("zoë@café.test", "Crème brûlée ×2, order_id 12345")],
    "Kiwi": [("ann@fruit.test", "pineapple"), ("bob@fruit.test", "mango and walnut")],
    "Meeting": [("team@corp.test", "東京 meeting room 3B, version 2.5.1")],
    "Proposal v2": [("carla@customer.test", "The proposal, revised")],
    "Deleted later": [("x@y.test", "ephemeral zucchini")],
}
QUERIES = [
    "propo",
    "pro",
    "pr",
    "b",
    "plan b",
    "carla@customer",
    "carla@customer.test",
    "customer.test carla",
    "resume",
    "RÉSUMÉ",
    "noon lunch",
    "cafe",
    "café order",
    "creme brulee",
    "zoe",
    "order_id",
    "12345",
    "123",
    "o'brien",
    "brien",
    "e-mail",
    "mail",
    "walnut",
    "walnut pineapple",  # in two messages of one conversation: matches
    "walnut mango pineapple",
    "walnut noon",  # in two conversations, none holds both
    "東京",
    "2.5.1",
    "3b",
    "zucchini",  # its message is deleted below
    "nothing-like-this",
    '"',
    "NEAR(",
    "a OR",
    "*",
    "subject:x",
    "-x",
    "(((",
    "'; DROP TABLE x",
    "@@",
    "@@ walnut",
    "   ",
]


def _store_conversations() -> int:
    """Store CONVERSATIONS as threads of one mailbox; return the account id."""
    user = User(email="me@team.test", name="Me", password_hash="x")
    db.session.add(user)
    db.session.flush()
    account = MailAccount(
        user_id=user.id,
        email_address=user.email,
        username=user.email,
        password_encrypted=b"unused",
        imap_host="imap.invalid",
    )
    db.session.add(account)
    db.session.flush()
    documents, deleted = [], []
    for n, (subject, messages) in enumerate(CONVERSATIONS.items()):
        thread = Thread(account_id=account.id, subject=subject, message_count=len(messages))
        db.session.add(thread)
        db.session.flush()
        for m, (participants, body) in enumerate(messages):
            message = Message(
                account_id=account.id,
                thread_id=thread.id,
                dedup_key=f"key-{n}-{m}",
                subject=subject,
                date=datetime(2026, 1, 1 + n, m, tzinfo=UTC),
            )
            db.session.add(message)
            db.session.flush()
            documents.append(SearchDocument(message.id, subject, participants, body))
            if subject == "Deleted later":
                deleted.append(message)
    index_messages(db.session.connection(), documents)
    db.session.commit()
    for message in deleted:
        message.deleted_at = datetime.now(UTC)
    db.session.commit()
    return account.id


def _search_all(uri: str, instance) -> dict[str, list[str]]:
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(instance),
            "SQLALCHEMY_DATABASE_URI": uri,
            "SECRET_KEY": "test-secret",
            "SCHEDULER_ENABLED": False,
        }
    )
    results = {}
    with app.app_context():
        try:
            account_id = _store_conversations()
            connection = db.session.connection()
            for query in QUERIES:
                expression = match_expression(connection, query)
                if expression is None:
                    results[query] = []
                    continue
                rows = connection.execute(
                    text(
                        f"SELECT t.subject FROM thread t WHERE t.id IN "
                        f"({matching_threads_sql(connection)})"
                    ),
                    {"match": expression, **account_rows(account_id)},
                )
                results[query] = sorted(row[0] for row in rows)
        finally:
            db.session.remove()
            db.engine.dispose()
    return results


@pytest.fixture
def postgres_uri(postgres_template):
    server, template = postgres_template
    name = server.create_database(template=template)
    yield server.url(name)
    server.drop_database(name)


def test_both_backends_find_the_same_conversations(tmp_path, new_database, postgres_uri):
    on_sqlite = _search_all(new_database(tmp_path / "search.db"), tmp_path / "a")
    on_postgres = _search_all(postgres_uri, tmp_path / "b")
    assert on_postgres == on_sqlite
    # And they find what a user expects (so "both equally broken" cannot pass).
    assert on_sqlite["propo"] == ["Proposal v2", "Quarterly proposal"]
    assert on_sqlite["pr"] == []
    assert on_sqlite["plan b"] == ["Lunch"]
    assert on_sqlite["carla@customer"] == ["Proposal v2", "Quarterly proposal"]
    assert on_sqlite["resume"] == on_sqlite["RÉSUMÉ"] == ["Lunch"]
    assert on_sqlite["creme brulee"] == ["Naïve café order"]
    assert on_sqlite["walnut pineapple"] == ["Kiwi"]
    assert on_sqlite["walnut noon"] == []
    assert on_sqlite["東京"] == ["Meeting"]
    assert on_sqlite["zucchini"] == []
    assert on_sqlite["@@ walnut"] == ["Kiwi", "Quarterly proposal"]
