"""The single global authorization guard: every endpoint of the app is classified here.

User A owns a mail account, folders, a private thread with an attachment and an inline image,
owner-only records and a blocked address. B is a teammate with no sharing, plus an admin.
Every GET route taking an id of A's private data must be a 404 for B and the admin (R30:
admins included in "no"; 404 so existence does not leak), and every route without an id must
never show A's private token to them. A new endpoint fails `test_every_endpoint_is_classified`
until it is added to CLASSIFICATION. Per-area matrices (test_conversation, test_records_access,
test_accounts) go deeper; this one proves nothing is left out.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from flask import url_for
from sqlalchemy import select

from app import create_app
from extensions import db
from models import MessageLocation, SyncRun, SyncRunEntry
from tests.mail_fixtures import PNG_1X1, build_message

TOKEN = "Zqxvortex"  # appears only in A's private mail, folder and owner-only records

# endpoint -> how it is checked
#   public       reachable signed out, shows nobody's data
#   page         GET without ids: everyone signed in gets it; A's private token never shows
#   admin_page   GET for admins only: 404 for others; A's private token never shows
#   owner        GET with ids of A's private data: A gets 2xx, B and admin get 404
#   owner_post   POST with ids of A's data: B and admin get 404 and nothing changes
#   noop_post    POST with an id of A's data: for B and admin it changes nothing of A's
#   post         POST without ids (creates, own settings, sign in/out): no data of others
CLASSIFICATION = {
    "index": "page",
    "health.healthz": "public",
    "auth.login": "public",
    "auth.login_submit": "post",
    "auth.setup": "public",
    "auth.setup_submit": "post",
    "auth.logout": "post",
    "auth.password": "page",
    "auth.password_submit": "post",
    "admin.users_index": "admin_page",
    "admin.users_create": "post",
    "admin.users_role": "post",
    "admin.users_active": "post",
    "admin.sign_in_index": "admin_page",
    "admin.sign_in_update": "post",
    "settings.index": "page",
    "settings.update": "post",
    "settings.time_zone": "post",
    "settings.profile": "page",
    "settings.update_profile": "post",
    "accounts.index": "page",
    "accounts.new": "page",
    "accounts.server_fields": "page",
    "accounts.preset": "post",
    "accounts.test": "post",
    "accounts.create": "post",
    "accounts.show": "owner",
    "accounts.progress": "owner",
    "accounts.status": "owner",
    "accounts.run_log": "owner",
    "accounts.folder_check": "owner",
    "accounts.reauth_form": "owner",
    "accounts.folders_form": "owner",
    "accounts.smtp_form": "owner",
    "accounts.remove_form": "owner",
    "accounts.sync": "owner_post",
    "accounts.pause": "owner_post",
    "accounts.resume": "owner_post",
    "accounts.reauth": "owner_post",
    "accounts.folders_update": "owner_post",
    "accounts.smtp_update": "owner_post",
    "accounts.remove": "owner_post",
    "accounts.add_address": "owner_post",
    "accounts.remove_address": "owner_post",
    "accounts.request_folder_check": "owner_post",
    "accounts.fetch_again": "owner_post",
    "accounts.oauth_start": "post",
    "accounts.oauth_again": "owner_post",
    "accounts.oauth_callback": "page",  # without a sign-in started here: back to "Add"
    "signatures.index": "owner",
    "signatures.edit": "owner",
    "signatures.create": "owner_post",
    "signatures.update": "owner_post",
    "signatures.make_default": "owner_post",
    "signatures.delete": "owner_post",
    "mail.index": "page",
    "mail.rows": "page",
    "mail.folders": "page",
    "mail.progress": "page",
    "mail.saving": "page",  # the user's own jobs only; ?thread= narrows them
    "mail.act": "noop_post",
    "conversations.show": "owner",
    "conversations.link_search": "owner",
    "conversations.step": "owner",
    "conversations.attachment": "owner",
    "conversations.inline_image": "owner",
    "conversations.raw": "owner",
    "conversations.record_panel": "owner",
    "compose.new": "page",
    "compose.edit": "owner",
    "compose.recipients": "page",  # persons the user can see, their own mailbox's senders
    "compose.create": "post",
    "compose.drafts_index": "page",
    "compose.save": "owner_post",
    "compose.send": "owner_post",
    "compose.preview": "owner",
    "compose.undo": "owner_post",
    "compose.discard": "owner_post",
    "compose.upload": "owner_post",
    "compose.attachment": "owner",
    "compose.remove_attachment": "owner_post",
    "compose.outbox_index": "page",
    "compose.outbox_edit": "owner_post",
    "compose.outbox_send_now": "owner_post",
    "compose.outbox_cancel": "owner_post",
    "conversations.mark_read": "owner_post",
    "conversations.update_sharing": "owner_post",
    "conversations.link": "owner_post",
    "conversations.unlink": "owner_post",
    "conversations.create_person": "owner_post",
    "conversations.add_person_email": "owner_post",
    "conversations.link_past": "owner_post",
    "conversations.dismiss_past_links": "owner_post",
    "conversations.block": "owner_post",
    "conversations.allow_images": "owner_post",
    "conversations.fetch_full": "owner_post",
    "blocking.index": "page",
    "blocking.create": "post",
    "blocking.delete": "owner_post",
    "deals.board": "page",
    "group_send.index": "page",
    "group_send.new": "page",  # persons the user can see; 404 for an organization they cannot
    "group_send.create": "post",
    "group_send.show": "owner",
    "group_send.progress": "owner",
    "group_send.cancel": "owner_post",
    "compose.templates_search": "page",  # own and shared templates only
    "compose.apply_template": "owner_post",
    "mail_templates.index": "page",
    "mail_templates.new": "page",
    "mail_templates.create": "post",
    "mail_templates.edit": "owner",
    "mail_templates.update": "owner_post",
    "mail_templates.duplicate": "owner_post",
    "mail_templates.delete": "owner_post",
    "mail_templates.upload": "owner_post",
    "mail_templates.attachment": "owner",
    "mail_templates.remove_attachment": "owner_post",
}
for _area in ("deals", "persons", "organizations", "leads", "projects"):
    CLASSIFICATION.update(
        {
            f"{_area}.index": "page",
            f"{_area}.new": "page",
            f"{_area}.create": "post",
            f"{_area}.show": "owner",
            f"{_area}.edit": "owner",
            f"{_area}.summary": "owner",
            f"{_area}.confirm_delete": "owner",
            f"{_area}.update": "owner_post",
            f"{_area}.delete": "owner_post",
        }
    )
CLASSIFICATION.update(
    {
        "deals.move": "owner_post",
        "deals.dismiss_checklist": "post",
        "leads.convert": "owner_post",
        "persons.link_past": "owner_post",
        "persons.dismiss_past_links": "owner_post",
    }
)


def _url_map_rules():
    instance = tempfile.mkdtemp(prefix="threadline-authz-")
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": instance,
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "SECRET_KEY": "url-map",
            "SCHEDULER_ENABLED": False,
        }
    )
    rules = {
        rule.endpoint: (rule.rule, sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    shutil.rmtree(instance, ignore_errors=True)
    return rules


RULES = _url_map_rules()


def test_every_endpoint_is_classified():
    unclassified = sorted(set(RULES) - set(CLASSIFICATION))
    assert not unclassified, f"classify these endpoints in CLASSIFICATION: {unclassified}"
    assert not sorted(set(CLASSIFICATION) - set(RULES)), "stale CLASSIFICATION entries"


@pytest.fixture
def world(
    app,
    make_user,
    make_stored_account,
    make_stored_folder,
    make_raw_message,
    make_deal,
    make_person,
    make_organization,
    make_lead,
    make_project,
    make_group_send,
):
    from services import linking
    from services.conversations import cid_token
    from services.search import SearchDocument, index_messages

    a = make_user(name="Alice Owner")
    b = make_user(name="Bob Teammate")
    admin = make_user(name="Ada Admin", is_admin=True)
    account = make_stored_account(a)
    inbox = make_stored_folder(account)
    extra_folder = make_stored_folder(account, f"Clients {TOKEN}", role=None)
    make_stored_folder(make_stored_account(b))  # B has a mailbox of their own

    public_deal = make_deal(a, title="Shared pipeline deal")
    person = make_person(
        a, name=f"{TOKEN} Person", visibility="owner", emails=("carla@customer.test",)
    )
    records = {
        "deal": make_deal(a, title=f"{TOKEN} Deal", visibility="owner"),
        "person": person,
        "organization": make_organization(a, name=f"{TOKEN} Org", visibility="owner"),
        "lead": make_lead(a, title=f"{TOKEN} Lead", visibility="owner"),
        "project": make_project(a, title=f"{TOKEN} Project", visibility="owner"),
    }
    raw = build_message(
        subject=f"Private {TOKEN} terms",
        to=f"Alice <{account.email_address}>",
        text=f"The {TOKEN} body.",
        html=f"<p>{TOKEN}</p><img src='cid:logo'>",
        inline_images=(("logo", PNG_1X1),),
        attachments=(("terms.pdf", "application/pdf", b"%PDF-1.4 terms"),),
    )
    message = make_raw_message(account, raw)
    message.thread.deal_id = public_deal.id  # private thread on a deal everyone can open
    db.session.add(MessageLocation(folder_id=inbox.id, uid=1, message_id=message.id))
    message.thread.in_inbox = True  # as sync does for mail that lands in an inbox folder
    index_messages(
        db.session.connection(),
        [SearchDocument(message.id, message.subject, "carla@customer.test", f"{TOKEN} body")],
    )
    db.session.commit()
    entry = linking.block(a, "spammer@junk.test")
    alias = linking.add_own_address(a, account, "a.alias@team.test")
    run = SyncRun(account_id=account.id, new_count=1)
    db.session.add(run)
    db.session.flush()
    db.session.add(
        SyncRunEntry(
            run_id=run.id,
            kind="added",
            folder="INBOX",
            uid=1,
            message_id=message.id,
            subject=message.subject,
        )
    )
    db.session.commit()

    from mailsync.parse import parse_message
    from services.conversations import load_raw

    part_id = parse_message(load_raw(message)).attachments[0].part_id
    draft = _private_draft(a, account)
    signature = _private_signature(account)
    template = _private_template(a)
    ids = {
        "account_id": account.id,
        "provider": "google",
        "folder_id": extra_folder.id,
        "thread_id": message.thread_id,
        "message_id": message.id,
        "part_id": part_id,
        "token": cid_token("logo"),
        "step": "older",
        "entry_id": entry.id,
        "address_id": alias.id,
        "run_id": run.id,
        "kind": "deal",
        "record_id": records["deal"].id,
        "user_id": b.id,
        "draft_id": draft.id,
        "attachment_id": draft.attachments[0].id,
        # A group email of A's naming the token, one mail waiting (group email routes).
        "group_send_id": make_group_send(
            a,
            account,
            subject=f"Group {TOKEN}",
            mails=[("queued", f"{TOKEN} Person", "carla@customer.test", None)],
        ).id,
        "signature_id": signature.id,
        "template_id": template.id,
        "file_id": template.attachments[0].id,
    }
    for kind, record in records.items():
        ids[f"{kind}_id"] = record.id
    return {"a": a, "b": b, "admin": admin, "ids": ids, "public_deal": public_deal}


def _private_draft(a, account):
    """A draft of A's naming the token, with an attachment (compose routes)."""
    from flask import current_app

    from mailsync.blobstore import app_blob_store
    from models import OutgoingAttachment, OutgoingMail

    draft = OutgoingMail(
        user_id=a.id,
        account_id=account.id,
        to=[["Carla", "carla@customer.test"]],
        subject=f"Draft {TOKEN}",
        body_html=f"<p>{TOKEN}</p>",
    )
    sha = app_blob_store(current_app).put(f"{TOKEN} attachment".encode())
    draft.attachments.append(
        OutgoingAttachment(
            filename=f"{TOKEN}.txt", content_type="text/plain", size=9, blob_sha256=sha
        )
    )
    db.session.add(draft)
    db.session.commit()
    return draft


def _private_signature(account):
    """A signature of A's account naming the token (signature routes)."""
    from models import Signature

    signature = Signature(
        account_id=account.id, name=f"{TOKEN} sig", body_html=f"<p>{TOKEN}</p>", is_default=True
    )
    db.session.add(signature)
    db.session.commit()
    return signature


def _private_template(a):
    """A private mail template of A's naming the token, with a file (template routes)."""
    from flask import current_app

    from mailsync.blobstore import app_blob_store
    from models import MailTemplate, TemplateAttachment

    template = MailTemplate(
        owner_id=a.id, name=f"{TOKEN} template", subject=f"About {TOKEN}", body_html="<p>Hi</p>"
    )
    sha = app_blob_store(current_app).put(f"{TOKEN} template file".encode())
    template.attachments.append(
        TemplateAttachment(
            filename=f"{TOKEN}.txt", content_type="text/plain", size=9, blob_sha256=sha
        )
    )
    db.session.add(template)
    db.session.commit()
    return template


def _url(app, endpoint: str, ids: dict) -> str:
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
    with app.test_request_context():
        return url_for(endpoint, **{arg: ids[arg] for arg in rule.arguments})


def _snapshot() -> dict:
    """Return every row of every table (to prove a request changed nothing)."""
    tables = {}
    with db.engine.connect() as connection:
        for table in db.metadata.sorted_tables:
            tables[table.name] = sorted(map(repr, connection.execute(select(table)).all()))
    return tables


# "post" routes take no ids and return no one else's data; test_security_walk covers them.
ROUTE_ENDPOINTS = sorted(e for e, kind in CLASSIFICATION.items() if e in RULES and kind != "post")


@pytest.mark.parametrize("endpoint", ROUTE_ENDPOINTS)
def test_authorization(app, world, login, endpoint):
    kind = CLASSIFICATION[endpoint]
    url = _url(app, endpoint, world["ids"])
    a, others = login(world["a"]), {"b": login(world["b"]), "admin": login(world["admin"])}

    if kind == "owner":
        response = a.get(url)
        assert response.status_code in (200, 303), (endpoint, url, response.status_code)
        for who, client in others.items():
            response = client.get(url)
            assert response.status_code == 404, (who, endpoint, url, response.status_code)
            assert TOKEN not in response.get_data(as_text=True), (who, endpoint)
    elif kind in ("page", "admin_page"):
        expected_for_a = (404,) if kind == "admin_page" else (200, 302, 303)
        assert a.get(url).status_code in expected_for_a, (endpoint, url)
        for who, client in others.items():
            response = client.get(url)
            expected = 404 if kind == "admin_page" and who != "admin" else None
            if expected:
                assert response.status_code == expected, (who, endpoint)
            else:
                assert response.status_code in (200, 302, 303), (who, endpoint, url)
            assert TOKEN not in response.get_data(as_text=True), (who, endpoint, url)
    elif kind in ("owner_post", "noop_post"):
        form = {
            "thread_id": world["ids"]["thread_id"],
            "action": "delete",
            "shared": "1",
            "kind": "deal",
            "record_id": world["public_deal"].id,
            "address": "carla@customer.test",
            "name": "X",
            "title": "X",
            "stage": "won",
            "person_id": world["ids"]["person_id"],
            "confirm": "1",
        }
        before = _snapshot()
        for who, client in others.items():
            response = client.post(url, data=form)
            if kind == "owner_post":
                assert response.status_code == 404, (who, endpoint, url, response.status_code)
            assert TOKEN not in response.get_data(as_text=True), (who, endpoint)
        after = _snapshot()
        changed = [name for name in before if before[name] != after[name]]
        assert not changed, (endpoint, changed)
    elif kind == "public":
        response = app.test_client().get(url)
        assert response.status_code in (200, 302), (endpoint, url)
        assert TOKEN not in response.get_data(as_text=True)
    else:
        raise AssertionError(f"unknown kind {kind!r}")


# The lists, searches, counts and panels that B and the admin can open, with A's token searched
# for (and, for A, found: the check would be vacuous otherwise).
def test_lists_and_searches_never_show_private_mail(app, world, login):
    a, b, admin = login(world["a"]), login(world["b"]), login(world["admin"])
    deal_id = world["public_deal"].id
    searches = [
        f"/mail/?q={TOKEN}",
        f"/mail/rows?q={TOKEN}",
        "/mail/",
        "/mail/folders",
        f"/deals/?q={TOKEN}",
        f"/persons/?q={TOKEN}",
        f"/settings/templates/?q={TOKEN}",
        f"/mail/compose/templates?q={TOKEN}",
        f"/mail/records/deal/{deal_id}/conversations",
    ]

    def shown(response) -> str:
        """Return the page minus the places that echo the query back."""
        html = response.get_data(as_text=True)
        for echo in (f'value="{TOKEN}"', f"q={TOKEN}", f"\u201c{TOKEN}\u201d", f"Search: {TOKEN}"):
            html = html.replace(echo, "")
        return html

    for url in searches:
        assert TOKEN in shown(a.get(url)), url
        for client in (b, admin):
            response = client.get(url, headers={"HX-Request": "true"})
            assert response.status_code == 200, url
            assert TOKEN not in shown(response), url
            assert TOKEN not in shown(client.get(url)), url
    # The deal page itself (its mail panel loads lazily, checked above) shows nothing either.
    for client in (b, admin):
        assert TOKEN not in shown(client.get(f"/deals/{deal_id}")), "deal page"


def test_other_users_mail_ids_do_not_leak_through_folder_filters(world, login):
    """A folder id of A's as a Mail tab filter is ignored or refused for B, never listed."""
    folder_id = world["ids"]["folder_id"]
    for who in ("b", "admin"):
        client = login(world[who])
        for url in (f"/mail/?folder={folder_id}", f"/mail/rows?folder={folder_id}"):
            response = client.get(url)
            assert response.status_code in (200, 404), url
            assert TOKEN not in response.get_data(as_text=True), (who, url)
