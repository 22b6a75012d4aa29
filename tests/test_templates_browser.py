"""Templates in real Chromium: write a shared template with an inline image in Settings >
Templates, then a teammate picks it in compose; a mail already written is replaced only
after the confirm dialog says yes, and the signature block stays. Waits are for state."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from extensions import db
from models import MailAccount, MailTemplate, OutgoingMail, Signature
from tests.servers.browser import sign_in_with_session
from tests.test_compose_browser import open_compose, paste_image, wait_saved

pytestmark = pytest.mark.browser
SHOTS = os.environ.get("THREADLINE_SHOTS", "/tmp/shots")


@pytest.fixture
def team(make_user, make_stored_account):
    author = make_user(email="tina@team.test", name="Tina Template")
    writer = make_user(email="mia@team.test", name="Mia Meyer")
    account = make_stored_account(writer)
    account.smtp_host = "smtp.invalid"
    db.session.commit()
    return author, writer


def write_template(page, live_server, author):
    sign_in_with_session(page, live_server.app, live_server.url, author)
    page.goto(live_server.url + "/settings/templates/")
    page.get_by_role("link", name="New template").click()
    page.locator("#template-form[data-ready=true]").wait_for()
    page.fill("#template-name", "Renewal offer")
    page.fill("#template-subject", "Your renewal for 2027")
    page.locator("#template-editor").click()
    page.keyboard.press("Control+b")
    page.keyboard.type("Renewal terms")
    page.keyboard.press("Control+b")
    page.keyboard.press("Enter")
    paste_image(page, "template-editor")
    # The first upload saved the new template: the page is now its editor.
    expect(page.locator("#template-editor img[src*='/attachments/']")).to_have_count(1)
    expect(page).to_have_url(re.compile(r"/settings/templates/\d+$"))
    for name in ("prices.pdf", "old.pdf"):
        page.set_input_files(
            "#template-file-input",
            files=[
                {
                    "name": name,
                    "mimeType": "application/pdf",
                    "buffer": b"%PDF-1.4 " + name.encode(),
                }
            ],
        )
        expect(page.locator("#template-files a", has_text=name)).to_be_visible()
    page.get_by_role("button", name="Remove old.pdf").click()
    expect(page.locator("#template-files li")).to_have_count(1)
    page.get_by_label("Shared with the team").check()
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=f"{SHOTS}/template-editor.png", full_page=True)
    page.get_by_role("button", name="Save template").click()
    expect(page.get_by_role("status").or_(page.locator(".alert-ok"))).to_contain_text(
        "Template “Renewal offer” saved."
    )
    template = db.session.scalars(db.select(MailTemplate)).one()
    db.session.refresh(template)
    assert template.shared and template.subject == "Your renewal for 2027"
    assert "<b>Renewal terms</b>" in template.body_html
    image, pdf = sorted(template.attachments, key=lambda a: a.filename)
    assert f'src="cid:{image.content_id}"' in template.body_html
    assert pdf.filename == "prices.pdf" and not pdf.content_id
    return template


def pick(page, query: str, name: str):
    page.get_by_role("button", name="Use a template…").click()
    search = page.get_by_role("combobox", name="Search templates by name or text")
    expect(search).to_be_focused()
    search.type(query)
    results = page.get_by_role("listbox", name="Templates")
    option = results.get_by_role("option", name=re.compile(name))
    expect(results.get_by_role("option")).to_have_count(1)
    option.click()


def test_a_shared_template_is_written_then_applied_by_a_teammate(page, live_server, team):
    author, writer = team
    template = write_template(page, live_server, author)
    page.context.clear_cookies()

    open_compose(page, live_server, writer)
    page.fill("#compose-subject", "Already written")
    page.evaluate(
        """() => ThreadlineCompose.editor.setHTML(
            '<div>My own words</div><div data-signature="1">-- Mia, Sales</div>')"""
    )
    pick(page, "renewal terms", "Renewal offer")  # found by its text, not only its name
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Replace the subject and text of this mail")
    page.screenshot(path=f"{SHOTS}/template-confirm.png")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#compose-subject")).to_have_value("Already written")
    expect(page.locator("#compose-editor")).to_contain_text("My own words")

    pick(page, "renew", "Renewal offer")
    dialog.get_by_role("button", name="Replace").click()
    expect(page.locator("#template-picker-status")).to_have_text(
        "Template “Renewal offer” applied."
    )
    expect(page.locator("#compose-subject")).to_have_value("Your renewal for 2027")
    editor = page.locator("#compose-editor")
    expect(editor.locator("b", has_text="Renewal terms")).to_have_count(1)
    expect(editor).not_to_contain_text("My own words")
    expect(editor.locator("[data-signature]")).to_have_text("-- Mia, Sales")
    image = editor.locator("img[src^='/mail/drafts/']")
    expect(image).to_have_count(1)
    page.wait_for_function("document.querySelector('#compose-editor img').naturalWidth > 0")
    expect(page.locator("#compose-files a")).to_have_text(["prices.pdf"])
    wait_saved(page)
    page.screenshot(path=f"{SHOTS}/template-applied.png", full_page=True)

    draft = db.session.scalars(db.select(OutgoingMail)).one()
    db.session.refresh(draft)
    assert draft.subject == "Your renewal for 2027"
    copied = {a.filename: a for a in draft.attachments}
    assert sorted(copied) == ["pasted.png", "prices.pdf"]
    for original in template.attachments:
        assert copied[original.filename].blob_sha256 == original.blob_sha256
    inline = next(a for a in draft.attachments if a.content_id)
    assert f'src="cid:{inline.content_id}"' in draft.body_html


def test_an_empty_mail_takes_a_template_without_asking(page, live_server, team):
    """Only the account's signature in the mail: nothing to lose, and the signature stays."""
    author, writer = team
    account = db.session.scalars(
        db.select(MailAccount).where(MailAccount.user_id == writer.id)
    ).one()
    db.session.add(
        Signature(
            account_id=account.id, name="Work", body_html="<div>Mia, Sales</div>", is_default=True
        )
    )
    db.session.add(
        MailTemplate(
            owner_id=writer.id, name="Quick hello", subject="Hello", body_html="<div>Hi!</div>"
        )
    )
    db.session.add(MailTemplate(owner_id=author.id, name="Tina's private", subject="x"))
    db.session.commit()
    open_compose(page, live_server, writer)
    expect(page.locator("#compose-editor [data-signature]")).to_have_text("Mia, Sales")
    page.get_by_role("button", name="Use a template…").click()
    results = page.get_by_role("listbox", name="Templates")
    expect(results.get_by_role("option")).to_have_count(1)  # not the author's private one
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.locator("#compose-subject")).to_have_value("Hello")
    expect(page.locator("#compose-editor > div").first).to_have_text("Hi!")
    expect(page.locator("#compose-editor [data-signature]")).to_have_text("Mia, Sales")
    expect(page.get_by_role("dialog")).to_be_hidden()
