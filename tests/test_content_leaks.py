"""Leaks inside pages a teammate may open, found by playing a hostile teammate.

The route-level matrices (test_authorization_matrix, test_records_access) prove that B gets a
404 for A's private ids. These tests look at what B's *allowed* pages and files contain: A's
owner-only record named on a public record's page, a message A's blocks hide inside a
conversation A shared, a shared conversation reached only through such a hidden message.
Each test checks both sides: what B must not see, and what B (or A) still sees.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from extensions import db
from mailsync.parse import parse_message
from models import BlockedAddress
from services import linking
from services.conversations import cid_token, load_raw
from tests.mail_fixtures import PNG_1X1, build_message

SECRET = "Zvelkorn"  # in every name and text A keeps from B


@pytest.fixture
def alice(make_user):
    return make_user(name="Alice Owner")


@pytest.fixture
def bob(make_user):
    return make_user(name="Bob Teammate")


# --------------------------------------------------------------------------- record pages


@pytest.fixture
def linked_records(alice, make_person, make_organization, make_deal, make_lead, make_project):
    """Public records of A's that link to A's owner-only person, organization and deal."""
    person = make_person(alice, name=f"{SECRET} Person", visibility="owner")
    organization = make_organization(alice, name=f"{SECRET} Org", visibility="owner")
    deal = make_deal(alice, title=f"{SECRET} Deal", visibility="owner")
    links = {"person_id": person.id, "organization_id": organization.id}
    return {
        "deal": make_deal(alice, title="Open deal", **links),
        "lead": make_lead(alice, title="Open lead", deal_id=deal.id, **links),
        "project": make_project(alice, title="Open project", **links),
        "person": make_person(alice, name="Open person", organization_id=organization.id),
    }


def _record_urls(records) -> list[str]:
    urls = ["/deals/", "/deals/board", "/leads/", "/projects/", "/persons/"]
    for kind, record in records.items():
        urls += [f"/{kind}s/{record.id}", f"/{kind}s/{record.id}/summary"]
    return urls


def test_public_records_name_linked_private_records_only_to_who_can_open_them(
    linked_records, alice, bob, login
):
    as_bob, as_alice = login(bob), login(alice)
    for url in _record_urls(linked_records):
        response = as_bob.get(url)
        assert response.status_code == 200, url
        text = response.get_data(as_text=True)
        assert SECRET not in text, url
        assert "Open" in text, url  # the public record itself still shows
    # The owner still sees every link, on the page and in the lists.
    deal_page = as_alice.get(f"/deals/{linked_records['deal'].id}").get_data(as_text=True)
    assert f"{SECRET} Person" in deal_page and f"{SECRET} Org" in deal_page
    lead_page = as_alice.get(f"/leads/{linked_records['lead'].id}").get_data(as_text=True)
    assert f"{SECRET} Deal" in lead_page
    board = as_alice.get("/deals/board").get_data(as_text=True)
    assert f"{SECRET} Org · {SECRET} Person" in board


def test_a_linked_record_made_public_shows_to_teammates(linked_records, alice, bob, login):
    person = linked_records["deal"].person
    person.visibility = "everyone"
    db.session.commit()
    page = login(bob).get(f"/deals/{linked_records['deal'].id}").get_data(as_text=True)
    assert f"{SECRET} Person" in page
    assert f"{SECRET} Org" not in page


# --------------------------------------------------------------------------- blocked messages


@pytest.fixture
def shared_with_blocked(alice, make_stored_account, make_raw_message, make_deal):
    """A's shared conversation on a public deal: one visible message, one A's blocks hide."""
    account = make_stored_account(alice)
    visible = make_raw_message(
        account,
        build_message(
            subject="Terms",
            sender="Carla <carla@customer.test>",
            to=account.email_address,
            text="Visible terms.",
            attachments=(("terms.pdf", "application/pdf", b"%PDF visible"),),
        ),
        shared=True,
    )
    visible.thread.deal_id = make_deal(alice, title="Open deal").id
    hidden = make_raw_message(
        account,
        build_message(
            subject=f"{SECRET} offer",
            sender="Spam <spam@junk.test>",
            to=account.email_address,
            text=f"{SECRET} body.",
            html=f"<p>{SECRET}</p><img src='cid:logo'>",
            inline_images=(("logo", PNG_1X1),),
            attachments=((f"{SECRET}.pdf", "application/pdf", f"%PDF {SECRET}".encode()),),
        ),
        thread=visible.thread,
    )
    db.session.commit()
    linking.block(alice, "spam@junk.test")
    db.session.refresh(hidden)
    assert hidden.blocked and not hidden.thread.blocked
    return visible, hidden


def _message_urls(message) -> list[str]:
    parts = parse_message(load_raw(message)).attachments
    urls = [f"/mail/messages/{message.id}/raw"]
    urls += [f"/mail/messages/{message.id}/attachments/{part.part_id}" for part in parts]
    urls += [f"/mail/compose?reply={message.id}&kind={kind}" for kind in ("reply", "forward")]
    return urls


def test_teammate_cannot_open_a_blocked_message_of_a_shared_conversation(
    shared_with_blocked, alice, bob, login
):
    visible, hidden = shared_with_blocked
    as_bob, as_alice = login(bob), login(alice)
    conversation = as_bob.get(f"/mail/threads/{visible.thread_id}")
    assert conversation.status_code == 200
    assert "Visible terms." in conversation.get_data(as_text=True)
    assert SECRET not in conversation.get_data(as_text=True)
    blocked_urls = _message_urls(hidden) + [
        f"/mail/messages/{hidden.id}/inline/{cid_token('logo')}"
    ]
    for url in blocked_urls:
        response = as_bob.get(url)
        assert response.status_code == 404, url
        assert SECRET.encode() not in response.data, url
    # A forward started from the hidden message does not copy its attachment either.
    created = as_bob.post(
        "/mail/drafts",
        data={"source_message_id": str(hidden.id), "reply_kind": "forward", "subject": "Fwd"},
    )
    assert created.status_code == 404
    # The visible message stays open to B; the hidden one stays open to its owner.
    for url in _message_urls(visible):
        assert as_bob.get(url).status_code == 200, url
    for url in blocked_urls:
        response = as_alice.get(url)
        assert response.status_code == 200, url
    assert SECRET.encode() in as_alice.get(f"/mail/messages/{hidden.id}/raw").data


def test_a_hidden_message_neither_names_nor_dates_a_shared_conversation(
    alice, bob, login, make_stored_account, make_raw_message, make_deal
):
    """A conversation keeps the subject of the message that started it and the date of its
    newest message. When A's blocks hide those messages, the record panel and the page B
    opens name and date the conversation from the messages B can read."""
    account = make_stored_account(alice)
    hidden = make_raw_message(
        account,
        build_message(
            subject=f"{SECRET} offer",
            sender="Spam <spam@junk.test>",
            to=account.email_address,
            date=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        ),
        shared=True,
    )
    deal = make_deal(alice, title="Open deal")
    hidden.thread.deal_id = deal.id
    make_raw_message(
        account,
        build_message(
            subject="Terms for spring",
            sender="Carla <carla@customer.test>",
            to=account.email_address,
            date=datetime(2026, 3, 9, 9, 0, tzinfo=UTC),
        ),
        thread=hidden.thread,
    )
    make_raw_message(
        account,
        build_message(
            subject=f"Re: {SECRET} offer",
            sender="Spam <spam@junk.test>",
            to=account.email_address,
            date=datetime(2026, 3, 27, 9, 0, tzinfo=UTC),
        ),
        thread=hidden.thread,
    )
    db.session.commit()
    thread_id = hidden.thread_id
    panel_url = f"/mail/records/deal/{deal.id}/conversations"
    as_bob = login(bob)
    before = as_bob.get(panel_url).get_data(as_text=True)
    assert SECRET in before and "2026-03-27" in before  # what the block is to hide

    linking.block(alice, "spam@junk.test")
    for client in (as_bob, login(alice)):
        panel = client.get(panel_url).get_data(as_text=True)
        assert "Terms for spring" in panel and "2026-03-09" in panel
        assert SECRET not in panel and "2026-03-27" not in panel
        page = client.get(f"/mail/threads/{thread_id}").get_data(as_text=True)
        assert "Terms for spring" in page
        assert SECRET not in page


def test_a_hidden_message_does_not_order_the_record_panel(
    alice, bob, login, make_stored_account, make_raw_message, make_deal
):
    """Conversations come newest first by the date of the mail one can read: a reply A's
    blocks hide must not move its conversation up the panel (B would learn that hidden mail
    came in, and when)."""
    account = make_stored_account(alice)
    deal = make_deal(alice, title="Open deal")

    def mail(subject: str, sender: str, day: int, thread=None):
        message = make_raw_message(
            account,
            build_message(
                subject=subject,
                sender=sender,
                to=account.email_address,
                date=datetime(2026, 3, day, 9, 0, tzinfo=UTC),
            ),
            shared=True,
            thread=thread,
        )
        message.thread.deal_id = deal.id
        message.thread.in_inbox = True
        return message

    older = mail("Terms for spring", "Carla <carla@customer.test>", 9)
    mail("Re: Terms for spring", "Spam <spam@junk.test>", 27, thread=older.thread)
    mail("Delivery dates", "Carla <carla@customer.test>", 20)
    db.session.commit()
    linking.block(alice, "spam@junk.test")
    for client in (login(bob), login(alice)):
        panel = client.get(f"/mail/records/deal/{deal.id}/conversations").get_data(as_text=True)
        assert panel.index("Delivery dates") < panel.index("Terms for spring")
    inbox = login(alice).get("/mail/").get_data(as_text=True)  # the owner's list agrees
    assert inbox.index("Delivery dates") < inbox.index("Terms for spring")
    linking.unblock(alice, db.session.scalar(select(BlockedAddress.id)))
    panel = login(bob).get(f"/mail/records/deal/{deal.id}/conversations").get_data(as_text=True)
    assert panel.index("Terms for spring") < panel.index("Delivery dates")  # shown again


# --------------------------------------------------------------------------- links through hidden mail


@pytest.fixture
def linked_by_hidden_mail(alice, make_stored_account, make_raw_message, make_person):
    """A's shared conversation whose only public person is on a message A's blocks hide; the
    message that shows is from A's owner-only contact."""
    account = make_stored_account(alice)
    vendor = make_person(alice, name="Noisy Vendor", emails=("spam@junk.test",))
    make_person(alice, name=f"{SECRET} Contact", visibility="owner", emails=("quiet@cust.test",))
    first = make_raw_message(
        account,
        build_message(subject="Hello", sender="Spam <spam@junk.test>", to=account.email_address),
        shared=True,
    )
    make_raw_message(
        account,
        build_message(
            subject="Re: Hello",
            sender="Quiet <quiet@cust.test>",
            to=account.email_address,
            text=f"{SECRET} plans.",
        ),
        thread=first.thread,
    )
    db.session.commit()
    return vendor, first.thread


def test_a_hidden_message_does_not_open_a_shared_conversation_to_teammates(
    linked_by_hidden_mail, alice, bob, login
):
    vendor, thread = linked_by_hidden_mail
    as_bob = login(bob)
    panel_url = f"/mail/records/person/{vendor.id}/conversations"
    # Before the block, the vendor's message links the shared conversation to a person B
    # can open: B reads it there, as sharing means.
    assert "Hello" in as_bob.get(panel_url).get_data(as_text=True)
    assert as_bob.get(f"/mail/threads/{thread.id}").status_code == 200

    linking.block(alice, "spam@junk.test")
    panel = as_bob.get(panel_url)
    assert panel.status_code == 200
    assert "Hello" not in panel.get_data(as_text=True)
    conversation = as_bob.get(f"/mail/threads/{thread.id}")
    assert conversation.status_code == 404
    assert SECRET not in conversation.get_data(as_text=True)
    # The owner still opens their conversation.
    assert SECRET in login(alice).get(f"/mail/threads/{thread.id}").get_data(as_text=True)


# --------------------------------------------------------------------------- editing around hidden links


def test_a_teammates_edit_keeps_the_links_they_cannot_see(linked_records, alice, bob, login):
    deal, person = linked_records["deal"], linked_records["person"]
    hidden_person, hidden_org = deal.person, deal.organization
    # What B's edit forms send: their pickers have no choice for A's private records.
    deal_form = {"title": "Renamed by Bob", "value": "5", "stage": deal.stage}
    blank_links = {"person_id": "", "organization_id": ""}
    as_bob = login(bob)
    assert as_bob.post(f"/deals/{deal.id}", data=deal_form | blank_links).status_code == 303
    assert as_bob.post(f"/persons/{person.id}", data={"name": "Renamed"}).status_code == 303
    db.session.expire_all()
    assert deal.title == "Renamed by Bob"
    assert (deal.person, deal.organization) == (hidden_person, hidden_org)
    assert person.name == "Renamed" and person.organization == hidden_org
    # The owner, who sees the links, still removes them with the same blank fields.
    assert login(alice).post(f"/deals/{deal.id}", data=deal_form | blank_links).status_code == 303
    db.session.expire_all()
    assert (deal.person, deal.organization) == (None, None)


# --------------------------------------------------------------------------- the original's Bcc


def test_show_original_leaves_the_owners_bcc_out_for_teammates(
    alice, bob, login, make_stored_account, make_raw_message, make_deal
):
    account = make_stored_account(alice)
    # A Sent copy from another mail program keeps its Bcc line (here folded over two lines).
    raw = build_message(
        subject="Proposal",
        sender=f"Alice <{account.email_address}>",
        to="Carla <carla@customer.test>",
        text="Our proposal.",
    )
    head, body = raw.split(b"\r\n\r\n", 1)
    bcc = f"Bcc: {SECRET} Boss <boss@team.test>,\r\n rival@{SECRET}.test".encode()
    raw = head + b"\r\n" + bcc + b"\r\n\r\n" + body
    sent = make_raw_message(account, raw, shared=True)
    sent.thread.deal_id = make_deal(alice, title="Open deal").id
    db.session.commit()
    url = f"/mail/messages/{sent.id}/raw"
    original = login(bob).get(url)
    assert original.status_code == 200
    assert SECRET.encode() not in original.data
    # Everything else of the original is there, the body byte for byte.
    assert original.data == head + b"\r\n\r\n" + body
    assert login(alice).get(url).data == raw  # the owner gets it whole


# --------------------------------------------------------------------------- mail gone from the mailbox


def _gone_from_the_mailbox(*messages):
    """What the sync does when messages left every folder of the mailbox (deleted there)."""
    from datetime import UTC, datetime

    from mailsync import store

    for message in messages:
        message.deleted_at = message.orphaned_at = datetime.now(UTC)
    db.session.commit()
    store.refresh_threads({message.thread_id for message in messages})
    db.session.commit()


def test_a_conversation_deleted_in_the_mailbox_leaves_the_record_pages(
    shared_with_blocked, alice, bob, login
):
    visible, hidden = shared_with_blocked
    deal_id, thread_id = visible.thread.deal_id, visible.thread_id
    panel_url = f"/mail/records/deal/{deal_id}/conversations"
    as_bob, as_alice = login(bob), login(alice)
    assert "Terms" in as_bob.get(panel_url).get_data(as_text=True)

    # Only the message A's blocks hide is left: the thread row is not marked blocked again.
    _gone_from_the_mailbox(visible)
    assert not hidden.thread.blocked and hidden.thread.deleted_at is None
    assert "Terms" not in as_bob.get(panel_url).get_data(as_text=True)
    assert as_bob.get(f"/mail/threads/{thread_id}").status_code == 404

    # Nothing left at all: gone from the owner's record page too, until garbage collection.
    _gone_from_the_mailbox(hidden)
    for client in (as_bob, as_alice):
        panel = client.get(panel_url).get_data(as_text=True)
        assert "Terms" not in panel and SECRET not in panel
    conversation = as_bob.get(f"/mail/threads/{thread_id}")
    assert conversation.status_code == 404 and "Terms" not in conversation.get_data(as_text=True)
