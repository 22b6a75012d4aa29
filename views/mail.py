"""Mail tab: folders, the conversation list with search and filters, and list actions.

GET  /mail/                  index    page, or the list partial when htmx targets the list
GET  /mail/rows              rows     next page of rows (Load more / infinite scroll)
GET  /mail/folders           folders  sidebar with unread counts (refreshed on mail-changed)
GET  /mail/progress          progress sync progress bar for the header, polled while a sync runs
GET  /mail/saving            saving   "Saving to mailbox…" / a failed write-back, polled (?thread=)
POST /mail/threads/actions   act      read, unread, archive, delete, move (single and bulk)
"""

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user
from htmx_flask import make_response

from services import accounts, mailbox
from services.errors import ValidationError
from services.inputs import parse_id
from views.helpers import is_fragment_request, record_url, render_page_or_fragment

bp = Blueprint("mail", __name__, url_prefix="/mail")
LIST_TARGETS = ("mail-list", "mail-results")


@bp.context_processor
def mail_helpers():
    return {"record_url": record_url}


@bp.get("/")
def index():
    query = mailbox.parse_query(request.args)
    return _render_list(query)


@bp.get("/rows")
def rows():
    query = mailbox.parse_query(request.args)
    listing = mailbox.list_threads(current_user, query)
    return render_template("mail/partials/rows.html", query=query, listing=listing)


@bp.get("/folders")
def folders():
    query = mailbox.parse_query(request.args)
    folders = mailbox.list_folders(current_user)
    return render_template("mail/partials/folders.html", query=query, folders=folders)


@bp.get("/progress")
def progress():
    progress = accounts.backfill_progress(accounts.list_accounts(current_user))
    new_mail = request.args.get("done") != str(progress.done)
    return make_response(
        render_template(
            "accounts/partials/progress.html",
            progress=progress,
            poll_url=url_for("mail.progress"),
            compact=True,
        ),
        trigger="mail-changed" if new_mail else None,  # new mail: refresh unread counts
    )


@bp.get("/saving")
def saving():
    thread_id = parse_id(request.args.get("thread"))
    status = mailbox.writeback_status(current_user, thread_id=thread_id)
    response = make_response(
        render_template(
            "mail/partials/saving.html", saving=status, saving_url=saving_url(thread_id)
        )
    )
    if not status.pending:
        response.headers["HX-Trigger"] = "mail-changed"  # the mailbox has the change now
    return response


def saving_url(thread_id: int | None = None) -> str:
    """Return the URL of the saving-state fragment (for one conversation, or the list)."""
    return url_for("mail.saving", thread=thread_id)


@bp.post("/threads/actions")
def act():
    query = mailbox.parse_query(request.form)
    thread_ids = [i for i in map(parse_id, request.form.getlist("thread_id")) if i is not None]
    try:
        outcome = mailbox.apply_action(
            current_user,
            request.form.get("action", ""),
            thread_ids,
            destination_folder_id=parse_id(request.form.get("destination")),
        )
    except ValidationError as exc:
        outcome = mailbox.ActionOutcome("", list(exc.errors.values()))
    if outcome.notice:
        flash(outcome.notice, "ok")
    for warning in outcome.warnings:
        flash(warning, "warn")
    if not is_fragment_request(*LIST_TARGETS):
        return redirect(url_for("mail.index", **query.params()), 303)
    return make_response(_render_list(query), trigger="mail-changed")


def _render_list(query: mailbox.MailboxQuery):
    # A full page shows the folders at once; their unread counts arrive from mail.folders
    # (a lazy htmx fragment), so counting never delays the list or a search keystroke.
    full_page = not is_fragment_request(*LIST_TARGETS)
    return render_page_or_fragment(
        "mail/page.html",
        "mail/partials/list.html",
        targets=LIST_TARGETS,
        query=query,
        title=mailbox.folder_title(current_user, query.folder),
        listing=mailbox.list_threads(current_user, query),
        destinations=mailbox.move_destinations(current_user),
        folders=mailbox.list_folders(current_user, counts=False) if full_page else [],
        counts_pending=True,
        saving=mailbox.writeback_status(current_user),
        has_mailbox=mailbox.has_mailbox(current_user),
        saving_url=saving_url(),
        notices_here=not full_page,  # a full page shows them once, in base.html's #flash
    )
