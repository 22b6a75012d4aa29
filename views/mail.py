"""Minimal Mail tab: the owner's folders, newest-first messages, a plain-text message view.

URL table (prefix /mail):
  GET /                       index      folder list + message list (?folder=ID&page=N)
  GET /progress               progress   fragment: initial-sync progress bar, polled
  GET /messages/<id>          message    headers and plain text, escaped
"""

from flask import Blueprint, current_app, render_template, request, url_for
from flask_login import current_user

from services import access, accounts, mailbox
from views.helpers import parse_int

bp = Blueprint("mail", __name__, url_prefix="/mail")


@bp.get("/")
def index():
    folder_id = parse_int(request.args.get("folder"))
    folder = access.folder_for_owner(current_user, folder_id) if folder_id else None
    page = parse_int(request.args.get("page")) or 1
    messages, has_next = mailbox.message_page(current_user, folder=folder, page=page)
    return render_template(
        "mail/page.html",
        tree=mailbox.folder_tree(current_user),
        unread=mailbox.unread_counts(current_user),
        folder=folder,
        messages=messages,
        page=page,
        has_next=has_next,
        progress=accounts.backfill_progress(accounts.list_accounts(current_user)),
        poll_url=url_for("mail.progress"),
    )


@bp.get("/progress")
def progress():
    return render_template(
        "accounts/partials/progress.html",
        progress=accounts.backfill_progress(accounts.list_accounts(current_user)),
        poll_url=url_for("mail.progress"),
    )


@bp.get("/messages/<int:message_id>")
def message(message_id: int):
    found = access.message_for_owner(current_user, message_id)
    text = mailbox.message_text(current_app, found)
    return render_template("mail/message.html", message=found, text=text)
