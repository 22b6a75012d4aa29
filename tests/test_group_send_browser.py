"""Group email in real Chromium: tick people on the People list, untick one in the picker,
choose the template, send; the progress page polls itself while the worker's send tick
sends through aiosmtpd, and ends with every mail sent. Waits are for page state."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from tests.servers.browser import sign_in_with_session
from tests.test_group_send import group_mails, make_template, people, send_everything
from tests.test_send import sender, smtp_servers

__all__ = ["sender", "smtp_servers"]  # fixtures used by name: an account sending via aiosmtpd

pytestmark = [pytest.mark.browser, pytest.mark.imap]
SHOTS = os.environ.get("THREADLINE_SHOTS", "/tmp/shots")


def test_pick_people_send_and_watch_the_progress(app, page, live_server, sender, make_person):
    user, _account, server, _mail_user = sender
    persons = people(make_person, user, 4)
    make_template(user, name="Spring offer")
    sign_in_with_session(page, app, live_server.url, user)

    page.goto(live_server.url + "/persons/?sort=name")
    for person in persons[:3]:
        page.get_by_label(f"Pick {person.name}").check()
    os.makedirs(SHOTS, exist_ok=True)
    page.screenshot(path=f"{SHOTS}/group-send-people.png")
    page.locator("[data-group-email-selected]").click()

    expect(page.locator("h1")).to_have_text("Group email: Chosen people")
    boxes = page.locator("input[name=recipient]")
    expect(boxes).to_have_count(3)
    page.get_by_label("Person 02").uncheck()
    page.select_option("#f-template", label="Spring offer")
    page.screenshot(path=f"{SHOTS}/group-send-picker.png", full_page=True)
    page.get_by_role("button", name="Send to the ticked recipients").click()

    progress = page.locator("#group-progress")
    expect(progress).to_have_attribute("data-state", "sending")
    expect(page.locator(".group-summary")).to_contain_text("Sending: 0 of 2 sent")
    group_id = int(page.url.rstrip("/").rpartition("/")[2])
    assert [m.to[0][1] for m in group_mails(group_id)] == ["p01@customer.test", "p03@customer.test"]

    send_everything(app, group_id)  # the worker's tick, with the pauses made due
    expect(progress).to_have_attribute("data-state", "done")  # the page polled itself
    expect(page.locator(".group-summary")).to_contain_text("Done: 2 of 2 sent.")
    expect(page.locator("tr[data-mail-state=sent]")).to_have_count(2)
    page.screenshot(path=f"{SHOTS}/group-send-progress.png", full_page=True)
    assert sorted(m.rcpt_tos[0] for m in server.messages) == [
        "p01@customer.test",
        "p03@customer.test",
    ]
