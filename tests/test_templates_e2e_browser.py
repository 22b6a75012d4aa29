"""End to end (issue 13): a first user writes a SHARED template with smart fields in
Chromium; a teammate opens compose from a deal page ("Email"), picks the template and sends;
the worker's send tick delivers it through aiosmtpd, and the captured mail carries the
deal's, person's and sender's values, with no chip markup and no placeholder left."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from extensions import db
from models import OUTGOING_SENT, MailTemplate, OutgoingMail, Person
from tests.servers.browser import sign_in_with_session
from tests.test_send_e2e_browser import (  # noqa: F401 (fixtures)
    me,  # noqa: F811
    parsed,
    send_tick,
    smtp,  # noqa: F811
    wait_until_queued,
)
from tests.test_smart_fields_browser import pick

pytestmark = [pytest.mark.browser, pytest.mark.imap]


def type_with_fields(page, text: str) -> None:
    """Type `text`, inserting each {{Label}} with the smart-field picker, as a user does."""
    for index, part in enumerate(re.split(r"\{\{(.*?)\}\}", text)):
        if index % 2:
            pick(page, part)
        elif part:
            page.keyboard.type(part)


def write_with_fields(page) -> None:
    """Write the subject and body with the smart-field picker."""
    page.locator("#template-subject").click()
    type_with_fields(page, "Offer for {{Organization}}: {{Deal}}")
    editor = page.locator("#template-editor")
    editor.click()
    type_with_fields(
        page,
        "Hello {{First name}}, our offer for {{Deal}} at {{Organization}}: {{Deal value}}, "
        "until {{Expected close date}}. Regards, {{Your name}}",
    )
    # The recipient may have no first name: the chip says what to write then.
    editor.locator("[data-smart-field='person.first_name']").click()
    page.get_by_label("Text to use when “First name” has no value").fill("there")
    page.keyboard.press("Enter")
    expect(editor.locator("[data-smart-field]")).to_have_count(6)


def test_a_shared_template_with_smart_fields_sent_from_a_deal_by_a_teammate(
    app,
    page,
    live_server,
    me,  # noqa: F811
    smtp,  # noqa: F811
    make_user,
    make_organization,
    make_deal,
):
    writer, _account = me
    author = make_user(email="tina@team.test", name="Tina Template")
    carla = db.session.scalars(db.select(Person).where(Person.name == "Carla Díaz")).one()
    acme = make_organization(author, name="Acme <GmbH>")
    carla.organization_id = acme.id
    db.session.commit()
    deal = make_deal(
        author,
        title="Fleet renewal",
        value=Decimal("12500"),
        currency="EUR",
        person_id=carla.id,
        organization_id=acme.id,
        expected_close_date=date(2027, 3, 31),
    )

    # The author writes the template and shares it.
    sign_in_with_session(page, live_server.app, live_server.url, author)
    page.goto(live_server.url + "/settings/templates/new")
    page.locator("#template-form[data-ready=true]").wait_for()
    page.fill("#template-name", "Offer with fields")
    write_with_fields(page)
    expect(page.locator("#template-subject")).to_have_value("Offer for {{Organization}}: {{Deal}}")
    page.get_by_label("Shared with the team").check()
    page.get_by_role("button", name="Save template").click()
    expect(page.locator(".alert-ok")).to_contain_text("saved")
    template = db.session.scalars(db.select(MailTemplate)).one()
    db.session.refresh(template)
    assert template.shared and template.body_html.count("data-smart-field=") == 6
    assert 'data-smart-field="person.first_name" data-fallback="there"' in template.body_html
    page.context.clear_cookies()

    # The teammate writes from the deal page with it.
    sign_in_with_session(page, live_server.app, live_server.url, writer)
    page.goto(live_server.url + f"/deals/{deal.id}")
    page.get_by_role("link", name="Email", exact=True).click()
    page.locator("#compose-form[data-ready=true]").wait_for()
    expect(page.locator("[data-chips=to] .addr-chip")).to_have_count(1)
    page.get_by_role("button", name="Use a template…").click()
    page.get_by_role("combobox", name="Search templates by name or text").type("offer")
    page.get_by_role("listbox", name="Templates").get_by_role("option").first.click()
    expect(page.locator("#compose-subject")).to_have_value("Offer for {{Organization}}: {{Deal}}")
    expect(page.locator("#compose-editor [data-smart-field]")).to_have_count(6)
    page.get_by_role("button", name="Send", exact=True).click()
    wait_until_queued(1)

    mail_id = db.session.scalar(db.select(OutgoingMail.id))
    assert send_tick(app) == {mail_id: OUTGOING_SENT}
    mail = db.session.get(OutgoingMail, mail_id)
    assert (mail.record_kind, mail.record_id) == ("deal", deal.id)

    [received] = smtp.handler.messages
    assert received.rcpt_tos == ["carla@customer.test"]
    message = parsed(received.data)
    assert message["Subject"] == "Offer for Acme <GmbH>: Fleet renewal"
    # Typed spaces next to a chip arrive as no-break spaces, as the editor wrote them.
    html = message.get_body(("html",)).get_content().replace("&nbsp;", " ")
    text = message.get_body(("plain",)).get_content().replace("\xa0", " ")
    assert "Hello Carla," in html and "Fleet renewal" in html
    assert "Acme &lt;GmbH&gt;" in html  # a value is text, never markup
    assert "EUR 12,500" in html and "31 March 2027" in html and "Mia Müller" in html
    assert "Hello Carla," in text and "Acme <GmbH>" in text
    for leftover in (
        "data-smart-field",
        "data-fallback",
        "{{",
        "First name",
        "Deal value",
        "there",
    ):
        assert leftover not in html and leftover not in text, leftover
