"""End-to-end flows in real Chromium on mail synced from the real Dovecot.

A: add a mailbox through Settings and see its newest mail in the Mail tab (issue "sync").
B: search, open, show images, download, archive in the mailbox too (issue "mail tab").
C: link to a deal; a teammate sees the conversation on the deal only while it is shared.

Remote hosts are answered by the local recording proxy of test_conversation_browser (Playwright
does not see requests from the sandboxed mail frame); nothing leaves the machine.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD
from tests.mail_fixtures import build_message
from tests.queue_helpers import running_worker
from tests.servers.browser import (
    sign_in_with_form,
    sign_in_with_session,
    wait_for_htmx_settled,
)
from tests.sync_helpers import run_sync
from tests.test_conversation_browser import page, page_requests, sink

__all__ = ["page", "sink"]  # fixtures used by name: the proxied page and its sink

pytestmark = [pytest.mark.browser, pytest.mark.imap]
BASE_DATE = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def sign_in(page, live_server, user) -> None:
    sign_in_with_session(page, live_server.app, live_server.url, user)


def deliver(dovecot, mail_user, n: int, **fields) -> None:
    fields.setdefault("to", mail_user.email)
    fields.setdefault("date", BASE_DATE + timedelta(hours=n))
    dovecot.deliver(mail_user.email, build_message(**fields))


@pytest.fixture
def worker(live_server):
    """The worker's job loop beside the live server: it runs "Sync now" and write-backs."""
    with running_worker(live_server.app):
        yield


def wait_until(condition, *, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_flow_a_add_mailbox_and_see_newest_mail(
    live_server, worker, page, dovecot, mail_user, make_user
):
    live_server.app.config["MAIL_ALLOWED_PORTS"] = None
    for n in range(1, 4):
        deliver(dovecot, mail_user, n, subject=f"Routine update {n}")
    deliver(dovecot, mail_user, 9, subject="Aurora launch checklist", text="Newest one.")
    user = make_user()
    sign_in_with_form(page, live_server.url, user.email, PASSWORD)  # the whole flow

    page.goto(live_server.url + "/settings/")
    page.get_by_role("link", name="Email accounts").click()
    page.get_by_role("link", name="Add an email account").click()
    page.get_by_label("Provider").select_option("other")
    page.get_by_label("Email address").fill(mail_user.email)
    page.get_by_label("Password or app password").fill(mail_user.password)
    page.get_by_label("IMAP server").fill(dovecot.host)
    page.locator("#f-imap_port").fill(str(dovecot.ssl_port))
    page.get_by_label("CA certificate").set_input_files(str(dovecot.ca_file))
    page.get_by_role("button", name="Test connection").click()
    page.get_by_text(f"Connected to {dovecot.host}").wait_for()
    page.get_by_role("button", name="Save and start syncing").click()

    page.wait_for_url("**/settings/accounts/*")
    expect(page.get_by_role("heading", name=mail_user.email)).to_be_visible()
    # Some state is always shown: starting, syncing N of M, or all synced.
    expect(page.locator("h2 .badge")).to_be_visible()
    # The status polls itself while the first sync runs; wait for it to report the end.
    expect(page.get_by_text("All 4 messages in range are synced.")).to_be_visible(timeout=30_000)

    page.goto(live_server.url + "/mail/", wait_until="load")
    rows = page.locator(".mail-row")
    expect(rows).to_have_count(4)
    expect(rows.first).to_contain_text("Aurora launch checklist")  # newest first
    assert mail_user.password not in page.content()


@pytest.fixture
def synced(live_server, dovecot, mail_user, make_user, make_account):
    """A user whose Dovecot mailbox (three messages) has been synced once."""
    user = make_user(name="Olivia Owner")
    deliver(
        dovecot, mail_user, 1,
        subject="Autumn newsletter", sender="Nina News <news@letters.test>", text=None,
        html='<h2>Autumn news</h2><img src="http://remote.example/banner.png" alt="banner">',
    )  # fmt: skip
    deliver(
        dovecot, mail_user, 2,
        subject="Signed contract", text="Here is the xylophonic contract, signed.",
        attachments=(("contract.pdf", "application/pdf", b"%PDF-1.4 signed contract"),),
    )  # fmt: skip
    deliver(dovecot, mail_user, 3, subject="Lunch on Friday", text="Tacos?")
    account = make_account(user, mail_user)
    run_sync(live_server.app, account)
    return user, account


def test_flow_b_mail_tab_search_images_download_archive(
    live_server, worker, page, sink, dovecot, mail_user, synced
):
    user, _account = synced
    inbox_before = dovecot.uids(mail_user.email, "INBOX")
    assert len(inbox_before) == 3
    sign_in(page, live_server, user)
    page.goto(live_server.url + "/mail/")
    rows = page.locator(".mail-row")
    expect(rows).to_have_count(3)

    # Search as you type finds a word of the body only.
    page.fill("#mail-q", "xylophonic")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Signed contract")
    rows.first.locator("a.mail-row-link").click()
    page.wait_for_url(lambda url: "/mail/threads/" in url)  # the click only starts it
    expect(page.locator("h1#conversation-subject")).to_have_text("Signed contract")
    with page.expect_download() as download_info:
        page.locator("a.attachment").first.click()
    download = download_info.value
    assert download.suggested_filename == "contract.pdf"
    assert Path(download.path()).read_bytes() == b"%PDF-1.4 signed contract"

    # Remote images load only after "Show images", and only through the local proxy.
    page.goto(live_server.url + "/mail/")
    page.get_by_role("link", name="Autumn newsletter").click()
    page.wait_for_url(lambda url: "/mail/threads/" in url)
    expect(page.get_by_text("Remote images are hidden.")).to_be_visible()
    assert page_requests(sink) == []
    page.get_by_role("link", name="Show images").click()
    page.wait_for_url(lambda url: "images=" in url)
    image = page.frame_locator("iframe").locator("img").first
    image.wait_for()
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") > 0
    assert page_requests(sink) == ["GET http://remote.example/banner.png"]

    # Archive in the mailbox too: the server moves the mail out of INBOX into Archive.
    page.goto(live_server.url + "/settings/")
    page.locator("#pref-archive_in_mailbox").select_option("True")
    page.get_by_role("button", name="Save preferences").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    page.goto(live_server.url + "/mail/")
    row = rows.filter(has_text="Lunch on Friday")
    row.locator(".mail-check").check()
    page.click("button[value=archive]")
    expect(page.get_by_text("Archived 1 conversation.")).to_be_visible()
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="Lunch on Friday")).to_have_count(0)
    # The worker moves it on the server; the list says so until it has.
    wait_until(lambda: len(dovecot.uids(mail_user.email, "Archive")) == 1)
    assert len(dovecot.uids(mail_user.email, "INBOX")) == 2
    expect(page.locator("#mailbox-saving")).not_to_contain_text("Saving", timeout=15_000)


def test_flow_c_teammate_sees_linked_thread_only_while_shared(
    live_server, page, browser, synced, make_user, make_deal
):
    owner, _account = synced
    deal = make_deal(owner, title="Orion expansion")
    teammate = make_user(name="Ben Teammate")
    sign_in(page, live_server, owner)
    page.goto(live_server.url + "/mail/")
    page.get_by_role("link", name="Lunch on Friday").click()
    # Typing before the conversation page has loaded (and htmx has set up the picker) was lost.
    page.wait_for_url(lambda url: "/mail/threads/" in url)
    with page.expect_response(lambda response: "/link-search?" in response.url):
        page.fill("#link-q", "orion")
    page.locator("#link-results").get_by_role("button", name="Deal Orion expansion").click()
    page.locator(".linked-record").get_by_text("Orion expansion").wait_for()
    wait_for_htmx_settled(page)  # the swapped-in sidebar's buttons work once htmx settled it
    page.get_by_role("button", name="Share with team").click()
    page.get_by_role("button", name="Make private").wait_for()
    thread_url = re.match(r".*/mail/threads/\d+", page.url).group(0)

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        other = context.new_page()
        other.set_default_timeout(10_000)
        sign_in(other, live_server, teammate)
        deal_url = f"{live_server.url}/deals/{deal.id}"
        other.goto(deal_url, wait_until="load")
        panel = other.locator("#email-conversations")
        expect(panel.get_by_role("link", name="Lunch on Friday")).to_be_visible()
        panel.get_by_role("link", name="Lunch on Friday").click()
        other.wait_for_url(thread_url)
        expect(other.get_by_text("read-only")).to_be_visible()

        page.get_by_role("button", name="Make private").click()
        page.get_by_role("button", name="Share with team").wait_for()
        other.goto(deal_url, wait_until="load")
        expect(panel.get_by_text("No email conversations yet.")).to_be_visible()
        expect(panel.get_by_role("link", name="Lunch on Friday")).to_have_count(0)
        # R31: the thread itself is gone for the teammate on the next request, too.
        response = other.goto(thread_url)
        assert response is not None and response.status == 404
        expect(other.get_by_text("Tacos?")).to_have_count(0)
    finally:
        context.close()
