"""Settings > Templates: list (own and shared, searchable), create, edit, duplicate, delete,
and a template's files (inline images and attachments).

URL table (url_prefix /settings/templates):
  GET  /                                         index (?q= searches name and text)
  GET  /new                                      new
  POST /                                         create
  GET  /<id>                                     edit (owner; admins for shared ones)
  POST /<id>                                     update
  POST /<id>/duplicate                           duplicate (anyone who may use it)
  POST /<id>/delete                              delete
  POST /<id>/attachments                         upload (one file; JSON)
  GET  /<id>/attachments/<file id>         attachment (anyone who may use it)
  POST /<id>/attachments/<file id>/delete  remove_attachment

Every route loads the template through services.templates (template_for_use or
template_for_edit): someone else's private template is a 404, admins included.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user

from models import MailTemplate, TemplateAttachment
from services import drafts, templates
from services.errors import ValidationError
from services.inputs import search_text
from services.mail_render import attachment_headers
from views.helpers import file_json, render_invalid, render_page_or_fragment

bp = Blueprint("mail_templates", __name__, url_prefix="/settings/templates")
LIST_TARGET = "template-list"


def attachment_url(attachment: TemplateAttachment) -> str:
    """Return the URL of a template's file (its inline images show through it)."""
    return url_for(
        "mail_templates.attachment",
        template_id=attachment.template_id,
        file_id=attachment.id,
    )


def _attachment_json(attachment: TemplateAttachment) -> dict:
    return file_json(
        attachment,
        url=attachment_url(attachment),
        delete_url=url_for(
            ".remove_attachment", template_id=attachment.template_id, file_id=attachment.id
        ),
    )


def _render_form(template: MailTemplate | None, *, values=None, errors=None, status=200):
    context = {
        "mail_template": template,
        "values": values
        or {
            "name": template.name if template else "",
            "subject": template.subject if template else "",
            "shared": "1" if template and template.shared else "0",
        },
        "body_html": (values or {}).get("body_html")
        or (templates.editor_body(template, attachment_url) if template else ""),
        "errors": errors or {},
        "attachments": [a for a in template.attachments if not a.content_id] if template else [],
        "max_upload_bytes": templates.max_upload_bytes(),
    }
    if status != 200:
        return render_invalid("mail_templates/form.html", status, **context)
    return render_template("mail_templates/form.html", **context)


@bp.get("/")
def index():
    query = search_text(request.args.get("q"))
    items = templates.usable_templates(current_user, query)
    return render_page_or_fragment(
        "mail_templates/page.html",
        "mail_templates/partials/list.html",
        targets=(LIST_TARGET,),
        items=items,
        owners=templates.owner_names(items),
        query=query,
        can_edit=lambda template: templates.can_edit(current_user, template),
    )


@bp.get("/new")
def new():
    return _render_form(None)


def _wants_json() -> bool:
    """The template editor's script asks for JSON (its save before the first upload)."""
    return request.accept_mimetypes.best == "application/json"


def _saved(template: MailTemplate, *, created: bool = False):
    """Answer a save: JSON for the editor's script, else back to the editor page."""
    if _wants_json():
        return jsonify(
            {
                "id": template.id,
                "edit_url": url_for(".edit", template_id=template.id),
                "upload_url": url_for(".upload", template_id=template.id),
            }
        ), (201 if created else 200)
    flash(f"Template “{template.name}” saved.", "ok")
    return redirect(url_for(".edit", template_id=template.id), 303)


@bp.post("/")
def create():
    try:
        template = templates.create_template(current_user, request.form, attachment_url)
    except ValidationError as exc:
        return _render_form(None, values=request.form, errors=exc.errors, status=422)
    return _saved(template, created=True)


@bp.get("/<id:template_id>")
def edit(template_id: int):
    return _render_form(templates.template_for_edit(current_user, template_id))


@bp.post("/<id:template_id>")
def update(template_id: int):
    template = templates.template_for_edit(current_user, template_id)
    try:
        templates.update_template(current_user, template, request.form, attachment_url)
    except ValidationError as exc:
        return _render_form(template, values=request.form, errors=exc.errors, status=422)
    return _saved(template)


@bp.post("/<id:template_id>/duplicate")
def duplicate(template_id: int):
    template = templates.template_for_use(current_user, template_id)
    copy = templates.duplicate_template(current_user, template)
    flash(f"Duplicated as “{copy.name}” (private).", "ok")
    return redirect(url_for(".edit", template_id=copy.id), 303)


@bp.post("/<id:template_id>/delete")
def delete(template_id: int):
    template = templates.template_for_edit(current_user, template_id)
    name = template.name
    templates.delete_template(current_user, template)
    flash(f"Template “{name}” deleted.", "ok")
    return redirect(url_for(".index"), 303)


@bp.post("/<id:template_id>/attachments")
def upload(template_id: int):
    template = templates.template_for_edit(current_user, template_id)
    file = request.files.get("file")
    if file is None or not file.filename:
        return jsonify({"errors": {"attachments": "Choose a file to attach."}}), 400
    try:
        attachment = templates.add_attachment(
            current_user,
            template,
            filename=file.filename,
            content_type=file.mimetype or "",
            data=file.read(templates.max_upload_bytes() + 1),
            inline=request.form.get("inline") == "1",
        )
    except ValidationError as exc:
        status = 413 if "too large" in exc.errors.get("attachments", "") else 422
        return jsonify({"errors": exc.errors}), status
    return jsonify(_attachment_json(attachment)), 201


@bp.get("/<id:template_id>/attachments/<id:file_id>")
def attachment(template_id: int, file_id: int):
    _template, item = templates.attachment_for_use(current_user, template_id, file_id)
    data = drafts.attachment_bytes(item)
    if data is None:
        abort(404)
    headers = attachment_headers(item.filename, item.content_type, inline_ok=bool(item.content_id))
    return data, 200, headers


@bp.post("/<id:template_id>/attachments/<id:file_id>/delete")
def remove_attachment(template_id: int, file_id: int):
    template = templates.template_for_edit(current_user, template_id)
    _template, item = templates.attachment_for_use(current_user, template_id, file_id)
    templates.remove_attachment(current_user, template, item)
    if _wants_json():
        return jsonify({"ok": True})
    flash(f"Removed {item.filename}.", "ok")
    return redirect(url_for(".edit", template_id=template.id), 303)
