"""Compose in real Chromium: write with formatting, an inline image, an attachment and a
right-to-left paragraph, autosave, reload; reply prefill; undo; schedule and cancel in the
Outbox; an expired session keeps the text. Waits are for page state, never for time."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from extensions import db
from models import OUTGOING_DRAFT, MailAccount, OutgoingMail
from services.preferences import update_preferences
from tests.mail_fixtures import PNG_1X1, build_message
from tests.servers.browser import sign_in_with_session

pytestmark = pytest.mark.browser
SHOTS = os.environ.get("THREADLINE_SHOTS", "/tmp/shots")
HEBREW = "שלום עולם, מה שלומך"


@pytest.fixture
def me(make_user, make_stored_account, make_person):
    user = make_user(email="me@team.test", name="Mia Meyer")
    account = make_stored_account(user)
    account.smtp_host = "smtp.invalid"
    db.session.commit()
    make_person(user, name="Carla Díaz", emails=("carla@customer.test",))
    return user


def open_compose(page, live_server, user, path="/mail/compose"):
    sign_in_with_session(page, live_server.app, live_server.url, user)
    page.goto(live_server.url + path)
    page.locator("#compose-form[data-ready=true]").wait_for()


def wait_saved(page):
    expect(page.locator("#compose-status")).to_have_text(re.compile(r"^Draft saved"))


def paste_image(page, editor_id="compose-editor"):
    """Paste a PNG file the way a screenshot paste arrives (clipboardData with a file)."""
    page.evaluate(
        """([bytes, editorId]) => {
            const file = new File([new Uint8Array(bytes)], "pasted.png", {type: "image/png"});
            const data = new DataTransfer();
            data.items.add(file);
            const event = new ClipboardEvent("paste", {clipboardData: data, bubbles: true,
                                                       cancelable: true});
            document.getElementById(editorId).dispatchEvent(event);
        }""",
        [list(PNG_1X1), editor_id],
    )


def test_write_autosave_reload_everything_is_back(page, live_server, me):
    open_compose(page, live_server, me)
    to = page.locator("#compose-to-input")
    to.type("car")
    page.locator("#compose-to-suggestions li", has_text="carla@customer.test").click()
    to.type("not-an-address,")
    expect(page.locator("[data-chips=to] .addr-chip-invalid")).to_have_count(1)
    expect(page.locator("#compose-to-error")).to_contain_text("not-an-address")
    page.locator("[data-chips=to] .addr-chip-invalid .chip-remove").click()
    page.fill("#compose-subject", "Renewal ✓")

    editor = page.locator("#compose-editor")
    editor.click()
    page.keyboard.press("Control+b")
    page.keyboard.type("Bold words")
    page.keyboard.press("Control+b")
    page.keyboard.press("Enter")
    page.click("[data-command=bullets]")
    page.keyboard.type("first item")
    page.keyboard.press("Enter")
    page.keyboard.type("second item")
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")  # an empty item leaves the list
    page.keyboard.type(HEBREW)
    expect(editor.locator('[dir="rtl"]')).to_have_text(HEBREW)
    page.keyboard.press("Enter")
    page.keyboard.type("Back to English.")

    paste_image(page)
    expect(editor.locator("img[src^='/mail/drafts/']")).to_have_count(1)
    page.set_input_files(
        "#compose-file-input",
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"meeting notes"}],
    )
    expect(page.locator("#compose-files a", has_text="notes.txt")).to_be_visible()
    wait_saved(page)
    assert re.search(r"/mail/compose/\d+$", page.url)

    page.reload()
    page.locator("#compose-form[data-ready=true]").wait_for()
    expect(page.locator("[data-chips=to] .addr-chip")).to_have_text(
        ["Carla Díaz <carla@customer.test>×"]
    )
    expect(page.locator("#compose-subject")).to_have_value("Renewal ✓")
    expect(editor.locator("b", has_text="Bold words")).to_have_count(1)
    expect(editor.locator("ul li")).to_have_text(["first item", "second item"])
    expect(editor.locator('[dir="rtl"]')).to_have_text(HEBREW)
    expect(editor.locator("div", has_text="Back to English.").last).not_to_have_attribute(
        "dir", "rtl"
    )
    image = editor.locator("img[src^='/mail/drafts/']")
    expect(image).to_have_count(1)
    assert page.evaluate("document.querySelector('#compose-editor img').naturalWidth") == 1
    expect(page.locator("#compose-files a", has_text="notes.txt")).to_be_visible()

    mail = db.session.scalars(db.select(OutgoingMail)).one()
    db.session.refresh(mail)
    assert 'dir="rtl"' in mail.body_html and 'src="cid:' in mail.body_html
    assert {a.filename for a in mail.attachments} == {"pasted.png", "notes.txt"}


def test_reply_from_a_conversation_is_prefilled(page, live_server, me, make_raw_message):
    account = db.session.scalars(db.select(MailAccount)).one()
    raw = build_message(
        subject="RE: Quote for 2027",
        sender="Carla Díaz <carla@customer.test>",
        to="Mia <me@team.test>, Dan <dan@customer.test>",
        html="<p>Can you confirm the <b>start date</b>?</p><img src='https://tracker.example/x.gif'>",
    )
    message = make_raw_message(account, raw)
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in_with_session(page, live_server.app, live_server.url, me)
    page.goto(f"{live_server.url}/mail/threads/{message.thread_id}")
    page.keyboard.press("a")  # reply all, as the shortcut
    page.locator("#compose-form[data-ready=true]").wait_for()
    expect(page.locator("[data-chips=to] .addr-chip")).to_have_text(
        ["Carla Díaz <carla@customer.test>×", "Dan <dan@customer.test>×"]
    )
    expect(page.locator("#compose-subject")).to_have_value("Re: Quote for 2027")
    quote = page.locator("#compose-editor blockquote[type=cite]")
    expect(quote).to_be_hidden()
    page.click(".compose-quote-toggle")
    expect(quote).to_contain_text("start date")
    # The remote image lost its source on the server (R8): nothing remote loads here.
    assert page.evaluate(
        "[...document.querySelectorAll('#compose-editor img')].map(i => i.getAttribute('src'))"
    ) == [None]
    elsewhere = [u for u in requested if not u.startswith((live_server.url, "data:"))]
    assert elsewhere == []  # R8: quoting a mail into compose loads nothing remote
    os.makedirs(SHOTS, exist_ok=True)
    page.fill("#compose-subject", "Re: Quote for 2027")
    page.locator("#compose-editor").click()
    page.keyboard.press("Control+Home")  # above the quote, where a reply is written
    page.keyboard.type("Yes, the first of March works for us.")
    for width, height in ((1366, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=f"{SHOTS}/compose-{width}x{height}.png", full_page=True)


def test_send_then_undo_reopens_the_editor(page, live_server, me):
    update_preferences(me, {"undo_send_seconds": "30"})
    open_compose(page, live_server, me, "/mail/compose?to=carla@customer.test")
    page.fill("#compose-subject", "Undo me")
    page.locator("#compose-editor").click()
    page.keyboard.type("Second thoughts.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#compose-sending")).to_be_visible()
    expect(page.locator("#compose-sending-text")).to_contain_text("Sending")
    page.click("#compose-undo")
    expect(page.locator("#compose-sending")).to_be_hidden()
    expect(page.locator("#compose-subject")).to_be_enabled()
    expect(page.locator("#compose-editor")).to_have_attribute("contenteditable", "true")
    mail = db.session.scalars(db.select(OutgoingMail)).one()
    db.session.refresh(mail)
    assert mail.state == OUTGOING_DRAFT and mail.subject == "Undo me"


def test_schedule_send_shows_in_outbox_and_cancel_returns_it_to_drafts(page, live_server, me):
    open_compose(page, live_server, me, "/mail/compose?to=carla@customer.test")
    page.fill("#compose-subject", "Monday follow-up")
    page.locator("#compose-editor").click()
    page.keyboard.type("See you Monday.")
    page.click(".compose-schedule summary")
    page.fill("#compose-send-at", "2099-01-05T09:30")
    page.click("#compose-schedule")
    expect(page.locator("#compose-sending-text")).to_contain_text("Scheduled for 2099-01-05 09:30")
    page.wait_for_url(re.compile(r"/mail/outbox$"))
    row = page.locator("tr", has_text="Monday follow-up")
    expect(row).to_contain_text("Scheduled for 2099-01-05 09:30")
    row.get_by_role("button", name="Cancel").click()
    expect(page.locator("#flash")).to_contain_text("Moved back to Drafts")
    page.click("nav[aria-label=Mail] >> text=Drafts")
    expect(page.locator("table", has_text="Monday follow-up")).to_be_visible()


def test_expired_session_keeps_the_text_and_restores_it_after_signing_in(page, live_server, me):
    open_compose(page, live_server, me, "/mail/compose?to=carla@customer.test")
    page.fill("#compose-subject", "Long letter")
    wait_saved(page)
    draft_url = page.url
    page.context.clear_cookies()
    page.locator("#compose-editor").click()
    page.keyboard.type("Words typed after the session ended.")
    expect(page.locator("#compose-error")).to_contain_text("Your session ended")
    sign_in_with_session(page, live_server.app, live_server.url, me)
    page.goto(draft_url)
    page.locator("#compose-form[data-ready=true]").wait_for()
    expect(page.locator("#compose-editor")).to_contain_text("Words typed after the session ended.")
    wait_saved(page)
    mail = db.session.scalars(db.select(OutgoingMail)).one()
    db.session.refresh(mail)
    assert "Words typed after the session ended." in mail.body_html


WORD_HTML = (
    '<html xmlns:o="urn:schemas-microsoft-com:office:office"><head><style>p.MsoNormal{margin:0}'
    "</style></head><body><p class=MsoNormal style='mso-margin-top-alt:auto;color:red'>"
    "<b>Quarterly</b> numbers<o:p></o:p></p><img src='https://tracker.example/p.gif'>"
    "<p class=MsoListParagraph>second line</p></body></html>"
)


def test_paste_from_a_word_processor_is_cleaned(page, live_server, me):
    open_compose(page, live_server, me)
    page.locator("#compose-editor").click()
    page.evaluate(
        """(html) => {
            const data = new DataTransfer();
            data.setData("text/html", html);
            data.setData("text/plain", "Quarterly numbers");
            document.getElementById("compose-editor").dispatchEvent(new ClipboardEvent(
                "paste", {clipboardData: data, bubbles: true, cancelable: true}));
        }""",
        WORD_HTML,
    )
    editor = page.locator("#compose-editor")
    expect(editor.locator("b", has_text="Quarterly")).to_have_count(1)
    expect(editor).to_contain_text("second line")
    html = page.evaluate("document.getElementById('compose-editor').innerHTML")
    assert "Mso" not in html and "mso-" not in html and "o:p" not in html
    assert "tracker.example" not in html and "<style" not in html
    assert "color: red" in html or "color:red" in html  # plain formatting survives


def test_c_opens_compose_from_any_page(page, live_server, me):
    sign_in_with_session(page, live_server.app, live_server.url, me)
    page.goto(live_server.url + "/persons/")
    page.keyboard.press("c")
    page.locator("#compose-form[data-ready=true]").wait_for()
    expect(page.locator("#compose-to-input")).to_be_focused()


def test_a_suggestion_chosen_with_the_arrow_stays_chosen_when_results_refresh(
    page, live_server, me
):
    open_compose(page, live_server, me)
    suggestions = page.locator("#compose-to-suggestions li")
    page.keyboard.type("car")
    expect(suggestions).to_have_count(1)
    page.keyboard.press("ArrowDown")
    shown = suggestions.first.element_handle()
    with page.expect_response(lambda response: "recipients?q=carl" in response.url):
        page.keyboard.type("l")
    page.wait_for_function("option => !option.isConnected", arg=shown)  # results redrawn
    expect(suggestions.first).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Enter")
    expect(page.locator("[data-chips=to] .addr-chip")).to_have_text(
        ["Carla Díaz <carla@customer.test>×"]
    )


def test_keyboard_only_compose_and_send(page, live_server, me):
    update_preferences(me, {"undo_send_seconds": "30"})
    open_compose(page, live_server, me)
    expect(page.locator("#compose-to-input")).to_be_focused()
    page.keyboard.type("carla")
    expect(page.locator("#compose-to-suggestions li")).to_have_count(1)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.locator("[data-chips=to] .addr-chip")).to_have_count(1)
    page.keyboard.press("Tab")
    expect(page.locator("#compose-cc-input")).to_be_focused()
    page.keyboard.type("Dan <dan@customer.test>;")
    expect(page.locator("[data-chips=cc] .addr-chip")).to_have_text(["Dan <dan@customer.test>×"])
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator("#compose-subject")).to_be_focused()
    page.keyboard.type("Keyboard only")
    page.keyboard.press("Tab")
    expect(page.locator("[data-command=bold]")).to_be_focused()
    page.keyboard.press("Enter")  # bold on, then into the editor
    page.keyboard.type("Typed without a mouse")
    expect(page.locator("#compose-editor b")).to_have_text("Typed without a mouse")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#compose-undo")).to_be_focused()
    mail = db.session.scalars(db.select(OutgoingMail)).one()
    db.session.refresh(mail)
    assert mail.state == "queued" and mail.cc == [["Dan", "dan@customer.test"]]
