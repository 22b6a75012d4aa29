"""WCAG 2.2 AA in real Chromium: axe-core (tests/vendor/, pinned) on every page state at
1366 x 800 and 390 x 844 finds no serious or critical violation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

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
def world(
    seeded,  # noqa: F811
    admin,
    make_user,
    make_deal,
    make_person,
    make_raw_message,
    make_mailbox_message,
    make_group_send,
):
    """The phone-layout world plus what else the pages show: won, lost and owner-only
    records, an HTML mail with remote images, a blocked address, a teammate, and a group
    email with one refusal (its organization has a person the picker skips)."""
    from models import MailAccount, MailFolder
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
    inbox = db.session.query(MailFolder).filter_by(account_id=account.id, role="inbox").one()
    make_mailbox_message(inbox, subject="Autumn price list", sender=("Nina", "nina@letters.test"))
    linking.block(admin, "spam@junk.test")
    make_person(admin, name="Nadia Noaddress", organization_id=seeded["organization"])
    from models import MailTemplate
    from services import signatures

    signatures.create_signature(admin, account, name="Work", body_html="<p><b>Ada</b>, Sales</p>")
    template = MailTemplate(owner_id=admin.id, name="Renewal offer", subject="Your renewal")
    db.session.add(template)
    db.session.commit()
    return {
        **seeded,
        "html_thread": html.thread_id,
        "account": account.id,
        "group": make_group_send(
            admin,
            account,
            mails=[
                ("sent", "", "olga@customer.test", None),
                ("failed", "", "nobody@customer.test", "550 5.1.1 User unknown"),
            ],
        ).id,
        "template": template.id,
    }


def open_shortcuts(page) -> None:
    page.keyboard.press("?")
    page.locator("#mail-help").wait_for()


def open_menu(page) -> None:
    """On a phone the navigation opens from the Menu button (wider screens show it)."""
    toggle = page.locator(".menu-toggle")
    if toggle.is_visible():
        toggle.click()
        page.locator(".topnav .mainnav").wait_for()


def open_smart_fields(page) -> None:
    """The smart-field picker open over the compose editor."""
    page.locator("#compose-form[data-ready=true]").wait_for()
    page.get_by_role("button", name="Insert field").click()
    page.get_by_role("menu", name="Smart fields").wait_for()


def open_confirm(page) -> None:
    page.locator(".mail-check").first.check()
    page.get_by_role("button", name="Delete").click()
    page.locator("#confirm-dialog[open]").wait_for()


def open_template_picker(page) -> None:
    page.get_by_role("button", name="Use a template…").click()
    page.locator("#template-results li").first.wait_for()


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
        ("/mail/compose", open_smart_fields),
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
        (f"/persons/{ids['person']}/edit", None),
        ("/organizations/", None),
        (f"/organizations/{ids['organization']}", None),
        ("/organizations/new", None),
        ("/leads/", None),
        ("/leads/new", None),
        (f"/leads/{ids['lead']}", None),
        ("/projects/", None),
        (f"/projects/{ids['project']}", None),
        ("/settings/", None),
        ("/settings/profile", None),
        ("/settings/accounts/", None),
        ("/settings/accounts/new", None),
        (f"/settings/accounts/{ids['account']}", None),
        (f"/settings/accounts/{ids['account']}/reauth", None),
        (f"/settings/accounts/{ids['account']}/folders", None),
        (f"/settings/accounts/{ids['account']}/remove", None),
        (f"/settings/accounts/{ids['account']}/signatures", None),
        ("/settings/blocked/", None),
        ("/settings/templates/", None),
        ("/settings/templates/new", None),
        (f"/settings/templates/{ids['template']}", None),
        ("/mail/compose", open_template_picker),
        ("/account/password", None),
        ("/admin/users", None),
        ("/group-email/", None),
        (f"/group-email/new?source=organization&organization_id={ids['organization']}", None),
        (f"/group-email/{ids['group']}", None),
        ("/deals/999999", None),  # the error page
    ]


def sign_in(page, app, base_url: str, user) -> None:
    """Give the page's browser a signed-in session cookie (the form is tested elsewhere)."""
    client = signed_in_client(app, user, user_agent=page.evaluate("navigator.userAgent"))
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    page.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base_url}])


def axe_violations(page) -> list[str]:
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
    context.add_init_script(path=str(AXE))  # in every page before its own scripts
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


def test_first_run_setup_page(live_server, browser):
    """No user yet: every address leads to the page that creates the first administrator."""
    problems = []
    for size, (width, height) in sorted(SIZES.items()):
        context = browser.new_context(viewport={"width": width, "height": height})
        context.add_init_script(path=str(AXE))
        page = context.new_page()
        load(page, live_server.url + "/setup")
        problems += [f"{size}: {found}" for found in axe_violations(page)]
        context.close()
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- keyboard and announcements


@pytest.fixture
def desktop(browser, live_server, admin):
    """A 1366 x 800 page signed in as `admin`."""
    context = browser.new_context(viewport={"width": 1366, "height": 800}, timezone_id="UTC")
    page = context.new_page()
    page.set_default_timeout(10_000)
    sign_in(page, live_server.app, live_server.url, admin)
    yield page
    context.close()


FOCUS_IN_HELP = "() => !!document.activeElement.closest('#mail-help')"


def test_shortcuts_dialog_is_modal_takes_and_returns_focus(live_server, desktop, world):
    load(desktop, live_server.url + "/mail/")
    opener = desktop.get_by_role("button", name="Keyboard shortcuts")
    opener.focus()
    desktop.keyboard.press("Enter")
    help_dialog = desktop.get_by_role("dialog", name="Keyboard shortcuts")
    expect(help_dialog).to_be_visible()
    assert help_dialog.evaluate("dialog => dialog.matches(':modal')")  # aria-modal, inert page
    assert desktop.evaluate(FOCUS_IN_HELP)
    for _ in range(4):  # Tab stays inside: the page behind is inert
        desktop.keyboard.press("Tab")
        assert desktop.evaluate(FOCUS_IN_HELP)
    desktop.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()
    expect(opener).to_be_focused()

    desktop.keyboard.press("?")  # from the list: Close is focused; closing gives focus back
    expect(help_dialog).to_be_visible()
    expect(help_dialog.get_by_role("button", name="Close")).to_be_focused()
    desktop.keyboard.press("Enter")
    expect(help_dialog).to_be_hidden()
    expect(opener).to_be_focused()


def test_confirm_dialog_keeps_tab_inside(live_server, desktop, world):
    load(desktop, live_server.url + "/mail/")
    open_confirm(desktop)
    inside = "() => !!document.activeElement.closest('#confirm-dialog')"
    for key in ("Tab", "Tab", "Tab", "Shift+Tab", "Shift+Tab", "Shift+Tab"):
        desktop.keyboard.press(key)
        assert desktop.evaluate(inside), key
    desktop.keyboard.press("Escape")
    expect(desktop.locator("#confirm-dialog")).to_be_hidden()


def test_current_row_is_marked_without_colour(live_server, desktop, world):
    load(desktop, live_server.url + "/mail/")
    desktop.keyboard.press("j")
    desktop.keyboard.press("j")
    current = desktop.locator(".mail-row.is-current")
    expect(current).to_have_attribute("aria-current", "true")
    assert desktop.locator(".mail-row[aria-current]").count() == 1
    assert current.evaluate("row => getComputedStyle(row).outlineStyle") == "solid"


def test_single_key_shortcuts_can_be_turned_off(live_server, desktop, world):
    load(desktop, live_server.url + "/settings/")
    desktop.select_option("#pref-keyboard_shortcuts", label="Off: letters and symbols only type")
    desktop.get_by_role("button", name="Save preferences").click()
    expect(desktop.get_by_text("Saved.")).to_be_visible()
    load(desktop, live_server.url + "/mail/")
    expect(desktop.locator("body")).to_have_attribute("data-keyboard-shortcuts", "off")
    rows = desktop.locator(".mail-row")
    count = rows.count()
    for key in ("j", "x", "e", "#", "?"):
        desktop.keyboard.press(key)
    wait_for_htmx_settled(desktop)  # an archive or delete sent on a key would be in flight
    assert desktop.locator(".mail-row.is-current").count() == 0
    assert not desktop.locator("#mail-help").is_visible()
    assert desktop.locator("#confirm-dialog[open]").count() == 0
    assert rows.count() == count
    desktop.get_by_role("button", name="Keyboard shortcuts").click()  # the help still opens
    expect(desktop.get_by_text("Single-key shortcuts are off")).to_be_visible()

    thread = world["thread"]
    load(desktop, f"{live_server.url}/mail/threads/{thread}")
    desktop.keyboard.press("e")
    wait_for_htmx_settled(desktop)
    assert desktop.url.endswith(f"/mail/threads/{thread}")
    with live_server.app.app_context():
        from models import Thread

        assert db.session.get(Thread, thread).in_inbox


def test_live_search_announces_results_and_titles_the_page(live_server, desktop, world):
    load(desktop, live_server.url + "/mail/")
    assert desktop.title() == "Inbox · Mail · Threadline"
    announce = desktop.locator("#mail-announce")
    expect(announce).to_have_attribute("aria-live", "polite")
    desktop.fill("#mail-q", "autumn")
    expect(desktop.locator(".mail-row")).to_have_count(1)
    expect(announce).to_have_text("1 conversation found")
    expect(desktop).to_have_title("Search: autumn · Inbox · Mail · Threadline")
    desktop.fill("#mail-q", "renewal")
    expect(announce).to_have_text("8 conversations found")
    desktop.fill("#mail-q", "nothingmatchesthis")
    expect(announce).to_have_text("No conversations found")
    desktop.reload()  # the pushed URL gives the same title as a page
    expect(desktop).to_have_title("Search: nothingmatchesthis · Inbox · Mail · Threadline")


def test_board_stage_menu_moves_a_deal_on_enter_and_says_so(live_server, desktop, world):
    from models import Deal

    deal = world["deal"]
    load(desktop, live_server.url + "/deals/board")
    menu = desktop.locator(f"#stage-{deal}")
    menu.focus()
    desktop.keyboard.press("ArrowDown")
    desktop.keyboard.press("ArrowDown")
    wait_for_htmx_settled(desktop)  # a move sent on an arrow key would be in flight now
    with live_server.app.app_context():
        assert db.session.get(Deal, deal).stage == "lead_in"
    expect(menu).to_have_value("proposal")
    desktop.keyboard.press("Escape")  # puts the choice back
    expect(menu).to_have_value("lead_in")

    desktop.keyboard.press("ArrowDown")
    desktop.keyboard.press("ArrowDown")
    with desktop.expect_response(lambda r: r.url.endswith(f"/deals/{deal}/stage")):
        desktop.keyboard.press("Enter")
    expect(desktop.locator(f"[data-stage-drop=proposal] #deal-card-{deal}")).to_be_visible()
    expect(desktop.locator("#board-announce")).to_have_text(
        "Moved Acme renewal 2027 with a rather long title to Proposal made"
    )
    expect(desktop.locator(f"#stage-{deal}")).to_be_focused()
    with live_server.app.app_context():
        assert db.session.get(Deal, deal).stage == "proposal"
