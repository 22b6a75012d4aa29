"""The first hour: a checklist on the landing page until done or hidden, and empty states
that say what to do next."""

from __future__ import annotations

import html

from extensions import db
from models import MailAccount
from services.preferences import update_preferences


def checklist_of(client) -> str:
    page = html.unescape(client.get("/deals/").get_data(as_text=True))
    if "Getting started" not in page:
        return ""
    return page.split("Getting started", 1)[1].split("</section>", 1)[0]


def test_the_first_admin_is_walked_through_the_first_steps(
    admin, login, make_user, make_person, make_stored_account
):
    client = login(admin)
    steps = checklist_of(client)
    for step in (
        "Connect your mailbox",
        "Invite your teammates",
        "Add the people you sell to",
        "Choose what teammates see",
    ):
        assert step in steps
    assert steps.count("(done)") == 0

    make_stored_account(admin)
    make_user(name="Tess Teammate")
    make_person(admin, name="Carla Diaz")
    steps = checklist_of(client)
    assert steps.count("(done)") == 3
    update_preferences(admin, {"default_email_sharing": "shared"})
    assert checklist_of(client) == ""  # all done: it goes away


def test_a_teammate_has_no_invite_step_and_can_hide_the_list(login, make_user):
    member = make_user(name="Mo Member")
    client = login(member)
    steps = checklist_of(client)
    assert "Connect your mailbox" in steps and "Invite your teammates" not in steps
    hidden = client.post("/deals/checklist/dismiss")
    assert hidden.status_code == 303
    assert checklist_of(client) == ""


def test_the_mail_tab_without_a_mailbox_says_how_to_connect_one(login, make_user):
    member = make_user()
    client = login(member)
    page = client.get("/mail/").get_data(as_text=True)
    assert "Connect your mailbox" in page and 'href="/settings/accounts/new"' in page
    db.session.add(
        MailAccount(
            user_id=member.id,
            email_address="mo@team.test",
            provider="other",
            username="mo@team.test",
            password_encrypted=b"x",
            imap_host="imap.team.test",
            imap_port=993,
            imap_security="ssl",
        )
    )
    db.session.commit()
    page = client.get("/mail/").get_data(as_text=True)
    assert "Connect your mailbox" not in page
    assert "Mail appears here once your mailbox has synced." in page
