"""Smart fields in real Chromium, sent through real aiosmtpd by the worker's send tick: written
from a deal page, fields inserted from the picker (mouse and keyboard) into the subject and the
body, a fallback set on a chip, an empty field refused at Send, Preview, then the captured
mail carries the deal's values and no placeholder. Waits are for page state, never for time."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from extensions import db
from models import OUTGOING_SENT, MailTemplate, OutgoingMail, Person
from tests import test_send_e2e_browser as e2e
from tests.servers.browser import sign_in_with_session

pytestmark = [pytest.mark.browser, pytest.mark.imap]
SHOTS = os.environ.get("THREADLINE_SHOTS", "/tmp/shots")

# The sending account behind aiosmtpd and Dovecot, as the send end-to-end test sets it up.
smtp, me = e2e.smtp, e2e.me


def pick(page, label: str) -> None:
    page.get_by_role("button", name="Insert field").click()
    page.get_by_role("menuitem", name=label, exact=True).click()


def test_insert_fields_set_a_fallback_preview_and_send(app, page, live_server, me, smtp, make_deal):
    user, _account = me
    carla = db.session.scalar(select(Person).where(Person.name == "Carla Díaz"))
    deal = make_deal(
        user, title="Q3 order", value=Decimal("12500"), currency="EUR", person_id=carla.id
    )
    sign_in_with_session(page, live_server.app, live_server.url, user)
    page.goto(f"{live_server.url}/mail/compose?record=deal&record_id={deal.id}")
    page.locator("#compose-form[data-ready=true]").wait_for()
    expect(page.locator("[data-chips=to] .addr-chip span")).to_have_text(
        ["Carla Díaz <carla@customer.test>"]
    )

    # The subject gets a readable token where its cursor is.
    page.locator("#compose-subject").click()
    pick(page, "Deal")
    page.keyboard.type(" for you")
    expect(page.locator("#compose-subject")).to_have_value("{{Deal}} for you")

    # The body gets chips: with the mouse, and with the keyboard (arrows, Enter).
    editor = page.locator("#compose-editor")
    editor.click()
    page.keyboard.type("Hi ")
    picker = page.get_by_role("button", name="Insert field")
    picker.focus()
    page.keyboard.press("ArrowDown")
    expect(page.get_by_role("menuitem", name="Name", exact=True)).to_be_focused()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.get_by_role("menu")).to_be_hidden()
    page.keyboard.type(", the offer is ")
    pick(page, "Deal value")
    page.keyboard.type(". Questions? ")
    pick(page, "Your phone")
    pick(page, "Lead")
    chips = editor.locator("[data-smart-field]")
    expect(chips).to_have_count(4)
    expect(chips.first).to_have_attribute("data-smart-field", "person.first_name")
    expect(chips.first).to_have_attribute("contenteditable", "false")

    # The user has no phone: a fallback text on its chip.
    editor.locator("[data-smart-field='sender.phone']").click()
    page.get_by_label("Text to use when “Your phone” has no value").fill("reply to this mail")
    page.keyboard.press("Enter")
    expect(editor.locator("[data-smart-field='sender.phone']")).to_have_attribute(
        "data-fallback", "reply to this mail"
    )

    # The deal has no lead: Send is refused with the list of empty fields.
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator("#compose-error")).to_contain_text(
        "These smart fields have no value: Lead."
    )
    editor.locator("[data-smart-field='lead.title']").click()
    page.get_by_role("button", name="Remove field").click()
    expect(chips).to_have_count(3)

    # Preview: the filled subject and body, and where the values come from.
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#compose-preview-subject")).to_have_text("Q3 order for you")
    expect(page.locator(".compose-preview-panel")).to_contain_text("the deal “Q3 order”")
    frame = page.frame_locator(".compose-preview-panel iframe")
    expect(frame.locator("body")).to_contain_text(
        "Hi Carla, the offer is EUR 12,500. Questions? reply to this mail"
    )
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=f"{SHOTS}/smart_fields_preview.png", full_page=True)

    page.get_by_role("button", name="Send", exact=True).click()
    e2e.wait_until_queued(1)
    mail_id = db.session.scalar(select(OutgoingMail.id))
    assert e2e.send_tick(app) == {mail_id: OUTGOING_SENT}
    [received] = smtp.handler.messages
    assert received.rcpt_tos == ["carla@customer.test"]
    message = e2e.parsed(received.data)
    assert message["Subject"] == "Q3 order for you"
    for part in ("html", "plain"):
        # Chromium types the space before a chip as a no-break space.
        body = message.get_body((part,)).get_content().replace("&nbsp;", " ").replace("\xa0", " ")
        assert "Hi Carla, the offer is EUR 12,500. Questions? reply to this mail" in body
    raw = received.data.decode()
    for placeholder in ("data-smart-field", "{{", "First name", "Deal value", "Your phone"):
        assert placeholder not in raw


def test_the_template_editor_inserts_fields_with_the_same_picker(page, live_server, make_user):
    user = make_user(name="Tom Template")
    sign_in_with_session(page, live_server.app, live_server.url, user)
    page.goto(live_server.url + "/settings/templates/new")
    page.locator("#template-editor[contenteditable=true]").wait_for()
    page.fill("#template-name", "Follow-up")
    page.locator("#template-subject").click()
    page.keyboard.type("About ")
    pick(page, "Deal")
    page.locator("#template-editor").click()
    page.keyboard.type("Dear ")
    pick(page, "First name")
    page.locator("#template-editor [data-smart-field]").click()
    page.get_by_label("Text to use when “First name” has no value").fill("customer")
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Save template").click()
    expect(page.locator(".alert-ok")).to_contain_text("Template “Follow-up” saved.")
    template = db.session.scalar(select(MailTemplate))
    db.session.refresh(template)
    assert template.subject == "About {{Deal}}"
    assert (
        '<span data-smart-field="person.first_name" data-fallback="customer">First name</span>'
        in template.body_html
    )
