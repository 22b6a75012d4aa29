"""A hostile teammate's walk: nothing B receives ever holds what A keeps private.

A has a mailbox with private, shared and blocked mail, owner-only records linked from public
ones, a draft, a signature, templates, a group email, an alias and a sync log, and every
name, subject, body, address and file name A keeps to themselves carries SECRET. B, a
teammate (and an admin, who gets nothing more), then opens every GET route of the app with each id of A's objects in it (and
query strings that name them), follows every link, htmx URL, image and GET form of each
page B gets (with its HX-Target for a fragment), and no answer, headers included, may hold
SECRET. What A shares carries OPEN and must be found on the walk, so the test cannot pass
by showing B nothing; A meets SECRET on the same URLs, so the walk does reach it.

Route-level checks (404 for ids of A's private data) are test_authorization_matrix's; this
one checks the contents of everything B is allowed to open. A new route or link is walked
without changes here; a new kind of id needs its values in `_ids`.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from datetime import UTC, datetime
from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin, urlsplit

import pytest
from sqlalchemy import select

from extensions import db
from mailsync import store
from mailsync.blobstore import app_blob_store
from mailsync.parse import parse_message
from models import (
    DEAL_STAGES,
    MailTemplate,
    Message,
    OutgoingAttachment,
    OutgoingMail,
    Signature,
    SyncRun,
    SyncRunEntry,
    TemplateAttachment,
)
from services import linking
from services.conversations import cid_token, load_raw
from tests.mail_fixtures import PNG_1X1, build_message

SECRET = "Qorvandel"  # in everything A keeps from B (addresses are stored lowercased)
OPEN = "Pelltower"  # in what A shares with B
MAX_REQUESTS = 3000  # far above a walk's size: hitting it means links multiply unexpectedly
# Searches use a prefix of SECRET: the page repeats the words searched for, and the prefix
# still finds every private name and subject (substring and word-prefix search).
SEARCH = SECRET[:-2]
RECORD_KINDS = ("person", "organization", "deal", "lead", "project")
PLACEHOLDER = re.compile(r"<(?:[^>]*:)?(\w+)>")  # <id:deal_id>, <any(newer, older):step>


def _has_secret(data: bytes) -> bool:
    return SECRET.lower().encode() in data.lower()


@pytest.fixture
def world(
    app,
    make_user,
    make_stored_account,
    make_stored_folder,
    make_raw_message,
    make_person,
    make_organization,
    make_deal,
    make_lead,
    make_project,
    make_group_send,
):
    secret = SECRET.lower()
    blobs = app_blob_store(app)
    a = make_user(name="Alice Owner", email="alice@team.test")
    b = make_user(name="Bob Teammate", email="bob@team.test")
    admin = make_user(name="Ada Admin", email="ada@team.test", is_admin=True)
    account = make_stored_account(a)
    account.last_error = f"{SECRET} error"
    inbox = make_stored_folder(account)
    clients = make_stored_folder(account, f"{SECRET} Clients", role=None)
    b_account = make_stored_account(b)
    b_inbox = make_stored_folder(b_account)

    # Owner-only records of A, linked from public ones.
    hidden_person = make_person(
        a, name=f"{SECRET} Person", visibility="owner", emails=(f"{secret}@quiet.test",)
    )
    hidden_org = make_organization(
        a, name=f"{SECRET} Org", visibility="owner", domain=f"{secret}.test"
    )
    hidden_deal = make_deal(a, title=f"{SECRET} Deal", visibility="owner")
    hidden_lead = make_lead(a, title=f"{SECRET} Lead", visibility="owner")
    hidden_project = make_project(a, title=f"{SECRET} Project", visibility="owner")
    links = {"person_id": hidden_person.id, "organization_id": hidden_org.id}
    open_deal = make_deal(a, title=f"{OPEN} Deal", **links)
    open_lead = make_lead(a, title=f"{OPEN} Lead", deal_id=hidden_deal.id, **links)
    open_project = make_project(a, title=f"{OPEN} Project", **links)
    carla = make_person(
        a, name=f"{OPEN} Carla", emails=("carla@customer.test",), organization_id=hidden_org.id
    )
    vendor = make_person(a, name="Noisy Vendor", emails=("spam@junk.test",))

    def mail(subject, *, sender, text, shared, thread=None, **fields):
        raw = build_message(
            subject=subject, sender=sender, to=account.email_address, text=text, **fields
        )
        return make_raw_message(account, raw, shared=shared, thread=thread)

    # A private conversation on a public deal.
    private = mail(
        f"{SECRET} private terms",
        sender="Carla <carla@customer.test>",
        text=f"{SECRET} private body",
        attachments=((f"{SECRET}.pdf", "application/pdf", b"%PDF private"),),
        shared=False,
    )
    private.thread.deal_id = open_deal.id
    # A shared conversation on the public deal: B reads the first message; the second is
    # from an address A blocks.
    shared = mail(
        f"{OPEN} terms",
        sender="Carla <carla@customer.test>",
        text=f"{OPEN} body",
        attachments=(("terms.pdf", "application/pdf", b"%PDF open"),),
        shared=True,
    )
    shared.thread.deal_id = open_deal.id
    blocked = mail(
        f"Re: {SECRET} offer",
        sender="Spam <spam@junk.test>",
        text=f"{SECRET} blocked body",
        html=f"<p>{SECRET}</p><img src='cid:logo'>",
        inline_images=(("logo", PNG_1X1),),
        attachments=((f"{SECRET}-offer.pdf", "application/pdf", b"%PDF blocked"),),
        shared=True,
        thread=shared.thread,
    )
    # A's reply in it, a Sent copy from another mail program that kept its Bcc line.
    head, body = build_message(
        subject=f"Re: {OPEN} terms",
        sender=f"Alice <{account.email_address}>",
        to="Carla <carla@customer.test>",
        text=f"{OPEN} reply",
    ).split(b"\r\n\r\n", 1)
    bcc = f"Bcc: {SECRET} Boss <{secret}.boss@team.test>".encode()
    sent_copy = make_raw_message(
        account, head + b"\r\n" + bcc + b"\r\n\r\n" + body, thread=shared.thread
    )
    # Shared, but linked only to A's owner-only deal and person.
    on_hidden_deal = mail(
        f"{SECRET} quiet deal",
        sender=f"Quiet <{secret}@quiet.test>",
        text=f"{SECRET} deal body",
        shared=True,
    )
    on_hidden_deal.thread.deal_id = hidden_deal.id
    # Shared, with its only public person on the blocked message.
    through_blocked = mail("Hello", sender="Spam <spam@junk.test>", text="Buy now", shared=True)
    mail(
        "Re: Hello",
        sender=f"Quiet <{secret}@quiet.test>",
        text=f"{SECRET} reply body",
        shared=True,
        thread=through_blocked.thread,
    )
    # B's own conversation with Carla, so B's Mail tab has rows and links.
    make_raw_message(
        b_account,
        build_message(subject="Bob and Carla", to=b_account.email_address, text="Hi Bob"),
    )
    db.session.commit()
    linking.block(a, "spam@junk.test")
    alias = linking.add_own_address(a, account, f"{secret}.alias@team.test")
    # Shared on the public deal, then deleted in A's mailbox after the blocks were last
    # applied (the sync marks its message deleted; the thread row waits for garbage collection).
    withdrawn = mail(
        f"{SECRET} withdrawn", sender="Carla <carla@customer.test>", text="Gone", shared=True
    )
    withdrawn.thread.deal_id = open_deal.id
    withdrawn.deleted_at = withdrawn.orphaned_at = datetime.now(UTC)
    db.session.flush()
    store.refresh_threads({withdrawn.thread_id})

    run = SyncRun(account_id=account.id, new_count=1)
    db.session.add(run)
    db.session.flush()
    db.session.add(
        SyncRunEntry(run_id=run.id, kind="added", folder="INBOX", uid=1, subject=private.subject)
    )
    signature = Signature(account_id=account.id, name=f"{SECRET} sig", body_html=f"{SECRET}")
    db.session.add(signature)
    templates = []
    for name, shared_flag in ((f"{SECRET} template", False), (f"{OPEN} template", True)):
        template = MailTemplate(
            owner_id=a.id, name=name, subject=name, body_html=f"<p>{name}</p>", shared=shared_flag
        )
        template.attachments.append(
            TemplateAttachment(
                filename=f"{name}.txt",
                content_type="text/plain",
                size=len(name),
                blob_sha256=blobs.put(f"{name} file".encode()),
            )
        )
        db.session.add(template)
        templates.append(template)
    db.session.commit()
    draft = OutgoingMail(
        user_id=a.id,
        account_id=account.id,
        to=[[f"{SECRET} Person", f"{secret}@quiet.test"]],
        subject=f"{SECRET} draft",
        body_html=f"<p>{SECRET}</p>",
    )
    draft.attachments.append(
        OutgoingAttachment(
            filename=f"{SECRET}.txt",
            content_type="text/plain",
            size=len(SECRET),
            blob_sha256=blobs.put(SECRET.encode()),
        )
    )
    db.session.add(draft)
    group = make_group_send(
        a,
        account,
        subject=f"{SECRET} group",
        mails=[("queued", f"{SECRET} Person", f"{secret}@quiet.test", None)],
    )
    db.session.commit()

    messages = list(db.session.scalars(select(Message).where(Message.account_id == account.id)))
    records = {
        "person": [hidden_person, carla, vendor],
        "organization": [hidden_org],
        "deal": [hidden_deal, open_deal],
        "lead": [hidden_lead, open_lead],
        "project": [hidden_project, open_project],
    }
    return {
        "a": a,
        "b": b,
        "admin": admin,
        "b_inbox": b_inbox,
        "messages": messages,
        "records": records,
        "withdrawn": withdrawn,
        "shared": shared,
        "blocked": blocked,
        "sent_copy": sent_copy,
        "private": private,
        "through_blocked": through_blocked,
        "ids": {
            # B's own account and folder too: B's account with A's run, folder or signature.
            "account_id": [account.id, b_account.id],
            "folder_id": [inbox.id, clients.id, b_inbox.id],
            "run_id": [run.id],
            "signature_id": [signature.id],
            "thread_id": [
                m.thread_id for m in (private, shared, on_hidden_deal, through_blocked, withdrawn)
            ],
            "step": ["newer", "older"],
            "message_id": [m.id for m in messages],
            "part_id": sorted(
                {p.part_id for m in messages for p in parse_message(load_raw(m)).attachments}
            ),
            "token": [cid_token("logo")],
            "kind": list(RECORD_KINDS),
            "record_id": sorted({r.id for kind in records.values() for r in kind}),
            "draft_id": [draft.id],
            "attachment_id": [a.id for a in draft.attachments],
            "group_send_id": [group.id],
            "template_id": [t.id for t in templates],
            "file_id": [f.id for t in templates for f in t.attachments],
            "address_id": [alias.id],
            **{f"{kind}_id": [r.id for r in records[kind]] for kind in RECORD_KINDS},
        },
    }


def _rule_urls(app, ids: dict) -> list[str]:
    """Every GET route, once per combination of A's ids for its arguments."""
    urls = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()) or rule.endpoint == "static":
            continue
        names = PLACEHOLDER.findall(rule.rule)
        assert all(name in ids for name in names), f"{rule.rule}: add its ids to the world"
        for values in itertools.product(*(ids[name] for name in names)):
            chosen = iter(values)
            urls.append(PLACEHOLDER.sub(lambda _m, chosen=chosen: str(next(chosen)), rule.rule))
    return urls


def _query_urls(world) -> list[str]:
    """URLs whose query strings name A's objects or search for A's words."""
    ids = world["ids"]
    urls = []
    for message_id in ids["message_id"]:
        for kind in ("reply", "reply_all", "forward"):
            urls.append("/mail/compose?" + urlencode({"reply": message_id, "kind": kind}))
    for kind in RECORD_KINDS:
        for record in world["records"][kind]:
            urls.append("/mail/compose?" + urlencode({"record": kind, "record_id": record.id}))
    for thread_id in ids["thread_id"]:
        urls.append(f"/mail/saving?thread={thread_id}")
        urls.append(f"/mail/threads/{thread_id}?" + urlencode({"link_q": SEARCH}))
    for person_id in ids["person_id"]:
        urls.append(f"/deals/new?person_id={person_id}")
        urls.append(f"/group-email/new?source=persons&person_id={person_id}")
    for organization_id in ids["organization_id"]:
        urls.append(f"/group-email/new?source=organization&organization_id={organization_id}")
    urls += [f"/group-email/new?source=stage&stage={stage}" for stage in DEAL_STAGES]
    for word in (SEARCH, "quiet", "customer", "junk", OPEN):
        query = urlencode({"q": word})
        urls += [
            f"/mail/compose/recipients?{query}",
            f"/mail/compose/templates?{query}",
            f"/mail/?{query}",
            f"/settings/templates/?{query}",
            f"/group-email/new?source=persons&{query}",
            *(f"/{kind}s/?{query}" for kind in RECORD_KINDS),
        ]
    return urls


class _Links(HTMLParser):
    """Collects (url, htmx target id or None) of links, htmx GETs, images and GET forms."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        target = values.get("hx-target") or ""
        # htmx names the target element's id in HX-Target ("this": the element itself).
        target = values.get("id") if target == "this" else target.removeprefix("#")
        target = target if target and re.fullmatch(r"[\w-]+", target) else None
        for name in ("hx-get", "data-hx-get"):
            if values.get(name):
                self.found.append((values[name], target))
        for name in ("href", "src"):
            if values.get(name):
                self.found.append((values[name], None))
        if tag == "form" and (values.get("method") or "get").lower() == "get":
            self.found.append((values.get("action") or "", None))

    handle_startendtag = handle_starttag


def _local(base: str, link: str) -> str | None:
    """The path and query of a link to this app, or None for anything else."""
    if link.startswith(("mailto:", "javascript:", "data:", "cid:", "#")):
        return None
    parts = urlsplit(urljoin("http://localhost" + base, link))
    if parts.netloc != "localhost" or parts.path.startswith("/static/"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def walk(client, seeds: list[str]) -> dict[tuple[str, str | None], tuple[int, bytes]]:
    """Fetch the seeds and every local link, htmx URL, image and GET form they lead to.

    Returns {(url, htmx target): (status, headers and body)}.
    """
    seen: dict[tuple[str, str | None], tuple[int, bytes]] = {}
    queue = deque((url, None) for url in seeds)
    while queue:
        url, target = queue.popleft()
        if (url, target) in seen:
            continue
        assert len(seen) < MAX_REQUESTS, "the walk grew past MAX_REQUESTS"
        headers = {"HX-Request": "true", "HX-Target": target} if target else {}
        response = client.get(url, headers=headers)
        data = str(response.headers).encode() + b"\n" + response.get_data()
        seen[(url, target)] = (response.status_code, data)
        if response.location:
            queue.append((_local(url, response.location) or url, None))
        if response.mimetype == "text/html":
            parser = _Links()
            parser.feed(response.get_data(as_text=True))
            for link, link_target in parser.found:
                local = _local(url, link)
                if local is not None:
                    queue.append((local, link_target))
    return seen


@pytest.mark.parametrize("walker", ["b", "admin"])
def test_nothing_a_teammate_can_reach_holds_what_a_keeps_private(app, world, login, walker):
    """B, and an admin (who gets nothing more of a teammate's mail, R30), walk the app."""
    seeds = _rule_urls(app, world["ids"]) + _query_urls(world)
    answers = walk(login(world[walker]), seeds)

    leaks = sorted(
        f"{status} {url} [{target}]"
        for (url, target), (status, data) in answers.items()
        if _has_secret(data)
    )
    assert not leaks, "B received A's private data:\n" + "\n".join(leaks)

    # Not vacuous: B reached what A shares, and followed links beyond the seeds.
    everything = b"\n".join(data for _status, data in answers.values())
    for shown in (
        f"{OPEN} terms",
        f"{OPEN} body",
        f"{OPEN} reply",
        f"{OPEN} Deal",
        f"{OPEN} template",
        f"{OPEN} template file",  # the shared template's attachment
        "%PDF open",  # the visible message's attachment
    ):
        assert shown.encode() in everything, shown
    shared = world["shared"]
    assert answers[(f"/mail/threads/{shared.thread_id}", None)][0] == 200
    assert any(url not in seeds for url, _target in answers)

    # ...and the same seeds do reach A's private data: A meets SECRET on them.
    as_a = login(world["a"])
    for url in (
        f"/deals/{world['records']['deal'][1].id}",
        f"/mail/threads/{world['private'].thread_id}",
        f"/mail/threads/{world['through_blocked'].thread_id}",
        f"/mail/messages/{world['blocked'].id}/raw",
        f"/mail/messages/{world['sent_copy'].id}/raw",
        f"/mail/threads/{world['withdrawn'].thread_id}",
        f"/mail/compose?reply={world['blocked'].id}&kind=forward",
        f"/persons/?q={SEARCH}",
        f"/deals/?q={SEARCH}",
        f"/settings/templates/?q={SEARCH}",
    ):
        assert url in seeds, url
        assert _has_secret(as_a.get(url).get_data()), url
