"""My own addresses (aliases): learned from the Sent folder or added by hand, they are never
matched to persons, never offered as contacts, never "someone else" for blocking."""

from __future__ import annotations

import html

import pytest
from sqlalchemy import select

from extensions import db
from models import Message, MessagePerson, OwnAddress, Person
from services import linking
from tests.mail_fixtures import build_message
from tests.sync_helpers import run_sync

pytestmark = pytest.mark.imap

ALIAS = "mia.sales@team.test"


@pytest.fixture
def me(make_user):
    return make_user(email="mia@team.test", name="Mia Meyer")


@pytest.fixture
def synced(app, dovecot, mail_user, me, make_account, make_person):
    """Mia sends as an alias; a customer writes to that alias; someone once made a person
    with the alias address (a contact card of the sales team)."""
    app.config["MAIL_ALLOWED_PORTS"] = None
    make_person(me, name="Sales Team", emails=(ALIAS,))
    dovecot.deliver(
        mail_user.email,
        build_message(
            subject="Our offer", sender=f"Mia Meyer <{ALIAS}>", to="Carla <carla@customer.test>"
        ),
        folder="Sent",
    )
    dovecot.deliver(
        mail_user.email,
        build_message(subject="Re: Our offer", sender="Carla <carla@customer.test>", to=ALIAS),
    )
    dovecot.deliver(
        mail_user.email,
        build_message(subject="Spammy", sender="Spam <noise@spam.test>", to=ALIAS),
    )
    account = make_account(me, mail_user)
    assert run_sync(app, account).ok
    return account


def test_a_sent_from_alias_is_learned_and_never_matched_to_a_person(app, me, synced, login):
    assert ALIAS in linking.own_addresses(me)
    row = db.session.scalar(select(OwnAddress).where(OwnAddress.address == ALIAS))
    assert row.source == "sent" and row.account_id == synced.id
    page = html.unescape(login(me).get(f"/settings/accounts/{synced.id}").get_data(as_text=True))
    assert ALIAS in page and "from your Sent folder" in page
    # No message is linked to the "Sales Team" person through Mia's own alias.
    sales_team = db.session.scalar(select(Person.id).where(Person.name == "Sales Team"))
    linked = db.session.scalars(
        select(MessagePerson.message_id).where(MessagePerson.person_id == sales_team)
    ).all()
    assert linked == []


def test_an_alias_is_no_participant_to_add_or_block(me, synced, login):
    client = login(me)
    reply = db.session.scalar(select(Message).where(Message.subject == "Re: Our offer"))
    sidebar = html.unescape(client.get(f"/mail/threads/{reply.thread_id}").get_data(as_text=True))
    people = sidebar.split('id="side-people"', 1)[1]
    assert "carla@customer.test" in people
    assert ALIAS not in people  # not offered as a contact, not a block target


def test_blocking_a_sender_hides_mail_to_an_alias(me, synced, login):
    client = login(me)
    client.post("/settings/blocked/", data={"entry": "noise@spam.test"})
    page = client.get("/mail/").get_data(as_text=True)
    assert "Spammy" not in page  # nobody but Mia (through her alias) is on it
    assert "Re: Our offer" in page


def test_aliases_added_and_removed_by_hand(app, me, synced, login, dovecot, mail_user):
    client = login(me)
    added = client.post(
        f"/settings/accounts/{synced.id}/addresses", data={"address": "Mia@Home.test"}
    )
    assert added.status_code == 303
    assert "mia@home.test" in linking.own_addresses(me)
    bad = client.post(
        f"/settings/accounts/{synced.id}/addresses", data={"address": "not an address"}
    )
    assert bad.status_code == 422 and "Enter an address" in bad.get_data(as_text=True)

    learned = db.session.scalar(select(OwnAddress).where(OwnAddress.address == ALIAS))
    removed = client.post(f"/settings/accounts/{synced.id}/addresses/{learned.id}/remove")
    assert removed.status_code == 303
    assert ALIAS not in linking.own_addresses(me)
    # A later sync of more Sent mail from it does not learn it again.
    dovecot.deliver(
        mail_user.email,
        build_message(subject="Follow-up", sender=f"Mia Meyer <{ALIAS}>", to="carla@customer.test"),
        folder="Sent",
    )
    assert run_sync(app, synced).ok
    assert ALIAS not in linking.own_addresses(me)


def test_someone_elses_account_page_is_not_reachable(me, synced, login, make_user):
    other = login(make_user())
    assert (
        other.post(
            f"/settings/accounts/{synced.id}/addresses", data={"address": "x@y.test"}
        ).status_code
        == 404
    )
