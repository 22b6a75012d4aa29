"""Group email (services/group_send.py, views/group_send.py): recipients from People, an
organization or a deal stage; one mail per person, paced by the provider preset, sent by the
worker's send tick through a real SMTP server (aiosmtpd); progress, failures, skipped
people, the daily limit, cancelling, and who may see a group email."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from extensions import db
from mailsync import send
from mailsync.providers import OTHER, get_provider
from models import (
    OUTGOING_FAILED,
    OUTGOING_QUEUED,
    OUTGOING_SENDING,
    OUTGOING_SENT,
    GroupSend,
    MailTemplate,
    MessagePerson,
    OutgoingMail,
    Thread,
)
from services import group_send, linking, outbox
from services.errors import ValidationError
from tests.test_send import sender, smtp_servers

__all__ = ["sender", "smtp_servers"]  # fixtures used by name: an account sending via aiosmtpd

FIRST_NAME_CHIP = '<span data-smart-field="person.first_name">First name</span>'
REFUSAL = "550 5.1.1 <p07@customer.test>: Recipient address rejected: User unknown"


# --------------------------------------------------------------------------- helpers


def make_template(owner, *, shared: bool = False, **fields) -> MailTemplate:
    values = dict(
        owner_id=owner.id,
        name="Spring offer",
        subject="Our spring offer",
        body_html="<p>Hello,</p><p>our spring offer is here.</p>",
        shared=shared,
    )
    values.update(fields)
    template = MailTemplate(**values)
    db.session.add(template)
    db.session.commit()
    return template


def sendable_account(make_stored_account, user, *, provider: str = "other"):
    account = make_stored_account(user)
    account.smtp_host, account.smtp_port, account.provider = "smtp.invalid", 587, provider
    db.session.commit()
    return account


def people(make_person, owner, count: int, *, start: int = 1):
    return [
        make_person(owner, name=f"Person {n:02d}", emails=(f"p{n:02d}@customer.test",))
        for n in range(start, start + count)
    ]


def start_to(user, persons, template, account, *, now=None) -> GroupSend:
    """Start a group email to all `persons` through the service, as the picker's Send does."""
    return group_send.start(
        user,
        group_send.Source("persons", person_ids=tuple(p.id for p in persons)),
        chosen=[f"person:{p.id}" for p in persons],
        template_id=template.id,
        account_id=account.id,
        now=now,
    )


def picker(client, **query):
    response = client.get("/group-email/new", query_string=query)
    assert response.status_code == 200, response.data
    html = response.get_data(as_text=True)
    return html, re.findall(r'name="recipient" value="([^"]+)"', html)


def start_form(source: dict, keys, template, account) -> dict:
    return {**source, "recipient": list(keys), "template_id": template.id, "account_id": account.id}


def group_mails(group_id: int) -> list[OutgoingMail]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(OutgoingMail)
            .where(OutgoingMail.group_send_id == group_id)
            .order_by(OutgoingMail.send_at, OutgoingMail.id)
        )
    )


def the_group(response) -> GroupSend:
    assert response.status_code == 303, response.get_data(as_text=True)
    group_id = int(response.headers["Location"].rstrip("/").rpartition("/")[2])
    return db.session.get(GroupSend, group_id)


def send_everything(app, group_id: int) -> None:
    """Run the worker's send tick until the group has nothing waiting (send_at made due)."""
    for _ in range(10):
        db.session.execute(
            update(OutgoingMail)
            .where(OutgoingMail.group_send_id == group_id, OutgoingMail.state == OUTGOING_QUEUED)
            .values(send_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        db.session.commit()
        if not send.send_due(app, limit=50):
            return


# --------------------------------------------------------------------------- the test


@pytest.mark.imap
def test_thirty_people_one_refusal_individual_mails_linked_to_each_person(
    app, sender, make_person, login
):
    user, account, server, _mail_user = sender
    persons = [
        make_person(user, name=f"Kim{n:02d} Lee", emails=(f"p{n:02d}@customer.test",))
        for n in range(1, 31)
    ]
    server.handler.rcpt_answers["p07@customer.test"] = REFUSAL
    template = make_template(user, body_html=f"<p>Hello {FIRST_NAME_CHIP},</p><p>our offer.</p>")
    client = login(user)

    html, keys = picker(client, source="persons", q="customer.test")
    assert len(keys) == 30 and "p30@customer.test" in html
    group = the_group(
        client.post(
            "/group-email/",
            data=start_form({"source": "persons", "q": "customer.test"}, keys, template, account),
        )
    )
    assert group.total == 30
    send_everything(app, group.id)

    mails = group_mails(group.id)
    assert sorted(m.state for m in mails) == [OUTGOING_FAILED] + [OUTGOING_SENT] * 29
    failed = next(m for m in mails if m.state == OUTGOING_FAILED)
    assert failed.to == [["Kim07 Lee", "p07@customer.test"]]
    assert "550 5.1.1" in failed.error and "User unknown" in failed.error

    # The server got 29 mails, each with one envelope recipient and that person alone in
    # its headers: nobody sees anybody else.
    assert len(server.messages) == 29
    for received in server.messages:
        assert len(received.rcpt_tos) == 1
        (rcpt,) = received.rcpt_tos
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        assert [a.addr_spec for a in message["To"].addresses] == [rcpt]
        assert message["Cc"] is None and message["Bcc"] is None
        others = set(re.findall(rb"p\d\d@customer\.test", received.data)) - {rcpt.encode()}
        assert not others, (rcpt, others)
        # Each mail carries its own person's first name, filled by the worker; no chip left.
        number = rcpt[1:3]
        text = message.get_body(("plain",)).get_content()
        assert f"Hello Kim{number}," in text, text
        assert set(re.findall(r"Kim\d\d", text)) == {f"Kim{number}"}
        assert b"data-smart-field" not in received.data
    assert sorted(r.rcpt_tos[0] for r in server.messages) == sorted(
        f"p{n:02d}@customer.test" for n in range(1, 31) if n != 7
    )

    # Each sent mail is stored in a conversation of its own, linked to its person.
    by_address = {p.primary_email: p for p in persons}
    for mail in mails:
        if mail.state != OUTGOING_SENT:
            continue
        person = by_address[mail.to[0][1]]
        assert (mail.record_kind, mail.record_id) == ("person", person.id)
        linked = db.session.scalars(
            select(MessagePerson.person_id).where(MessagePerson.message_id == mail.message_id)
        ).all()
        assert linked == [person.id]
    assert len({m.thread_id for m in mails if m.state == OUTGOING_SENT}) == 29

    # The progress page says so, with the server's words for the one that failed.
    page = client.get(f"/group-email/{group.id}").get_data(as_text=True)
    assert "Done: 29 of 30 sent, 1 failed." in page
    assert 'data-failed-recipient="p07@customer.test"' in page
    assert "Recipient address rejected: User unknown" in page
    assert 'hx-trigger="every 2s"' not in page  # nothing left to wait for: no polling
    listed = client.get("/group-email/").get_data(as_text=True)
    assert "Done: 29 sent, 1 failed" in listed
    # The Outbox lists the refused one to edit and send again, not the group's sent mail.
    outbox_page = client.get("/mail/outbox").get_data(as_text=True)
    assert "p07@customer.test" in outbox_page and "p08@customer.test" not in outbox_page


@pytest.mark.imap
def test_a_deal_stage_group_links_each_sent_mail_to_its_deal_and_person(
    app, sender, make_person, make_deal, login
):
    user, account, server, _mail_user = sender
    ana, ben = people(make_person, user, 2)
    deals = [
        make_deal(user, title=title, stage="negotiation", person_id=person.id)
        for title, person in (("Alpha", ana), ("Beta", ben))
    ]
    chip = '<span data-smart-field="deal.title">Deal</span>'
    template = make_template(user, body_html=f"<p>About {chip}.</p>")
    client = login(user)
    source = {"source": "stage", "stage": "negotiation"}
    _html, keys = picker(client, **source)
    group = the_group(
        client.post("/group-email/", data=start_form(source, keys, template, account))
    )
    send_everything(app, group.id)
    for mail, deal, person in zip(group_mails(group.id), deals, (ana, ben), strict=True):
        assert mail.state == OUTGOING_SENT
        assert db.session.get(Thread, mail.thread_id).deal_id == deal.id
        linked = db.session.scalars(
            select(MessagePerson.person_id).where(MessagePerson.message_id == mail.message_id)
        ).all()
        assert linked == [person.id]
    bodies = {r.rcpt_tos[0]: r.data for r in server.messages}
    assert b"About Alpha." in bodies["p01@customer.test"]
    assert b"About Beta." in bodies["p02@customer.test"]


# --------------------------------------------------------------------------- pacing


@pytest.mark.parametrize("provider", ["gmail", "office365", "other"])
def test_mails_are_staggered_at_the_providers_pace(
    app, make_user, make_stored_account, make_person, provider
):
    user = make_user()
    account = sendable_account(make_stored_account, user, provider=provider)
    persons = people(make_person, user, 5)
    template = make_template(user)
    t0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    group = start_to(user, persons, template, account, now=t0)
    preset = get_provider(provider)
    interval = preset.send_interval_seconds()
    assert interval >= preset.send_pause_seconds and interval * preset.sends_per_minute >= 60
    assert group.pause_seconds == interval
    times = [m.send_at for m in group_mails(group.id)]
    assert times == [t0 + timedelta(seconds=i * interval) for i in range(5)]

    # The worker's tick takes only the mail that is due: a fake clock, no sleeping.
    assert len(outbox.claim_due(t0)) == 1
    assert outbox.claim_due(t0 + timedelta(seconds=interval - 1)) == []
    assert len(outbox.claim_due(t0 + timedelta(seconds=2 * interval))) == 2


def test_a_second_group_email_on_the_account_waits_its_turn(
    app, make_user, make_stored_account, make_person
):
    user = make_user()
    account = sendable_account(make_stored_account, user)
    persons = people(make_person, user, 4)
    template = make_template(user)
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    interval = OTHER.send_interval_seconds()
    groups = [
        start_to(user, pair, template, account, now=t0) for pair in (persons[:2], persons[2:])
    ]
    times = [m.send_at for g in groups for m in group_mails(g.id)]
    assert times == [t0 + timedelta(seconds=i * interval) for i in range(4)]


def test_other_gets_a_safe_default_pace():
    assert OTHER.sends_per_minute <= 10 and OTHER.send_interval_seconds() >= 6
    assert get_provider("office365").sends_per_minute == 30


# --------------------------------------------------------------------------- limits


@pytest.fixture
def sender_of(app, make_user, make_stored_account, make_person, login):
    """Return a function giving (account, template, client) of a user with `count` people."""

    def build(count: int):
        user = make_user()
        account = sendable_account(make_stored_account, user)
        people(make_person, user, count)
        return account, make_template(user), login(user)

    return build


def test_a_group_over_the_daily_send_limit_is_refused_up_front(app, sender_of):
    app.config["DAILY_SEND_LIMIT"] = 5
    account, template, client = sender_of(6)
    _html, keys = picker(client, source="persons", q="customer.test")
    source = {"source": "persons", "q": "customer.test"}
    response = client.post("/group-email/", data=start_form(source, keys, template, account))
    assert response.status_code == 422
    assert "you may send only 5 more in the next 24 hours" in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(OutgoingMail)) == 0
    assert db.session.scalar(select(func.count()).select_from(GroupSend)) == 0

    # Five fit; then mail waiting in the queue counts, so a second group is refused.
    five = client.post("/group-email/", data=start_form(source, keys[:5], template, account))
    assert five.status_code == 303
    response = client.post("/group-email/", data=start_form(source, keys[5:], template, account))
    assert response.status_code == 422
    assert "you may send only 0 more" in response.get_data(as_text=True)


def test_at_most_the_configured_number_of_recipients(app, sender_of):
    app.config["GROUP_SEND_MAX_RECIPIENTS"] = 3
    account, template, client = sender_of(4)
    html, keys = picker(client, source="persons", q="customer.test")
    assert len(keys) == 4 and html.count(" checked>") == 3
    assert "Only the first 3 are ticked" in html
    source = {"source": "persons", "q": "customer.test"}
    response = client.post("/group-email/", data=start_form(source, keys, template, account))
    assert response.status_code == 422
    assert "You chose 4 recipients; a group email goes to at most 3." in response.get_data(
        as_text=True
    )
    assert db.session.scalar(select(func.count()).select_from(OutgoingMail)) == 0


def test_template_and_account_are_required_and_must_be_usable(
    app, make_user, make_stored_account, make_person, login
):
    user, stranger = make_user(), make_user()
    account = sendable_account(make_stored_account, user)
    theirs = sendable_account(make_stored_account, stranger)
    (person,) = people(make_person, user, 1)
    private = make_template(stranger, name="Not yours")
    shared = make_template(stranger, name="Team offer", shared=True)
    client = login(user)
    source = {"source": "persons", "person_id": person.id}
    html, keys = picker(client, **source)
    assert "Team offer" in html and "Not yours" not in html
    response = client.post("/group-email/", data=start_form(source, keys, private, theirs))
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    assert "Choose a template." in text and "Choose one of your mail accounts" in text
    response = client.post("/group-email/", data=start_form(source, keys, shared, account))
    group = the_group(response)
    assert group.subject == shared.subject


def test_recipients_with_empty_smart_fields_are_named_and_nothing_is_queued(
    app, make_user, make_stored_account, make_person, login
):
    user = make_user()
    account = sendable_account(make_stored_account, user)
    make_person(user, name="Pia Phone", emails=("pia@customer.test",), phone="+49 30 1234")
    make_person(user, name="Nils Nophone", emails=("nils@customer.test",))
    chip = '<span data-smart-field="person.phone">Phone</span>'
    template = make_template(user, body_html=f"<p>Call me back at {chip}.</p>")
    client = login(user)
    source = {"source": "persons", "q": "customer.test"}
    _html, keys = picker(client, **source)
    response = client.post("/group-email/", data=start_form(source, keys, template, account))
    assert response.status_code == 422
    text = response.get_data(as_text=True)
    assert "These recipients have smart fields with no value: Nils Nophone (Phone)." in text
    assert "Pia Phone (" not in text
    assert db.session.scalar(select(func.count()).select_from(OutgoingMail)) == 0
    assert db.session.scalar(select(func.count()).select_from(GroupSend)) == 0


def test_each_mail_gets_the_templates_files(app, make_user, make_stored_account, make_person):
    from mailsync.blobstore import app_blob_store
    from models import TemplateAttachment

    user = make_user()
    account = sendable_account(make_stored_account, user)
    persons = people(make_person, user, 2)
    template = make_template(user)
    sha = app_blob_store(app).put(b"%PDF-1.4 price list")
    template.attachments.append(
        TemplateAttachment(
            filename="prices.pdf", content_type="application/pdf", size=19, blob_sha256=sha
        )
    )
    db.session.commit()
    group = start_to(user, persons, template, account)
    for mail in group_mails(group.id):
        assert [(a.filename, a.blob_sha256) for a in mail.attachments] == [("prices.pdf", sha)]


# --------------------------------------------------------------------------- recipients


def test_people_without_an_address_or_blocked_are_skipped_with_the_reason(
    app, make_user, make_stored_account, make_person, login
):
    user = make_user()
    account = sendable_account(make_stored_account, user)
    ok = make_person(user, name="Olga Ok", emails=("olga@customer.test",))
    bare = make_person(user, name="Nina Noaddress")
    blocked = make_person(user, name="Sam Spammer", emails=("sam@junk.test",))
    linking.block(user, "@junk.test")
    template = make_template(user)
    client = login(user)
    source = {"source": "persons", "person_id": [ok.id, bare.id, blocked.id]}
    html, keys = picker(client, **source)
    assert keys == [f"person:{ok.id}"]
    assert "<strong>Nina Noaddress</strong>: No email address." in html
    assert "<strong>Sam Spammer</strong>: sam@junk.test is blocked" in html
    # Keys of skipped people, forged into the form, are ignored.
    forged = [*keys, f"person:{bare.id}", f"person:{blocked.id}"]
    group = the_group(
        client.post("/group-email/", data=start_form(source, forged, template, account))
    )
    assert [m.to for m in group_mails(group.id)] == [[["Olga Ok", "olga@customer.test"]]]


def test_a_deal_stage_writes_to_its_deals_people_each_mail_on_its_deal(
    app, make_user, make_stored_account, make_person, make_deal, login
):
    user = make_user()
    account = sendable_account(make_stored_account, user)
    ana, ben = people(make_person, user, 2)
    first = make_deal(user, title="Alpha", stage="proposal", person_id=ana.id)
    second = make_deal(user, title="Beta", stage="proposal", person_id=ben.id)
    make_deal(user, title="Zeta for Ana", stage="proposal", person_id=ana.id)
    make_deal(user, title="Nobody", stage="proposal")
    make_deal(user, title="Elsewhere", stage="qualified", person_id=ben.id)
    template = make_template(user)
    client = login(user)
    board = client.get("/deals/board").get_data(as_text=True)
    assert "/group-email/new?source=stage&amp;stage=proposal" in board
    html, keys = picker(client, source="stage", stage="proposal")
    assert keys == [f"deal:{first.id}", f"deal:{second.id}"]
    assert "<strong>Person 01</strong>: Already gets the mail for Alpha." in html
    assert "<strong>Nobody</strong>: This deal has no person to write to." in html
    source = {"source": "stage", "stage": "proposal"}
    group = the_group(
        client.post("/group-email/", data=start_form(source, keys, template, account))
    )
    assert [(m.record_kind, m.record_id, m.to[0][1]) for m in group_mails(group.id)] == [
        ("deal", first.id, "p01@customer.test"),
        ("deal", second.id, "p02@customer.test"),
    ]


def test_an_organization_writes_to_its_people(
    app, make_user, make_stored_account, make_person, make_organization, login
):
    user = make_user()
    sendable_account(make_stored_account, user)
    org = make_organization(user, name="Acme")
    make_person(user, name="Ida Inside", emails=("ida@acme.test",), organization_id=org.id)
    make_person(user, name="Otto Outside", emails=("otto@other.test",))
    client = login(user)
    assert "source=organization" in client.get(f"/organizations/{org.id}").get_data(as_text=True)
    html, keys = picker(client, source="organization", organization_id=org.id)
    assert "People of Acme" in html and "Ida Inside" in html and "Otto Outside" not in html
    assert len(keys) == 1


def test_the_people_list_offers_a_group_email_for_ticked_people_and_the_filter(
    app, make_user, make_person, login
):
    user = make_user()
    people(make_person, user, 2)
    html = login(user).get("/persons/?q=customer").get_data(as_text=True)
    assert 'name="person_id"' in html
    assert "/group-email/new?source=persons&amp;q=customer" in html


# --------------------------------------------------------------------------- cancel


def test_cancel_takes_back_what_has_not_been_sent(
    app, make_user, make_stored_account, make_person, login
):
    user = make_user()
    account = sendable_account(make_stored_account, user)
    persons = people(make_person, user, 4)
    template = make_template(user)
    client = login(user)
    source = {"source": "persons", "person_id": [p.id for p in persons]}
    _html, keys = picker(client, **source)
    group = the_group(
        client.post("/group-email/", data=start_form(source, keys, template, account))
    )
    # The worker has begun the first one: it is past taking back.
    (claimed,) = outbox.claim_due(datetime.now(UTC) + timedelta(seconds=1))
    response = client.post(f"/group-email/{group.id}/cancel")
    assert response.status_code == 303
    mails = group_mails(group.id)
    assert [(m.id, m.state) for m in mails] == [(claimed, OUTGOING_SENDING)]
    page = client.get(f"/group-email/{group.id}").get_data(as_text=True)
    assert "Cancelled: 3 mails will not be sent." in page
    assert "Cancelled: 0 sent, 3 cancelled" in client.get("/group-email/").get_data(as_text=True)
    assert "Cancelled: 0 of 4 sent, 3 cancelled." in page
    assert outbox.claim_due(datetime.now(UTC) + timedelta(hours=1)) == []


# --------------------------------------------------------------------------- authorization


def test_another_user_cannot_see_or_cancel_a_group_email(
    app, make_user, make_stored_account, make_person, login
):
    user, other, admin = make_user(), make_user(), make_user(is_admin=True)
    account = sendable_account(make_stored_account, user)
    persons = people(make_person, user, 2)
    template = make_template(user)
    source = {"source": "persons", "person_id": [p.id for p in persons]}
    owner = login(user)
    _html, keys = picker(owner, **source)
    group = the_group(owner.post("/group-email/", data=start_form(source, keys, template, account)))
    for client in (login(other), login(admin)):
        assert client.get(f"/group-email/{group.id}").status_code == 404
        assert client.get(f"/group-email/{group.id}/progress").status_code == 404
        assert client.post(f"/group-email/{group.id}/cancel").status_code == 404
        assert "Our spring offer" not in client.get("/group-email/").get_data(as_text=True)
    assert [m.state for m in group_mails(group.id)] == [OUTGOING_QUEUED] * 2
    # Waiting group mail is on the group's page, not one row each in the Outbox.
    assert "p01@customer.test" not in owner.get("/mail/outbox").get_data(as_text=True)
    assert owner.get(f"/group-email/{group.id}/progress").status_code == 200


def test_people_the_user_cannot_see_are_never_recipients(
    app, make_user, make_stored_account, make_person, make_organization, login
):
    user, other = make_user(), make_user()
    account = sendable_account(make_stored_account, user)
    hidden = make_person(other, name="Hidden Hugo", emails=("hugo@x.test",), visibility="owner")
    org = make_organization(other, visibility="owner")
    template = make_template(user)
    client = login(user)
    source = {"source": "persons", "person_id": hidden.id}
    html, keys = picker(client, **source)
    assert keys == [] and "Hidden Hugo" not in html
    response = client.post(
        "/group-email/", data=start_form(source, [f"person:{hidden.id}"], template, account)
    )
    assert response.status_code == 422 and "Choose at least one recipient." in response.get_data(
        as_text=True
    )
    new = client.get(
        "/group-email/new", query_string={"source": "organization", "organization_id": org.id}
    )
    assert new.status_code == 404


def test_an_unknown_source_is_a_plain_message(app, make_user, login):
    client = login(make_user())
    response = client.get("/group-email/new?source=stage&stage=nope", follow_redirects=True)
    assert response.status_code == 200
    assert "Start a group email from People, an organization or a deal stage." in response.get_data(
        as_text=True
    )


def test_start_refuses_without_queuing_anything(app, make_user, make_stored_account, make_person):
    user = make_user()
    account = make_stored_account(user)  # no SMTP server yet
    (person,) = people(make_person, user, 1)
    template = make_template(user)
    with pytest.raises(ValidationError) as refused:
        start_to(user, [person], template, account)
    assert "no outgoing (SMTP) server" in refused.value.errors["account"]
    assert db.session.scalar(select(func.count()).select_from(GroupSend)) == 0
    assert db.session.scalar(select(func.count()).select_from(Thread)) == 0
