"""The raw sqlite3 insert path of mailsync/store.py (SQLite's fast path) writes exactly the
rows SQLAlchemy's portable path writes, the one PostgreSQL uses, for the same batches."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from app import create_app
from extensions import db
from mailsync import store
from mailsync.parse import parse_message
from models import MailAccount, MailFolder, Person, PersonEmail, User

# Columns holding the time of the run itself, which differs between two runs.
RUN_TIME_COLUMNS = {"created_at", "updated_at"}


def _mime(n: int, *, reply_to: int | None = None, sender: str = "carla@customer.test") -> bytes:
    headers = [
        f"From: Carla Diaz <{sender}>",
        "To: Me <me@team.test>, Ann <ann@partner.test>",
        "Cc: bob@partner.test",
        f"Subject: {'Re: ' if reply_to else ''}Order {reply_to or n}",
        f"Date: Mon, {n} Feb 2026 10:00:{n:02d} +0200",
        f"Message-ID: <m{n}@customer.test>",
    ]
    if reply_to:
        headers += [f"In-Reply-To: <m{reply_to}@customer.test>"]
        headers += [f"References: <m0@customer.test> <m{reply_to}@customer.test>"]
    body = f"Line one of message {n}.\nPricing and the walnut shipment, café ×{n}.\n"
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def _items(folders: dict[str, int]) -> list[list[store.Fetched]]:
    """Two batches: new mail in two folders (a thread, a copy, a blocked sender), then a
    retry of part of the first plus new mail (conflicts on every key)."""

    def fetched(folder: str, uid: int, raw: bytes, key: str, flags=()) -> store.Fetched:
        return store.Fetched(
            folder_id=folders[folder],
            uid=uid,
            flags=list(flags),
            dedup_key=key,
            parsed=parse_message(raw),
            raw_sha256=f"{uid:064d}",
            size=len(raw),
            internaldate=datetime(2026, 2, 1, 12, uid, 30 + uid, 1000 * uid, tzinfo=UTC),
            header_key=f"h-{key}",
            gm_labels=["\\Inbox"] if folder == "inbox" else [],
        )

    first = [
        fetched("inbox", 1, _mime(1), "k1", [b"\\Seen"]),
        fetched("inbox", 2, _mime(2, reply_to=1), "k2", [b"\\Flagged", b"$Label"]),
        fetched("archive", 1, _mime(1), "k1", [b"\\Seen", b"\\Answered"]),
        fetched("inbox", 3, _mime(3, sender="x@spam.test"), "k3"),
        fetched("archive", 2, _mime(4), "k4", [b"\\Draft"]),
    ]
    second = [
        fetched("inbox", 2, _mime(2, reply_to=1), "k2", [b"\\Seen"]),
        fetched("inbox", 4, _mime(5, reply_to=2), "k5"),
        fetched("archive", 3, _mime(6, reply_to=4), "k6"),
    ]
    return [first, second]


def _store_and_read(uri: str, instance) -> dict[str, list[tuple]]:
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(instance),
            "SQLALCHEMY_DATABASE_URI": uri,
            "SECRET_KEY": "test-secret",
            "SCHEDULER_ENABLED": False,
        }
    )
    with app.app_context():
        try:
            user = User(email="me@team.test", name="Me", password_hash="x")
            db.session.add(user)
            db.session.flush()
            person = Person(owner_id=user.id, name="Ann", visibility="everyone")
            person.emails.append(PersonEmail(email="ann@partner.test", is_primary=True))
            account = MailAccount(
                user_id=user.id,
                email_address=user.email,
                username=user.email,
                password_encrypted=b"unused",
                imap_host="imap.invalid",
            )
            db.session.add_all([person, account])
            db.session.flush()
            folders = {}
            for name, role in (("inbox", "inbox"), ("archive", "archive")):
                folder = MailFolder(account_id=account.id, name=name.upper(), role=role)
                db.session.add(folder)
                db.session.flush()
                folders[name] = folder.id
            db.session.commit()
            ctx = store.StoreContext(
                account_id=account.id,
                owner_id=user.id,
                own_addresses=frozenset({"me@team.test"}),
                share_by_default=False,
                blocked_entries=("@spam.test",),
                auto_link=True,
            )
            for batch in _items(folders):
                store.store_batch(ctx, batch)
                db.session.commit()
            return _rows()
        finally:
            db.session.remove()
            db.engine.dispose()


def _rows() -> dict[str, list[tuple]]:
    """Every row of every table (values decoded by SQLAlchemy), run times left out."""
    found = {}
    for table in db.metadata.sorted_tables:
        columns = [column for column in table.columns if column.name not in RUN_TIME_COLUMNS]
        found[table.name] = [
            tuple(row) for row in db.session.execute(select(*columns).order_by(*table.primary_key))
        ]
    found["message_text"] = [
        tuple(row) for row in db.session.execute(text("SELECT * FROM message_text ORDER BY 1"))
    ]
    return found


@pytest.fixture
def postgres_uri(postgres_template):
    server, template = postgres_template
    name = server.create_database(template=template)
    yield server.url(name)
    server.drop_database(name)


def test_the_sqlite_fast_path_and_the_portable_path_write_the_same_rows(
    tmp_path, monkeypatch, new_database, postgres_uri
):
    fast = _store_and_read(new_database(tmp_path / "fast.db"), tmp_path / "fast")
    monkeypatch.setattr(store, "SQLITE_FAST_PATH", False)
    portable = _store_and_read(new_database(tmp_path / "portable.db"), tmp_path / "portable")
    on_postgres = _store_and_read(postgres_uri, tmp_path / "postgres")

    assert len(fast["message"]) == 6 and len(fast["message_location"]) == 7
    assert fast["message_person"] and fast["message_id_index"] and fast["message_text"]
    for table in fast:
        assert portable[table] == fast[table], table
        # PostgreSQL spends a sequence number on each conflicting insert: the ids of rows
        # nothing refers to (locations, links, id table entries) may differ, nothing else.
        if table in UNREFERENCED_IDS:
            assert _without_id(on_postgres[table]) == _without_id(fast[table]), table
        else:
            assert on_postgres[table] == fast[table], table


UNREFERENCED_IDS = {"message_location", "message_person", "message_id_index"}


def _without_id(rows: list[tuple]) -> list[tuple]:
    return sorted(row[1:] for row in rows)


def test_the_fast_path_is_what_sqlite_uses(app, monkeypatch):
    """(So the comparison above compares two different paths.)"""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: its fast path")
    assert store._sqlite_cursor() is not None
    monkeypatch.setattr(store, "SQLITE_FAST_PATH", False)
    assert store._sqlite_cursor() is None
