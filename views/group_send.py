"""Group email: pick recipients, a template and an account; watch the mails go out.

URL table (url_prefix /group-email):
  GET  /                     index (the user's group emails)
  GET  /new                  new (the picker; ?source=persons&person_id=..|&q=, ?source=
                             organization&organization_id=, ?source=stage&stage=)
  POST /                     create (queue the mails; 303 to show, 422 with errors)
  GET  /<id>                 show (progress and every recipient's mail)
  GET  /<id>/progress        progress (the fragment show polls while mail is waiting)
  POST /<id>/cancel          cancel (take back what has not been sent)

Every route with an id loads the group through services.access.group_send_for_owner (404 for
anyone else, admins included).
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from services import group_send
from services.access import group_send_for_owner
from services.errors import ValidationError
from services.inputs import parse_id
from views.helpers import render_invalid

bp = Blueprint("group_send", __name__, url_prefix="/group-email")


def _picker(source, *, form=None, errors=None, status=200):
    templates, accounts = group_send.choices(current_user)
    context = dict(
        source=source,
        recipients=group_send.recipients_for(current_user, source),
        templates=templates,
        accounts=accounts,
        max_recipients=group_send.max_recipients(),
        form=form,
        errors=errors or {},
    )
    if status != 200:
        return render_invalid("group_send/new.html", status, **context)
    return render_template("group_send/new.html", **context)


@bp.get("/")
def index():
    return render_template("group_send/index.html", groups=group_send.group_sends(current_user))


@bp.errorhandler(group_send.UnknownSource)
def unknown_source(exc: group_send.UnknownSource):
    flash(str(exc), "error")
    return redirect(url_for("group_send.index"), code=303)


@bp.get("/new")
def new():
    return _picker(group_send.parse_source(request.args))


@bp.post("/")
def create():
    source = group_send.parse_source(request.form)
    try:
        group = group_send.start(
            current_user,
            source,
            chosen=request.form.getlist("recipient"),
            template_id=parse_id(request.form.get("template_id")),
            account_id=parse_id(request.form.get("account_id")),
        )
    except ValidationError as exc:
        return _picker(source, form=request.form, errors=exc.errors, status=422)
    return redirect(url_for("group_send.show", group_send_id=group.id), code=303)


def _progress_context(group_send_id: int) -> dict:
    group = group_send_for_owner(current_user, group_send_id)
    current = group_send.progress(group)
    return {"group": group, "progress": current, "state": group_send.state_of(group, current)}


@bp.get("/<id:group_send_id>")
def show(group_send_id: int):
    return render_template("group_send/page.html", **_progress_context(group_send_id))


@bp.get("/<id:group_send_id>/progress")
def progress(group_send_id: int):
    return render_template("group_send/partials/progress.html", **_progress_context(group_send_id))


@bp.post("/<id:group_send_id>/cancel")
def cancel(group_send_id: int):
    group = group_send_for_owner(current_user, group_send_id)
    taken = group_send.cancel(current_user, group)
    flash(f"Cancelled: {taken} mail{'s' if taken != 1 else ''} will not be sent.")
    return redirect(url_for("group_send.show", group_send_id=group.id), code=303)
