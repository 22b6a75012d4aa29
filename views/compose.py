"""Compose: the editor page, draft autosave, attachments, send with undo, Drafts and Outbox.

URL table (url_prefix /mail):
  GET  /compose                                   new (?to=, ?reply=<message id>&kind=, ?record=&record_id=)
  GET  /compose/<id>                              edit (a draft of the user's)
  GET  /compose/recipients                        recipients (JSON suggestions, ?q=)
  POST /drafts                                    create (the first autosave of a new mail; JSON)
  GET  /drafts                                    drafts_index (the Drafts list)
  POST /drafts/<id>                               save (autosave; JSON)
  POST /drafts/<id>/send                          send (save, then queue; JSON, 422 with errors)
  GET  /drafts/<id>/preview                       preview (fragment: smart fields filled)
  POST /drafts/<id>/undo                          undo (Undo: back to a draft; JSON)
  POST /drafts/<id>/discard                       discard
  POST /drafts/<id>/attachments                   upload (one file; JSON)
  GET  /drafts/<id>/attachments/<attachment id>   attachment (owner only)
  POST /drafts/<id>/attachments/<attachment id>/delete  remove_attachment
  GET  /outbox                                    outbox_index
  POST /outbox/<id>/edit | send-now | cancel      outbox_edit, outbox_send_now, outbox_cancel
  GET  /compose/templates                         templates_search (JSON: usable templates, ?q=)
  POST /drafts/<id>/template                      apply_template (fill from a template; JSON)

Every draft route loads the mail through services.access.outgoing_for_owner (404 for anyone
else, admins included). JSON answers are for static/js/compose.js; an expired session
answers 401 (the script sends HX-Request), and the page keeps the text in localStorage.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user

from models import OUTGOING_DRAFT, Message, OutgoingAttachment, OutgoingMail
from services import compose, drafts, outbox, signatures, smart_fields, templates
from services.access import (
    message_for_viewer,
    outgoing_attachment_for_owner,
    outgoing_for_owner,
)
from services.errors import ValidationError
from services.inputs import parse_id, search_text
from services.mail_render import attachment_headers
from services.preferences import get_preference
from services.time_display import current_zone, current_zone_name, full_label
from views.helpers import file_json

bp = Blueprint("compose", __name__, url_prefix="/mail")
PAGE = "compose/page.html"


def attachment_url(attachment: OutgoingAttachment) -> str:
    """Return the owner-only URL of a draft's attachment (inline images show through it)."""
    return url_for("compose.attachment", draft_id=attachment.mail_id, attachment_id=attachment.id)


def _attachment_json(attachment: OutgoingAttachment) -> dict:
    return file_json(
        attachment,
        url=attachment_url(attachment),
        delete_url=url_for(
            "compose.remove_attachment", draft_id=attachment.mail_id, attachment_id=attachment.id
        ),
    )


def _draft_json(mail: OutgoingMail, status: int = 200, **extra):
    body = {
        "id": mail.id,
        "state": mail.state,
        "edit_url": url_for("compose.edit", draft_id=mail.id),
        "save_url": url_for("compose.save", draft_id=mail.id),
        "send_url": url_for("compose.send", draft_id=mail.id),
        "preview_url": url_for("compose.preview", draft_id=mail.id),
        "undo_url": url_for("compose.undo", draft_id=mail.id),
        "discard_url": url_for("compose.discard", draft_id=mail.id),
        "upload_url": url_for("compose.upload", draft_id=mail.id),
        "updated_at": mail.updated_at.isoformat() if mail.updated_at else None,
        "attachments": [_attachment_json(a) for a in mail.attachments if not a.content_id],
        "max_upload_bytes": drafts.max_upload_bytes(mail.account_id),
    }
    body.update(extra)
    return jsonify(body), status


def _errors(exc: ValidationError, status: int = 422):
    return jsonify({"errors": exc.errors}), status


def _render(
    mail: OutgoingMail | None,
    values: drafts.Prefill,
    *,
    body_html: str,
    source: Message | None = None,
    fetch_full: bool = False,
):
    return render_template(
        PAGE,
        mail=mail,
        values=values,
        source=source,
        fetch_full=fetch_full,
        body_html=body_html,
        accounts=drafts.sending_accounts(current_user),
        attachments=[a for a in mail.attachments if not a.content_id] if mail else [],
        address_line=compose.format_address_list,
        invalid=compose.invalid_addresses,
        undo_seconds=get_preference(current_user, "undo_send_seconds"),
        zone_name=current_zone_name() or "UTC",
        max_upload_bytes=drafts.max_upload_bytes(values.account_id),
        signatures=signatures.compose_choices(current_user),
        signature_position=get_preference(current_user, signatures.POSITION_KEY),
    )


@bp.get("/compose")
def new():
    source, kind, is_owner = None, request.args.get("kind", "reply"), False
    source_id = parse_id(request.args.get("reply"))
    if source_id is not None:
        source, is_owner = message_for_viewer(current_user, source_id)
    values = drafts.prefill(
        current_user,
        to_text=request.args.get("to", "")[:5000],
        source=source,
        kind=kind if kind in drafts.REPLY_KINDS else "reply",
        record_kind=request.args.get("record"),
        record_id=parse_id(request.args.get("record_id")),
    )
    # The mailbox's owner can have a headers-only original downloaded in full first.
    fetch_full = source is not None and is_owner and source.is_placeholder
    return _render(None, values, body_html=values.body_html, source=source, fetch_full=fetch_full)


@bp.get("/compose/<id:draft_id>")
def edit(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    if mail.state != OUTGOING_DRAFT:
        flash("This mail is no longer a draft; it is in the Outbox.", "ok")
        return redirect(url_for(".outbox_index"), 303)
    values = drafts.Prefill(
        to=mail.to,
        cc=mail.cc,
        bcc=mail.bcc,
        subject=mail.subject,
        account_id=mail.account_id,
        reply_kind=mail.reply_kind,
    )
    return _render(mail, values, body_html=drafts.editor_body(mail, attachment_url))


@bp.get("/compose/recipients")
def recipients():
    found = drafts.suggest_recipients(current_user, search_text(request.args.get("q")))
    return jsonify(
        [
            {
                "name": s.name,
                "address": s.address,
                "source": s.source,
                "label": compose.format_address(s.name, s.address),
            }
            for s in found
        ]
    )


def _prefill_from_form() -> drafts.Prefill:
    """The fields a new mail was opened with (hidden inputs), checked again on create."""
    source = None
    source_id = parse_id(request.form.get("source_message_id"))
    if source_id is not None:
        source, _is_owner = message_for_viewer(current_user, source_id)
    kind = request.form.get("reply_kind") or None
    if kind is not None and kind not in drafts.REPLY_KINDS:
        abort(400)
    values = drafts.Prefill(
        reply_kind=kind if source else None, source_message_id=source.id if source else None
    )
    record = request.form.get("record_kind") or None
    checked = drafts.prefill(
        current_user, record_kind=record, record_id=parse_id(request.form.get("record_id"))
    )
    values.record_kind, values.record_id = checked.record_kind, checked.record_id
    values.account_id = drafts.default_account_id(current_user, source=source)
    return values


@bp.post("/drafts")
def create():
    try:
        mail = drafts.create_draft(current_user, _prefill_from_form(), request.form, attachment_url)
    except ValidationError as exc:
        return _errors(exc)
    return _draft_json(mail, 201)


@bp.get("/drafts")
def drafts_index():
    return render_template("compose/drafts.html", drafts=outbox.drafts(current_user))


@bp.post("/drafts/<id:draft_id>")
def save(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    try:
        drafts.save_draft(current_user, mail, request.form, attachment_url)
    except ValidationError as exc:
        return _errors(exc, 409 if mail.state != OUTGOING_DRAFT else 422)
    return _draft_json(mail)


@bp.post("/drafts/<id:draft_id>/send")
def send(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    try:
        undo = drafts.send_draft(
            current_user, mail, request.form, attachment_url, zone=current_zone()
        )
    except ValidationError as exc:
        return _errors(exc)
    return _draft_json(
        mail,
        undo_seconds=undo,
        scheduled=mail.scheduled,
        send_at_label=full_label(mail.send_at, current_zone()),
        outbox_url=url_for(".outbox_index"),
        done_url=url_for("mail.index"),
    )


@bp.get("/drafts/<id:draft_id>/preview")
def preview(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    return render_template(
        "compose/partials/preview.html", mail=mail, preview=smart_fields.preview(mail)
    )


@bp.app_template_global()
def smart_field_choices() -> list[dict[str, str]]:
    """The smart-field picker's fields (static/js/smart_fields.js reads them from its tag)."""
    return smart_fields.field_choices()


@bp.post("/drafts/<id:draft_id>/undo")
def undo(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    if not outbox.cancel_to_draft(current_user, mail):
        return _errors(
            ValidationError({"__all__": "Too late: this mail is already being sent."}), 409
        )
    return _draft_json(mail)


@bp.post("/drafts/<id:draft_id>/discard")
def discard(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    try:
        drafts.discard_draft(current_user, mail)
    except ValidationError as exc:
        flash(exc.errors["__all__"], "error")
        return redirect(url_for(".outbox_index"), 303)
    flash("Draft discarded.", "ok")
    return redirect(url_for(".drafts_index"), 303)


@bp.post("/drafts/<id:draft_id>/attachments")
def upload(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    file = request.files.get("file")
    if file is None or not file.filename:
        return _errors(ValidationError({"attachments": "Choose a file to attach."}), 400)
    try:
        attachment = drafts.add_attachment(
            current_user,
            mail,
            filename=file.filename,
            content_type=file.mimetype or "",
            data=file.read(drafts.max_upload_bytes(mail.account_id) + 1),
            inline=request.form.get("inline") == "1",
        )
    except ValidationError as exc:
        return _errors(exc, 413 if "too large" in exc.errors.get("attachments", "") else 422)
    return jsonify(_attachment_json(attachment)), 201


@bp.get("/drafts/<id:draft_id>/attachments/<id:attachment_id>")
def attachment(draft_id: int, attachment_id: int):
    _mail, item = outgoing_attachment_for_owner(current_user, draft_id, attachment_id)
    data = drafts.attachment_bytes(item)
    if data is None:
        abort(404)
    headers = attachment_headers(item.filename, item.content_type, inline_ok=bool(item.content_id))
    return data, 200, headers


@bp.post("/drafts/<id:draft_id>/attachments/<id:attachment_id>/delete")
def remove_attachment(draft_id: int, attachment_id: int):
    mail, item = outgoing_attachment_for_owner(current_user, draft_id, attachment_id)
    try:
        drafts.remove_attachment(current_user, mail, item)
    except ValidationError as exc:
        return _errors(exc, 409)
    return _draft_json(mail)


@bp.get("/outbox")
def outbox_index():
    return render_template(
        "compose/outbox.html",
        mails=outbox.outbox(current_user),
        sent=drafts.recently_sent(current_user),
    )


@bp.post("/outbox/<id:draft_id>/edit")
def outbox_edit(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    if mail.state != OUTGOING_DRAFT and not outbox.cancel_to_draft(current_user, mail):
        flash("Too late to edit: this mail is already being sent.", "error")
        return redirect(url_for(".outbox_index"), 303)
    return redirect(url_for(".edit", draft_id=mail.id), 303)


@bp.post("/outbox/<id:draft_id>/send-now")
def outbox_send_now(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    if outbox.send_now(current_user, mail):
        flash("Sending now.", "ok")
    else:
        flash("This mail is not waiting any more.", "error")
    return redirect(url_for(".outbox_index"), 303)


@bp.post("/outbox/<id:draft_id>/cancel")
def outbox_cancel(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    if outbox.cancel_to_draft(current_user, mail):
        flash("Moved back to Drafts.", "ok")
    else:
        flash("Too late to cancel: this mail is already being sent.", "error")
    return redirect(url_for(".outbox_index"), 303)


# --------------------------------------------------------------------------- templates
# (static/js/templates_picker.js; Settings > Templates is views/mail_templates.py)


@bp.get("/compose/templates")
def templates_search():
    found = templates.usable_templates(current_user, search_text(request.args.get("q")))
    return jsonify(
        [{"id": t.id, "name": t.name, "subject": t.subject, "shared": t.shared} for t in found[:50]]
    )


@bp.post("/drafts/<id:draft_id>/template")
def apply_template(draft_id: int):
    mail = outgoing_for_owner(current_user, draft_id)
    template_id = parse_id(request.form.get("template_id"))
    if template_id is None:
        return _errors(ValidationError({"__all__": "Choose a template."}), 400)
    template = templates.template_for_use(current_user, template_id)
    try:
        templates.apply_to_draft(current_user, mail, template)
    except ValidationError as exc:
        return _errors(exc, 409)
    return _draft_json(
        mail, subject=mail.subject, body_html=drafts.editor_body(mail, attachment_url)
    )
