"""A user adds a mailbox through the real form in Chromium and lands on its status page."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD
from tests.servers.browser import sign_in_with_form

SHOTS = Path("/tmp/shots")


@pytest.mark.browser
@pytest.mark.imap
def test_add_account_through_the_form(live_server, page, dovecot, mail_user, make_user):
    live_server.app.config["MAIL_ALLOWED_PORTS"] = None
    user = make_user()
    SHOTS.mkdir(exist_ok=True)

    sign_in_with_form(page, live_server.url, user.email, PASSWORD)

    page.goto(live_server.url + "/settings/")
    page.get_by_role("link", name="Email accounts").click()
    page.get_by_role("link", name="Add an email account").click()
    page.wait_for_url("**/settings/accounts/new")
    expect(page.get_by_role("button", name="Apply preset")).to_be_hidden()  # JS swaps instead

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
    # The background sync may already be under way or done (this mailbox is empty) by the time
    # the page renders: syncing or up to date are both fine, an error is not.
    expect(page.locator("h2 .badge")).to_have_text(re.compile(r"^(Syncing|Up to date)$"))
    page.screenshot(path=str(SHOTS / "accounts-status.png"), full_page=True)
    assert mail_user.password not in page.content()


@pytest.mark.browser
@pytest.mark.imap
def test_reauth_banner_leads_to_working_form(live_server, page, dovecot, mail_user, make_user):
    from extensions import db
    from models import (
        SYNC_NEEDS_REAUTH,
        MailAccount,
        MailFolder,
        Message,
        MessageLocation,
        Thread,
    )
    from services import accounts

    app = live_server.app
    app.config["MAIL_ALLOWED_PORTS"] = None
    user = make_user()
    account = accounts.create_account(
        user, app=app, email_address=mail_user.email, provider="other",
        username=mail_user.email, password=mail_user.password, imap_host=dovecot.host,
        imap_port=dovecot.ssl_port, imap_security="ssl", ca_cert_pem=dovecot.ca_file.read_text(),
    )  # fmt: skip
    inbox = MailFolder(account_id=account.id, name="INBOX", role="inbox", backfill_total=40)
    db.session.add(inbox)
    db.session.flush()
    thread = Thread(account_id=account.id, subject="Welcome aboard", message_count=1, in_inbox=True)
    thread.last_date = datetime.now(UTC)
    db.session.add(thread)
    db.session.flush()
    message = Message(account_id=account.id, dedup_key="k1", subject="Welcome aboard")
    message.thread_id, message.date = thread.id, thread.last_date
    message.from_address = "ceo@example.com"
    message.locations.append(MessageLocation(folder_id=inbox.id, uid=1))
    db.session.add(message)
    account.sync_state = SYNC_NEEDS_REAUTH
    account.last_error = "The server rejected the username or password."
    db.session.commit()
    SHOTS.mkdir(exist_ok=True)

    sign_in_with_form(page, live_server.url, user.email, PASSWORD)
    page.goto(live_server.url + "/mail/")
    expect(page.locator(".banner")).to_contain_text("the password no longer works")
    expect(page.get_by_role("link", name="Welcome aboard")).to_be_visible()
    page.screenshot(path=str(SHOTS / "mail-with-banner.png"), full_page=True)

    page.goto(live_server.url + f"/settings/accounts/{account.id}")
    expect(page.get_by_text("Needs re-authentication")).to_be_visible()
    page.screenshot(path=str(SHOTS / "accounts-status-reauth.png"), full_page=True)
    page.locator(".banner").get_by_role("link", name="Re-enter password").click()
    page.get_by_label("Password or app password").fill(mail_user.password)
    page.get_by_role("button", name="Test and save").click()
    page.wait_for_url(f"**/settings/accounts/{account.id}")
    expect(page.locator(".banner")).to_have_count(0)
    db.session.expire_all()
    assert db.session.get(MailAccount, account.id).sync_state == "running"
