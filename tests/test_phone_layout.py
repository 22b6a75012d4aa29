"""Every page at phone size (390 x 844) in Chromium: no sideways scrolling, no overlapping
list rows, and the main navigation reachable through a menu button."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser

SHOTS = os.environ.get("THREADLINE_SHOTS")  # set to a folder to keep screenshots


@pytest.fixture
def phone(browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


@pytest.fixture
def seeded(
    admin,
    make_stored_account,
    make_stored_folder,
    make_mailbox_message,
    make_person,
    make_organization,
    make_deal,
    make_lead,
    make_project,
):
    account = make_stored_account(admin)
    inbox = make_stored_folder(account, "INBOX", role="inbox")
    make_stored_folder(account, "Sent", role="sent")
    org = make_organization(admin, name="Acme Industrial Holdings International")
    person = make_person(
        admin,
        name="Carla Diaz-Fernández de la Vega",
        emails=("carla.diaz-fernandez@acme-industrial-holdings.example",),
        organization_id=org.id,
    )
    deal = make_deal(admin, title="Acme renewal 2027 with a rather long title", person_id=person.id)
    lead = make_lead(admin, title="Inbound lead from the trade fair in Hannover")
    project = make_project(admin, title="Onboarding project for Acme")
    now = datetime.now(UTC)
    messages = [
        make_mailbox_message(
            inbox,
            subject=f"Renewal quote number {n} for 2027 — please confirm the start date soon",
            sender=(
                "Carla Diaz-Fernández de la Vega",
                "carla.diaz-fernandez@acme-industrial-holdings.example",
            ),
            date=now - timedelta(hours=n * 7),
            is_read=n % 2 == 0,
            has_attachments=n % 3 == 0,
            body="Thanks for the call — attached is the signed quote.",
        )
        for n in range(8)
    ]
    messages[0].thread.deal_id = deal.id
    from extensions import db

    db.session.commit()
    return {
        "thread": messages[0].thread_id,
        "person": person.id,
        "organization": org.id,
        "deal": deal.id,
        "lead": lead.id,
        "project": project.id,
    }


def page_paths(ids: dict) -> list[str]:
    return [
        "/mail/",
        f"/mail/threads/{ids['thread']}",
        "/mail/compose",
        "/mail/drafts",
        "/mail/outbox",
        "/deals/",
        "/deals/board",
        f"/deals/{ids['deal']}",
        "/deals/new",
        "/persons/",
        f"/persons/{ids['person']}",
        "/persons/new",
        "/organizations/",
        f"/organizations/{ids['organization']}",
        "/leads/",
        f"/leads/{ids['lead']}",
        "/projects/",
        f"/projects/{ids['project']}",
        "/settings/",
        "/settings/accounts/",
        "/settings/blocked/",
        "/settings/accounts/new",
        "/admin/users",
    ]


OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('body *')].filter(el => {
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (style.position === 'fixed' || box.width === 0 || el.closest('dialog:not([open])')) return false;
    return box.right > width + 1;
  }).slice(0, 5).map(el => el.tagName + '.' + el.className + ' right=' + el.getBoundingClientRect().right);
  return {scroll: document.documentElement.scrollWidth, width, wide};
}"""

OVERLAPS = """() => {
  const rows = [...document.querySelectorAll('.mail-row, table tbody tr')].map(r => r.getBoundingClientRect());
  let overlaps = 0;
  for (let i = 1; i < rows.length; i++) if (rows[i].top < rows[i - 1].bottom - 1) overlaps++;
  return overlaps;
}"""


def sign_in(page, base: str, email: str) -> None:
    page.goto(base + "/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)
    # The first page saves the browser's time zone and reloads itself: let that finish.
    page.wait_for_load_state("networkidle")


@pytest.mark.slow(seconds=15)
def test_every_page_fits_a_phone(live_server, phone, admin, seeded):
    sign_in(phone, live_server.url, admin.email)
    problems = []
    for path in page_paths(seeded):
        response = phone.goto(live_server.url + path)
        assert response.status == 200, path
        phone.wait_for_load_state("networkidle")
        if SHOTS:
            phone.screenshot(path=f"{SHOTS}/phone{path.replace('/', '_').replace('?', '_')}.png")
        measured = phone.evaluate(OVERFLOW)
        if measured["scroll"] > measured["width"]:
            problems.append(
                f"{path}: scrollWidth {measured['scroll']} > {measured['width']} {measured['wide']}"
            )
        overlaps = phone.evaluate(OVERLAPS)
        if overlaps:
            problems.append(f"{path}: {overlaps} overlapping rows")
    assert not problems, "\n".join(problems)


def test_navigation_and_sign_out_through_the_menu_on_a_phone(live_server, phone, admin, seeded):
    sign_in(phone, live_server.url, admin.email)
    phone.goto(live_server.url + "/deals/")
    menu = phone.get_by_role("button", name="Menu")
    expect(menu).to_be_visible()
    expect(phone.get_by_role("link", name="People")).to_be_hidden()
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    people = phone.get_by_role("link", name="People")
    expect(people).to_be_in_viewport()
    people.click()
    expect(phone).to_have_url(live_server.url + "/persons/")
    phone.wait_for_load_state()  # the Menu button opens once the page's script has run
    phone.get_by_role("button", name="Menu").click()
    sign_out = phone.get_by_role("button", name="Sign out")
    expect(sign_out).to_be_in_viewport()
    sign_out.click()
    expect(phone).to_have_url(live_server.url + "/login")
