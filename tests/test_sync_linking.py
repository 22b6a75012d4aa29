"""What sync does for the CRM: search index, blocked addresses, auto-linking, sharing default."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from extensions import db
from models import Message, Thread, User
from services import linking, mailbox
from services.preferences import update_preferences
from tests.mail_fixtures import build_message
from tests.sync_helpers import run_sync

pytestmark = pytest.mark.imap


@pytest.fixture
def owner(make_user):
    return make_user(email="owner@team.test")


@pytest.fixture
def account(owner, make_account, mail_user):
    return make_account(owner, mail_user)


def search_ids(query):
    """The Inbox conversations the owner's search for `query` lists."""
    owner = db.session.scalar(select(User).where(User.email == "owner@team.test"))
    page = mailbox.list_threads(owner, mailbox.MailboxQuery(q=query))
    return {row.id for row in page.rows}


def test_synced_mail_is_searchable_by_subject_body_and_participant(
    app, dovecot, mail_user, owner, account
):
    dovecot.deliver(
        mail_user.email,
        build_message(
            subject="Quarterly pricing",
            sender="Zoë Quinn <zoe@customer.test>",
            to=mail_user.email,
            text="The tangerine contract is attached.",
        ),
    )
    assert run_sync(app, account).ok
    message = db.session.scalar(select(Message))
    assert search_ids("quarterly") == {message.thread_id}
    assert search_ids("tangerine") == {message.thread_id}
    assert search_ids("zoe@customer") == {message.thread_id}
    assert search_ids("tangerine quarterly zoe") == {message.thread_id}


def test_blocked_sender_is_hidden_at_sync_but_cc_keeps_it(app, dovecot, mail_user, owner, account):
    linking.block(owner, "@spam.test")
    dovecot.deliver(
        mail_user.email, build_message(subject="Buy now", sender="x@spam.test", to=mail_user.email)
    )
    dovecot.deliver(
        mail_user.email,
        build_message(
            subject="Fwd offer", sender="x@spam.test", to=mail_user.email, cc="carla@customer.test"
        ),
    )
    assert run_sync(app, account).ok
    hidden = db.session.scalar(select(Thread).where(Thread.subject == "Buy now"))
    kept = db.session.scalar(select(Thread).where(Thread.subject == "Fwd offer"))
    assert hidden.blocked and not kept.blocked
    entry = linking.blocked_entries(owner)[0]
    linking.unblock(owner, entry.id)
    db.session.refresh(hidden)
    assert not hidden.blocked  # kept all along, back after unblocking


def test_a_blocked_reply_does_not_date_its_conversation(app, dovecot, mail_user, owner, account):
    linking.block(owner, "@spam.test")
    first = build_message(
        subject="Terms",
        sender="carla@customer.test",
        to=mail_user.email,
        date=datetime(2026, 3, 9, 9, 0, tzinfo=UTC),
        message_id="<terms@customer.test>",
    )
    reply = build_message(
        subject="Re: Terms",
        sender="x@spam.test",
        to=mail_user.email,
        date=datetime(2026, 3, 27, 9, 0, tzinfo=UTC),
        in_reply_to="<terms@customer.test>",
        references="<terms@customer.test>",
    )
    for raw in (first, reply):
        dovecot.deliver(mail_user.email, raw)
        assert run_sync(app, account).ok  # the reply comes in a later pass
    thread = db.session.scalar(select(Thread).where(Thread.subject == "Terms"))
    assert thread.message_count == 2 and not thread.blocked
    assert thread.last_date.replace(tzinfo=UTC) == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
    # Another mail program reads both: the pass refreshes the conversation, same date.
    for uid in dovecot.uids(mail_user.email):
        dovecot.add_flags(mail_user.email, "INBOX", uid, "\\Seen")
    assert run_sync(app, account).ok
    db.session.refresh(thread)
    assert thread.last_date.replace(tzinfo=UTC) == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)


def test_auto_link_to_the_persons_only_open_deal(
    app, dovecot, mail_user, owner, account, make_person, make_deal
):
    carla = make_person(owner, emails=("carla@customer.test",))
    deal = make_deal(owner, person_id=carla.id)
    dan = make_person(owner, emails=("dan@customer.test",))
    make_deal(owner, person_id=dan.id)
    make_deal(owner, person_id=dan.id)
    dovecot.deliver(
        mail_user.email,
        build_message(subject="Proposal", sender="carla@customer.test", to=mail_user.email),
    )
    dovecot.deliver(
        mail_user.email,
        build_message(subject="Two deals", sender="dan@customer.test", to=mail_user.email),
    )
    assert run_sync(app, account).ok
    linked = db.session.scalar(select(Thread).where(Thread.subject == "Proposal"))
    choose = db.session.scalar(select(Thread).where(Thread.subject == "Two deals"))
    assert linked.deal_id == deal.id
    assert choose.deal_id is None and choose.needs_link_choice


def test_manual_linking_and_shared_default(
    app, dovecot, mail_user, owner, account, make_person, make_deal
):
    update_preferences(owner, {"auto_linking": "manual", "default_email_sharing": "shared"})
    carla = make_person(owner, emails=("carla@customer.test",))
    make_deal(owner, person_id=carla.id)
    dovecot.deliver(
        mail_user.email,
        build_message(subject="Hello", sender="carla@customer.test", to=mail_user.email),
    )
    assert run_sync(app, account).ok
    thread = db.session.scalar(select(Thread))
    assert thread.deal_id is None and not thread.needs_link_choice
    assert thread.shared


def test_archiving_in_another_mail_program_changes_nothing_in_threadline(
    app, dovecot, mail_user, owner, account, login
):
    dovecot.deliver(
        mail_user.email,
        build_message(
            subject="Keep me in the inbox", sender="carla@customer.test", to=mail_user.email
        ),
    )
    dovecot.deliver(
        mail_user.email,
        build_message(
            subject="Deleted elsewhere", sender="carla@customer.test", to=mail_user.email
        ),
    )
    assert run_sync(app, account).ok
    client = login(owner)
    inbox = client.get("/mail/").get_data(as_text=True)
    assert "Keep me in the inbox" in inbox and "Deleted elsewhere" in inbox
    first, second = dovecot.uids(mail_user.email)
    dovecot.move(mail_user.email, "INBOX", first, "Archive")  # archived in another program
    dovecot.expunge(mail_user.email, "INBOX", second)  # deleted in another program
    assert run_sync(app, account).ok
    inbox = client.get("/mail/").get_data(as_text=True)
    assert "Keep me in the inbox" in inbox  # PRODUCT.md: archiving elsewhere changes nothing
    assert "Deleted elsewhere" not in inbox  # deleting in the mailbox deletes in Threadline


def test_sync_links_mail_only_to_records_its_owner_can_access(
    app, dovecot, mail_user, owner, account, make_user, make_person, make_deal
):
    """A teammate's owner-only person or deal never collects this mailbox's mail: a conversation
    shared by its owner would otherwise open for that teammate through a record the owner
    cannot even see."""
    update_preferences(owner, {"auto_linking": "automatic"})
    teammate = make_user(email="mate@team.test")
    hidden = make_person(teammate, emails=("hana@customer.test",), visibility="owner")
    make_deal(teammate, person_id=hidden.id, visibility="owner")
    carla = make_person(teammate, emails=("carla@customer.test",))  # everyone can access it
    secret_deal = make_deal(teammate, person_id=carla.id, visibility="owner")
    for sender in ("hana@customer.test", "carla@customer.test"):
        dovecot.deliver(
            mail_user.email, build_message(subject=sender, sender=sender, to=mail_user.email)
        )
    assert run_sync(app, account).ok
    hana_thread = db.session.scalar(select(Thread).where(Thread.subject == "hana@customer.test"))
    carla_thread = db.session.scalar(select(Thread).where(Thread.subject == "carla@customer.test"))
    assert linking.thread_person_ids(hana_thread) == []
    assert linking.thread_person_ids(carla_thread) == [carla.id]
    assert carla_thread.deal_id is None and hana_thread.deal_id is None
    assert secret_deal.id not in (carla_thread.deal_id, hana_thread.deal_id)
