"""Conversation view, its parts and owner actions, the record panels and blocking settings."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import quote

import pytest
from sqlalchemy import select

from extensions import db
from models import ImageAllowance, MessagePerson, PersonEmail, Thread
from tests.mail_fixtures import (
    HOSTILE_DISPLAY_NAME,
    HOSTILE_SUBJECT,
    PNG_1X1,
    build_message,
)

SANDBOX = "allow-popups allow-popups-to-escape-sandbox"


class _Iframes(HTMLParser):
    """Collect iframe attributes and every hx-* attribute of the parent document."""

    def __init__(self) -> None:
        super().__init__()
        self.iframes: list[dict[str, str | None]] = []
        self.hx_attributes: list[tuple[str, str, str | None]] = []
        self.forms: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "iframe":
            self.iframes.append(attributes)
        if tag == "form":
            self.forms.append(attributes.get("action") or "")
        for name, value in attrs:
            if name.startswith(("hx-", "data-hx-")):
                self.hx_attributes.append((tag, name, value))


def parse_page(html: str) -> _Iframes:
    parser = _Iframes()
    parser.feed(html)
    return parser


@pytest.fixture
def world(make_user, make_stored_account, make_raw_message, make_person, make_deal, admin):
    """Owner A with a shared thread linked to a public deal; B teammate, C no access."""
    owner = make_user(name="Olivia Owner", email="olivia@team.test")
    teammate = make_user(name="Ben Teammate")
    outsider = make_user(name="Cleo Outsider")
    account = make_stored_account(owner)
    carla = make_person(owner, name="Carla Diaz", emails=("carla@customer.test",))
    deal = make_deal(owner, title="Carla renewal")
    private_deal = make_deal(owner, title="Secret deal", visibility="owner")
    raw = build_message(
        subject="Renewal terms",
        to="olivia@team.test",
        html="<p>Hello <b>Olivia</b></p><img src='cid:logo'>",
        inline_images=(("logo", PNG_1X1),),
        attachments=(("price list.pdf", "application/pdf", b"%PDF-1.4 fake"),),
    )
    message = make_raw_message(account, raw, shared=True)
    message.thread.deal_id = deal.id
    private = make_raw_message(account, build_message(subject="Private note", to="olivia@team.test"))
    hidden_deal = make_raw_message(
        account, build_message(subject="Owner-only deal", to="olivia@team.test"), shared=True
    )
    hidden_deal.thread.deal_id = private_deal.id
    db.session.commit()
    return {
        "owner": owner,
        "teammate": teammate,
        "outsider": outsider,
        "admin": admin,
        "account": account,
        "carla": carla,
        "deal": deal,
        "message": message,
        "thread": message.thread,
        "private": private,
        "hidden_deal": hidden_deal,
    }


def test_owner_sees_full_view(world, login):
    client = login(world["owner"])
    response = client.get(f"/mail/threads/{world['thread'].id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    page = parse_page(html)
    assert len(page.iframes) == 1
    assert page.iframes[0]["sandbox"] == SANDBOX
    assert page.iframes[0]["referrerpolicy"] == "no-referrer"
    assert "Renewal terms" in html
    assert "price list.pdf" in html
    assert "Share with team" not in html and "Make private" in html
    assert any("/blocks" in action for action in page.forms)
    assert response.headers["Cache-Control"] == "no-store"
    assert "HX-Request" in response.headers["Vary"]
