"""Linking and blocking applied to stored mail; mail visibility through services.access."""

import pytest
from sqlalchemy import func, select
from werkzeug.exceptions import NotFound

from extensions import db
from models import PastLinkOffer, Thread
from services import access, linking
from services.preferences import update_preferences


@pytest.fixture
def me(make_user):
    return make_user(email="me@team.test", name="Me")


@pytest.fixture
def teammate(make_user):
    return make_user(email="mate@team.test", name="Mate")


@pytest.fixture
def account(me, make_stored_account):
    return make_stored_account(me)


def test_auto_link_to_the_only_open_deal(me, account, make_person, make_deal, make_stored_message):
    carla = make_person(me, emails=("carla@customer.test",))
    deal = make_deal(me, person_id=carla.id)
    make_deal(me, person_id=carla.id, status="won")  # won deals collect no new mail
    message = make_stored_message(account)
    linking.auto_link_thread(message.thread, me)
    assert message.thread.deal_id == deal.id and not message.thread.needs_link_choice


def test_several_open_items_ask_to_choose(
    me, account, make_person, make_deal, make_lead, make_stored_message
):
    carla = make_person(me, emails=("carla@customer.test",))
    make_deal(me, person_id=carla.id)
    make_lead(me, person_id=carla.id)
    message = make_stored_message(account)
    linking.auto_link_thread(message.thread, me)
    assert message.thread.deal_id is None and message.thread.lead_id is None
    assert message.thread.needs_link_choice


def test_manual_mode_links_nothing(me, account, make_person, make_deal, make_stored_message):
    update_preferences(me, {"auto_linking": "manual"})
    carla = make_person(me, emails=("carla@customer.test",))
    make_deal(me, person_id=carla.id)
    message = make_stored_message(account)
    linking.auto_link_thread(message.thread, me)
    assert message.thread.deal_id is None and not message.thread.needs_link_choice


def test_link_replaces_any_other_link(me, account, make_deal, make_project, make_stored_message):
    thread = make_stored_message(account).thread
    linking.link_thread(thread, "deal", make_deal(me).id)
    project = make_project(me)
    linking.link_thread(thread, "project", project.id)
    assert thread.deal_id is None and thread.project_id == project.id


def test_block_hides_and_unblock_restores(me, account, make_stored_message):
    alone = make_stored_message(account, sender=("Spam", "spam@example.com"))
    with_cc = make_stored_message(
        account, sender=("Spam", "spam@example.com"), cc=(("Carla", "carla@customer.test"),)
    )
    entry = linking.block(me, "@Example.com")
    db.session.refresh(alone)
    db.session.refresh(with_cc)
    assert alone.blocked and alone.thread.blocked
    assert not with_cc.blocked and not with_cc.thread.blocked
    linking.unblock(me, entry.id)
    db.session.refresh(alone)
    assert not alone.blocked and not alone.thread.blocked


def test_past_conversations_offer_and_link(me, account, make_person, make_stored_message):
    make_stored_message(account, sender=("Dan", "dan@customer.test"))
    person = make_person(me, name="Dan")
    assert linking.count_past_conversations(me, person, "dan@customer.test") == 1
    assert linking.link_past_conversations(me, person, "dan@customer.test") == 1
    assert linking.count_past_conversations(me, person, "dan@customer.test") == 0


def test_listing_offers_leaves_out_stale_ones_without_writing(
    me, account, make_person, make_stored_message
):
    make_stored_message(account, sender=("Dan", "dan@customer.test"))
    person = make_person(me, name="Dan", emails=("dan@customer.test",))
    linking.remember_past_link_offers(me, person, ["dan@customer.test"])
    assert [o.count for o in linking.past_link_offers(me, person_id=person.id)] == [1]

    db.session.delete(person.emails[0])  # the person lost the address
    db.session.commit()
    assert linking.past_link_offers(me, person_id=person.id) == []
    db.session.rollback()
    # Pages list offers on GET: listing leaves the row alone (a read writes nothing).
    assert db.session.scalar(select(func.count()).select_from(PastLinkOffer)) == 1


def test_private_thread_visible_only_to_owner_even_admins(
    me, teammate, make_user, account, make_person, make_deal, make_stored_message
):
    admin = make_user(is_admin=True)
    carla = make_person(me, emails=("carla@customer.test",))
    deal = make_deal(me, person_id=carla.id)
    thread = make_stored_message(account).thread
    linking.link_thread(thread, "deal", deal.id)
    assert access.thread_for_viewer(me, thread.id) == (thread, True)
    for other in (teammate, admin):
        with pytest.raises(NotFound):
            access.thread_for_viewer(other, thread.id)
        assert db.session.scalars(access.record_threads(other, "deal", deal.id)).all() == []


def test_shared_thread_visible_to_teammates_who_can_access_the_record(
    me, teammate, account, make_person, make_deal, make_stored_message
):
    carla = make_person(me, emails=("carla@customer.test",))
    open_deal = make_deal(me, person_id=carla.id)
    secret_deal = make_deal(me, visibility="owner")
    shared = make_stored_message(account, shared=True).thread
    linking.link_thread(shared, "deal", open_deal.id)
    assert access.thread_for_viewer(teammate, shared.id) == (shared, False)
    assert db.session.scalars(access.record_threads(teammate, "deal", open_deal.id)).all() == [
        shared
    ]
    assert db.session.scalars(access.record_threads(teammate, "person", carla.id)).all() == [shared]
    # linked only to an owner-only deal and to nobody the teammate can see: hidden
    other = make_stored_message(account, shared=True, sender=("X", "x@elsewhere.test")).thread
    linking.link_thread(other, "deal", secret_deal.id)
    with pytest.raises(NotFound):
        access.thread_for_viewer(teammate, other.id)
    # the teammate never sees the owner's Mail tab
    assert db.session.scalars(access.owned_threads(teammate)).all() == []
    assert set(db.session.scalars(access.owned_threads(me))) == set(
        db.session.scalars(select(Thread))
    )
