"""A user adds a mailbox through the real form in Chromium and lands on its status page."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD

SHOTS = Path("/tmp/shots")


@pytest.mark.browser
@pytest.mark.imap
def test_add_account_through_the_form(live_server, page, dovecot, mail_user, make_user):
    live_server.app.config["MAIL_ALLOWED_PORTS"] = None
    user = make_user()
    SHOTS.mkdir(exist_ok=True)

    page.goto(live_server.url + "/login")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()

    page.goto(live_server.url + "/settings/")
    page.get_by_role("link", name="Email accounts").click()
    page.get_by_role("link", name="Add an email account").click()
    assert not page.get_by_role("button", name="Apply preset").is_visible()  # JS swaps instead

    page.get_by_label("Provider").select_option("gmail")
    expect(page.locator("#f-imap_host")).to_have_value("imap.gmail.com")
    expect(page.locator(".provider-note")).to_contain_text("app password")
    page.get_by_label("Provider").select_option("other")
    expect(page.locator("#f-imap_host")).to_have_value("")

    page.get_by_label("Email address").fill(mail_user.email)
    page.get_by_label("Password or app password").fill(mail_user.password)
    page.get_by_label("IMAP server").fill(dovecot.host)
    page.locator("#f-imap_port").fill(str(dovecot.ssl_port))
    page.get_by_label("CA certificate").set_input_files(str(dovecot.ca_file))
    page.screenshot(path=str(SHOTS / "accounts-add-form.png"), full_page=True)
    page.get_by_role("button", name="Test connection").click()

    page.get_by_text("Connected to 127.0.0.1").wait_for()
    assert page.get_by_label("INBOX").is_checked()
    assert page.locator("input[type=checkbox][disabled]").is_checked()  # Sent
    page.get_by_label("How far back").select_option("1y")
    page.screenshot(path=str(SHOTS / "accounts-choose-folders.png"), full_page=True)
    page.get_by_role("button", name="Save and start syncing").click()

    page.wait_for_url("**/settings/accounts/*")
    assert page.get_by_role("heading", name=mail_user.email).is_visible()
    assert page.get_by_role("button", name="Sync now").is_visible()
    assert page.get_by_text("Starting the first sync").is_visible()
    page.screenshot(path=str(SHOTS / "accounts-status.png"), full_page=True)
    assert mail_user.password not in page.content()
