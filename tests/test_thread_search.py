"""The conversation search index (services.search.thread_search) follows every change to
the mail it covers: new messages, deletions, blocks, threads merged, mail gone for good."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from extensions import db
from models import Message
from services import linking, mailbox, search
from services.search import ensure_search_index
from tests.statements import recorded_statements


@pytest.fixture
def me(make_user):
    return make_user(email="me@team.test", name="Me")


@pytest.fixture
def account(me, make_stored_account):
    return make_stored_account(me)


@pytest.fixture
def inbox(account, make_stored_folder):
    return make_stored_folder(account, "INBOX", role="inbox")


def found(user, query: str, folder: str = "inbox") -> set[int]:
    page = mailbox.list_threads(user, mailbox.MailboxQuery(folder=folder, q=query))
    return {row.id for row in page.rows}


@pytest.fixture(
    params=[(2000, 200), (2000, 0), (0, 0)],
    ids=["matching-ids plan", "rare-term plan", "common-term plan"],
)
def plan(request, monkeypatch):
    monkeypatch.setattr(mailbox, "FEW_MATCHES", request.param[0])
    monkeypatch.setattr(mailbox, "FEW_IDS", request.param[1])


@pytest.mark.usefixtures("plan")
def test_a_conversation_matches_when_its_messages_together_hold_every_term(
    me, inbox, make_mailbox_message
):
    first = make_mailbox_message(inbox, subject="Kiwi order", body="The walnut crate shipped")
    reply = make_mailbox_message(
        inbox, subject="Re: Kiwi order", body="Pineapple too, please", thread=first.thread
    )
    other = make_mailbox_message(inbox, subject="Walnut prices")
    assert found(me, "walnut pineapple") == {first.thread_id}
    assert found(me, "walnut") == {first.thread_id, other.thread_id}
    assert reply.thread_id == first.thread_id


@pytest.mark.usefixtures("plan")
def test_deleted_and_blocked_messages_stop_matching_and_come_back(me, inbox, make_mailbox_message):
    kept = make_mailbox_message(inbox, subject="Kiwi order", body="walnut")
    gone = make_mailbox_message(
        inbox, subject="Re: Kiwi order", body="pineapple", thread=kept.thread
    )
    spam = make_mailbox_message(
        inbox,
        subject="Re: Kiwi order",
        body="mango",
        sender=("Spammer", "x@spam.test"),
        thread=kept.thread,
    )
    assert found(me, "pineapple") == found(me, "mango") == {kept.thread_id}

    gone.deleted_at = datetime.now(UTC)  # gone from the server (sync's soft delete)
    db.session.commit()
    assert found(me, "pineapple") == set() and found(me, "walnut") == {kept.thread_id}
    gone.deleted_at = None  # seen again in another folder
    db.session.commit()
    assert found(me, "pineapple") == {kept.thread_id}

    entry = linking.block(me, "@spam.test")
    assert found(me, "mango") == set() and found(me, "walnut") == {kept.thread_id}
    linking.unblock(me, entry.id)
    assert found(me, "mango") == {kept.thread_id}
    assert spam.thread_id == kept.thread_id


def test_deleting_a_conversation_in_threadline_removes_it_from_search(
    me, inbox, make_mailbox_message
):
    message = make_mailbox_message(inbox, subject="Kiwi order", body="walnut")
    thread = db.session.get(mailbox.Thread, message.thread_id)
    mailbox.delete_threads(me, [thread])
    assert found(me, "walnut") == set()
    assert _index_rows(message.thread_id) == 0


def test_merged_threads_are_found_under_the_kept_thread(me, inbox, make_mailbox_message):
    kept = make_mailbox_message(inbox, subject="Kiwi order", body="walnut")
    merged = make_mailbox_message(inbox, subject="Mango order", body="pineapple")
    old_thread = merged.thread
    merged.thread_id = kept.thread_id  # what the threader does when a reply joins two threads
    db.session.delete(old_thread)
    db.session.commit()
    assert found(me, "walnut pineapple") == {kept.thread_id}
    assert _index_rows(old_thread.id) == 0


def test_mail_deleted_for_good_leaves_the_index(me, inbox, make_mailbox_message):
    message = make_mailbox_message(inbox, subject="Kiwi order", body="walnut")
    thread_id = message.thread_id
    db.session.delete(db.session.get(Message, message.id))  # as the garbage collector does
    db.session.commit()
    assert _index_rows(thread_id) == 0


def test_search_stays_in_each_mailbox(
    me, inbox, make_user, make_stored_account, make_stored_folder, make_mailbox_message
):
    second = make_stored_folder(make_stored_account(me, email_address="me@home.test"))
    teammate = make_user(email="tm@team.test")
    theirs = make_stored_folder(make_stored_account(teammate))
    mine = [
        make_mailbox_message(inbox, subject="walnut one"),
        make_mailbox_message(second, subject="walnut two"),
    ]
    other = make_mailbox_message(theirs, subject="walnut three")
    assert found(me, "walnut") == {message.thread_id for message in mine}
    assert found(teammate, "walnut") == {other.thread_id}


@pytest.mark.sqlite_only("the previous release's FTS5 table")
def test_a_database_from_before_the_conversation_index_gets_it_built(
    app, me, inbox, make_mailbox_message
):
    first = make_mailbox_message(inbox, subject="Kiwi order", body="walnut")
    make_mailbox_message(inbox, subject="Re: Kiwi", body="pineapple", thread=first.thread)
    with db.engine.begin() as connection:  # the schema of the previous release
        for statement in (
            "CREATE VIRTUAL TABLE message_search USING fts5(subject, participants, body)",
            "INSERT INTO message_search (rowid, subject, participants, body) "
            "SELECT message_id, subject, participants, body FROM message_text",
            "DROP TABLE message_text",
            "DROP TRIGGER message_thread_search_update",
            "DROP TRIGGER message_thread_search_delete",
            "DROP TABLE thread_search_stale",
            "DROP TABLE thread_search_pending",
            "DROP TABLE thread_search",
        ):
            connection.execute(text(statement))
    with db.engine.begin() as connection:
        ensure_search_index(connection)
        tables = connection.execute(text("SELECT name FROM sqlite_master")).scalars().all()
    assert "message_search" not in tables
    assert found(me, "walnut pineapple") == {first.thread_id}
    make_mailbox_message(inbox, subject="Re: Kiwi", body="mango", thread=first.thread)
    assert found(me, "walnut mango") == {first.thread_id}  # kept current from then on


def test_a_long_conversation_keeps_its_newest_text(me, inbox, make_mailbox_message, monkeypatch):
    monkeypatch.setattr(search, "MAX_THREAD_BODY", 40)
    first = make_mailbox_message(inbox, subject="Kiwi", body="x" * 40 + " oldword")
    first.date = datetime.now(UTC) - timedelta(days=1)
    db.session.commit()
    make_mailbox_message(inbox, subject="Re: Kiwi", body="newword", thread=first.thread)
    assert found(me, "newword") == {first.thread_id}
    assert found(me, "oldword") == set()  # beyond the cap, the oldest text is left out


def _index_rows(thread_id: int) -> int:
    rowid = "search_rowid" if db.engine.dialect.name == "postgresql" else "rowid"
    return db.session.execute(
        text(f"SELECT count(*) FROM thread_search WHERE ({rowid} & 4294967295) = :id"),
        {"id": thread_id},
    ).scalar()


def test_a_sync_pass_rewrites_conversations_at_most_every_interval_and_at_the_end(
    me, inbox, make_mailbox_message, monkeypatch
):
    clock = [1000.0]
    monkeypatch.setattr(search.time, "monotonic", lambda: clock[0])
    with search.thread_index_every(db.session, 10):
        first = make_mailbox_message(inbox, subject="Kiwi", body="walnut")  # commits
        assert found(me, "walnut") == set()  # not yet: within the interval
        clock[0] += 11
        db.session.commit()  # the first commit after the interval rewrites what is stale
        assert found(me, "walnut") == {first.thread_id}
        second = make_mailbox_message(inbox, subject="Mango", body="walnut")
        assert found(me, "walnut") == {first.thread_id}
    assert found(me, "walnut") == {first.thread_id, second.thread_id}  # and the last one
    third = make_mailbox_message(inbox, subject="Fig", body="walnut")  # back to every commit
    assert third.thread_id in found(me, "walnut")


def test_removing_a_mailbox_with_its_mail_empties_its_search_rows(
    app, me, account, inbox, make_mailbox_message
):
    from services import accounts

    message = make_mailbox_message(inbox, subject="Kiwi order", body="walnut")
    message_id, thread_id = message.id, message.thread_id
    accounts.remove_account(me, account, keep_mail=False, app=app)
    assert _index_rows(thread_id) == 0
    leftover = db.session.execute(
        text("SELECT count(*) FROM message_text WHERE message_id = :id"), {"id": message_id}
    ).scalar()
    assert leftover == 0


@pytest.mark.imap
def test_attachment_file_names_are_searchable(app, dovecot, mail_user, me, make_account, login):
    """A synced mail is found by its attachment's name, which its text never mentions."""
    from tests.mail_fixtures import build_message
    from tests.sync_helpers import run_sync

    app.config["MAIL_ALLOWED_PORTS"] = None
    dovecot.deliver(
        mail_user.email,
        build_message(
            subject="As discussed",
            to=mail_user.email,
            text="See the file.",
            attachments=(("Rechnung-4471-Quokka.pdf", "application/pdf", b"%PDF-1.4 x"),),
        ),
    )
    dovecot.deliver(mail_user.email, build_message(subject="Other mail", to=mail_user.email))
    account = make_account(me, mail_user)
    assert run_sync(app, account).ok
    client = login(me)
    for query in ("rechnung", "4471", "quokka.pdf"):
        page = client.get("/mail/", query_string={"q": query}).get_data(as_text=True)
        assert "As discussed" in page and "Other mail" not in page, query


def test_on_postgresql_a_rare_terms_matches_are_bound_not_matched_again(
    me, inbox, make_mailbox_message, monkeypatch
):
    """PostgreSQL lists a rare term's conversations from the ids the first probe read: given
    the MATCH as a subquery, its planner probed the search index once per conversation of an
    account its statistics did not know yet (1.3 s a page during a new mailbox's first sync).
    SQLite binds only a few ids: more cost it more than a second MATCH."""
    monkeypatch.setattr(mailbox, "FEW_IDS", 1)  # three matches: "rare", not "few", on SQLite
    wanted = {make_mailbox_message(inbox, subject=f"Walnut order {n}").thread_id for n in range(3)}
    make_mailbox_message(inbox, subject="Kiwi order")
    db.session.commit()
    with recorded_statements() as statements:
        assert found(me, "walnut") == wanted
    probes = [sql for sql, _params in statements if "FROM thread_search " in sql]
    assert len(probes) == (2 if db.engine.dialect.name == "sqlite" else 1), probes
