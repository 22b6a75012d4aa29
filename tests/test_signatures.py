"""Signatures: services/signatures.py (one default per account, owner only, sanitized),
the Settings routes, the compose page's data and draft marker, and a send through aiosmtpd
that carries the signature and its image as a cid: part."""

from __future__ import annotations

import base64
import email
import email.policy
import html
import json
import re

import pytest
from werkzeug.exceptions import NotFound

from extensions import db
from mailsync import send
from models import OUTGOING_SENT, OutgoingMail, Signature
from services import signatures
from services.errors import ValidationError
from services.mail_render import sanitize_email_html
from services.preferences import get_preference, update_preferences
from tests.mail_fixtures import PNG_1X1
from tests.test_send import sender, smtp_servers  # noqa: F401  (aiosmtpd fixtures)

JSON = {"HX-Request": "true", "Accept": "application/json"}
LOGO = "data:image/png;base64," + base64.b64encode(PNG_1X1).decode()


@pytest.fixture
def world(make_user, make_stored_account):
    owner = make_user(name="Olivia Owner", email="olivia@team.test")
    other = make_user(name="Otto Other")
    account = make_stored_account(owner)
    account.smtp_host = "smtp.invalid"
    second = make_stored_account(owner, email_address="olivia@side.test")
    foreign = make_stored_account(other)
    db.session.commit()
    return {
        "owner": owner,
        "other": other,
        "account": account,
        "second": second,
        "foreign": foreign,
    }


def _add(user, account, name="Work", body="<p>Olivia Owner, Sales</p>") -> Signature:
    return signatures.create_signature(user, account, name=name, body_html=body)


def _defaults(account) -> list[str]:
    db.session.expire_all()
    return [s.name for s in signatures.account_signatures(account) if s.is_default]


# --------------------------------------------------------------------------- the rules


def test_the_first_signature_is_the_default_and_there_is_always_exactly_one(world):
    owner, account = world["owner"], world["account"]
    assert signatures.default_signature(account) is None
    work = _add(owner, account, "Work")
    short = _add(owner, account, "Short", "<p>O.</p>")
    legal = _add(owner, account, "Legal", "<p>Registered in Berlin</p>")
    assert _defaults(account) == ["Work"]
    signatures.set_default(owner, legal)
    assert _defaults(account) == ["Legal"]
    # Deleting the default hands it to the oldest one left.
    signatures.delete_signature(owner, legal)
    assert _defaults(account) == ["Work"]
    signatures.delete_signature(owner, short)  # not the default: nothing moves
    assert _defaults(account) == ["Work"]
    signatures.delete_signature(owner, work)
    assert signatures.default_signature(account) is None
    # Each account has its own default.
    _add(owner, world["second"], "Side")
    _add(owner, account, "Again")
    assert _defaults(world["second"]) == ["Side"] and _defaults(account) == ["Again"]


def test_signature_html_is_sanitized_and_keeps_small_inline_images(world):
    signature = _add(
        world["owner"],
        world["account"],
        body='<p onclick="x()"><b>Olivia</b><script>alert(1)</script></p>'
        '<img src="https://tracker.example/pixel.gif"><img src="cid:logo">'
        f'<img src="{LOGO}" alt="Logo"><a href="javascript:alert(1)">site</a>'
        '<div data-signature="4">marker</div>',
    )
    body = signature.body_html
    assert "<b>Olivia</b>" in body and f'src="{LOGO}"' in body
    for gone in ("script", "onclick", "tracker.example", "cid:", "javascript:", "data-signature"):
        assert gone not in body, gone


def test_an_image_over_the_limit_is_refused_with_its_size(world):
    big = base64.b64encode(b"\x89PNG" + bytes(signatures.MAX_IMAGE_BYTES)).decode()
    with pytest.raises(ValidationError) as caught:
        _add(world["owner"], world["account"], body=f'<img src="data:image/png;base64,{big}">')
    assert "at most 100 KB (this one is 101 KB)" in caught.value.errors["body_html"]
    assert signatures.account_signatures(world["account"]) == []


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("", "<p>Olivia</p>", "name"),
        ("   ", "<p>Olivia</p>", "name"),
        ("x" * 201, "<p>Olivia</p>", "name"),
        ("Work", "", "body_html"),
        ("Work", "<script>alert(1)</script><p> </p>", "body_html"),
        ("Work", "<p>x</p>" * 100_000, "body_html"),
    ],
)
def test_bad_input_names_the_field(world, name, body, field):
    with pytest.raises(ValidationError) as caught:
        _add(world["owner"], world["account"], name=name, body=body)
    assert field in caught.value.errors


def test_only_the_owner_reaches_an_accounts_signatures(world):
    owner, other, account = world["owner"], world["other"], world["account"]
    signature = _add(owner, account)
    with pytest.raises(NotFound):
        signatures.signature_for_owner(other, account.id, signature.id)
    with pytest.raises(NotFound):  # the right signature through another account's id
        signatures.signature_for_owner(owner, world["second"].id, signature.id)
    with pytest.raises(NotFound):
        _add(other, account)
    for change in (
        lambda: signatures.set_default(other, signature),
        lambda: signatures.delete_signature(other, signature),
        lambda: signatures.update_signature(other, signature, name="X", body_html="<p>x</p>"),
    ):
        with pytest.raises(NotFound):
            change()
    db.session.expire_all()
    assert signatures.account_signatures(account)[0].name == "Work"
    # The compose data lists the user's own sending accounts only.
    assert str(world["foreign"].id) not in signatures.compose_choices(owner)
    assert signatures.compose_choices(other)[str(world["foreign"].id)]["signatures"] == []


def test_the_position_preference_is_registered_with_above_by_default(world, login):
    owner = world["owner"]
    assert get_preference(owner, signatures.POSITION_KEY) == "above"
    update_preferences(owner, {signatures.POSITION_KEY: "below"})
    assert get_preference(owner, signatures.POSITION_KEY) == "below"
    with pytest.raises(ValidationError):
        update_preferences(owner, {signatures.POSITION_KEY: "sideways"})
    page = login(owner).get("/settings/").get_data(as_text=True)
    assert "Signature position in replies" in page


# --------------------------------------------------------------------------- routes


def test_manage_signatures_from_the_account_settings(world, login):
    account = world["account"]
    client = login(world["owner"])
    base = f"/settings/accounts/{account.id}/signatures"
    assert "Add a signature" in client.get(f"/settings/accounts/{account.id}").get_data(
        as_text=True
    )
    response = client.post(base, data={"name": "Work", "body_html": "<p>Olivia, Sales</p>"})
    assert response.status_code == 303 and response.headers["Location"].endswith(base)
    client.post(base, data={"name": "Short", "body_html": "<p>O.</p>"})
    work, short = signatures.account_signatures(account)
    page = client.get(base).get_data(as_text=True)
    assert "Olivia, Sales" in page and "Default" in page
    assert 'id="signature-form"' in page and "data-max-image-bytes" in page

    response = client.post(
        f"{base}/{short.id}", data={"name": "Short one", "body_html": "<p>Olivia</p>"}
    )
    assert response.status_code == 303
    assert client.post(f"{base}/{short.id}/default").status_code == 303
    assert _defaults(account) == ["Short one"]
    assert client.post(f"{base}/{short.id}/delete").status_code == 303
    assert _defaults(account) == ["Work"]
    assert "Manage signatures" in client.get(f"/settings/accounts/{account.id}").get_data(
        as_text=True
    )


def test_forms_need_csrf_and_change_nothing_without_it(world, login):
    account = world["account"]
    signature = _add(world["owner"], account)
    client = login(world["owner"])
    base = f"/settings/accounts/{account.id}/signatures"
    for url, data in [
        (base, {"name": "New", "body_html": "<p>x</p>"}),
        (f"{base}/{signature.id}", {"name": "Changed", "body_html": "<p>x</p>"}),
        (f"{base}/{signature.id}/default", {}),
        (f"{base}/{signature.id}/delete", {}),
    ]:
        assert client.post(url, data=data, csrf=False).status_code == 400, url
    db.session.expire_all()
    assert [s.name for s in signatures.account_signatures(account)] == ["Work"]


def test_another_users_account_or_signature_is_404(world, login):
    owner_sig = _add(world["owner"], world["account"])
    other_sig = _add(world["other"], world["foreign"], "Otto's")
    client = login(world["owner"])
    mine, theirs = world["account"].id, world["foreign"].id
    for url in (
        f"/settings/accounts/{theirs}/signatures",
        f"/settings/accounts/{theirs}/signatures/{other_sig.id}",
        f"/settings/accounts/{mine}/signatures/{other_sig.id}",  # their signature, my account
        f"/settings/accounts/{world['second'].id}/signatures/{owner_sig.id}",
    ):
        assert client.get(url).status_code == 404, url
        assert client.post(url, data={"name": "X", "body_html": "<p>x</p>"}).status_code == 404
    for action in ("default", "delete"):
        url = f"/settings/accounts/{mine}/signatures/{other_sig.id}/{action}"
        assert client.post(url).status_code == 404
    db.session.expire_all()
    assert [s.name for s in signatures.account_signatures(world["foreign"])] == ["Otto's"]


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"name": ""},
        {"name": "Work"},
        {"name": "Work", "body_html": "<script>x</script>"},
        {"name": "\x00", "body_html": "\x00"},
        {"name": "x" * 5000, "body_html": "<p>x</p>"},
    ],
)
def test_bogus_data_re_renders_the_form_with_a_message(world, login, form):
    client = login(world["owner"])
    response = client.post(f"/settings/accounts/{world['account'].id}/signatures", data=form)
    assert response.status_code == 422
    assert 'class="field-error"' in response.get_data(as_text=True)
    assert signatures.account_signatures(world["account"]) == []


def test_an_oversized_image_is_refused_with_a_clear_message(world, login):
    big = base64.b64encode(bytes(200 * 1024)).decode()
    client = login(world["owner"])
    response = client.post(
        f"/settings/accounts/{world['account'].id}/signatures",
        data={"name": "Logo", "body_html": f'<img src="data:image/png;base64,{big}">'},
    )
    assert response.status_code == 422
    assert "at most 100 KB (this one is 200 KB)" in response.get_data(as_text=True)


# --------------------------------------------------------------------------- compose


def test_the_compose_page_carries_each_accounts_signatures(world, login):
    owner = world["owner"]
    work = _add(owner, world["account"], "Work", "<p>Olivia &amp; Co</p>")
    _add(owner, world["account"], "Short", "<p>O.</p>")
    update_preferences(owner, {signatures.POSITION_KEY: "below"})
    page = login(owner).get("/mail/compose").get_data(as_text=True)
    attribute = re.search(r"data-signatures='([^']*)'", page).group(1)
    data = json.loads(html.unescape(attribute))
    assert data[str(world["account"].id)]["default"] == work.id
    assert [s["name"] for s in data[str(world["account"].id)]["signatures"]] == ["Work", "Short"]
    assert data[str(world["second"].id)] == {"default": None, "signatures": []}
    assert str(world["foreign"].id) not in data
    assert 'data-position="below"' in page


def test_a_draft_keeps_the_signature_marker_and_received_mail_never_does(world, login):
    client = login(world["owner"])
    body = (
        '<div>Hello</div><div data-signature="12"><p>Olivia</p></div>'
        '<div data-signature="javascript:x"><p>Bad</p></div><div data-other="1">x</div>'
    )
    response = client.post("/mail/drafts", data={"body_html": body}, headers=JSON)
    assert response.status_code == 201
    stored = db.session.get(OutgoingMail, response.get_json()["id"]).body_html
    assert stored.count("data-signature") == 1 and '<div data-signature="12">' in stored
    assert "data-other" not in stored
    received = sanitize_email_html(body, cid_url=lambda _cid: None).html
    assert "data-signature" not in received


def test_sent_mail_carries_the_signature_and_its_image_as_a_cid_part(app, sender, login):  # noqa: F811
    """Through the real path: the compose routes save and queue, the worker sends to aiosmtpd."""
    user, account, server, _mail_user = sender
    signature = _add(user, account, "Logo", f'<p>Ana Pérez, Sales</p><img src="{LOGO}">')
    update_preferences(user, {"undo_send_seconds": "0"})
    client = login(user)
    block = f'<div data-signature="{signature.id}">{signature.body_html}</div>'
    form = {
        "account_id": str(account.id),
        "to": "Carla <carla@customer.test>",
        "subject": "Signed",
        "body_html": f"<div>Hello Carla,</div><div><br></div>{block}",
    }
    draft = client.post("/mail/drafts", data=form, headers=JSON).get_json()
    assert client.post(draft["send_url"], data=form, headers=JSON).status_code == 200
    assert send.send_due(app) == {draft["id"]: OUTGOING_SENT}

    [received] = server.messages
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    body = message.get_body(("html",)).get_content()
    assert "Ana Pérez, Sales" in body and "Hello Carla," in body
    assert "data-signature" not in body and "data:" not in body
    [cid] = re.findall(r'src="cid:([^"]+)"', body)
    [image] = [part for part in message.walk() if part["Content-ID"]]
    assert image["Content-ID"] == f"<{cid}>" and image.get_content() == PNG_1X1
    assert "Ana Pérez, Sales" in message.get_body(("plain",)).get_content()
