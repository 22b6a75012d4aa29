"""Conversation view, its parts and owner actions, the record panels and blocking settings."""

from __future__ import annotations

import base64
import binascii
import html
import re
from html.parser import HTMLParser
from urllib.parse import quote

import pytest
from sqlalchemy import select

from extensions import db
from mailsync import parse
from models import ImageAllowance, MessagePerson, PersonEmail
from services import conversations
from tests.mail_fixtures import (
    HOSTILE_DISPLAY_NAME,
    HOSTILE_SUBJECT,
    PNG_1X1,
    build_message,
    tnef_package,
)
from tests.statements import recorded_statements
from tests.test_parse import SMIME, customer_mail, forwarded

SANDBOX = "allow-same-origin allow-popups allow-popups-to-escape-sandbox"


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


def rich_mail(subject: str, **overrides) -> bytes:
    """Return an HTML mail from Carla with an inline cid: image and a PDF attachment."""
    fields = {
        "subject": subject,
        "to": "Olivia Owner <olivia@team.test>",
        "text": "Hello Olivia, the terms are attached.",
        "html": "<p>Hello <b>Olivia</b></p><img src='cid:logo' alt='logo'>",
        "inline_images": (("logo", PNG_1X1),),
        "attachments": (("price list.pdf", "application/pdf", b"%PDF-1.4 fake"),),
    }
    fields.update(overrides)
    return build_message(**fields)


def part_id_of(message, filename: str) -> str:
    """Return the MIME part id of an attachment of a stored message."""
    from mailsync.parse import parse_message
    from services.conversations import load_raw

    parsed = parse_message(load_raw(message))
    return next(p.part_id for p in parsed.attachments if p.filename == filename)


HTMX_SIDEBAR = {"HX-Request": "true", "HX-Target": "conversation-sidebar"}


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
    message = make_raw_message(account, rich_mail("Renewal terms"), shared=True)
    message.thread.deal_id = deal.id
    private = make_raw_message(account, rich_mail("Private note"))
    # From someone who is no person, so the owner-only deal is its only link.
    hidden_deal = make_raw_message(
        account, rich_mail("Owner-only deal", sender="Sam Secret <sam@secret.test>"), shared=True
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


def test_teammate_sees_shared_linked_thread_read_only(world, login):
    client = login(world["teammate"])
    response = client.get(f"/mail/threads/{world['thread'].id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    page = parse_page(html)
    assert len(page.iframes) == 1 and page.iframes[0]["sandbox"] == SANDBOX
    assert "read-only" in html and "Olivia Owner" in html
    owner_actions = ("/sharing", "/link", "/unlink", "/persons", "/person-emails", "/blocks")
    assert not [a for a in page.forms if a.endswith(owner_actions)]
    assert "Block sender" not in html and "Share with team" not in html
    assert "Make private" not in html


@pytest.mark.parametrize("who", ["teammate", "admin", "outsider"])
def test_private_thread_is_404_for_everyone_but_owner(world, login, who):
    client = login(world[who])
    assert client.get(f"/mail/threads/{world['private'].thread_id}").status_code == 404
    assert (
        login(world["owner"]).get(f"/mail/threads/{world['private'].thread_id}").status_code == 200
    )


# --------------------------------------------------------------------------- R30 matrix

# Every conversations.* route that takes a thread or message id, and who may use it:
# "viewer" = anyone who may read the thread, "owner" = the mailbox owner only.
ID_ROUTES = {
    "conversations.show": "viewer",
    "conversations.link_search": "owner",
    "conversations.step": "owner",
    "conversations.mark_read": "owner",
    "conversations.update_sharing": "owner",
    "conversations.link": "owner",
    "conversations.unlink": "owner",
    "conversations.create_person": "owner",
    "conversations.add_person_email": "owner",
    "conversations.link_past": "owner",
    "conversations.dismiss_past_links": "owner",
    "conversations.block": "owner",
    "conversations.allow_images": "viewer",
    "conversations.attachment": "viewer",
    "conversations.inline_image": "viewer",
    "conversations.raw": "viewer",
    "conversations.fetch_full": "owner",
}
# (thread, user) -> may read. shared: shared + linked to a public deal; owner_only_deal:
# shared but linked to a deal only its owner can access; private: not shared.
READERS = {
    "shared": {"owner", "teammate", "admin"},
    "owner_only_deal": {"owner"},
    "private": {"owner"},
}
THREAD_MESSAGES = {"shared": "message", "owner_only_deal": "hidden_deal", "private": "private"}


def test_every_id_route_is_classified(app):
    id_rules = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".")[0] in ("conversations", "blocking")
        and ({"thread_id", "message_id"} & set(rule.arguments))
    }
    assert id_rules == set(ID_ROUTES), "classify new id routes in ID_ROUTES"


def _url_for_route(app, endpoint: str, message) -> tuple[str, str]:
    from flask import url_for

    from services.conversations import cid_token

    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
    method = "POST" if "POST" in rule.methods else "GET"
    values = {}
    if "thread_id" in rule.arguments:
        values["thread_id"] = message.thread_id
    if "message_id" in rule.arguments:
        values["message_id"] = message.id
    if "part_id" in rule.arguments:
        values["part_id"] = part_id_of(message, "price list.pdf")
    if "token" in rule.arguments:
        values["token"] = cid_token("logo")
    if "step" in rule.arguments:
        values["step"] = "older"
    with app.test_request_context():
        return method, url_for(endpoint, **values)


@pytest.mark.parametrize("endpoint", sorted(ID_ROUTES))
def test_visibility_matrix(app, world, login, endpoint):
    clients = {who: login(world[who]) for who in ("owner", "teammate", "admin")}
    for thread_key, readers in READERS.items():
        message = world[THREAD_MESSAGES[thread_key]]
        method, url = _url_for_route(app, endpoint, message)
        for who, client in clients.items():
            allowed = who == "owner" if ID_ROUTES[endpoint] == "owner" else who in readers
            response = client.open(url, method=method)
            if allowed:
                assert response.status_code in (200, 204, 303, 422), (thread_key, who, url)
            else:
                assert response.status_code == 404, (thread_key, who, url)


def test_unknown_and_huge_ids_are_404(world, login):
    client = login(world["owner"])
    for url in (
        "/mail/threads/999999",
        "/mail/threads/99999999999999999999999",
        "/mail/messages/99999999999999999999999/raw",
    ):
        assert client.get(url).status_code == 404


def test_unsharing_revokes_on_next_request(app, world, login):
    teammate = login(world["teammate"])
    message = world["message"]
    urls = [
        _url_for_route(app, endpoint, message)[1]
        for endpoint in (
            "conversations.show",
            "conversations.attachment",
            "conversations.inline_image",
            "conversations.raw",
        )
    ]
    panel = f"/mail/records/deal/{world['deal'].id}/conversations"
    fragment_of_thread = {"HX-Request": "true", "HX-Target": "main"}
    assert all(teammate.get(url).status_code == 200 for url in urls)
    assert teammate.get(urls[0], headers=fragment_of_thread).status_code == 200
    assert "Renewal terms" in teammate.get(panel).get_data(as_text=True)
    owner = login(world["owner"])
    response = owner.post(
        f"/mail/threads/{message.thread_id}/sharing", data={"shared": "0"}, headers=HTMX_SIDEBAR
    )
    fragment = response.get_data(as_text=True)
    assert response.status_code == 200 and "Share with team" in fragment
    assert '<span id="thread-visibility" hx-swap-oob="true">' in fragment
    assert all(teammate.get(url).status_code == 404 for url in urls)
    assert teammate.get(urls[0], headers=fragment_of_thread).status_code == 404
    assert "Renewal terms" not in teammate.get(panel).get_data(as_text=True)


# --------------------------------------------------------------------------- parts


def test_attachment_download_headers(world, login, make_raw_message):
    hebrew = "מסמך חשוב.pdf"
    raw = rich_mail(
        "Files",
        attachments=(
            (hebrew, "application/pdf", b"%PDF-1.4 a"),
            ("invoice\u202efdp.exe", "text/html", b"<script>alert(1)</script>"),
        ),
    )
    message = make_raw_message(world["account"], raw)
    client = login(world["owner"])
    response = client.get(f"/mail/messages/{message.id}/attachments/{part_id_of(message, hebrew)}")
    assert response.status_code == 200
    assert response.data == b"%PDF-1.4 a"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert f"filename*=UTF-8''{quote(hebrew, safe='')}" in disposition
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert response.headers["Cache-Control"] == "private, no-store"
    evil_part = part_id_of(message, "invoice\u202efdp.exe")
    evil = client.get(f"/mail/messages/{message.id}/attachments/{evil_part}")
    assert evil.status_code == 200
    assert "\u202e" not in evil.headers["Content-Disposition"]
    assert quote("\u202e") not in evil.headers["Content-Disposition"]
    assert evil.headers["Content-Type"] == "application/octet-stream"
    bad = client.get(f"/mail/messages/{message.id}/attachments/99")
    assert bad.status_code == 404
    assert client.get(f"/mail/messages/{message.id}/attachments/..%2F1").status_code == 404


def test_a_file_uuencoded_in_the_text_is_listed_and_downloads(world, login, make_raw_message):
    lines = [binascii.b2a_uu(PNG_1X1[at : at + 45]).rstrip(b"\n") for at in range(0, 90, 45)]
    uuencoded = b"begin 644 dot.png\r\n" + b"\r\n".join(lines) + b"\r\n`\r\nend\r\n"
    raw = build_message(subject="Old school").replace(
        b"\r\n\r\n", b"\r\n\r\nThe file:\r\n" + uuencoded + b"Bye\r\n", 1
    )
    message = make_raw_message(world["account"], raw)
    client = login(world["owner"])
    html = client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert "dot.png" in html and "begin 644" not in html
    response = client.get(f"/mail/messages/{message.id}/attachments/1.uu1")
    assert response.status_code == 200 and response.data == PNG_1X1
    assert client.get(f"/mail/messages/{message.id}/attachments/1.uu2").status_code == 404
    assert client.get(f"/mail/messages/{message.id}/attachments/1.uux").status_code == 404


def test_a_file_inside_a_winmail_dat_downloads(world, login, make_raw_message):
    raw = rich_mail(
        "From Outlook",
        attachments=(
            ("winmail.dat", "application/ms-tnef", tnef_package([("Quote.pdf", b"%PDF-1.4 q")])),
        ),
    )
    message = make_raw_message(world["account"], raw)
    client = login(world["owner"])
    html = client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert "Quote.pdf" in html and "winmail.dat" in html
    part_id = part_id_of(message, "Quote.pdf")
    assert part_id.endswith(".tnef1")
    response = client.get(f"/mail/messages/{message.id}/attachments/{part_id}")
    assert response.status_code == 200 and response.data == b"%PDF-1.4 q"


def test_an_image_in_a_winmail_dat_body_is_shown_in_the_mail(world, login, make_raw_message):
    rtf = (
        rb"{\rtf1\ansi\fromhtml1 {\*\htmltag64 <p>}Our logo "
        rb'{\*\htmltag84 <img src="cid:logo@outlook.test" alt="Logo">}{\*\htmltag72 </p>}}'
    )
    package = tnef_package([("logo.png", PNG_1X1, "<logo@outlook.test>")], rtf=rtf)
    raw = (
        b"From: Carla <carla@customer.test>\r\nSubject: Rich text\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(package)
    )
    message = make_raw_message(world["account"], raw)
    page = login(world["owner"]).get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    frame = parse_page(page).iframes[0]["srcdoc"]
    assert "Our logo" in frame
    assert f'src="data:image/png;base64,{base64.b64encode(PNG_1X1).decode()}"' in frame


def test_an_image_named_by_content_location_is_shown_from_the_mail(world, login, make_raw_message):
    raw = (
        b"From: Carla <carla@customer.test>\r\nSubject: Saved page\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/related; boundary=r\r\n\r\n--r\r\n"
        b'Content-Type: text/html\r\n\r\n<p>Chart <img src="http://www.example.test/chart.png"></p>\r\n'
        b"--r\r\nContent-Type: image/png\r\nContent-Location: http://www.example.test/chart.png\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(PNG_1X1) + b"--r--\r\n"
    )
    message = make_raw_message(world["account"], raw)
    page = login(world["owner"]).get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    frame = parse_page(page).iframes[0]["srcdoc"]
    # From the mail itself: no request to the web, no "Show images" needed.
    assert f'src="data:image/png;base64,{base64.b64encode(PNG_1X1).decode()}"' in frame
    assert "www.example.test" not in frame and "Show images" not in page


def test_an_opaque_smime_signed_mail_shows_its_text_and_its_file_downloads(
    world, login, make_raw_message
):
    raw = (SMIME / "signed-opaque.eml").read_bytes()
    message = make_raw_message(world["account"], raw)
    client = login(world["owner"])
    page = client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert "The signed contract text, Zanzibarite 42." in html.unescape(page)
    assert "contract.pdf" in page and "smime.p7m" in page  # the signed original stays
    assert "encrypted" not in page
    response = client.get(
        f"/mail/messages/{message.id}/attachments/{part_id_of(message, 'contract.pdf')}"
    )
    assert response.status_code == 200 and response.data == b"%PDF-1.4\n%\xc7\xec\x8f\xa2\n"


def test_an_encrypted_mail_says_so_and_offers_the_original(world, login, make_raw_message):
    raw = (SMIME / "encrypted.eml").read_bytes()
    message = make_raw_message(world["account"], raw)
    client = login(world["owner"])
    page = client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert "This message is encrypted for its recipient" in page
    assert "This message has no text" not in page
    response = client.get(
        f"/mail/messages/{message.id}/attachments/{part_id_of(message, 'smime.p7m')}"
    )
    assert response.status_code == 200 and response.data.startswith(b"\x30")


def test_a_mail_forwarded_as_an_attachment_shows_the_attached_mail(world, login, make_raw_message):
    plain = make_raw_message(world["account"], forwarded(customer_mail(1)))
    styled = make_raw_message(
        world["account"], forwarded(customer_mail(2), html=b"<p>Please <b>answer</b> this</p>")
    )
    client = login(world["owner"])
    for message, own in ((plain, None), (styled, "Please <b>answer</b> this")):
        page = html.unescape(client.get(f"/mail/threads/{message.thread_id}").get_data(True))
        assert "---------- Attached message ----------" in page
        assert "From: Carla &lt;carla@customer.test&gt;" in page  # inside the srcdoc frame
        assert "What does the gold plan cost?" in page
        assert "This message has no text" not in page
        assert own is None or own in page
        assert ".eml" in page  # and the attached message still downloads whole


def test_flowed_text_is_shown_as_paragraphs_and_hard_breaks_stay(world, login, make_raw_message):
    def mail(content_type: bytes, subject: bytes) -> bytes:
        return (
            b"From: Carla <carla@customer.test>\r\nSubject: " + subject + b"\r\n"
            b"Content-Type: " + content_type + b"\r\n\r\n"
            b"Thunderbird wraps this long line \r\nat 72 characters.\r\n\r\n-- \r\nCarla\r\n"
        )

    flowed = make_raw_message(world["account"], mail(b"text/plain; format=flowed", b"Flowed"))
    fixed = make_raw_message(world["account"], mail(b"text/plain", b"Fixed"))
    client = login(world["owner"])

    def shown(message) -> str:
        page = client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
        return parse_page(page).iframes[0]["srcdoc"]

    frame = shown(flowed)
    assert "Thunderbird wraps this long line at 72 characters." in frame
    assert "-- <br>Carla" in frame  # the signature line is no soft break
    assert "Thunderbird wraps this long line <br>at 72 characters." in shown(fixed)


def test_a_text_mail_with_a_line_of_thousands_of_quote_marks_is_shown(
    world, login, make_raw_message
):
    """It failed the page (RecursionError): every ">" started one more quote level."""
    raw = (
        b"From: Carla <carla@customer.test>\r\nSubject: Rule line\r\n"
        b"Content-Type: text/plain\r\n\r\nAbove the rule\r\n" + b">" * 5000 + b"\r\nBelow\r\n"
    )
    message = make_raw_message(world["account"], raw)
    response = login(world["owner"]).get(f"/mail/threads/{message.thread_id}")
    assert response.status_code == 200
    frame = parse_page(response.get_data(as_text=True)).iframes[0]["srcdoc"]
    assert "Above the rule" in frame and "Below" in frame


def test_raw_route_headers(world, login):
    client = login(world["owner"])
    response = client.get(f"/mail/messages/{world['message'].id}/raw")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert b"Subject: Renewal terms" in response.data


def test_cid_image_only_for_same_message(world, login, make_raw_message):
    from services.conversations import cid_token

    client = login(world["owner"])
    token = cid_token("logo")
    response = client.get(f"/mail/messages/{world['message'].id}/inline/{token}")
    assert response.status_code == 200 and response.data == PNG_1X1
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    plain = make_raw_message(world["account"], build_message(subject="No images"))
    assert client.get(f"/mail/messages/{plain.id}/inline/{token}").status_code == 404
    assert client.get(f"/mail/messages/{world['message'].id}/inline/bm9wZQ").status_code == 404
    assert client.get(f"/mail/messages/{world['message'].id}/inline/%%%").status_code == 404
    # Rendered as a data: URI inside the srcdoc (the sandboxed frame cannot send cookies).
    html = client.get(f"/mail/threads/{world['thread'].id}").get_data(as_text=True)
    srcdoc = parse_page(html).iframes[0]["srcdoc"]
    assert "data:image/png;base64," in srcdoc
    outsider = login(world["outsider"])
    assert outsider.get(f"/mail/messages/{world['private'].id}/inline/{token}").status_code == 404


def test_svg_inline_part_is_not_served(world, login, make_raw_message):
    from email.message import EmailMessage
    from email.policy import SMTP

    from services.conversations import cid_token

    mail = EmailMessage()
    mail["From"] = "carla@customer.test"
    mail["To"] = "olivia@team.test"
    mail["Subject"] = "svg"
    mail.set_content("<p><img src='cid:pic'></p>", subtype="html")
    mail.get_body(("html",)).add_related(
        b"<svg onload='alert(1)'/>", "image", "svg+xml", cid="<pic>"
    )
    message = make_raw_message(world["account"], mail.as_bytes(policy=SMTP))
    client = login(world["owner"])
    assert client.get(f"/mail/messages/{message.id}/inline/{cid_token('pic')}").status_code == 404


# --------------------------------------------------------------------------- remote images


def _remote_mail(sender="Nina News <news@letters.test>"):
    return build_message(
        subject="Newsletter",
        sender=sender,
        to="olivia@team.test",
        text=None,
        html='<p>News</p><img src="https://img.letters.test/banner.png" alt="banner">',
    )


def test_remote_images_blocked_by_default_then_shown_once(world, login, make_raw_message):
    message = make_raw_message(world["account"], _remote_mail())
    client = login(world["owner"])
    response = client.get(f"/mail/threads/{message.thread_id}")
    html = response.get_data(as_text=True)
    assert "Remote images are hidden." in html
    assert "img.letters.test" not in parse_page(html).iframes[0]["srcdoc"]
    assert "https:" not in response.headers["Content-Security-Policy"]
    shown = client.get(f"/mail/threads/{message.thread_id}?images={message.id}")
    srcdoc = parse_page(shown.get_data(as_text=True)).iframes[0]["srcdoc"]
    assert "https://img.letters.test/banner.png" in srcdoc
    assert "img-src 'self' data: https: http:" in shown.headers["Content-Security-Policy"]
    assert "Remote images are hidden." not in shown.get_data(as_text=True)
    # "Once" stores nothing: the next visit blocks again.
    again = client.get(f"/mail/threads/{message.thread_id}")
    assert "Remote images are hidden." in again.get_data(as_text=True)
    assert db.session.scalar(select(ImageAllowance)) is None


def test_always_show_images_from_sender(world, login, make_raw_message):
    message = make_raw_message(world["account"], _remote_mail())
    other = make_raw_message(world["account"], _remote_mail("Spam <spam@elsewhere.test>"))
    client = login(world["owner"])
    response = client.post(f"/mail/messages/{message.id}/image-allowance")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(
        f"/mail/threads/{message.thread_id}#message-{message.id}"
    )
    shown = client.get(f"/mail/threads/{message.thread_id}")
    assert (
        "https://img.letters.test/banner.png"
        in parse_page(shown.get_data(as_text=True)).iframes[0]["srcdoc"]
    )
    assert "https:" in shown.headers["Content-Security-Policy"]
    blocked = client.get(f"/mail/threads/{other.thread_id}")
    assert "Remote images are hidden." in blocked.get_data(as_text=True)
    assert "https:" not in blocked.headers["Content-Security-Policy"]
    # Per user: a teammate's view of a shared thread is unaffected.
    assert client.post(f"/mail/messages/{message.id}/image-allowance").status_code == 303
    rows = db.session.scalars(select(ImageAllowance)).all()
    assert [(r.user_id, r.sender) for r in rows] == [(world["owner"].id, "news@letters.test")]


def test_images_are_shown_for_the_allowed_senders_messages_within_one_conversation(
    world, login, make_raw_message
):
    """In a conversation with several senders, remote images show in the messages of the
    sender the user always allows, and stay hidden in the others'; the allowances are read
    once for the whole conversation, however many messages it has."""
    first = make_raw_message(world["account"], _remote_mail())
    thread = first.thread
    make_raw_message(world["account"], _remote_mail("Spam <spam@elsewhere.test>"), thread=thread)
    make_raw_message(world["account"], _remote_mail("Nina <NEWS@letters.test>"), thread=thread)
    client = login(world["owner"])
    assert client.post(f"/mail/messages/{first.id}/image-allowance").status_code == 303
    with recorded_statements() as statements:
        page = client.get(f"/mail/threads/{thread.id}").get_data(as_text=True)
    frames = [frame["srcdoc"] for frame in parse_page(page).iframes]
    assert ["img.letters.test" in frame for frame in frames] == [True, False, True]
    reads = [sql for sql, _params in statements if "FROM image_allowance" in sql]
    assert len(reads) == 1, reads


# --------------------------------------------------------------------------- linking


def test_link_and_unlink_a_deal(world, login, make_deal, make_user):
    client = login(world["owner"])
    thread = world["thread"]
    other_deal = make_deal(world["owner"], title="Expansion")
    foreign_private = make_deal(make_user(), title="Not yours", visibility="owner")
    results = client.get(f"/mail/threads/{thread.id}/link-search?link_q=expan")
    assert "Expansion" in results.get_data(as_text=True)
    assert "Not yours" not in client.get(
        f"/mail/threads/{thread.id}/link-search?link_q=not"
    ).get_data(as_text=True)
    response = client.post(
        f"/mail/threads/{thread.id}/link",
        data={"kind": "deal", "record_id": other_deal.id},
        headers=HTMX_SIDEBAR,
    )
    assert response.status_code == 200
    assert response.get_data(as_text=True).lstrip().startswith(("{#", "<aside"))
    assert "Link to another deal, lead or project" in response.get_data(as_text=True)
    db.session.refresh(thread)
    assert thread.deal_id == other_deal.id
    bad = client.post(
        f"/mail/threads/{thread.id}/link",
        data={"kind": "deal", "record_id": foreign_private.id},
        headers=HTMX_SIDEBAR,
    )
    assert bad.status_code == 422 and "Choose a deal, lead or project" in bad.get_data(as_text=True)
    assert (
        client.post(
            f"/mail/threads/{thread.id}/link", data={"kind": "organization", "record_id": "1"}
        ).status_code
        == 422
    )
    assert client.post(f"/mail/threads/{thread.id}/unlink", headers=HTMX_SIDEBAR).status_code == 200
    db.session.refresh(thread)
    assert thread.deal_id is None


def test_choose_which_deal(world, login, make_deal):
    carla = world["carla"]
    first = make_deal(world["owner"], title="Carla hardware", person_id=carla.id)
    make_deal(world["owner"], title="Carla software", person_id=carla.id)
    thread = world["private"].thread
    thread.needs_link_choice = True
    db.session.commit()
    client = login(world["owner"])
    html = client.get(f"/mail/threads/{thread.id}").get_data(as_text=True)
    assert "Choose which deal" in html
    assert "Carla hardware" in html and "Carla software" in html
    response = client.post(
        f"/mail/threads/{thread.id}/link", data={"kind": "deal", "record_id": first.id}
    )
    assert response.status_code == 200
    db.session.refresh(thread)
    assert thread.deal_id == first.id and thread.needs_link_choice is False
    assert "Choose which deal" not in response.get_data(as_text=True)


def test_create_person_from_participant_then_link_past(world, login, make_raw_message):
    account = world["account"]
    first = make_raw_message(
        account, build_message(sender="Nora New <nora@prospect.test>", to="olivia@team.test")
    )
    earlier = make_raw_message(
        account, build_message(sender="Nora New <nora@prospect.test>", to="olivia@team.test")
    )
    client = login(world["owner"])
    page = client.get(f"/mail/threads/{first.thread_id}").get_data(as_text=True)
    assert 'value="Nora New"' in page and "Create person" in page
    response = client.post(
        f"/mail/threads/{first.thread_id}/persons",
        data={"name": "Nora New", "address": "NORA@prospect.test"},
        headers=HTMX_SIDEBAR,
    )
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "nora@prospect.test now belongs to Nora New." in html
    assert "Link 1 past conversation" in html  # the other one; this one is linked at once
    email = db.session.scalar(select(PersonEmail).where(PersonEmail.email == "nora@prospect.test"))
    assert email is not None and email.person.name == "Nora New"
    panel = client.get(f"/mail/records/person/{email.person_id}/conversations")
    assert f"/mail/threads/{first.thread_id}" in panel.get_data(as_text=True)
    assert f"/mail/threads/{earlier.thread_id}" not in panel.get_data(as_text=True)

    # The offer stays until acted on: after a reload, and on the person's page.
    again = client.get(f"/mail/threads/{first.thread_id}").get_data(as_text=True)
    assert "Link 1 past conversation" in again
    person_page = client.get(f"/persons/{email.person_id}").get_data(as_text=True)
    assert "Link 1 past conversation" in person_page

    linked = client.post(
        f"/mail/threads/{first.thread_id}/past-links",
        data={"person_id": email.person_id, "address": "nora@prospect.test"},
        headers=HTMX_SIDEBAR,
    )
    assert linked.status_code == 200 and "Linked 1 past message" in linked.get_data(as_text=True)
    assert "past conversation" not in linked.get_data(as_text=True).split("Linked 1")[1]
    rows = db.session.scalars(
        select(MessagePerson).where(MessagePerson.person_id == email.person_id)
    ).all()
    assert len(rows) == 2
    assert "Link 1 past" not in client.get(f"/persons/{email.person_id}").get_data(as_text=True)


def test_past_link_offer_can_be_dismissed(world, login, make_raw_message):
    account = world["account"]
    for _ in range(2):
        message = make_raw_message(
            account, build_message(sender="Ola Old <ola@prospect.test>", to="olivia@team.test")
        )
    client = login(world["owner"])
    client.post(
        f"/mail/threads/{message.thread_id}/persons",
        data={"name": "Ola Old", "address": "ola@prospect.test"},
        headers=HTMX_SIDEBAR,
    )
    person_id = db.session.scalar(
        select(PersonEmail.person_id).where(PersonEmail.email == "ola@prospect.test")
    )
    assert "Link 1 past conversation" in client.get(f"/persons/{person_id}").get_data(as_text=True)
    dismissed = client.post(
        f"/persons/{person_id}/past-links/dismiss", data={"address": "ola@prospect.test"}
    )
    assert dismissed.status_code == 303
    assert "past conversation" not in client.get(f"/persons/{person_id}").get_data(as_text=True)
    sidebar = client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert "past conversation" not in sidebar


def test_an_address_added_on_the_people_page_offers_past_mail(world, login, make_raw_message):
    make_raw_message(
        world["account"],
        build_message(sender="Carla Private <carla@home.test>", to="olivia@team.test"),
    )
    client = login(world["owner"])
    carla = world["carla"]
    response = client.post(
        f"/persons/{carla.id}",
        data={"name": carla.name, "emails": ["carla@customer.test", "carla@home.test"]},
    )
    assert response.status_code in (200, 303)
    page = client.get(f"/persons/{carla.id}").get_data(as_text=True)
    assert "carla@home.test" in page and "Link 1 past conversation" in page
    linked = client.post(f"/persons/{carla.id}/past-links", data={"address": "carla@home.test"})
    assert linked.status_code == 303
    page = client.get(f"/persons/{carla.id}").get_data(as_text=True)
    assert "Linked 1 past message." in page and "Link 1 past conversation" not in page


def test_create_person_rejects_bad_input(world, login):
    client = login(world["owner"])
    thread_id = world["thread"].id
    stranger = client.post(
        f"/mail/threads/{thread_id}/persons",
        data={"name": "X", "address": "someone@else.test"},
        headers=HTMX_SIDEBAR,
    )
    assert stranger.status_code == 422
    assert "Choose one of the people in this conversation" in stranger.get_data(as_text=True)
    taken = client.post(
        f"/mail/threads/{thread_id}/persons",
        data={"name": "", "address": "olivia@team.test"},
        headers=HTMX_SIDEBAR,
    )
    assert taken.status_code == 422  # the owner's own address is not a participant


def test_add_address_to_existing_person_and_link_past(world, login, make_raw_message):
    account = world["account"]
    message = make_raw_message(
        account, build_message(sender="Carla D <carla.d@home.test>", to="olivia@team.test")
    )
    client = login(world["owner"])
    response = client.post(
        f"/mail/threads/{message.thread_id}/person-emails",
        data={"person_id": world["carla"].id, "address": "carla.d@home.test"},
        headers=HTMX_SIDEBAR,
    )
    assert response.status_code == 200
    assert "carla.d@home.test now belongs to Carla Diaz." in response.get_data(as_text=True)
    db.session.refresh(world["carla"])
    assert "carla.d@home.test" in [e.email for e in world["carla"].emails]
    client.post(
        f"/mail/threads/{message.thread_id}/past-links",
        data={"person_id": world["carla"].id, "address": "carla.d@home.test"},
    )
    assert (
        db.session.scalar(
            select(MessagePerson).where(MessagePerson.message_id == message.id)
        ).person_id
        == world["carla"].id
    )
    missing = client.post(
        f"/mail/threads/{message.thread_id}/person-emails",
        data={"person_id": "", "address": "carla.d@home.test"},
        headers=HTMX_SIDEBAR,
    )
    assert missing.status_code == 422


def test_each_unknown_address_offers_the_persons_the_user_can_see(
    world, login, make_raw_message, make_person
):
    """Every unknown participant gets its own "add to an existing person" picker, each
    listing the same persons: those the user can see, not a teammate's private one."""
    make_person(world["teammate"], name="Tessa Private", visibility="owner")
    message = make_raw_message(
        world["account"],
        build_message(
            sender="Nora New <nora@prospect.test>",
            to="olivia@team.test, Otto Other <otto@prospect.test>",
        ),
    )
    page = login(world["owner"]).get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    pickers = re.findall(r'<form[^>]*/person-emails"[^>]*>(.*?)</form>', page, re.S)
    addresses = [re.search(r'name="address" value="([^"]*)"', form)[1] for form in pickers]
    assert sorted(addresses) == ["nora@prospect.test", "otto@prospect.test"]
    for form in pickers:
        options = re.findall(r'<option value="(\d+)">([^<]*)</option>', form)
        assert options == [(str(world["carla"].id), "Carla Diaz")]


def test_block_sender_hides_the_thread(world, login):
    client = login(world["owner"])
    thread = world["thread"]
    response = client.post(
        f"/mail/threads/{thread.id}/blocks",
        data={"address": "carla@customer.test"},
        headers=HTMX_SIDEBAR,
    )
    assert response.status_code == 200
    assert "Blocked carla@customer.test" in response.get_data(as_text=True)
    db.session.refresh(thread)
    assert thread.blocked is True
    teammate = login(world["teammate"])
    assert teammate.get(f"/mail/threads/{thread.id}").status_code == 404
    panel = teammate.get(f"/mail/records/deal/{world['deal'].id}/conversations")
    assert "Renewal terms" not in panel.get_data(as_text=True)
    owner_view = client.get(f"/mail/threads/{thread.id}").get_data(as_text=True)
    assert "Every other participant is blocked" in owner_view
    assert "carla@customer.test" in client.get("/settings/blocked/").get_data(as_text=True)


# --------------------------------------------------------------------------- email links


def test_email_link_preference_changes_hrefs(world, login):
    from services.preferences import update_preferences

    client = login(world["owner"])
    url = f"/mail/threads/{world['thread'].id}"
    html = client.get(url).get_data(as_text=True)
    assert 'href="/mail/compose?to=carla@customer.test"' in html
    assert "mailto:" not in html
    update_preferences(world["owner"], {"email_links": "mailto"})
    html = client.get(url).get_data(as_text=True)
    assert 'href="mailto:carla@customer.test"' in html
    assert "/mail/compose?to=" not in html


def test_email_link_opens_compose_prefilled(world, login):
    response = login(world["owner"]).get("/mail/compose?to=carla@customer.test")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="compose-form"' in html
    assert 'name="to" value="carla@customer.test"' in html


def test_every_message_offers_reply_reply_all_and_forward(world, login):
    message = world["message"]
    html = login(world["owner"]).get(f"/mail/threads/{world['thread'].id}").get_data(as_text=True)
    for kind in ("reply", "reply_all", "forward"):
        assert f'href="/mail/compose?reply={message.id}&amp;kind={kind}"' in html
    # A teammate who may read the shared conversation may answer it from their own mailbox;
    # someone who may not gets the same 404 as for the conversation.
    assert login(world["teammate"]).get(f"/mail/compose?reply={message.id}").status_code == 200
    teammate = login(world["teammate"])
    for unreadable in ("private", "hidden_deal"):
        url = f"/mail/compose?reply={world[unreadable].id}&kind=forward"
        assert teammate.get(url).status_code == 404, unreadable


# --------------------------------------------------------------------------- CSRF, XSS


def test_posts_require_csrf(app, world, login):
    client = login(world["owner"])
    thread = world["thread"]
    posts = [
        rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".")[0] in ("conversations", "blocking") and "POST" in rule.methods
    ]
    assert len(posts) >= 10
    for rule in posts:
        values = {"thread_id": thread.id, "message_id": world["message"].id, "entry_id": 1}
        url = rule.build({k: v for k, v in values.items() if k in rule.arguments})[1]
        response = client.post(
            url,
            data={"shared": "0", "address": "carla@customer.test", "entry": "x@y.test"},
            csrf=False,
        )
        assert response.status_code == 400, url
    db.session.refresh(thread)
    assert thread.shared is True and thread.blocked is False
    assert db.session.scalar(select(ImageAllowance)) is None


def test_hostile_headers_render_literally(world, login, make_raw_message):
    raw = build_message(
        subject=HOSTILE_SUBJECT,
        sender=HOSTILE_DISPLAY_NAME,
        to="olivia@team.test",
        attachments=(('"><script>alert(1)</script>.pdf', "application/pdf", b"%PDF"),),
    )
    message = make_raw_message(world["account"], raw, shared=True)
    message.thread.deal_id = world["deal"].id
    db.session.commit()
    for who in ("owner", "teammate"):
        client = login(world[who])
        for url in (
            f"/mail/threads/{message.thread_id}",
            f"/mail/records/deal/{world['deal'].id}/conversations",
        ):
            html = client.get(url).get_data(as_text=True)
            assert "<script>alert" not in html
            assert "<img src=x onerror" not in html
            assert "<svg" not in html
            assert "&lt;div hx-get=&#34;/admin/users&#34;" in html or "&lt;div hx-get" in html
            page = parse_page(html)
            for _tag, name, value in page.hx_attributes:
                assert name in {
                    "hx-get",
                    "hx-post",
                    "hx-target",
                    "hx-swap",
                    "hx-trigger",
                    "hx-headers",
                    "hx-disable",
                    "hx-history",
                }, name
                if name in ("hx-get", "hx-post"):
                    assert value.startswith("/mail/"), value


def test_templates_never_mark_mail_safe():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "templates"
    for folder in ("conversations", "blocking", "macros"):
        for path in (root / folder).rglob("*.html"):
            text = re.sub(r"\{#.*?#\}", "", path.read_text(), flags=re.S)
            assert "|safe" not in text.replace(" ", ""), path
            assert "Markup(" not in text, path


# --------------------------------------------------------------------------- broken mail


def test_placeholder_missing_and_unparseable_messages_show_notices(world, login, make_raw_message):
    account = world["account"]
    client = login(world["owner"])
    big = make_raw_message(account, build_message(subject="Huge"), is_placeholder=True)
    html = client.get(f"/mail/threads/{big.thread_id}").get_data(as_text=True)
    assert "larger than 25 MB" in html and "Download the original" in html
    gone = make_raw_message(account, build_message(subject="Gone"), store_raw=False)
    response = client.get(f"/mail/threads/{gone.thread_id}")
    assert response.status_code == 200
    assert "not stored" in response.get_data(as_text=True)
    assert client.get(f"/mail/messages/{gone.id}/raw").status_code == 404
    junk = make_raw_message(account, b"\x00\xff garbage without headers \r\n\r\n\x00")
    assert client.get(f"/mail/threads/{junk.thread_id}").status_code == 200


def test_plain_text_longer_than_shown_says_so(world, login, make_raw_message, monkeypatch):
    monkeypatch.setattr(conversations, "MAX_TEXT_CHARS", 1000)
    monkeypatch.setattr(parse, "MAX_TEXT_CHARS", 1000)
    lines = "".join(f"log line {n:05d}\n" for n in range(200))  # 3,000 characters
    client = login(world["owner"])
    long = make_raw_message(world["account"], build_message(subject="Logs", text=lines))
    html = client.get(f"/mail/threads/{long.thread_id}").get_data(as_text=True)
    assert "longer than Threadline shows (its first 1,000 characters)" in html
    assert "Download the original" in html
    assert "log line 00010" in parse_page(html).iframes[0]["srcdoc"]
    short = make_raw_message(world["account"], build_message(subject="Short", text="Hi there"))
    html = client.get(f"/mail/threads/{short.thread_id}").get_data(as_text=True)
    assert "longer than Threadline shows" not in html


def test_plain_text_mail_is_escaped_and_rtl_detected(world, login, make_raw_message):
    text = "שלום עולם, מה שלומך? אני כותב לך בעניין ההצעה.\n<script>alert(1)</script>"
    raw = build_message(subject="שלום", text=text)
    message = make_raw_message(world["account"], raw)
    html = login(world["owner"]).get(f"/mail/threads/{message.thread_id}").get_data(as_text=True)
    assert 'dir="rtl"' in html
    srcdoc = parse_page(html).iframes[0]["srcdoc"]
    assert "<script>" not in srcdoc and "&lt;script&gt;" in srcdoc
    assert '<body dir="rtl">' in srcdoc


# --------------------------------------------------------------------------- record panels


def test_record_panels(world, login, make_person):
    deal_id = world["deal"].id
    owner = login(world["owner"])
    teammate = login(world["teammate"])
    html = owner.get(f"/deals/{deal_id}").get_data(as_text=True)
    assert f'hx-get="/mail/records/deal/{deal_id}/conversations"' in html
    panel = teammate.get(f"/mail/records/deal/{deal_id}/conversations")
    assert panel.status_code == 200
    text = panel.get_data(as_text=True)
    assert "Renewal terms" in text and "Olivia Owner" in text and "Shared" in text
    person_panel = teammate.get(f"/mail/records/person/{world['carla'].id}/conversations")
    assert "Renewal terms" in person_panel.get_data(as_text=True)
    assert "Private note" not in person_panel.get_data(as_text=True)
    assert "Private note" in owner.get(
        f"/mail/records/person/{world['carla'].id}/conversations"
    ).get_data(as_text=True)
    secret = make_person(world["owner"], name="Hidden", visibility="owner")
    assert teammate.get(f"/mail/records/person/{secret.id}/conversations").status_code == 404
    assert teammate.get(f"/mail/records/thread/{deal_id}/conversations").status_code == 404


def test_record_panel_pages_by_keyset_with_a_more_link(
    world, login, make_stored_message, monkeypatch
):
    """The panel shows the newest conversations first, a page at a time: "More" swaps in the
    next page (undated ones last), and a teammate's pages hold only what they may open."""
    from datetime import UTC, datetime, timedelta

    from services import conversations

    monkeypatch.setattr(conversations, "RECORD_PAGE_SIZE", 2)
    deal = world["deal"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    threads = [world["thread"]]
    for n in range(5):
        message = make_stored_message(world["account"], subject=f"Deal mail {n}")
        message.thread.deal_id = deal.id
        message.thread.shared = n != 2  # the teammate never sees number 2
        message.thread.last_date = None if n == 4 else start + timedelta(days=(n * 7) % 5)
        threads.append(message.thread)
    db.session.commit()
    expected = sorted(
        threads, key=lambda t: (t.last_date is not None, t.last_date, t.id), reverse=True
    )

    def subjects(client):
        url, pages = f"/mail/records/deal/{deal.id}/conversations", []
        while url:
            html = client.get(url, headers={"HX-Request": "true"}).get_data(as_text=True)
            pages.append(re.findall(r'class="conversation-subject"[^>]*>([^<]+)<', html))
            more = re.search(r'hx-get="([^"]+)" hx-target="closest p"', html)
            url = more and more.group(1).replace("&amp;", "&")
        return pages

    owner_pages = subjects(login(world["owner"]))
    assert [len(page) for page in owner_pages] == [2, 2, 2]
    assert sum(owner_pages, []) == [t.subject for t in expected]
    teammate_pages = subjects(login(world["teammate"]))
    assert sum(teammate_pages, []) == [t.subject for t in expected if t.shared]
    first = login(world["owner"]).get(f"/mail/records/deal/{deal.id}/conversations")
    assert '<span class="count">2+</span>' in first.get_data(as_text=True)


# --------------------------------------------------------------------------- blocking settings


def test_blocked_addresses_settings(world, login):
    client = login(world["owner"])
    assert client.get("/settings/blocked/").status_code == 200
    added = client.post("/settings/blocked/", data={"entry": "@Spam.test"})
    assert added.status_code == 200 and "@spam.test" in added.get_data(as_text=True)
    bad = client.post(
        "/settings/blocked/",
        data={"entry": "not an address"},
        headers={"HX-Request": "true", "HX-Target": "blocked-panel"},
    )
    assert bad.status_code == 422
    assert "Enter an address like" in bad.get_data(as_text=True)
    assert 'id="blocked-panel"' in bad.get_data(as_text=True)
    duplicate = client.post("/settings/blocked/", data={"entry": "@spam.test"})
    assert duplicate.status_code == 422
    from services.linking import blocked_entries

    entry = blocked_entries(world["owner"])[0]
    other = login(world["teammate"])
    other.post(f"/settings/blocked/{entry.id}/delete")
    assert blocked_entries(world["owner"])  # someone else's entry is untouched
    removed = client.post(f"/settings/blocked/{entry.id}/delete")
    assert removed.status_code == 303
    assert blocked_entries(world["owner"]) == []


# --------------------------------------------------------------------------- corpus


def test_core_subset_renders(world, login, make_raw_message):
    from tests.corpus import shared_dir

    folder = shared_dir() / "corpus" / "emails"
    listing = folder / "CORE_SUBSET.txt"
    if not listing.exists():
        pytest.skip(f"shared corpus not found at {folder} (set THREADLINE_SHARED)")
    client = login(world["owner"])
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    failures = []
    for name in names:
        raw = (folder / name).read_bytes()
        if raw.startswith(b"From "):
            raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
        message = make_raw_message(world["account"], raw)
        response = client.get(f"/mail/threads/{message.thread_id}")
        if response.status_code != 200:
            failures.append((name, response.status_code))
    assert not failures
    assert len(names) > 100


class _DangerScan(HTMLParser):
    """Collect tags and attributes in a srcdoc that the mail policy must never let through."""

    BAD_TAGS = {"script", "style", "iframe", "object", "embed", "form", "input", "button",
                "base", "meta", "link", "svg", "math", "template", "noscript", "textarea",
                "select"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.in_head = True

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.in_head = False
        if self.in_head:
            return  # email_document's own head: charset, CSP, referrer meta and base CSS
        if tag in self.BAD_TAGS:
            self.problems.append(tag)
        for name, value in attrs:
            lowered = (value or "").strip().lower()
            if name.startswith(("on", "hx-", "data-")) or name in (
                "srcdoc",
                "formaction",
                "srcset",
            ):
                self.problems.append(f"{tag}[{name}]")
            url_attribute = name in ("href", "src", "action", "background", "poster", "cite")
            if url_attribute and lowered.startswith(
                ("javascript:", "vbscript:", "data:text", "data:image/svg")
            ):
                self.problems.append(f"{tag}[{name}]={lowered[:30]}")
            if name == "src" and lowered.startswith(("http:", "https:", "//")):
                self.problems.append(f"{tag}[src] remote")


@pytest.mark.slow(seconds=25)
def test_whole_xss_corpus_renders_inert(world, login, make_raw_message):
    from tests.corpus import shared_dir

    folder = shared_dir() / "corpus" / "xss"
    files = sorted(folder.glob("*.html")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"xss corpus not found at {folder} (set THREADLINE_SHARED)")
    client = login(world["owner"])
    failures = {}
    for path in files:
        raw = build_message(to="olivia@team.test", text=None, html=path.read_text(errors="replace"))
        message = make_raw_message(world["account"], raw)
        page = parse_page(client.get(f"/mail/threads/{message.thread_id}").get_data(as_text=True))
        if len(page.iframes) != 1 or page.iframes[0]["sandbox"] != SANDBOX:
            failures[path.name] = "iframe"
            continue
        scan = _DangerScan()
        scan.feed(page.iframes[0]["srcdoc"] or "")
        if scan.problems:
            failures[path.name] = scan.problems
    assert not failures
    assert len(files) >= 390


def test_inline_image_over_the_data_uri_limit_is_listed(world, login, monkeypatch):
    from services import conversations

    monkeypatch.setattr(conversations, "DATA_URI_LIMIT", 10)
    html = login(world["owner"]).get(f"/mail/threads/{world['thread'].id}").get_data(as_text=True)
    assert "data:image/png" not in parse_page(html).iframes[0]["srcdoc"]
    assert "/attachments/" in html and "2 attachments" in html


def test_a_list_mail_with_thousands_of_recipients_shows_a_few_and_a_count(
    world, login, make_raw_message
):
    readers = ", ".join(f"Reader {n} <reader{n}@list.test>" for n in range(4999))
    raw = rich_mail("Newsletter", to="Olivia Owner <olivia@team.test>, " + readers)
    message = make_raw_message(world["account"], raw)
    db.session.commit()
    page = login(world["owner"]).get(f"/mail/threads/{message.thread_id}")
    text = html.unescape(page.get_data(as_text=True))
    assert page.status_code == 200
    assert "and 4,992 more" in text  # 5,000 recipients: eight names, then the count
    shown = text.split("and 4,992 more")[0]
    assert "Olivia Owner" in shown and "Reader 6" in shown and "Reader 7<" not in shown
