"""Signatures in real Chromium: the signature editor in Settings (rich text, an inline image,
the size limit), and compose: a new mail gets the From account's default, a reply gets it above
or below the quote per the preference, changing From swaps it, the toolbar menu switches or
removes it, and a reopened draft shows it once. Waits are for page state, never for time."""

from __future__ import annotations

import base64
import os
import re

import pytest
from playwright.sync_api import expect

from extensions import db
from models import OutgoingMail
from services import signatures
from services.preferences import update_preferences
from tests.mail_fixtures import PNG_1X1, build_message
from tests.servers.browser import sign_in_with_session
from tests.test_compose_browser import SHOTS, open_compose, wait_saved

pytestmark = pytest.mark.browser
LOGO = "data:image/png;base64," + base64.b64encode(PNG_1X1).decode()


@pytest.fixture
def me(make_user, make_stored_account):
    user = make_user(email="mia@team.test", name="Mia Meyer")
    work = make_stored_account(user, email_address="mia@team.test")
    side = make_stored_account(user, email_address="mia@side.test")
    work.smtp_host = side.smtp_host = "smtp.invalid"
    db.session.commit()
    sigs = {
        "sig_work": signatures.create_signature(
            user, work, name="Work", body_html=f"<p><b>Mia Meyer</b>, Sales</p><img src='{LOGO}'>"
        ),
        "sig_short": signatures.create_signature(
            user, work, name="Short", body_html="<p>M. from Work</p>"
        ),
        "sig_side": signatures.create_signature(
            user, side, name="Side", body_html="<p>Mia, side gig</p>"
        ),
    }
    return {"user": user, "work": work, "side": side, **sigs}


def block(page):
    return page.locator("#compose-editor [data-signature]")


def test_write_a_signature_with_an_image_in_settings(page, live_server, me):
    sign_in_with_session(page, live_server.app, live_server.url, me["user"])
    page.goto(f"{live_server.url}/settings/accounts/{me['side'].id}/signatures")
    page.locator("#signature-form[data-ready=true]").wait_for()
    page.fill("#f-name", "Formal")
    page.locator("#signature-editor").click()
    page.keyboard.press("Control+b")
    page.keyboard.type("Mia Meyer")
    page.keyboard.press("Control+b")
    page.keyboard.press("Enter")
    page.keyboard.type("Head of Sales")
    too_big = bytes(signatures.MAX_IMAGE_BYTES + 1)
    page.set_input_files(
        "#signature-image-input",
        files=[{"name": "huge.png", "mimeType": "image/png", "buffer": too_big}],
    )
    expect(page.locator("#signature-image-error")).to_contain_text("at most 100 KB")
    page.set_input_files(
        "#signature-image-input",
        files=[{"name": "logo.png", "mimeType": "image/png", "buffer": PNG_1X1}],
    )
    expect(page.locator("#signature-editor img[src^='data:image/png']")).to_have_count(1)
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=f"{SHOTS}/signature-editor.png", full_page=True)
    page.click("#signature-form button[type=submit]")

    item = page.locator(".signature-item", has_text="Formal")
    expect(item.locator(".signature-preview b").first).to_have_text("Mia Meyer")
    expect(item.locator(".signature-preview img[src^='data:image/png']")).to_have_count(1)
    expect(page.locator(".signature-item", has_text="Side")).to_contain_text("Default")
    page.screenshot(path=f"{SHOTS}/signatures-list.png", full_page=True)
    formal = [s for s in signatures.account_signatures(me["side"]) if s.name == "Formal"][0]
    assert "<b>Mia Meyer</b>" in formal.body_html and "data:image/png" in formal.body_html


def test_new_mail_swap_on_from_menu_and_reopened_draft(page, live_server, me):
    open_compose(page, live_server, me["user"])
    editor = page.locator("#compose-editor")
    expect(block(page)).to_have_count(1)
    expect(block(page)).to_have_attribute("data-signature", str(me["sig_work"].id))
    expect(block(page)).to_contain_text("Mia Meyer, Sales")
    expect(block(page).locator("img[src^='data:image/png']")).to_have_count(1)
    expect(page.locator("#compose-signature")).to_have_value(str(me["sig_work"].id))
    page.screenshot(path=f"{SHOTS}/compose-signature.png", full_page=True)
    page.fill("#compose-subject", "Signed")
    editor.click()
    page.keyboard.press("Control+Home")
    page.keyboard.type("Hello Carla,")
    expect(editor.locator("div").first).to_have_text("Hello Carla,")

    # Changing From swaps the block for that account's default, in its place: an edited
    # block too (as Gmail and Outlook do).
    block(page).locator("b").click()
    page.keyboard.press("End")
    page.keyboard.type(" EDITED")
    expect(block(page)).to_contain_text("EDITED")
    page.select_option("#compose-from", str(me["side"].id))
    expect(block(page)).to_have_count(1)
    expect(block(page)).to_have_text("Mia, side gig")
    expect(editor).not_to_contain_text("Mia Meyer")
    expect(editor).not_to_contain_text("EDITED")
    expect(editor).to_contain_text("Hello Carla,")
    options = page.locator("#compose-signature option")
    expect(options).to_have_text(["Side", "No signature"])

    # The menu removes it, and brings it back.
    page.select_option("#compose-signature", "")
    expect(block(page)).to_have_count(0)
    expect(editor).not_to_contain_text("side gig")
    page.select_option("#compose-signature", str(me["sig_side"].id))
    expect(block(page)).to_have_text("Mia, side gig")

    # Back to the work account, then the menu switches to its other signature.
    page.select_option("#compose-from", str(me["work"].id))
    expect(block(page)).to_contain_text("Mia Meyer, Sales")
    page.select_option("#compose-signature", str(me["sig_short"].id))
    expect(block(page)).to_have_text("M. from Work")
    expect(editor).not_to_contain_text("Mia Meyer")
    wait_saved(page)
    assert re.search(r"/mail/compose/\d+$", page.url)

    page.reload()
    page.locator("#compose-form[data-ready=true]").wait_for()
    expect(block(page)).to_have_count(1)
    expect(block(page)).to_have_text("M. from Work")
    expect(page.locator("#compose-signature")).to_have_value(str(me["sig_short"].id))
    expect(editor).to_contain_text("Hello Carla,")
    mail = db.session.scalars(db.select(OutgoingMail)).one()
    db.session.refresh(mail)
    assert mail.body_html.count("data-signature") == 1 and "M. from Work" in mail.body_html


def open_answer(page, live_server, me, make_raw_message, kind: str) -> None:
    """Open compose answering (reply or forward) a mail that came to the work account."""
    raw = build_message(
        subject="Quote for 2027",
        sender="Carla Díaz <carla@customer.test>",
        to="Mia <mia@team.test>",
        html="<p>Can you confirm the start date?</p>",
    )
    message = make_raw_message(me["work"], raw)
    open_compose(page, live_server, me["user"], f"/mail/compose?reply={message.id}&kind={kind}")
    expect(block(page)).to_have_count(1)
    expect(block(page)).to_contain_text("Mia Meyer, Sales")


def signature_place(page) -> str:
    """Return where the signature block is among the editor's top-level elements: "first",
    or "above" or "below" the quoted original (a reply's quote, a forward's header)."""
    return page.evaluate(
        """() => {
            const top = [...document.getElementById('compose-editor').children];
            const sig = top.findIndex(e => e.matches('[data-signature]'));
            const quote = top.findIndex(e => e.matches('blockquote[type=cite]')
                                             || e.textContent.includes('Forwarded message'));
            return sig === 0 ? "first" : sig < quote ? "above" : "below";
        }"""
    )


@pytest.mark.parametrize("position", ["above", "below"])
def test_a_reply_gets_the_signature_where_the_preference_says(
    page, live_server, me, make_raw_message, position
):
    update_preferences(me["user"], {signatures.POSITION_KEY: position})
    open_answer(page, live_server, me, make_raw_message, "reply")
    # Above: still below the line where the reply is written ("first" would be wrong).
    assert signature_place(page) == position


def test_a_forward_saves_at_once_with_the_signature_above_the_original(
    page, live_server, me, make_raw_message
):
    open_answer(page, live_server, me, make_raw_message, "forward")
    assert signature_place(page) == "above"
    wait_saved(page)  # a forward saves at once (its attachments): the signature is in it
    mail = db.session.scalars(db.select(OutgoingMail)).one()
    db.session.refresh(mail)
    assert mail.body_html.count("data-signature") == 1
