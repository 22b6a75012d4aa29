"""Compose views and services/drafts.py: prefill, autosave, attachments, send/undo, Outbox,
and that only a draft's owner ever reaches it."""

from __future__ import annotations

import html
import io
from datetime import UTC, datetime, timedelta

import pytest

from extensions import db
from models import OUTGOING_DRAFT, OUTGOING_QUEUED, OutgoingMail
from services import outbox
from services.preferences import update_preferences
from tests.mail_fixtures import PNG_1X1, build_message
from tests.test_parse import customer_mail, forwarded

JSON = {"HX-Request": "true", "Accept": "application/json"}


@pytest.fixture
def world(make_user, make_stored_account, make_raw_message, make_person):
    owner = make_user(name="Olivia Owner", email="olivia@team.test")
    other = make_user(name="Otto Other")
    account = make_stored_account(owner)
    account.smtp_host = "smtp.invalid"
    carla = make_person(owner, name="Carla Díaz", emails=("carla@customer.test",))
    make_person(owner, name="Private Pat", visibility="owner", emails=("pat@customer.test",))
    raw = build_message(
        subject="AW: Renewal terms",
        sender="Carla Díaz <carla@customer.test>",
        to="Olivia <olivia@team.test>, Dan <dan@customer.test>",
        cc="Eve <eve@customer.test>",
        message_id="<orig@customer.test>",
        references="<first@customer.test>",
        html="<p>Our <b>terms</b></p><img src='cid:logo'><img src='https://tracker.example/p.gif'>",
        inline_images=(("logo", PNG_1X1),),
        attachments=(("terms.pdf", "application/pdf", b"%PDF-1.4 terms"),),
    )
    message = make_raw_message(account, raw)
    message.references = ["first@customer.test"]  # as the sync stores them (no <>)
    db.session.commit()
    return {
        "owner": owner,
        "other": other,
        "account": account,
        "carla": carla,
        "message": message,
    }


def _create(client, **fields):
    form = {"to": "Carla <carla@customer.test>", "subject": "Hello", "body_html": "<p>Hi</p>"}
    form.update(fields)
    response = client.post("/mail/drafts", data=form, headers=JSON)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def test_compose_page_has_the_labelled_controls(world, login):
    html = login(world["owner"]).get("/mail/compose").get_data(as_text=True)
    for label in ("To", "Cc", "Bcc", "Subject", "Send", "Schedule send", "Attach files", "Discard"):
        assert f">{label}<" in html, label
    assert "squire-2.4.8.js" in html and "purify-3.5.0.min.js" in html
    assert world["account"].email_address in html


def test_compose_to_prefills_and_flags_bad_addresses(world, login):
    html = (
        login(world["owner"])
        .get("/mail/compose?to=carla@customer.test,oops")
        .get_data(as_text=True)
    )
    assert 'value="carla@customer.test, oops"' in html
    assert "Not a valid address: oops" in html


def test_reply_all_prefill(world, login):
    client = login(world["owner"])
    message = world["message"]
    html = client.get(f"/mail/compose?reply={message.id}&kind=reply_all").get_data(as_text=True)
    assert 'value="Re: Renewal terms"' in html
    assert "carla@customer.test" in html and "dan@customer.test" in html
    assert "Eve &lt;eve@customer.test&gt;" in html  # Cc
    assert "olivia@team.test, " not in html.split('name="to"')[1].split(">")[0]
    assert "&lt;blockquote type=&#34;cite&#34;&gt;" in html  # the quote, escaped in the textarea
    assert "tracker.example" not in html  # remote images never reach compose (R8)
    assert "data:image/png;base64" in html  # the inline image still shows
    draft = _create(
        client,
        to="carla@customer.test",
        reply_kind="reply_all",
        source_message_id=str(message.id),
        subject="Re: Renewal terms",
    )
    mail = db.session.get(OutgoingMail, draft["id"])
    assert mail.in_reply_to == "<orig@customer.test>"
    assert mail.references == ["<first@customer.test>", "<orig@customer.test>"]
    assert mail.reply_kind == "reply_all" and mail.source_message_id == message.id
    assert mail.account_id == world["account"].id


def test_forward_copies_the_original_attachments(world, login):
    client = login(world["owner"])
    message = world["message"]
    html = client.get(f"/mail/compose?reply={message.id}&kind=forward").get_data(as_text=True)
    assert 'value="Fwd: AW: Renewal terms"' in html
    draft = _create(client, to="", reply_kind="forward", source_message_id=str(message.id))
    names = sorted(a["filename"] for a in draft["attachments"])
    assert "terms.pdf" in names
    mail = db.session.get(OutgoingMail, draft["id"])
    assert mail.in_reply_to is None
    pdf = next(a for a in draft["attachments"] if a["filename"] == "terms.pdf")
    assert client.get(pdf["url"]).data == b"%PDF-1.4 terms"


@pytest.mark.parametrize("kind", ["forward", "reply"])
def test_replying_to_a_mail_stored_as_headers_only_says_what_is_missing(world, login, kind):
    message = world["message"]
    message.is_placeholder, message.raw_sha256, message.size = True, None, 31_000_000
    message.snippet = "Our terms"
    db.session.commit()
    owner = login(world["owner"])
    page = owner.get(f"/mail/compose?reply={message.id}&kind={kind}").get_data(as_text=True)
    notice = page.split('class="alert alert-warn compose-incomplete"')[1].split("</div>")[0]
    assert "only the headers of this mail" in notice and "too big to download" in notice
    assert ("attachments are <strong>not</strong> in this forward" in notice) == (kind == "forward")
    # Its owner can have it downloaded in full from here, then start again.
    assert f'action="/mail/messages/{message.id}/full"' in notice
    assert "Our terms" in html.unescape(page)  # what is known is still quoted


def test_a_mail_stored_whole_gets_no_missing_parts_notice(world, login):
    page = login(world["owner"]).get(f"/mail/compose?reply={world['message'].id}&kind=forward")
    assert "compose-incomplete" not in page.get_data(as_text=True)


def test_a_reply_quotes_flowed_text_as_paragraphs(world, login, make_raw_message):
    raw = (
        b"From: Carla <carla@customer.test>\r\nSubject: Flowed\r\n"
        b"Content-Type: text/plain; format=flowed\r\n\r\n"
        b"Thunderbird wraps this long line \r\nat 72 characters.\r\n"
    )
    message = make_raw_message(world["account"], raw)
    page = login(world["owner"]).get(f"/mail/compose?reply={message.id}").get_data(as_text=True)
    assert "Thunderbird wraps this long line at 72 characters." in html.unescape(page)


def test_a_reply_quotes_a_mail_forwarded_as_an_attachment_as_shown(world, login, make_raw_message):
    plain = make_raw_message(world["account"], forwarded(customer_mail(1)))
    styled = make_raw_message(world["account"], forwarded(customer_mail(2), html=b"<p>FYI</p>"))
    client = login(world["owner"])
    for message in (plain, styled):
        page = html.unescape(client.get(f"/mail/compose?reply={message.id}").get_data(True))
        assert "What does the gold plan cost?" in page
        assert "---------- Attached message ----------" in page
    assert "FYI" in html.unescape(client.get(f"/mail/compose?reply={styled.id}").get_data(True))


def test_reply_to_a_message_one_cannot_see_is_404(world, login):
    client = login(world["other"])
    assert client.get(f"/mail/compose?reply={world['message'].id}").status_code == 404
    response = client.post(
        "/mail/drafts",
        data={"reply_kind": "reply", "source_message_id": str(world["message"].id)},
        headers=JSON,
    )
    assert response.status_code == 404
    assert db.session.query(OutgoingMail).count() == 0


def test_autosave_round_trip_and_sanitizing(world, login):
    client = login(world["owner"])
    draft = _create(client)
    body = (
        '<div dir="rtl">שלום עולם</div><ul><li><b>one</b></li></ul>'
        '<img src="https://tracker.example/x.gif"><script>alert(1)</script>'
        '<a href="javascript:alert(1)">x</a>'
    )
    response = client.post(
        draft["save_url"],
        data={
            "to": '"Doe, John" <john@example.com>; zoë@exämple.de',
            "cc": "",
            "bcc": "b@x.test",
            "subject": "Line\r\nbreak",
            "body_html": body,
        },
        headers=JSON,
    )
    assert response.status_code == 200
    mail = db.session.get(OutgoingMail, draft["id"])
    db.session.refresh(mail)
    assert mail.to == [["Doe, John", "john@example.com"], ["", "zoë@exämple.de"]]
    assert mail.bcc == [["", "b@x.test"]] and mail.subject == "Line break"
    assert '<div dir="rtl">שלום עולם</div>' in mail.body_html
    assert "<b>one</b>" in mail.body_html
    assert "script" not in mail.body_html and "tracker" not in mail.body_html
    assert "javascript" not in mail.body_html
    html = client.get(draft["edit_url"]).get_data(as_text=True)
    assert "Doe, John" in html and "zoë@exämple.de" in html and "שלום עולם" in html


def test_inline_image_is_stored_as_cid_and_shown_by_url(world, login):
    client = login(world["owner"])
    draft = _create(client)
    response = client.post(
        draft["upload_url"],
        data={"file": (io.BytesIO(PNG_1X1), "pasted.png", "image/png"), "inline": "1"},
        headers=JSON,
    )
    assert response.status_code == 201
    image = response.get_json()
    assert image["content_id"]
    client.post(
        draft["save_url"], data={"body_html": f'<p><img src="{image["url"]}"></p>'}, headers=JSON
    )
    mail = db.session.get(OutgoingMail, draft["id"])
    db.session.refresh(mail)
    assert f'src="cid:{image["content_id"]}"' in mail.body_html
    html = client.get(draft["edit_url"]).get_data(as_text=True)
    assert f"src=&#34;{image['url']}&#34;" in html
    shown = client.get(image["url"])
    assert shown.status_code == 200 and shown.data == PNG_1X1
    # Inline images are not listed as attachments.
    assert client.post(draft["save_url"], data={}, headers=JSON).get_json()["attachments"] == []


def test_inline_must_be_a_raster_image(world, login):
    client = login(world["owner"])
    draft = _create(client)
    response = client.post(
        draft["upload_url"],
        data={"file": (io.BytesIO(b"<svg/>"), "x.svg", "image/svg+xml"), "inline": "1"},
        headers=JSON,
    )
    assert response.status_code == 422


def test_attachment_upload_remove_and_size_limits(world, login, app):
    client = login(world["owner"])
    draft = _create(client)
    response = client.post(
        draft["upload_url"],
        data={"file": (io.BytesIO(b"hello"), "notes.txt", "text/plain")},
        headers=JSON,
    )
    assert response.status_code == 201
    item = response.get_json()
    assert item["filename"] == "notes.txt" and item["size"] == 5
    download = client.get(item["url"])
    assert download.data == b"hello"
    assert "attachment" in download.headers["Content-Disposition"]
    assert client.post(item["delete_url"], headers=JSON).status_code == 200
    assert client.get(item["url"]).status_code == 404

    world["account"].max_message_bytes = 10
    db.session.commit()
    response = client.post(
        draft["upload_url"],
        data={"file": (io.BytesIO(b"x" * 11), "big.bin", "application/octet-stream")},
        headers=JSON,
    )
    assert response.status_code == 413
    assert "too large" in response.get_json()["errors"]["attachments"]
    world["account"].max_message_bytes = None
    db.session.commit()
    app.config["COMPOSE_MAX_UPLOAD_BYTES"] = 4
    response = client.post(
        draft["upload_url"],
        data={"file": (io.BytesIO(b"12345"), "cap.bin", "application/octet-stream")},
        headers=JSON,
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"file": ""},
    ],
)
def test_upload_without_a_file_is_400(world, login, form):
    client = login(world["owner"])
    draft = _create(client)
    assert client.post(draft["upload_url"], data=form, headers=JSON).status_code == 400


@pytest.mark.parametrize(
    "form",
    [
        {"account_id": "999999"},
        {"account_id": "x" * 5000},
        {"to": "\x00" * 10, "subject": "\x00", "body_html": "\x00<p>"},
        {"reply_kind": "bogus"},
        {"source_message_id": "99999999999999999999999"},
        {"record_kind": "user", "record_id": "1"},
        {"to": "a@b" * 3000},
    ],
)
def test_bogus_form_data_is_a_clear_4xx_or_ignored(world, login, form):
    client = login(world["owner"])
    response = client.post("/mail/drafts", data=form, headers=JSON)
    assert response.status_code in (201, 400, 404, 422), response.status_code


def test_from_must_be_an_own_account(world, login, make_stored_account):
    foreign = make_stored_account(world["other"])
    client = login(world["owner"])
    draft = _create(client)
    response = client.post(draft["save_url"], data={"account_id": str(foreign.id)}, headers=JSON)
    assert response.status_code == 422
    assert "account" in response.get_json()["errors"]


def test_send_queues_with_the_undo_window_and_undo_returns_it(world, login):
    update_preferences(world["owner"], {"undo_send_seconds": "30"})
    client = login(world["owner"])
    draft = _create(client)
    before = datetime.now(UTC)
    response = client.post(
        draft["send_url"], data={"to": "carla@customer.test", "subject": "Final"}, headers=JSON
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    data = response.get_json()
    assert data["undo_seconds"] == 30 and data["state"] == OUTGOING_QUEUED
    mail = db.session.get(OutgoingMail, draft["id"])
    db.session.refresh(mail)
    assert mail.subject == "Final" and not mail.scheduled
    assert mail.send_at >= before + timedelta(seconds=29)
    assert client.post(draft["save_url"], data={"subject": "x"}, headers=JSON).status_code == 409
    assert client.post(draft["undo_url"], headers=JSON).status_code == 200
    db.session.refresh(mail)
    assert mail.state == OUTGOING_DRAFT and mail.subject == "Final"


def test_send_with_errors_answers_422_per_field_and_keeps_the_draft(world, login):
    client = login(world["owner"])
    draft = _create(client)
    response = client.post(
        draft["send_url"], data={"to": "not-an-address", "subject": "Kept"}, headers=JSON
    )
    assert response.status_code == 422
    assert "not-an-address" in response.get_json()["errors"]["to"]
    mail = db.session.get(OutgoingMail, draft["id"])
    db.session.refresh(mail)
    assert mail.state == OUTGOING_DRAFT and mail.subject == "Kept"
    bad_time = client.post(draft["send_url"], data={"send_at": "soon"}, headers=JSON)
    assert bad_time.status_code == 422 and "send_at" in bad_time.get_json()["errors"]


def test_schedule_send_then_outbox_cancel_and_edit(world, login):
    client = login(world["owner"])
    draft = _create(client)
    response = client.post(draft["send_url"], data={"send_at": "2099-01-02T09:30"}, headers=JSON)
    assert response.status_code == 200 and response.get_json()["scheduled"] is True
    page = client.get("/mail/outbox").get_data(as_text=True)
    assert "Scheduled for 2099-01-02 09:30" in page and "Hello" in page
    response = client.post(f"/mail/outbox/{draft['id']}/send-now")
    assert response.status_code == 303
    mail = db.session.get(OutgoingMail, draft["id"])
    db.session.refresh(mail)
    assert not mail.scheduled
    assert client.post(f"/mail/outbox/{draft['id']}/cancel").status_code == 303
    db.session.refresh(mail)
    assert mail.state == OUTGOING_DRAFT
    assert "Hello" in client.get("/mail/drafts").get_data(as_text=True)
    outbox.queue_send(world["owner"], mail, send_at=datetime.now(UTC) + timedelta(days=1))
    response = client.post(f"/mail/outbox/{draft['id']}/edit")
    assert response.headers["Location"].endswith(f"/mail/compose/{draft['id']}")
    db.session.refresh(mail)
    assert mail.state == OUTGOING_DRAFT


def test_discard(world, login):
    client = login(world["owner"])
    draft = _create(client)
    assert client.post(draft["discard_url"]).status_code == 303
    assert db.session.get(OutgoingMail, draft["id"]) is None


def test_other_users_get_404_everywhere(world, login):
    owner = login(world["owner"])
    draft = _create(owner)
    item = owner.post(
        draft["upload_url"],
        data={"file": (io.BytesIO(b"secret"), "s.txt", "text/plain")},
        headers=JSON,
    ).get_json()
    other = login(world["other"])
    for url in (draft["edit_url"], item["url"]):
        assert other.get(url).status_code == 404
    for url in (
        draft["save_url"],
        draft["send_url"],
        draft["undo_url"],
        draft["discard_url"],
        draft["upload_url"],
        item["delete_url"],
        f"/mail/outbox/{draft['id']}/edit",
        f"/mail/outbox/{draft['id']}/send-now",
        f"/mail/outbox/{draft['id']}/cancel",
    ):
        assert other.post(url, data={"subject": "hijack"}).status_code == 404, url
    mail = db.session.get(OutgoingMail, draft["id"])
    db.session.refresh(mail)
    assert mail.subject == "Hello" and len(mail.attachments) == 1
    assert "Hello" not in other.get("/mail/drafts").get_data(as_text=True)


def test_expired_session_save_answers_401_for_the_script(world, app):
    response = app.test_client().post("/mail/drafts/1", data={"subject": "x"}, headers=JSON)
    assert response.status_code in (400, 401)  # no session: no CSRF token either
    client = app.test_client()
    token = client.csrf_token()
    response = client.post(
        "/mail/drafts/1", data={"subject": "x"}, headers={**JSON, "X-CSRFToken": token}
    )
    assert response.status_code == 401 and "HX-Redirect" in response.headers


def test_recipient_suggestions_respect_visibility(world, login):
    client = login(world["owner"])
    found = client.get("/mail/compose/recipients?q=car").get_json()
    assert {"name": "Carla Díaz", "address": "carla@customer.test"}.items() <= found[0].items()
    assert client.get("/mail/compose/recipients?q=dí").get_json()[0]["address"] == (
        "carla@customer.test"
    )
    other = login(world["other"])
    assert other.get("/mail/compose/recipients?q=pat").get_json() == []
    # Carla is a shared person, but her mail is the owner's: only the person row shows.
    assert [s["source"] for s in other.get("/mail/compose/recipients?q=carla").get_json()] == [
        "person"
    ]


def test_email_links_open_compose_on_person_pages(world, login):
    client = login(world["owner"])
    html = client.get(f"/persons/{world['carla'].id}").get_data(as_text=True)
    assert 'href="/mail/compose?to=carla@customer.test"' in html
    update_preferences(world["owner"], {"email_links": "mailto"})
    html = client.get(f"/persons/{world['carla'].id}").get_data(as_text=True)
    assert 'href="mailto:carla@customer.test"' in html


def test_undo_send_preference_is_offered(world, login):
    html = login(world["owner"]).get("/settings/").get_data(as_text=True)
    assert "Undo send" in html


def test_email_from_a_record_prefills_and_links_the_record(world, login, make_deal, make_user):
    client = login(world["owner"])
    deal = make_deal(world["owner"], title="Renewal", person_id=world["carla"].id)
    page = client.get(f"/deals/{deal.id}").get_data(as_text=True)
    assert f'href="/mail/compose?record=deal&amp;record_id={deal.id}"' in page
    html = client.get(f"/mail/compose?record=deal&record_id={deal.id}").get_data(as_text=True)
    assert 'value="Carla Díaz &lt;carla@customer.test&gt;"' in html
    assert 'name="record_kind" value="deal"' in html
    draft = _create(client, record_kind="deal", record_id=str(deal.id))
    mail = db.session.get(OutgoingMail, draft["id"])
    assert (mail.record_kind, mail.record_id) == ("deal", deal.id)
    # A record the user cannot access is neither named nor linked.
    secret = make_deal(world["other"], title="Secret", visibility="owner")
    html = client.get(f"/mail/compose?record=deal&record_id={secret.id}").get_data(as_text=True)
    assert 'name="record_kind" value=""' in html
    draft = _create(client, record_kind="deal", record_id=str(secret.id))
    assert db.session.get(OutgoingMail, draft["id"]).record_id is None


def test_outbox_shows_each_state_and_sent_mail_links_its_conversation(world, login):
    from models import OUTGOING_FAILED, OUTGOING_SENDING, OUTGOING_SENT, OUTGOING_UNCERTAIN

    owner = world["owner"]
    rows = [
        (OUTGOING_FAILED, "Refused one", "550 mailbox unavailable"),
        (OUTGOING_UNCERTAIN, "Unsure one", None),
        (OUTGOING_SENDING, "Leaving one", None),
    ]
    for state, subject, error in rows:
        db.session.add(
            OutgoingMail(user_id=owner.id, state=state, subject=subject, error=error, to=[])
        )
    sent = OutgoingMail(
        user_id=owner.id,
        state=OUTGOING_SENT,
        subject="Gone one",
        thread_id=world["message"].thread_id,
        sent_at=datetime.now(UTC),
    )
    db.session.add(sent)
    db.session.commit()
    html = login(owner).get("/mail/outbox").get_data(as_text=True)
    assert "Not sent: <span hx-disable>550 mailbox unavailable</span>" in html
    assert "May have been sent" in html and "Sending…" in html
    assert f'href="/mail/threads/{world["message"].thread_id}">Gone one</a>' in html
    assert "Gone one" not in login(world["other"]).get("/mail/outbox").get_data(as_text=True)


def test_send_drops_inline_images_no_longer_in_the_body(world, login):
    client = login(world["owner"])
    draft = _create(client)
    upload = {"file": (io.BytesIO(PNG_1X1), "kept.png", "image/png"), "inline": "1"}
    kept = client.post(draft["upload_url"], data=upload, headers=JSON).get_json()
    upload = {"file": (io.BytesIO(PNG_1X1), "deleted.png", "image/png"), "inline": "1"}
    client.post(draft["upload_url"], data=upload, headers=JSON)
    body = f'<p>Look: <img src="{kept["url"]}"></p>'
    response = client.post(draft["send_url"], data={"body_html": body}, headers=JSON)
    assert response.status_code == 200, response.get_data(as_text=True)
    mail = db.session.get(OutgoingMail, draft["id"])
    db.session.refresh(mail)
    assert [a.filename for a in mail.attachments] == ["kept.png"]
    assert f'src="cid:{kept["content_id"]}"' in mail.body_html


def test_mail_tab_offers_compose_drafts_and_outbox(world, login):
    html = login(world["owner"]).get("/mail/").get_data(as_text=True)
    assert 'href="/mail/compose" data-shortcut="c">Compose</a>' in html
    assert 'href="/mail/drafts">Drafts</a>' in html and 'href="/mail/outbox">Outbox</a>' in html
