"""Blocked addresses settings: list, add (address or @domain), remove.

URL table (url_prefix /settings/blocked):
  GET  /                    index
  POST /                    create
  POST /<id>/delete         delete
"""

from flask import Blueprint, abort, redirect, render_template, url_for
from flask_login import current_user

from services import linking
from services.errors import ValidationError
from views.helpers import form_value, is_fragment_request, render_invalid

bp = Blueprint("blocking", __name__, url_prefix="/settings/blocked")

PAGE = "blocking/page.html"
PANEL = "blocking/partials/panel.html"
PANEL_TARGET = "blocked-panel"


def _render(*, status: int = 200, errors=None, entry: str = "", notice: str | None = None):
    """Render the panel for htmx, the page otherwise."""
    context = {
        "entries": linking.blocked_entries(current_user),
        "errors": errors or {},
        "entry": entry,
        "notice": notice,
    }
    template = PANEL if is_fragment_request(PANEL_TARGET) else PAGE
    if status != 200:
        return render_invalid(template, status, **context)
    return render_template(template, **context)


@bp.get("/")
def index():
    return _render()


@bp.post("/")
def create():
    entry = form_value("entry")
    try:
        row = linking.block(current_user, entry)
    except ValidationError as exc:
        return _render(status=422, errors=exc.errors, entry=entry)
    return _render(notice=f"Blocked {row.entry}.")


@bp.post("/<id:entry_id>/delete")
def delete(entry_id: int):
    if not linking.unblock(current_user, entry_id):
        abort(404)  # not one of this user's entries: nothing to say about it
    if is_fragment_request(PANEL_TARGET):
        return _render(notice="Unblocked. Hidden mail from that sender is back.")
    return redirect(url_for(".index"), 303)
