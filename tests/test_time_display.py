"""Times in the user's zone: list labels, hover titles, and the zone taken from the browser."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from extensions import db
from services.preferences import get_preference, update_preferences
from services.time_display import full_label, list_label, set_time_zone_from_browser, zone_names
from tests.conftest import PASSWORD

TOKYO, BERLIN = ZoneInfo("Asia/Tokyo"), ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)  # a Saturday


@pytest.mark.parametrize(
    ("value", "zone", "label"),
    [
        (datetime(2026, 12, 5, 7, 3, tzinfo=UTC), BERLIN, "08:03"),  # today, local clock
        (datetime(2026, 12, 4, 16, 0, tzinfo=UTC), TOKYO, "01:00"),  # Dec 5 in Tokyo: today
        (datetime(2026, 12, 1, 9, 0, tzinfo=UTC), BERLIN, "Tue"),  # this week
        (datetime(2026, 11, 29, 9, 0, tzinfo=UTC), BERLIN, "Sun"),
        (datetime(2026, 11, 28, 9, 0, tzinfo=UTC), BERLIN, "28 Nov"),  # a week ago: the date
        (datetime(2026, 3, 3, 9, 0, tzinfo=UTC), BERLIN, "3 Mar"),
        (datetime(2025, 12, 31, 23, 30, tzinfo=UTC), BERLIN, "1 Jan"),  # new year in Berlin
        (datetime(2025, 12, 31, 23, 30, tzinfo=UTC), ZoneInfo("UTC"), "2025-12-31"),
    ],
)
def test_list_labels_are_relative_and_local(value, zone, label):
    assert list_label(value, NOW, zone, "%Y-%m-%d") == label


@pytest.mark.parametrize("seed", range(5))
def test_list_label_follows_the_local_calendar(seed):
    """Reference model: the label's kind depends only on the local calendar days apart."""
    rng = random.Random(seed)
    for _ in range(400):
        zone = rng.choice([TOKYO, BERLIN, ZoneInfo("America/Los_Angeles"), ZoneInfo("UTC")])
        value = NOW - timedelta(minutes=rng.randint(0, 3 * 365 * 24 * 60))
        check_label(value, zone)


def check_label(value: datetime, zone: ZoneInfo) -> None:
    days = (NOW.astimezone(zone).date() - value.astimezone(zone).date()).days
    label = list_label(value, NOW, zone, "%Y-%m-%d")
    if days == 0:
        assert re.fullmatch(r"\d\d:\d\d", label)
    elif days <= 6:
        assert label in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    elif value.astimezone(zone).year == NOW.astimezone(zone).year:
        assert re.fullmatch(r"\d{1,2} [A-Z][a-z]{2}", label)
    else:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", label)


def test_full_label_names_the_zone_with_daylight_saving():
    assert full_label(datetime(2026, 12, 5, 7, 3, tzinfo=UTC), BERLIN) == "2026-12-05 08:03 CET"
    assert full_label(datetime(2026, 7, 5, 7, 3, tzinfo=UTC), BERLIN) == "2026-07-05 09:03 CEST"
    assert full_label(datetime(2026, 7, 5, 7, 3), ZoneInfo("UTC")) == "2026-07-05 07:03 UTC"


def test_the_browser_zone_is_taken_once_and_never_overrides_a_choice(app, make_user):
    user = make_user()
    assert "Europe/Berlin" in zone_names()
    assert not set_time_zone_from_browser(user, "Mars/Olympus")
    assert set_time_zone_from_browser(user, "Asia/Tokyo")
    update_preferences(user, {"time_zone": "Europe/Berlin"})
    assert not set_time_zone_from_browser(user, "Asia/Tokyo")
    assert get_preference(user, "time_zone") == "Europe/Berlin"


def test_the_zone_endpoint_refuses_junk(login, make_user):
    client = login(make_user())
    assert client.post("/settings/time-zone", data={"time_zone": "<script>"}).status_code == 409
    assert client.post("/settings/time-zone", data={"time_zone": "Asia/Tokyo"}).status_code == 204
    assert client.post("/settings/time-zone", data={"time_zone": "Asia/Tokyo"}).status_code == 409


@pytest.mark.browser
def test_a_tokyo_browser_sees_its_own_times(
    live_server, browser, make_user, make_stored_account, make_stored_folder, make_mailbox_message
):
    user = make_user(email="kenji@team.test", name="Kenji")
    inbox = make_stored_folder(make_stored_account(user), "INBOX", role="inbox")
    sent = datetime.now(UTC).replace(hour=2, minute=15, second=0, microsecond=0)
    if sent > datetime.now(UTC):
        sent -= timedelta(days=1)
    make_mailbox_message(inbox, subject="Quarterly numbers", date=sent)
    db.session.commit()
    context = browser.new_context(timezone_id="Asia/Tokyo", viewport={"width": 1280, "height": 860})
    page = context.new_page()
    try:
        page.goto(live_server.url + "/login")
        page.fill("input[name=email]", "kenji@team.test")
        page.fill("input[name=password]", PASSWORD)
        # The first page after sign-in stores the browser's zone, then redraws itself.
        with page.expect_response(
            lambda response: "/settings/time-zone" in response.url
        ) as sent_zone:
            page.click("button[type=submit]")
        assert sent_zone.value.status == 204
        page.wait_for_load_state("networkidle")  # the redraw that follows
        page.goto(live_server.url + "/mail/")
        expect(page.locator(".mail-date").first).to_have_attribute("title", re.compile(r"JST$"))
        local = sent.astimezone(TOKYO)
        title = page.locator(".mail-date").first.get_attribute("title")
        assert title == local.strftime("%Y-%m-%d %H:%M JST")
        with live_server.app.app_context():
            from models import User

            stored = db.session.get(User, user.id)
            assert get_preference(stored, "time_zone") == "Asia/Tokyo"
    finally:
        context.close()
