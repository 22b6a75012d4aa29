"""WCAG 2.2 AA in real Chromium: axe-core (tests/vendor/, pinned) on every page state at
1366 x 800 and 390 x 844 finds no serious or critical violation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extensions import db
from tests.conftest import signed_in_client
from tests.mail_fixtures import build_message
from tests.servers.browser import wait_for_htmx_settled
from tests.test_phone_layout import seeded  # noqa: F401  (the same world of records and mail)

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
SHOTS = os.environ.get("THREADLINE_SHOTS")  # set to a folder to keep screenshots
SIZES = {"desktop": (1366, 800), "phone": (390, 844)}
# Mail content in the sandboxed frame is the sender's, not ours: axe checks the page only.
RUN_AXE = """async () => {
  const result = await axe.run(document, {
    runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']},
    rules: {'empty-table-header': {enabled: true}},  // best practice, minor: named in issue 15
    iframes: false,
    resultTypes: ['violations'],
  });
  return result.violations
    .filter(v => v.impact === 'serious' || v.impact === 'critical' || v.id === 'empty-table-header')
    .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => ({
      target: n.target.join(' '), summary: n.failureSummary}))}));
}"""


@pytest.fixture
def world(seeded, admin, make_user, make_deal, make_person, make_raw_message):  # noqa: F811
    """The phone-layout world plus what else the pages show: won, lost and owner-only
    records, an HTML mail with remote images, a blocked address and a teammate."""
    from models import MailAccount
    from services import linking

    make_user(email="ben@team.test", name="Ben Teammate")
    make_deal(admin, title="Won deal", status="won")
    make_deal(admin, title="Lost deal", status="lost")
    make_deal(admin, title="Owner-only deal", visibility="owner")
    make_person(admin, name="Owner-only person", visibility="owner")
    account = db.session.query(MailAccount).filter_by(user_id=admin.id).one()
    html = make_raw_message(
        account,
        build_message(
            subject="Autumn newsletter",
            sender="Nina News <news@letters.test>",
            to=admin.email,
            text=None,
            html='<h2>Autumn news</h2><img src="http://remote.invalid/banner.png" alt="banner">',
        ),
    )
    linking.block(admin, "spam@junk.test")
    return {**seeded, "html_thread": html.thread_id, "account": account.id}


def open_shortcuts(page) -> None:
    page.keyboard.press("?")
    page.locator("#mail-help").wait_for()


def open_menu(page) -> None:
    """On a phone the navigation opens from the Menu button (wider screens show it)."""
    toggle = page.locator(".menu-toggle")
    if toggle.is_visible():
        toggle.click()
        page.locator(".topnav .mainnav").wait_for()


def open_confirm(page) -> None:
    page.locator(".mail-check").first.check()
    page.get_by_role("button", name="Delete").click()
    page.locator("#confirm-dialog[open]").wait_for()


def states(ids: dict) -> list[tuple[str, object]]:
    """Each page state: (path, a function that brings the loaded page into it, or None)."""
    return [
        ("/mail/", None),
        ("/mail/?q=renewal", None),
        ("/mail/?folder=later", None),
        ("/mail/", open_shortcuts),
        ("/mail/", open_confirm),
        (f"/mail/threads/{ids['thread']}", None),
        (f"/mail/threads/{ids['html_thread']}", None),
        ("/mail/compose", None),
        ("/deals/", None),
        ("/deals/", open_menu),
        ("/deals/board", None),
        (f"/deals/{ids['deal']}", None),
        ("/deals/new", None),
        (f"/deals/{ids['deal']}/edit", None),
        (f"/deals/{ids['deal']}/delete", None),
        ("/persons/", None),
        (f"/persons/{ids['person']}", None),
        ("/persons/new", None),
        ("/organizations/", None),
        (f"/organizations/{ids['organization']}", None),
        ("/leads/", None),
        (f"/leads/{ids['lead']}", None),
        ("/projects/", None),
        (f"/projects/{ids['project']}", None),
        ("/settings/", None),
        ("/settings/accounts/", None),
        ("/settings/accounts/new", None),
        (f"/settings/accounts/{ids['account']}", None),
        ("/settings/blocked/", None),
        ("/account/password", None),
        ("/admin/users", None),
        ("/deals/999999", None),  # the error page
    ]


def sign_in(page, app, base_url: str, user) -> None:
    """Give the page's browser a signed-in session cookie (the form is tested elsewhere)."""
    client = signed_in_client(app, user, user_agent=page.evaluate("navigator.userAgent"))
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    page.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base_url}])


def axe_violations(page) -> list[str]:
    page.evaluate(AXE.read_text())
    found = page.evaluate(RUN_AXE)
    return [
        f"  {v['impact']} {v['id']} ({v['help']}): {node['target']}\n"
        f"      {node['summary'].replace(chr(10), ' ')}"
        for v in found
        for node in v["nodes"]
    ]


def load(page, url: str) -> None:
    page.goto(url)  # waits for the load event: htmx has sent the lazy panels' requests by then
    wait_for_htmx_settled(page)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_no_serious_axe_violations(live_server, browser, admin, world, size):
    width, height = SIZES[size]
    context = browser.new_context(
        viewport={"width": width, "height": height},
        is_mobile=size == "phone",
        timezone_id="UTC",  # the first page stores the browser's zone; UTC needs no reload
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    problems = []
    try:
        sign_in(page, live_server.app, live_server.url, admin)
        for path, action in states(world):
            load(page, live_server.url + path)
            if action is not None:
                action(page)
            if SHOTS:
                name = f"{size}{path}_{action.__name__ if action else ''}"
                page.screenshot(path=f"{SHOTS}/{name.replace('/', '_').replace('?', '_')}.png")
            found = axe_violations(page)
            if found:
                label = path + (f" [{action.__name__}]" if action else "")
                problems.append(f"{label}:\n" + "\n".join(found))
        context.clear_cookies()
        load(page, live_server.url + "/login")
        found = axe_violations(page)
        if found:
            problems.append("/login:\n" + "\n".join(found))
    finally:
        context.close()
    assert not problems, f"{size} {width}x{height}:\n" + "\n".join(problems)
