"""The Mail tab in real Chromium: inbox, search as you type, keyboard, bulk archive."""

import os
import re
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import expect

from tests.servers.browser import sign_in_with_session, wait_for_htmx_settled

pytestmark = pytest.mark.browser
SHOTS = os.environ.get("THREADLINE_SHOTS", "/tmp/shots")


@pytest.fixture
def me(make_user):
    return make_user(email="me@team.test", name="Mia Meyer")


@pytest.fixture
def inbox(me, make_stored_account, make_stored_folder):
    account = make_stored_account(me)
    for name, role in (("Sent", "sent"), ("Trash", "trash"), ("Junk", "junk"), ("Clients", None)):
        make_stored_folder(account, name, role=role)
    return make_stored_folder(account, "INBOX", role="inbox")


@pytest.fixture
def mailbox_seed(me, inbox, make_mailbox_message, make_person, make_deal):
    """A realistic small inbox: people, a linked deal, unread and read, attachments."""
    carla = make_person(me, name="Carla Diaz", emails=("carla@customer.test",))
    deal = make_deal(me, title="Acme renewal 2027", person_id=carla.id)
    now = datetime.now(UTC)
    rows = [
        (
            "Carla Diaz",
            "carla@customer.test",
            "Renewal quote for 2027",
            "Thanks for the call — attached is the signed quote, can you confirm the start date?",
            True,
            False,
        ),
        (
            "Bo Berg",
            "bo@vendor.test",
            "Invoice 4471 overdue",
            "Friendly reminder that invoice 4471 is now 14 days overdue.",
            False,
            True,
        ),
        (
            "Priya Nair",
            "priya@bigco.test",
            "Kick-off agenda",
            "Here is the agenda for Monday's kick-off. Let me know if anything is missing.",
            True,
            False,
        ),
        (
            "<img src=x onerror=alert(1)>",
            "evil@spam.test",
            "<b>Hostile</b> subject",
            "<script>alert(2)</script>",
            False,
            False,
        ),
        (
            "Léa Martin",
            "lea@agency.test",
            "Design review notes",
            "Great session today; notes and next steps inside.",
            False,
            False,
        ),
        (
            "Tom Okafor",
            "tom@partner.test",
            "Partnership proposal",
            "We'd love to explore a co-marketing partnership next quarter.",
            True,
            False,
        ),
    ]
    messages = []
    for index, (name, address, subject, snippet, read, attach) in enumerate(rows):
        message = make_mailbox_message(
            inbox,
            subject=subject,
            sender=(name, address),
            date=now - timedelta(hours=index * 9),
            is_read=read,
            has_attachments=attach,
            body=snippet,
        )
        message.snippet = snippet
        messages.append(message)
    from extensions import db
    from services.linking import link_thread

    link_thread(messages[0].thread, "deal", deal.id)
    messages[2].thread.shared = True
    db.session.commit()
    return messages


def sign_in(page, live_server, user):
    sign_in_with_session(page, live_server.app, live_server.url, user)
    page.goto(live_server.url + "/mail/")


def test_inbox_search_keyboard_and_bulk_archive(live_server, page, me, mailbox_seed):
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.set_viewport_size({"width": 1366, "height": 768})
    sign_in(page, live_server, me)
    rows = page.locator(".mail-row")
    assert rows.count() == 6
    assert page.locator(".mail-row.is-unread").count() == 3
    assert page.get_by_text("<b>Hostile</b> subject").is_visible()
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=f"{SHOTS}/inbox.png")

    # Search as you type: the list narrows and the URL is pushed; focus stays in the box.
    page.fill("#mail-q", "invoice")
    expect(rows).to_have_count(1)
    assert "q=invoice" in page.url
    expect(page.locator("#mail-q")).to_be_focused()
    page.screenshot(path=f"{SHOTS}/search.png")
    page.fill("#mail-q", "")
    expect(rows).to_have_count(6)

    # Keyboard: j/j/k moves the cursor, e archives the current conversation.
    page.locator("#mail-q").blur()
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("k")
    current = page.locator(".mail-row.is-current")
    first_id = rows.nth(0).get_attribute("data-thread-id")
    assert current.get_attribute("data-thread-id") == first_id
    page.keyboard.press("e")
    expect(rows).to_have_count(5)
    assert page.locator(f'.mail-row[data-thread-id="{first_id}"]').count() == 0
    assert page.get_by_text("Archived 1 conversation.").is_visible()

    # Help overlay.
    page.keyboard.press("?")
    assert page.locator("#mail-help").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("#mail-help").is_visible()

    # Bulk: select two and archive with the toolbar button.
    page.locator(".mail-row .mail-check").nth(0).check()
    page.locator(".mail-row .mail-check").nth(1).check()
    page.screenshot(path=f"{SHOTS}/selected.png")
    page.click("button[value=archive]")
    expect(rows).to_have_count(3)
    page.click(".mail-folder:has-text('Archive')")
    expect(rows).to_have_count(3)
    assert dialogs == []
    # R34: no message text in browser storage.
    storage = page.evaluate("() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    assert "Invoice" not in storage and "Renewal" not in storage


def test_delete_asks_for_confirmation_in_the_page(live_server, page, me, mailbox_seed):
    browser_dialogs = []
    page.on("dialog", lambda dialog: (browser_dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, live_server, me)
    confirm = page.locator("#confirm-dialog")
    page.keyboard.press("j")
    page.keyboard.press("#")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("from Threadline? Your mailbox keeps the mail.")
    expect(page.locator("#confirm-dialog button:focus")).to_have_text("Cancel")
    page.keyboard.press("e")  # shortcuts wait while the question is open
    page.keyboard.press("Escape")
    expect(confirm).to_be_hidden()
    wait_for_htmx_settled(page)  # a request sent on Escape would be in flight now
    assert page.locator(".mail-row").count() == 6

    page.keyboard.press("#")
    expect(confirm).to_be_visible()
    confirm.get_by_role("button", name="Delete").click()
    expect(confirm).to_be_hidden()
    expect(page.locator(".mail-row")).to_have_count(5)
    wait_for_htmx_settled(page)
    assert page.locator(".mail-row").count() == 5  # one delete, the confirmed one
    assert browser_dialogs == []  # never the browser's own confirm()


def test_reply_later_from_the_list_and_the_conversation(live_server, page, me, mailbox_seed):
    sign_in(page, live_server, me)
    rows = page.locator(".mail-row")
    # l puts the current conversation on Reply later; it stays in the Inbox, marked.
    page.keyboard.press("j")
    first_id = page.locator(".mail-row.is-current").get_attribute("data-thread-id")
    page.keyboard.press("l")
    expect(page.get_by_text("Added 1 conversation to Reply later.")).to_be_visible()
    marked = page.locator(f'.mail-row[data-thread-id="{first_id}"] .chip-later')
    expect(marked).to_be_visible()
    expect(rows).to_have_count(6)

    # Open another (unread) conversation: opening marks it read; l there adds it to Reply
    # later too and returns to the list.
    second = rows.nth(1)
    second_id = second.get_attribute("data-thread-id")
    assert "is-unread" in second.get_attribute("class")
    with page.expect_response(lambda response: response.url.endswith("/read")) as marked_read:
        second.locator(".mail-row-link").click()
    assert marked_read.value.status == 204
    expect(page.locator("#conversation-actions")).to_be_visible()
    page.screenshot(path=f"{SHOTS}/conversation-actions.png")
    page.keyboard.press("l")
    expect(page.get_by_text("Added 1 conversation to Reply later.")).to_be_visible()
    second = page.locator(f'.mail-row[data-thread-id="{second_id}"]')
    expect(second).not_to_have_class(re.compile("is-unread"))

    # The Reply later list holds both, newest first; there l means done.
    page.click(".mail-folder:has-text('Reply later')")
    # Keys pressed before the new page's scripts run are lost: wait_for_url waits for its load.
    page.wait_for_url(re.compile(r"/mail/\?folder=later$"))
    expect(rows).to_have_count(2)
    assert [rows.nth(i).get_attribute("data-thread-id") for i in range(2)] == [first_id, second_id]
    page.screenshot(path=f"{SHOTS}/reply-later.png")
    page.keyboard.press("j")
    page.keyboard.press("l")
    expect(rows).to_have_count(1)
    expect(page.get_by_text("Removed 1 conversation from Reply later.")).to_be_visible()

    # Esc in a conversation goes back to the list it was opened from.
    rows.nth(0).locator(".mail-row-link").click()
    expect(page.locator("#conversation-actions")).to_be_visible()
    page.wait_for_url(re.compile(r"/mail/threads/\d+\?folder=later$"))  # and its scripts ran
    page.keyboard.press("Escape")
    expect(page).to_have_url(live_server.url + "/mail/?folder=later")


def test_conversation_keyboard_walks_the_list(live_server, page, me, mailbox_seed):
    sign_in(page, live_server, me)
    rows = page.locator(".mail-row")
    ids = [rows.nth(i).get_attribute("data-thread-id") for i in range(rows.count())]
    rows.nth(0).locator(".mail-row-link").click()
    # Keys pressed before the new page's scripts run are lost: wait for each page's load.
    page.wait_for_url(re.compile(rf"/mail/threads/{ids[0]}$"))
    expect(page.locator("#conversation-actions")).to_be_visible()
    page.keyboard.press("j")  # older
    page.wait_for_url(re.compile(rf"/mail/threads/{ids[1]}$"))
    expect(page.locator("#conversation-actions")).to_be_visible()
    page.keyboard.press("j")
    page.wait_for_url(re.compile(rf"/mail/threads/{ids[2]}$"))
    expect(page.locator("#conversation-actions")).to_be_visible()
    page.keyboard.press("k")  # newer
    page.wait_for_url(re.compile(rf"/mail/threads/{ids[1]}$"))
    expect(page.locator("#conversation-actions")).to_be_visible()
    page.keyboard.press("e")  # archive, back to the Inbox without it
    expect(page.get_by_text("Archived 1 conversation.")).to_be_visible()
    expect(rows).to_have_count(len(ids) - 1)


def test_mark_as_read_when_opened_can_be_turned_off(live_server, page, me, mailbox_seed):
    sign_in(page, live_server, me)
    page.goto(live_server.url + "/settings/")
    page.select_option("#pref-mark_read_on_open", label="Leave it unread until I mark it read")
    page.click("text=Save preferences")
    expect(page.locator("#pref-mark_read_on_open")).to_have_value("False")

    page.goto(live_server.url + "/mail/")
    row = page.locator(".mail-row.is-unread").first
    thread_id = row.get_attribute("data-thread-id")
    posted = []
    page.on(
        "request", lambda request: posted.append(request.url) if request.method == "POST" else None
    )
    row.locator(".mail-row-link").click()
    expect(page.locator("#conversation-actions")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert not [url for url in posted if url.endswith("/read")]
    page.goto(live_server.url + "/mail/")
    expect(page.locator(f'.mail-row[data-thread-id="{thread_id}"]')).to_have_class(
        re.compile("is-unread")
    )


@pytest.mark.imap
def test_opening_mail_says_saving_until_the_worker_lands_it(
    app, live_server, page, me, make_account, dovecot, mail_user
):
    """Opening an unread conversation marks it read at once and says "Saving to mailbox…"
    until the worker has set \\Seen on the server; then the note goes away by itself."""
    from tests.queue_helpers import run_pending_jobs
    from tests.sync_helpers import raw_message, run_sync

    account = make_account(me, mail_user)
    dovecot.deliver(mail_user.email, raw_message(1, to=mail_user.email))
    assert run_sync(app, account).ok
    sign_in(page, live_server, me)
    row = page.locator(".mail-row").first
    assert "is-unread" in row.get_attribute("class")
    with page.expect_response(lambda response: response.url.endswith("/read")):
        row.locator(".mail-row-link").click()
    saving = page.locator("#mailbox-saving")
    expect(saving).to_have_text(re.compile("Saving to mailbox…"))
    assert "\\Seen" not in dovecot.flags(mail_user.email, "INBOX", 1)
    assert run_pending_jobs(app) == 1  # the worker's loop
    expect(saving).to_have_text(re.compile(r"^\s*$"), timeout=15_000)  # its next poll
    assert "\\Seen" in dovecot.flags(mail_user.email, "INBOX", 1)
