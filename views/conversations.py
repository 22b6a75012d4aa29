"""Conversations: one thread with its messages, parts, raw source and the owner's actions.

URL table (url_prefix /mail):
  GET  /threads/<id>                      show (?images=<message id> shows remote images once)
  GET  /threads/<id>/newer|older          step (owner: the next conversation of the list)
  GET  /threads/<id>/link-search          link_search (picker results fragment, owner)
  POST /threads/<id>/read                 mark_read (owner; the page posts it when opened)
  POST /threads/<id>/sharing              update_sharing (owner)
  POST /threads/<id>/link                 link (owner)
  POST /threads/<id>/unlink               unlink (owner)
  POST /threads/<id>/persons              create_person (owner)
  POST /threads/<id>/person-emails        add_person_email (owner)
  POST /threads/<id>/past-links           link_past (owner)
  POST /threads/<id>/past-links/dismiss   dismiss_past_links (owner)
  POST /threads/<id>/blocks               block (owner)
  POST /messages/<id>/full                fetch_full (owner: download a header-only message)
  POST /messages/<id>/image-allowance     allow_images (always show images from the sender)
  GET  /messages/<id>/attachments/<part>  attachment
  GET  /messages/<id>/inline/<token>      inline_image
  GET  /messages/<id>/raw                 raw
  GET  /records/<kind>/<id>/conversations record_panel (lazy panel of record pages)
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user

from models import RECORD_MODELS
from services import conversations, mailbox
from services.access import (
    message_for_owner,
    message_for_viewer,
    record_for,
    thread_for_owner,
    thread_for_viewer,
)
from services.errors import ValidationError
from services.inputs import parse_id, search_text
from services.mail_display import display_text, message_date, sender_label, subject_label
from services.mail_render import attachment_headers, raw_source_headers
from services.preferences import get_preference
from views.helpers import content_security_policy, form_value, is_fragment_request

log = logging.getLogger("threadline.mail")
bp = Blueprint("conversations", __name__, url_prefix="/mail")

PAGE = "conversations/page.html"
SIDEBAR = "conversations/partials/sidebar.html"
SIDEBAR_TARGET = "conversation-sidebar"
PART_ID = re.compile(r"^[0-9]{1,4}(\.[0-9]{1,4}){0,30}(\.(uu|tnef)[0-9]{1,3})?$")
# The app CSP with img-src relaxed, sent only on a response where
# the user chose to show remote images; the srcdoc frame inherits it (SECURITY.md R6).
IMAGES_ALLOWED_CSP = content_security_policy(img_src="https: http:")


@bp.app_template_global()
def email_link_href(address: str) -> str:
    """Return the href for an email address per the user's "email links" preference."""
    if "email_links" not in g:
        g.email_links = get_preference(current_user, "email_links")
    if g.email_links == "mailto":
        return "mailto:" + quote(address or "", safe="@")
    return url_for("compose.new", to=address)


@bp.app_template_global()
def my_preference(key: str):
    """Return one of the signed-in user's personal settings, for templates."""
    return get_preference(current_user, key)


@bp.app_template_global()
def delete_confirmation(what: str) -> str:
    """Return the delete question for `what`, saying where the mail goes (personal setting)."""
    if get_preference(current_user, "delete_in_mailbox"):
        return f"Delete {what}? It is removed from Threadline and moved to Trash in your mailbox."
    return f"Delete {what} from Threadline? Your mailbox keeps the mail."


@bp.app_template_filter("filesize")
def filesize(size: int) -> str:
    """Format a byte count for people: 812 B, 14 KB, 2.3 MB."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size // 1024} KB"
    return f"{size / (1024 * 1024):.1f} MB"


# Header fallbacks and bidi stripping for templates; the rules live in services.mail_display.
bp.add_app_template_filter(display_text, "display_text")
bp.add_app_template_filter(subject_label, "subject_label")
bp.add_app_template_global(sender_label, "sender_label")
bp.add_app_template_global(message_date, "message_date")


def _page(thread, is_owner: bool, *, status: int = 200, show_images_for=None, **extra):
    """Render the full conversation page; relax img-src only when images are shown."""
    conversation = conversations.load_conversation(
        current_user, thread, is_owner=is_owner, show_images_for=show_images_for
    )
    sidebar = conversations.load_sidebar(current_user, thread, is_owner=is_owner, **extra)
    # The Mail tab list the conversation was opened from (?folder=), where actions return.
    saving = mailbox.writeback_status(current_user, thread_id=thread.id) if is_owner else None
    response = make_response(
        render_template(
            PAGE,
            conversation=conversation,
            sidebar=sidebar,
            back=_back_query(),
            saving=saving,
            saving_url=url_for("mail.saving", thread=thread.id),
        ),
        status,
    )
    if any(item.images_allowed for item in conversation.messages):
        response.headers["Content-Security-Policy"] = IMAGES_ALLOWED_CSP
    return response


def _sidebar(thread, *, status: int = 200, **extra):
    """Answer an owner action: the sidebar for htmx, the whole page otherwise."""
    if not is_fragment_request(SIDEBAR_TARGET):
        return _page(thread, True, status=status, **extra)
    sidebar = conversations.load_sidebar(current_user, thread, is_owner=True, **extra)
    # The header's shared/private badge is outside the sidebar: update it out of band.
    return make_response(render_template(SIDEBAR, sidebar=sidebar, oob=True), status)


@bp.get("/threads/<id:thread_id>")
def show(thread_id: int):
    thread, is_owner = thread_for_viewer(current_user, thread_id)
    link_query = search_text(request.args.get("link_q"))
    searching = is_owner and bool(link_query)
    return _page(
        thread,
        is_owner,
        show_images_for=parse_id(request.args.get("images")),
        link_query=link_query if is_owner else "",
        link_results=conversations.search_link_targets(current_user, link_query)
        if searching
        else [],
    )


@bp.get("/threads/<id:thread_id>/<any(newer, older):step>")
def step(thread_id: int, step: str):
    """Go to the next conversation up or down the list this one was opened from.

    Found on click rather than when the page renders: with a common search word it costs a
    few index walks that most page views would not need.
    """
    thread = thread_for_owner(current_user, thread_id)
    back = _back_query()
    target = mailbox.neighbour(current_user, back, thread, step)
    if target is None:
        flash(f"There is no {step} conversation in this list.", "ok")
        target = thread_id
    return redirect(url_for(".show", thread_id=target, **back.params()), 303)


def _back_query() -> mailbox.MailboxQuery:
    """The Mail tab list a conversation was opened from (folder, search, filters)."""
    return mailbox.parse_query(request.args)


@bp.get("/threads/<id:thread_id>/link-search")
def link_search(thread_id: int):
    thread = thread_for_owner(current_user, thread_id)
    query = search_text(request.args.get("link_q"))
    results = conversations.search_link_targets(current_user, query)
    return render_template(
        "conversations/partials/link_results.html", thread=thread, results=results, query=query
    )


@bp.post("/threads/<id:thread_id>/read")
def mark_read(thread_id: int):
    """Mark the conversation read: its page posts this when the owner opens it.

    A POST after the page has loaded, not a side effect of GET: a link or prefetch cannot
    mark mail read. The write-back to the mail server is queued for the worker.
    """
    thread = thread_for_owner(current_user, thread_id)
    mailbox.mark_read(current_user, [thread], read=True)
    return "", 204, {"HX-Trigger": "mailbox-saving"}


@bp.post("/threads/<id:thread_id>/sharing")
def update_sharing(thread_id: int):
    thread = thread_for_owner(current_user, thread_id)
    conversations.set_sharing(thread, form_value("shared") == "1")
    return _sidebar(thread)


@bp.post("/threads/<id:thread_id>/link")
def link(thread_id: int):
    thread = thread_for_owner(current_user, thread_id)
    try:
        conversations.link_record(
            current_user, thread, form_value("kind"), parse_id(form_value("record_id"))
        )
    except ValidationError as exc:
        return _sidebar(thread, status=422, errors=exc.errors)
    return _sidebar(thread)


@bp.post("/threads/<id:thread_id>/unlink")
def unlink(thread_id: int):
    thread = thread_for_owner(current_user, thread_id)
    conversations.unlink_record(thread)
    return _sidebar(thread)


@bp.post("/threads/<id:thread_id>/persons")
def create_person(thread_id: int):
    thread = thread_for_owner(current_user, thread_id)
    address = form_value("address")
    try:
        person = conversations.create_person_from_participant(
            current_user, thread, name=form_value("name"), address=address
        )
    except ValidationError as exc:
        return _sidebar(thread, status=422, errors=exc.errors, form_address=address.lower())
    return _sidebar(thread, notice=f"{address.strip().lower()} now belongs to {person.name}.")


@bp.post("/threads/<id:thread_id>/person-emails")
def add_person_email(thread_id: int):
    thread = thread_for_owner(current_user, thread_id)
    address = form_value("address")
    try:
        person = conversations.add_address_to_person(
            current_user, thread, person_id=parse_id(form_value("person_id")), address=address
        )
    except ValidationError as exc:
        return _sidebar(thread, status=422, errors=exc.errors, form_address=address.lower())
    return _sidebar(thread, notice=f"{address.strip().lower()} now belongs to {person.name}.")


@bp.post("/threads/<id:thread_id>/past-links")
def link_past(thread_id: int):
    thread = thread_for_owner(current_user, thread_id)
    try:
        count = conversations.link_past(
            current_user,
            person_id=parse_id(form_value("person_id")),
            address=form_value("address"),
        )
    except ValidationError as exc:
        return _sidebar(thread, status=422, errors=exc.errors)
    return _sidebar(thread, notice=f"Linked {count} past message{'s' if count != 1 else ''}.")


@bp.post("/threads/<id:thread_id>/past-links/dismiss")
def dismiss_past_links(thread_id: int):
    thread = thread_for_owner(current_user, thread_id)
    conversations.dismiss_offer(
        current_user, person_id=parse_id(form_value("person_id")), address=form_value("address")
    )
    return _sidebar(thread)


@bp.post("/threads/<id:thread_id>/blocks")
def block(thread_id: int):
    thread = thread_for_owner(current_user, thread_id)
    try:
        entry = conversations.block_participant(current_user, thread, form_value("address"))
    except ValidationError as exc:
        return _sidebar(thread, status=422, errors=exc.errors)
    return _sidebar(thread, notice=f"Blocked {entry}. Mail only from blocked senders is hidden.")


@bp.post("/messages/<id:message_id>/image-allowance")
def allow_images(message_id: int):
    message, is_owner = message_for_viewer(current_user, message_id)
    conversations.allow_images_from(current_user, message.from_address)
    target = url_for(".show", thread_id=message.thread_id, _anchor=f"message-{message.id}")
    return redirect(target, 303)


@bp.post("/messages/<id:message_id>/full")
def fetch_full(message_id: int):
    message = message_for_owner(current_user, message_id)
    conversations.request_full_message(message)
    flash("Downloading the full message from the mail server; it appears here shortly.", "ok")
    return redirect(
        url_for(".show", thread_id=message.thread_id, _anchor=f"message-{message.id}"), 303
    )


@bp.get("/messages/<id:message_id>/attachments/<part_id>")
def attachment(message_id: int, part_id: str):
    message, _is_owner = message_for_viewer(current_user, message_id)
    part = conversations.attachment_part(message, part_id) if PART_ID.match(part_id) else None
    if part is None:
        abort(404)
    data, content_type, filename = part
    return make_response(data, 200, attachment_headers(filename, content_type, inline_ok=False))


@bp.get("/messages/<id:message_id>/inline/<token>")
def inline_image(message_id: int, token: str):
    message, _is_owner = message_for_viewer(current_user, message_id)
    image = conversations.inline_image(message, token[:1000])
    if image is None:
        abort(404)
    data, content_type = image
    return make_response(data, 200, attachment_headers("image", content_type, inline_ok=True))


@bp.get("/messages/<id:message_id>/raw")
def raw(message_id: int):
    message, is_owner = message_for_viewer(current_user, message_id)
    data = conversations.original_for(message, is_owner=is_owner)
    if data is None:
        abort(404)
    return make_response(data, 200, raw_source_headers())


@bp.get("/records/<kind>/<id:record_id>/conversations")
def record_panel(kind: str, record_id: int):
    if kind not in RECORD_MODELS:
        abort(404)
    record = record_for(current_user, RECORD_MODELS[kind], record_id)
    after = request.args.get("after", "")
    page = conversations.record_conversations(current_user, kind, record.id, after=after)
    return render_template(
        "conversations/partials/record_panel.html",
        page=page,
        kind=kind,
        record_id=record.id,
        more_only=bool(after),
    )
