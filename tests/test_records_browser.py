"""Records in real Chromium: setup, sign-in, people, deals from a person, the board, visibility.

Uses the `live_server` (object with .url and .app, a fresh app per test) and `page`
(Playwright sync Page) fixtures from tests/servers/browser.py.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from extensions import db
from models import Deal, Person
from services import users
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser


def make_user(live_server, email: str, name: str):
    with live_server.app.app_context():
        return users.create_user(email=email, name=name, password=PASSWORD).id


def make_deal(live_server, owner_id: int, title: str, **fields) -> int:
    with live_server.app.app_context():
        deal = Deal(title=title, owner_id=owner_id, **fields)
        db.session.add(deal)
        db.session.commit()
        return deal.id


def deal_stage(live_server, deal_id: int) -> str:
    with live_server.app.app_context():
        return db.session.get(Deal, deal_id).stage


def sign_in(page, live_server, email: str) -> None:
    page.goto(f"{live_server.url}/login")
    page.fill("#f-email", email)
    page.fill("#f-password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator(".whoami")).to_be_visible()


def test_first_run_setup_then_sign_in(page, live_server):
    page.goto(live_server.url + "/")
    expect(page).to_have_url(re.compile(r"/setup$"))
    page.fill("#f-name", "Ana Admin")
    page.fill("#f-email", "ana@team.test")
    page.fill("#f-password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/deals/$"))
    expect(page.get_by_text("No deals yet")).to_be_visible()
    page.click("text=Sign out")
    sign_in(page, live_server, "ana@team.test")
    expect(page.locator(".whoami")).to_have_text("Ana Admin")


def test_create_person_with_two_emails_then_deal_from_person(page, live_server):
    make_user(live_server, "ana@team.test", "Ana")
    sign_in(page, live_server, "ana@team.test")
    page.goto(f"{live_server.url}/persons/new")
    page.fill("#f-name", "Olivia Becker")
    emails = page.locator("input[name=emails]")
    emails.nth(0).fill("olivia@acme.test")
    emails.nth(1).fill("olivia.b@gmail.test")
    page.click("button:has-text('Create person')")
    expect(page.locator("h1")).to_have_text("Olivia Becker")
    expect(page.locator("#record-summary")).to_contain_text("olivia.b@gmail.test")
    expect(page.locator("#email-conversations")).to_contain_text("No email conversations yet")

    page.click("text=+ Create deal")
    expect(page.locator("#f-person_id option:checked")).to_have_text("Olivia Becker")
    page.fill("#f-title", "Fleet rollout")
    page.fill("#f-value", "12000")
    page.click("button:has-text('Create deal')")
    expect(page.locator("h1")).to_contain_text("Fleet rollout")
    expect(page.locator("#record-summary")).to_contain_text("Olivia Becker")


def test_inline_edit_person(page, live_server):
    owner = make_user(live_server, "ana@team.test", "Ana")
    with live_server.app.app_context():
        person = Person(name="Noah Ito", owner_id=owner)
        db.session.add(person)
        db.session.commit()
        person_id = person.id
    sign_in(page, live_server, "ana@team.test")
    page.goto(f"{live_server.url}/persons/{person_id}")
    page.click("#record-summary >> text=Edit")
    page.fill("#record-summary #f-name", "Noah Ito-Berg")
    page.click("#record-summary button:has-text('Save')")
    expect(page.locator("#record-summary dl")).to_contain_text("Noah Ito-Berg")
    expect(page).to_have_url(re.compile(rf"/persons/{person_id}$"))


def test_board_drag_and_drop_moves_a_deal(page, live_server):
    owner = make_user(live_server, "ana@team.test", "Ana")
    deal_id = make_deal(live_server, owner, "Drag me", stage="lead_in")
    sign_in(page, live_server, "ana@team.test")
    page.goto(f"{live_server.url}/deals/board")
    card = page.locator(f"#deal-card-{deal_id}")
    with page.expect_response(re.compile(rf"/deals/{deal_id}/stage$")):
        card.drag_to(page.locator("[data-stage-drop=negotiation]"))
    expect(page.locator(f"[data-stage-drop=negotiation] #deal-card-{deal_id}")).to_be_visible()
    assert deal_stage(live_server, deal_id) == "negotiation"


def test_board_menu_moves_a_deal(page, live_server):
    owner = make_user(live_server, "ana@team.test", "Ana")
    deal_id = make_deal(live_server, owner, "Pick me", stage="lead_in")
    sign_in(page, live_server, "ana@team.test")
    page.goto(f"{live_server.url}/deals/board")
    with page.expect_response(re.compile(rf"/deals/{deal_id}/stage$")):
        page.select_option(f"#stage-{deal_id}", "proposal")
    expect(page.locator(f"[data-stage-drop=proposal] #deal-card-{deal_id}")).to_be_visible()
    assert deal_stage(live_server, deal_id) == "proposal"


def test_owner_only_deal_is_invisible_to_a_teammate(page, live_server):
    owner = make_user(live_server, "ana@team.test", "Ana")
    make_user(live_server, "ben@team.test", "Ben")
    secret = make_deal(live_server, owner, "Secret merger", visibility="owner")
    make_deal(live_server, owner, "Open renewal")
    sign_in(page, live_server, "ben@team.test")
    page.goto(f"{live_server.url}/deals/board")
    expect(page.get_by_role("link", name="Open renewal")).to_be_visible()
    expect(page.locator("#board")).not_to_contain_text("Secret merger")
    page.goto(f"{live_server.url}/deals/?q=secret")
    expect(page.get_by_text("No deal matches")).to_be_visible()
    response = page.goto(f"{live_server.url}/deals/{secret}")
    assert response is not None and response.status == 404
    with live_server.app.app_context():
        assert db.session.scalar(select(Deal.title).where(Deal.id == secret)) == "Secret merger"


def test_active_search_filters_as_you_type(page, live_server):
    owner = make_user(live_server, "ana@team.test", "Ana")
    with live_server.app.app_context():
        db.session.add_all(
            [
                Person(name="Grace Hughes", owner_id=owner),
                Person(name="Felix Rossi", owner_id=owner),
            ]
        )
        db.session.commit()
    sign_in(page, live_server, "ana@team.test")
    page.goto(f"{live_server.url}/persons/")
    page.fill("input[name=q]", "grace")
    expect(page.locator("#results")).not_to_contain_text("Felix Rossi")
    expect(page.locator("#results")).to_contain_text("Grace Hughes")
    expect(page).to_have_url(re.compile(r"q=grace"))


def test_skip_link_leads_keyboard_users_to_the_main_content(page, live_server):
    make_user(live_server, "kim@team.test", "Kim")
    sign_in(page, live_server, "kim@team.test")
    page.goto(f"{live_server.url}/deals/")
    skip = page.locator("a.skip-link")
    expect(skip).not_to_be_in_viewport()  # out of sight until a keyboard user reaches it
    page.keyboard.press("Tab")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#main$"))
