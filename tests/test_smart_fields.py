"""Smart fields (services/smart_fields.py): which records values come from, how the subject and
body are filled, and the real send path (the worker's send tick against aiosmtpd): filled
with the CRM's values, fallbacks, refusal of empty fields, escaping, no header injection."""

from __future__ import annotations

import html
import random
import re
from datetime import date
from decimal import Decimal

import pytest

from extensions import db
from mailsync import send
from models import OUTGOING_FAILED, OUTGOING_SENT, Message, OutgoingMail, Thread
from services import smart_fields
from services.errors import ValidationError
from tests import test_send
from tests.test_send import new_mail, parse, queue, state_of

# The sending account and its aiosmtpd server, as tests/test_send.py sets them up.
sender, smtp_servers = test_send.sender, test_send.smtp_servers


def chip(key: str, fallback: str | None = None) -> str:
    extra = f' data-fallback="{html.escape(fallback)}"' if fallback is not None else ""
    return f'<span data-smart-field="{key}"{extra}>{smart_fields.FIELDS[key].label}</span>'


def no_values() -> dict[str, str | None]:
    return dict.fromkeys(smart_fields.FIELDS)


# --------------------------------------------------------------------------- filling


def test_fill_replaces_chips_and_subject_tokens_and_escapes_values():
    values = no_values() | {
        "person.first_name": "<script>alert(1)</script>",
        "deal.value": "EUR 12,500",
        "organization.address": "1 Main St\nSpringfield",
    }
    filled = smart_fields.fill(
        "Offer for {{First name}}: {{Deal value}} {{Not a field}} {{deal stage|soon}}",
        f"<p>Hi {chip('person.first_name')},</p><p>{chip('organization.address')}</p>",
        values,
    )
    assert filled.subject == "Offer for <script>alert(1)</script>: EUR 12,500 {{Not a field}} soon"
    assert filled.body_html == (
        "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt;,</p><p>1 Main St<br>Springfield</p>"
    )
    assert filled.missing == []


def test_an_empty_field_takes_its_fallback_or_is_listed():
    filled = smart_fields.fill(
        "Hello {{First name}}",
        f"<p>Hi {chip('person.first_name', 'there')}, {chip('deal.title')}"
        f"{chip('deal.title')} {chip('sender.phone', '  ')}</p>",
        no_values(),
    )
    assert filled.body_html == "<p>Hi there,  </p>"
    assert filled.subject == "Hello"
    assert filled.missing == ["First name", "Deal", "Your phone"]
    marked = smart_fields.fill("", chip("deal.title"), no_values(), mark_missing=True)
    assert marked.body_html == '<mark class="smart-field-missing">[Deal]</mark>'


def test_an_unknown_chip_never_leaves_and_blocks():
    filled = smart_fields.fill("", '<span data-smart-field="person.ssn">SSN</span>', no_values())
    assert filled.body_html == "" and filled.missing == ["unknown field “person.ssn”"]


def test_a_value_with_line_breaks_stays_on_one_subject_line():
    values = no_values() | {"deal.title": "Q3\r\nBcc: victim@evil.example\u2028x\x00y"}
    assert smart_fields.fill("Re {{Deal}}", "", values).subject == (
        "Re Q3 Bcc: victim@evil.example x y"
    )


_LABELS = "|".join(re.escape(f.label) for f in smart_fields.FIELDS.values())
_TOKEN_OR_CHIP = re.compile(r"data-smart-field|\{\{(" + _LABELS + r")(\|[^{}]*)?\}\}", re.I)
_NASTY = ["<b>", "&amp;", "\n", '"', "{{", "}}", "Zoë", "", "|", "<script>", "x"]


def _reference(parts: list[tuple[str, str, str | None]], values) -> tuple[str, list[str]]:
    """The model: text is escaped as is; a field becomes its escaped value or fallback."""
    out, missing = [], []
    for kind, content, fallback in parts:
        if kind == "text":
            out.append(html.escape(content, quote=False))
            continue
        value = values[content] or (fallback or "").strip()
        if value:
            out.append("<br>".join(html.escape(line) for line in value.split("\n")))
        elif smart_fields.FIELDS[content].label not in missing:
            missing.append(smart_fields.FIELDS[content].label)
    return "".join(out), missing


@pytest.mark.parametrize("seed", range(150))
def test_fill_matches_a_reference_model(seed):
    """Property (seeded random, hypothesis is not installed): no chip or known token is ever
    left, values are escaped, and the result is what the reference model says."""
    rng = random.Random(seed)
    keys = list(smart_fields.FIELDS)

    def text() -> str:
        return "".join(rng.choice(_NASTY) for _ in range(rng.randint(0, 4))).replace("{{", "{")

    values = {
        key: rng.choice([None, "", text() + "v", "<script>alert(1)</script>"]) for key in keys
    }
    parts = []
    for _ in range(rng.randint(0, 6)):
        if rng.random() < 0.5:
            parts.append(("text", text(), None))
        else:
            fallback = re.sub("[{}]", "", text()) + "f"  # braces would end a subject token
            parts.append(("field", rng.choice(keys), rng.choice([None, "", fallback])))
    body = "".join(
        html.escape(content, quote=False) if kind == "text" else chip(content, fallback)
        for kind, content, fallback in parts
    )
    subject = "".join(
        one if kind == "text" else "{{" + smart_fields.FIELDS[content].label + (
            "|" + fallback if fallback else ""
        ) + "}}"
        for kind, content, fallback in parts
        for one in [content.replace("\n", " ").replace("|", "").replace("}", "")]
    )  # fmt: skip
    filled = smart_fields.fill(subject, body, values)
    expected_body, expected_missing = _reference(parts, values)
    assert filled.body_html == expected_body
    assert filled.missing == expected_missing
    assert not _TOKEN_OR_CHIP.search(filled.body_html)
    assert not _TOKEN_OR_CHIP.search(filled.subject)
    assert "<script>" not in filled.body_html
    assert "\n" not in filled.subject and "\r" not in filled.subject


# --------------------------------------------------------------------------- resolving


def test_values_from_the_deal_the_mail_is_written_from(
    app, make_user, make_stored_account, make_person, make_organization, make_deal
):
    user = make_user(name="Ana Pérez")
    user.phone = "+49 30 1234"
    account = make_stored_account(user, email_address="ana@team.test")
    org = make_organization(user, name="Acme GmbH", address="Hauptstr. 1\n10115 Berlin")
    carla = make_person(
        user, name="Carla de la Cruz", emails=("carla@customer.test",), organization_id=org.id,
        phone="+34 600",
    )  # fmt: skip
    deal = make_deal(
        user, title="Q3 order", value=Decimal("12500.00"), currency="EUR", stage="proposal",
        expected_close_date=date(2026, 12, 7), person_id=carla.id,
    )  # fmt: skip
    mail = new_mail(user, account, to=[["", "someone@else.test"]], record_kind="deal",
                    record_id=deal.id)  # fmt: skip
    assert smart_fields.values_for(mail) == {
        "person.name": "Carla de la Cruz",
        "person.first_name": "Carla",
        "person.last_name": "de la Cruz",
        "person.email": "carla@customer.test",
        "person.phone": "+34 600",
        "organization.name": "Acme GmbH",
        "organization.address": "Hauptstr. 1\n10115 Berlin",
        "deal.title": "Q3 order",
        "deal.value": "EUR 12,500",
        "deal.stage": "Proposal made",
        "deal.expected_close_date": "7 December 2026",
        "lead.title": None,
        "project.title": None,
        "sender.name": "Ana Pérez",
        "sender.email": "ana@team.test",
        "sender.phone": "+49 30 1234",
    }
    assert "Q3 order" in smart_fields.sources_for(mail).origin


def test_without_a_record_the_first_recipient_and_their_single_open_deal(
    app, make_user, make_stored_account, make_person, make_deal
):
    user = make_user()
    account = make_stored_account(user)
    carla = make_person(user, name="Carla", emails=("carla@customer.test",))
    make_deal(user, title="Won one", person_id=carla.id, status="won")
    deal = make_deal(user, title="Open one", value=Decimal("99.50"), person_id=carla.id)
    mail = new_mail(user, account, to=[["C", "Carla@Customer.test"], ["", "x@y.test"]])
    values = smart_fields.values_for(mail)
    assert values["person.first_name"] == "Carla" and values["person.last_name"] is None
    assert values["deal.title"] == "Open one" and values["deal.value"] == "USD 99.50"
    assert "carla@customer.test" in smart_fields.sources_for(mail).origin
    # Two open deals: none is guessed.
    make_deal(user, title="Another", person_id=carla.id)
    assert smart_fields.values_for(mail)["deal.title"] is None
    assert deal.id  # the first still exists


def test_from_an_organization_page_the_person_is_the_first_recipient(
    app, make_user, make_stored_account, make_person, make_organization
):
    user = make_user()
    account = make_stored_account(user)
    acme = make_organization(user, name="Acme")
    make_person(user, name="Bea Ortiz", emails=("bea@acme.test",), organization_id=acme.id)
    mail = new_mail(user, account, to=[["", "bea@acme.test"]], record_kind="organization",
                    record_id=acme.id)  # fmt: skip
    values = smart_fields.values_for(mail)
    assert (values["organization.name"], values["person.first_name"]) == ("Acme", "Bea")
    assert smart_fields.sources_for(mail).origin == (
        "the organization “Acme” this mail is written from, and Bea Ortiz, the person with "
        "the address bea@acme.test"
    )


def test_records_the_sender_may_not_see_give_no_values(
    app, make_user, make_stored_account, make_person, make_deal
):
    owner, sender_user = make_user(), make_user()
    account = make_stored_account(sender_user)
    private_person = make_person(
        owner, name="Secret", emails=("secret@customer.test",), visibility="owner"
    )
    private_deal = make_deal(owner, title="Hidden", visibility="owner")
    open_deal = make_deal(owner, title="Public", person_id=private_person.id)
    for record_kind, record_id in (("deal", private_deal.id), (None, None)):
        mail = new_mail(sender_user, account, to=[["", "secret@customer.test"]],
                        record_kind=record_kind, record_id=record_id)  # fmt: skip
        values = smart_fields.values_for(mail)
        assert values["deal.title"] is None and values["person.name"] is None
    # A public deal of a private person: the deal yes, the person no.
    mail = new_mail(sender_user, account, record_kind="deal", record_id=open_deal.id)
    values = smart_fields.values_for(mail)
    assert values["deal.title"] == "Public" and values["person.name"] is None


def test_chips_survive_the_draft_sanitizer(app, make_user, login, make_stored_account):
    user = make_user()
    make_stored_account(user)
    client = login(user)
    body = (
        f'<div>Hi {chip("person.first_name", "there")}<span data-smart-field="x" '
        'data-other="1" onclick="alert(1)" contenteditable="false">X</span></div>'
    )
    response = client.post("/mail/drafts", data={"subject": "s", "body_html": body})
    assert response.status_code == 201
    stored = db.session.get(OutgoingMail, response.get_json()["id"]).body_html
    assert chip("person.first_name", "there") in stored
    assert "onclick" not in stored and "data-other" not in stored
    assert "contenteditable" not in stored


# --------------------------------------------------------------------------- the send path


@pytest.fixture
def deal_mail(sender, make_person, make_deal, make_organization):
    """A mail written from a deal page with chips and tokens, queued for the worker."""
    user, account, server, _mail_user = sender

    def write(person_name="Carla Díaz", subject="{{Deal}} for {{First name}}", body=None):
        org = make_organization(user, name="Acme")
        person = make_person(user, name=person_name, emails=("carla@customer.test",),
                             organization_id=org.id)  # fmt: skip
        deal = make_deal(user, title="Q3 order", value=Decimal("12500"), currency="EUR",
                         person_id=person.id)  # fmt: skip
        mail = new_mail(
            user, account, subject=subject, record_kind="deal", record_id=deal.id,
            body_html=body or (f"<p>Hi {chip('person.first_name')}, {chip('deal.title')} is "
                               f"{chip('deal.value')}. {chip('sender.phone', 'call me')}</p>"),
        )  # fmt: skip
        return mail, person, deal

    return write


def test_a_mail_from_a_deal_page_is_sent_filled(app, sender, deal_mail):
    user, _account, server, _mail_user = sender
    mail, _person, deal = deal_mail()
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    [received] = server.messages
    message = parse(received.data)
    assert str(message["Subject"]) == "Q3 order for Carla"
    body = message.get_body(("html",)).get_content()
    assert "Hi Carla, Q3 order is EUR 12,500. call me" in body
    text = message.get_body(("plain",)).get_content()
    assert "Hi Carla, Q3 order is EUR 12,500. call me" in text
    for placeholder in ("data-smart-field", "First name", "{{", "Deal value"):
        assert placeholder not in received.data.decode()
    # The draft keeps its chips (taken back to the editor it is still a template); the
    # stored Sent copy is the filled mail.
    sent = state_of(mail.id)
    assert "data-smart-field" in sent.body_html
    assert db.session.get(Message, sent.message_id).subject == "Q3 order for Carla"
    assert db.session.get(Thread, sent.thread_id).deal_id == deal.id


def test_an_empty_field_blocks_sending_with_a_plain_list(app, sender, login, deal_mail):
    user, _account, server, _mail_user = sender
    mail, _person, _deal = deal_mail(
        subject="{{Project}}", body=f"<p>{chip('lead.title')} {chip('sender.phone')}</p>"
    )
    with pytest.raises(ValidationError) as refused:
        queue(user, mail)
    assert refused.value.errors["smart_fields"].startswith(
        "These smart fields have no value: Project, Lead, Your phone."
    )
    response = login(user).post(f"/mail/drafts/{mail.id}/send", data={})
    assert response.status_code == 422
    assert "Project, Lead, Your phone" in response.get_json()["errors"]["smart_fields"]
    assert state_of(mail.id).state == "draft" and server.messages == []


def test_a_field_emptied_after_queueing_fails_the_mail_in_plain_words(app, sender, deal_mail):
    user, _account, server, _mail_user = sender
    mail, person, _deal = deal_mail()
    queue(user, mail)
    person.name = " "
    db.session.commit()
    assert send.send_due(app) == {mail.id: OUTGOING_FAILED}
    error = state_of(mail.id).error
    assert "These smart fields have no value: First name" in error
    assert server.messages == []


def test_a_person_named_script_stays_text_and_no_header_is_injected(app, sender, deal_mail):
    user, _account, server, _mail_user = sender
    mail, _person, _deal = deal_mail(
        person_name="<script>alert(1)</script>\r\nBcc: victim@evil.example",
        subject="Hi {{Name}}",
        body=f"<p>Dear {chip('person.name')}</p>",
    )
    queue(user, mail)
    assert send.send_due(app) == {mail.id: OUTGOING_SENT}
    [received] = server.messages
    assert received.rcpt_tos == ["carla@customer.test"]
    message = parse(received.data)
    assert "Bcc" not in message and not message.defects
    assert str(message["Subject"]) == "Hi <script>alert(1)</script> Bcc: victim@evil.example"
    body = message.get_body(("html",)).get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script" not in body


# --------------------------------------------------------------------------- preview, profile


def test_preview_shows_the_filled_mail_and_where_values_come_from(
    app, make_user, login, make_stored_account, make_person, make_deal
):
    user = make_user()
    account = make_stored_account(user)
    carla = make_person(user, name="<b>Carla</b> Díaz", emails=("carla@customer.test",))
    deal = make_deal(user, title="Q3 order", person_id=carla.id)
    mail = new_mail(user, account, subject="For {{First name}}", record_kind="deal",
                    record_id=deal.id,
                    body_html=f"<p>Hi {chip('person.first_name')} {chip('lead.title')}</p>")  # fmt: skip
    response = login(user).get(f"/mail/drafts/{mail.id}/preview")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "the deal “Q3 order” this mail is written from" in page
    assert "For &lt;b&gt;Carla&lt;/b&gt;" in page  # the subject, escaped
    assert "These smart fields have no value: Lead." in page
    # The body sits in a sandboxed srcdoc frame, escaped twice: the name stays text.
    assert "&amp;lt;b&amp;gt;Carla&amp;lt;/b&amp;gt;" in page
    assert "[Lead]" in page and "data-smart-field" not in page
    other = make_user()
    assert login(other).get(f"/mail/drafts/{mail.id}/preview").status_code == 404


def test_the_profile_page_sets_name_and_phone(app, make_user, login):
    user = make_user(name="Ana")
    client = login(user)
    assert 'name="phone"' in client.get("/settings/profile").get_data(as_text=True)
    response = client.post("/settings/profile", data={"name": " Ana Pérez ", "phone": "+49 30 1"})
    assert response.status_code == 200 and "Saved." in response.get_data(as_text=True)
    db.session.expire_all()
    assert (user.name, user.phone) == ("Ana Pérez", "+49 30 1")
    response = client.post("/settings/profile", data={"name": "", "phone": "1\r\nBcc: x"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Enter your name." in page and "on one line" in page
    db.session.expire_all()
    assert user.phone == "+49 30 1"
