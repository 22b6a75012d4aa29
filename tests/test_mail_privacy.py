"""The audit's privacy leaks between teammates, reproduced over HTTP (issue 9, items 1 and 2).

A syncs mail with a customer. Some of it is shared but linked only to A's owner-only deal of a
public organization; some is private. B, a teammate, must never reach any of it: not by making
a person with the customer's address and linking "past conversations", not through the
organization's page.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from extensions import db
from models import MessagePerson, PersonEmail
from tests.mail_fixtures import build_message

HTMX_SIDEBAR = {"HX-Request": "true", "HX-Target": "conversation-sidebar"}
CUSTOMER = "dora@customer.test"


def offered_count(response) -> int:
    """The number on the "Link N past conversations" button (0 when there is no button)."""
    found = re.search(r"Link (\d+) past conversation", response.get_data(as_text=True))
    return int(found.group(1)) if found else 0


@pytest.fixture
def team(make_user, make_stored_account, make_raw_message, make_organization, make_deal, admin):
    a = make_user(name="Alice Owner", email="alice@team.test")
    b = make_user(name="Bob Teammate", email="bob@team.test")
    a_account = make_stored_account(a)
    b_account = make_stored_account(b)
    admin_account = make_stored_account(admin)
    org = make_organization(a, name="Customer Inc")  # everyone can open it
    private_deal = make_deal(
        a, title="Alice's quiet deal", visibility="owner", organization_id=org.id
    )

    def mail(account, subject, *, shared):
        raw = build_message(
            subject=subject,
            sender=f"Dora <{CUSTOMER}>",
            to=account.email_address,
            text=f"Body of {subject}",
        )
        return make_raw_message(account, raw, shared=shared)

    shared_on_private_deal = mail(a_account, "Alice shared quietly", shared=True)
    shared_on_private_deal.thread.deal_id = private_deal.id
    a_private = mail(a_account, "Alice private note", shared=False)
    admin_private = mail(admin_account, "Admin private note", shared=False)
    b_own = mail(b_account, "Bob's own thread", shared=False)
    b_earlier = mail(b_account, "Bob's earlier thread", shared=False)
    db.session.commit()
    return {
        "a": a,
        "b": b,
        "admin": admin,
        "org": org,
        "a_shared": shared_on_private_deal,
        "a_private": a_private,
        "admin_private": admin_private,
        "b_own": b_own,
        "b_earlier": b_earlier,
    }


def test_link_past_conversations_touches_only_the_acting_users_mailboxes(team, login):
    bob = login(team["b"])
    thread_id = team["b_own"].thread_id
    offer = bob.post(
        f"/mail/threads/{thread_id}/persons",
        data={"name": "Dora", "address": CUSTOMER},
        headers=HTMX_SIDEBAR,
    )
    assert offer.status_code == 200
    # Bob's mailboxes hold two threads with Dora: the one he is on (linked at once) and an
    # earlier one, offered. The count must not cover Alice's or the admin's mail (it would be
    # an oracle of their mail).
    assert offered_count(offer) == 1
    person_id = db.session.scalar(
        select(PersonEmail.person_id).where(PersonEmail.email == CUSTOMER)
    )
    linked = bob.post(
        f"/mail/threads/{thread_id}/past-links",
        data={"person_id": person_id, "address": CUSTOMER},
        headers=HTMX_SIDEBAR,
    )
    assert linked.status_code == 200
    linked_ids = set(
        db.session.scalars(
            select(MessagePerson.message_id).where(MessagePerson.person_id == person_id)
        )
    )
    assert linked_ids == {team["b_own"].id, team["b_earlier"].id}
    for other in ("a_shared", "a_private", "admin_private"):
        thread_id = team[other].thread_id
        assert bob.get(f"/mail/threads/{thread_id}").status_code == 404, other
    panel = bob.get(f"/mail/records/person/{person_id}/conversations").get_data(as_text=True)
    assert "Bob&#39;s own thread" in panel or "Bob's own thread" in panel
    for subject in ("Alice shared quietly", "Alice private note", "Admin private note"):
        assert subject not in panel


def test_adding_the_address_to_a_person_offers_only_my_conversations(team, login, make_person):
    bob = login(team["b"])
    dora = make_person(team["b"], name="Dora Customer")
    offer = bob.post(
        f"/mail/threads/{team['b_own'].thread_id}/person-emails",
        data={"person_id": dora.id, "address": CUSTOMER},
        headers=HTMX_SIDEBAR,
    )
    assert offer.status_code == 200
    # Bob's earlier thread (the one he is on is linked at once); before: Alice's and the
    # admin's too.
    assert offered_count(offer) == 1


def test_teammates_private_person_collects_none_of_my_mail(
    team, make_person, make_stored_account, make_raw_message
):
    """Sync links a mailbox's mail only to persons its owner can access."""
    from services import linking

    make_person(team["b"], name="Dora (Bob's)", emails=(CUSTOMER,), visibility="owner")
    found_for_alice = linking.persons_for_addresses([CUSTOMER], visible_to=team["a"].id)
    found_for_bob = linking.persons_for_addresses([CUSTOMER], visible_to=team["b"].id)
    assert found_for_alice == {} and list(found_for_bob) == [CUSTOMER]


def test_organization_panel_hides_threads_reached_only_through_a_private_deal(team, login):
    org_id = team["org"].id
    bob, alice = login(team["b"]), login(team["a"])
    url = f"/mail/records/organization/{org_id}/conversations"
    assert bob.get(f"/mail/threads/{team['a_shared'].thread_id}").status_code == 404
    response = bob.get(url)
    assert response.status_code == 200
    assert "Alice shared quietly" not in response.get_data(as_text=True)
    assert "Alice shared quietly" in alice.get(url).get_data(as_text=True)
