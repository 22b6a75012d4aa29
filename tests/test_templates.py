"""Mail templates (services/templates.py, Settings > Templates, compose's apply route): who
may use, edit and delete which template, search, bad input, the sanitizer, duplicate, and
filling a draft (files copied, inline images' cid kept) that then goes out over SMTP."""

from __future__ import annotations

import io
import re

import pytest
from werkzeug.exceptions import Forbidden, NotFound

from extensions import db
from mailsync import send
from models import OUTGOING_SENT, MailTemplate, OutgoingMail, TemplateAttachment
from services import outbox, templates
from services.errors import ValidationError
from tests.mail_fixtures import PNG_1X1
from tests.test_send import new_mail, parse, sender, smtp_servers  # noqa: F401 (fixtures)

JSON = {"HX-Request": "true", "Accept": "application/json"}
CHIP = '<span data-smart-field="person.first_name" data-fallback="there">First name</span>'


@pytest.fixture
def team(make_user):
    return {
        "owner": make_user(name="Olivia Owner"),
        "member": make_user(name="Max Member"),
        "admin": make_user(name="Ada Admin", is_admin=True),
    }


def make_template(owner, *, shared=False, name="Renewal offer", subject="Your renewal", body=None):
    template = MailTemplate(
        owner_id=owner.id,
        name=name,
        subject=subject,
        body_html=body or "<div>Hello, here is the renewal offer.</div>",
        shared=shared,
    )
    db.session.add(template)
    db.session.commit()
    return template


def with_files(template, blob_store):
    """Give a template an attachment and an inline image (referenced from its body)."""
    pdf = TemplateAttachment(
        filename="prices.pdf",
        content_type="application/pdf",
        size=15,
        blob_sha256=blob_store.put(b"%PDF-1.4 prices"),
    )
    logo = TemplateAttachment(
        filename="logo.png",
        content_type="image/png",
        size=len(PNG_1X1),
        blob_sha256=blob_store.put(PNG_1X1),
        content_id="logo123@threadline",
    )
    template.attachments.extend([pdf, logo])
    template.body_html = '<div>Hi</div><div><img src="cid:logo123@threadline" alt="logo"></div>'
    db.session.commit()
    return pdf, logo


@pytest.fixture
def store(app):
    from services.conversations import blob_store

    return blob_store()


# --------------------------------------------------------------------------- the rule

# (who, sharing) -> (may use, may edit and delete)
RULES = {
    ("owner", "private"): (True, True),
    ("owner", "shared"): (True, True),
    ("member", "private"): (False, False),
    ("member", "shared"): (True, False),
    ("admin", "private"): (False, False),  # admins included in "no" for private things
    ("admin", "shared"): (True, True),
}


@pytest.mark.parametrize(("who", "sharing"), sorted(RULES))
def test_use_edit_delete_rules(app, team, login, who, sharing):
    template = make_template(team["owner"], shared=sharing == "shared")
    user = team[who]
    may_use, may_edit = RULES[(who, sharing)]

    assert (template in templates.usable_templates(user)) is may_use
    if may_use:
        assert templates.template_for_use(user, template.id) is template
    else:
        with pytest.raises(NotFound):
            templates.template_for_use(user, template.id)
    if may_edit:
        assert templates.template_for_edit(user, template.id) is template
    else:
        with pytest.raises(NotFound if not may_use else Forbidden):
            templates.template_for_edit(user, template.id)

    client = login(user)
    edit_status = client.get(f"/settings/templates/{template.id}").status_code
    assert edit_status == (200 if may_edit else 403 if may_use else 404)
    listed = client.get("/settings/templates/").get_data(as_text=True)
    assert ("Renewal offer" in listed) is may_use
    picker = client.get("/mail/compose/templates").get_json()
    assert [t["id"] for t in picker] == ([template.id] if may_use else [])
    template_id = template.id
    response = client.post(f"/settings/templates/{template_id}/delete")
    assert response.status_code == (303 if may_edit else 403 if may_use else 404)
    db.session.expire_all()
    assert (db.session.get(MailTemplate, template_id) is None) is may_edit


def test_search_by_name_and_text(app, team):
    owner, member = team["owner"], team["member"]
    by_name = make_template(owner, name="Follow-up after demo", subject="", body="<div>x</div>")
    by_subject = make_template(owner, name="A", subject="Your invoice 100%")
    by_body = make_template(member, shared=True, name="B", body="<div>Pricing for Acme</div>")
    make_template(member, name="Private pricing", body="<div>pricing</div>")  # not B's to share

    assert templates.usable_templates(owner, "DEMO") == [by_name]
    assert templates.usable_templates(owner, "100%") == [by_subject]
    assert templates.usable_templates(owner, "pricing") == [by_body]
    assert templates.usable_templates(owner, "_") == []  # LIKE wildcards are literal
    assert templates.usable_templates(owner) == [by_subject, by_body, by_name]
    found = [t.name for t in templates.usable_templates(member, "pricing")]
    assert found == ["B", "Private pricing"]


def test_list_says_who_shared_and_searches(app, team, login):
    make_template(team["member"], shared=True, name="Team intro")
    make_template(team["owner"], name="My notes")
    client = login(team["owner"])
    page = client.get("/settings/templates/").get_data(as_text=True)
    assert 'Shared <span class="muted">by Max Member</span>' in page
    assert 'aria-current="page"' in page and ">Templates</a>" in page  # in the settings nav
    found = client.get(
        "/settings/templates/?q=intro", headers={"HX-Request": "true", "HX-Target": "template-list"}
    ).get_data(as_text=True)
    assert "Team intro" in found and "My notes" not in found and "<html" not in found


# --------------------------------------------------------------------------- routes


def test_create_edit_and_duplicate(app, team, login):
    client = login(team["owner"])
    response = client.post(
        "/settings/templates/",
        data={
            "name": "  Renewal   reminder ",
            "subject": "Renewal\r\nBcc: x@evil.test",
            "body_html": f"<div onclick='x()'>Hi {CHIP}<script>alert(1)</script></div>"
            '<span data-smart-field="x&quot; onclick" data-fallback="a">Bad</span>',
            "shared": "1",
        },
    )
    assert response.status_code == 303
    template = db.session.scalars(db.select(MailTemplate)).one()
    assert response.headers["Location"].endswith(f"/settings/templates/{template.id}")
    assert template.name == "Renewal reminder" and template.shared
    assert template.subject == "Renewal Bcc: x@evil.test"  # one line: never a header break
    assert CHIP in template.body_html
    assert "script" not in template.body_html and "onclick" not in template.body_html
    assert 'data-smart-field="x' not in template.body_html  # a key that is not a key goes

    page = client.get(f"/settings/templates/{template.id}").get_data(as_text=True)
    assert "Renewal reminder" in page and 'value="1" checked' in page

    response = client.post(f"/settings/templates/{template.id}/duplicate")
    assert response.status_code == 303
    copy = db.session.scalars(db.select(MailTemplate).where(MailTemplate.id != template.id)).one()
    assert copy.name == "Copy of Renewal reminder" and not copy.shared
    assert copy.body_html == template.body_html


def test_a_teammate_duplicates_a_shared_template_into_their_own(app, team, login, store):
    shared = make_template(team["owner"], shared=True)
    pdf, logo = with_files(shared, store)
    response = login(team["member"]).post(f"/settings/templates/{shared.id}/duplicate")
    assert response.status_code == 303
    copy = db.session.scalars(
        db.select(MailTemplate).where(MailTemplate.owner_id == team["member"].id)
    ).one()
    assert {(a.filename, a.blob_sha256, a.content_id) for a in copy.attachments} == {
        ("prices.pdf", pdf.blob_sha256, None),
        ("logo.png", logo.blob_sha256, logo.content_id),
    }
    assert templates.can_edit(team["member"], copy)


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"name": "", "shared": "0"}, "name", "Give the template a name."),
        ({"name": "x" * 201}, "name", "Keep the name under 200 characters."),
        ({"name": "A", "shared": "everyone"}, "shared", "Choose Private or Shared"),
        ({"name": "A", "subject": "s" * 999}, "subject", "Keep the subject under"),
        ({"name": "A", "body_html": "b" * 5_000_001}, "body", "too long to save"),
    ],
)
def test_bad_input_gets_a_clear_message(app, team, login, form, field, message):
    client = login(team["owner"])
    response = client.post("/settings/templates/", data=form)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    template = make_template(team["owner"])
    response = client.post(f"/settings/templates/{template.id}", data=form)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(MailTemplate, template.id).name == "Renewal offer"


def test_every_form_needs_its_csrf_token(app, team, login):
    template = make_template(team["owner"])
    client = login(team["owner"])
    for url in (
        "/settings/templates/",
        f"/settings/templates/{template.id}",
        f"/settings/templates/{template.id}/duplicate",
        f"/settings/templates/{template.id}/delete",
    ):
        response = client.post(url, data={"name": "Changed"}, csrf=False)
        assert response.status_code == 400, url
    db.session.expire_all()
    assert db.session.scalars(db.select(MailTemplate)).all() == [template]
    assert template.name == "Renewal offer"


def test_someone_elses_private_template_is_404_everywhere(app, team, login, store):
    private = make_template(team["owner"], name="Secret pricing")
    pdf, _logo = with_files(private, store)
    for who in ("member", "admin"):
        client = login(team[who])
        base = f"/settings/templates/{private.id}"
        assert client.get(base).status_code == 404
        assert client.get(f"{base}/attachments/{pdf.id}").status_code == 404
        for url in (
            base,
            f"{base}/duplicate",
            f"{base}/delete",
            f"{base}/attachments/{pdf.id}/delete",
        ):
            assert client.post(url, data={"name": "X"}).status_code == 404, url
        draft = new_draft(team[who])
        response = client.post(
            f"/mail/drafts/{draft.id}/template", data={"template_id": private.id}, headers=JSON
        )
        assert response.status_code == 404
        assert "Secret" not in client.get("/mail/compose/templates?q=secret").get_data(as_text=True)
    assert login(team["owner"]).get(
        f"/settings/templates/{private.id}/attachments/{pdf.id}"
    ).data == (b"%PDF-1.4 prices")


def test_uploads_have_the_compose_limits(app, team, login):
    template = make_template(team["owner"])
    client = login(team["owner"])
    url = f"/settings/templates/{template.id}/attachments"
    response = client.post(
        url,
        data={"file": (io.BytesIO(PNG_1X1), "logo.png", "image/png"), "inline": "1"},
        headers=JSON,
    )
    assert response.status_code == 201
    item = response.get_json()
    assert item["content_id"] and item["url"].startswith(f"/settings/templates/{template.id}/")
    response = client.post(
        url,
        data={"file": (io.BytesIO(b"%PDF"), "x.pdf", "application/pdf"), "inline": "1"},
        headers=JSON,
    )
    assert response.status_code == 422
    assert "Only PNG, JPEG, GIF and WebP" in response.get_json()["errors"]["attachments"]
    assert client.post(url, data={}, headers=JSON).status_code == 400
    app.config["COMPOSE_MAX_UPLOAD_BYTES"] = len(PNG_1X1) + 4
    response = client.post(
        url,
        data={"file": (io.BytesIO(b"12345"), "big.bin", "application/octet-stream")},
        headers=JSON,
    )
    assert response.status_code == 413
    assert "too large" in response.get_json()["errors"]["attachments"]

    # The editor's image URL becomes cid: in the stored body, and back for the editor.
    response = client.post(
        f"/settings/templates/{template.id}",
        data={"name": "With logo", "body_html": f'<div><img src="{item["url"]}"></div>'},
    )
    assert response.status_code == 303
    db.session.expire_all()
    assert f'src="cid:{item["content_id"]}"' in db.session.get(MailTemplate, template.id).body_html
    page = client.get(f"/settings/templates/{template.id}").get_data(as_text=True)
    assert item["url"] in page


def test_a_new_template_saved_by_the_editor_before_its_first_upload(app, team, login):
    client = login(team["owner"])
    response = client.post("/settings/templates/", data={"name": "Draft"}, headers=JSON)
    assert response.status_code == 201
    data = response.get_json()
    assert data["upload_url"] == f"/settings/templates/{data['id']}/attachments"


# --------------------------------------------------------------------------- apply


def new_draft(user, **fields) -> OutgoingMail:
    draft = OutgoingMail(user_id=user.id, to=[["Carla", "carla@customer.test"]], **fields)
    db.session.add(draft)
    db.session.commit()
    return draft


def test_apply_copies_subject_body_and_files_once(app, team, store):
    template = make_template(team["owner"], shared=True, subject="Renewal for {{First name}}")
    pdf, logo = with_files(template, store)
    template.body_html = f"<div>Hi {CHIP}</div>" + template.body_html
    db.session.commit()
    draft = new_draft(team["member"], subject="old", body_html="<div>old</div>")

    templates.apply_to_draft(team["member"], draft, template)
    templates.apply_to_draft(team["member"], draft, template)  # again: nothing doubles

    assert draft.subject == "Renewal for {{First name}}"
    assert draft.body_html == template.body_html and CHIP in draft.body_html
    rows = {(a.filename, a.blob_sha256, a.content_id) for a in draft.attachments}
    assert rows == {
        ("prices.pdf", pdf.blob_sha256, None),
        ("logo.png", logo.blob_sha256, "logo123@threadline"),
    }
    assert len(draft.attachments) == 2

    draft.state = "queued"
    with pytest.raises(ValidationError):
        templates.apply_to_draft(team["member"], draft, template)


def test_the_apply_route_answers_the_editor(app, team, login, store):
    template = make_template(team["owner"], shared=True)
    with_files(template, store)
    draft = new_draft(team["member"])
    client = login(team["member"])
    response = client.post(
        f"/mail/drafts/{draft.id}/template", data={"template_id": template.id}, headers=JSON
    )
    assert response.status_code == 200
    data = response.get_json()
    assert data["subject"] == "Your renewal"
    [image] = [a for a in draft.attachments if a.content_id]
    assert f'src="/mail/drafts/{draft.id}/attachments/{image.id}"' in data["body_html"]
    assert [a["filename"] for a in data["attachments"]] == ["prices.pdf"]
    for bogus in ({}, {"template_id": "abc"}, {"template_id": "-1"}):
        response = client.post(f"/mail/drafts/{draft.id}/template", data=bogus, headers=JSON)
        assert response.status_code == 400
        assert response.get_json()["errors"]["__all__"] == "Choose a template."
    missing = client.post(
        f"/mail/drafts/{draft.id}/template", data={"template_id": "99999"}, headers=JSON
    )
    assert missing.status_code == 404


@pytest.mark.imap
def test_a_draft_filled_from_a_template_is_sent_with_its_files(app, sender, make_user, store):  # noqa: F811
    user, account, server, _mail_user = sender
    author = make_user(name="Tom Template")
    template = make_template(author, shared=True, subject="Prices 2027")
    pdf, logo = with_files(template, store)
    draft = new_mail(user, account, subject="", body_html="")
    templates.apply_to_draft(user, draft, template)

    outbox.queue_send(user, draft)
    assert send.send_due(app) == {draft.id: OUTGOING_SENT}

    [received] = server.messages
    message = parse(received.data)
    assert message["Subject"] == "Prices 2027"
    parts = {part.get_filename() or part.get_content_type(): part for part in message.walk()}
    assert parts["prices.pdf"].get_content() == b"%PDF-1.4 prices"
    image = next(p for p in message.walk() if p.get_content_type() == "image/png")
    assert image.get_content() == PNG_1X1
    html = next(p for p in message.walk() if p.get_content_type() == "text/html").get_content()
    cid = image["Content-ID"].strip("<>")
    assert re.search(rf'src="cid:{re.escape(cid)}"', html)
