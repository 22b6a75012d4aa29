"""Mail templates: who may use and edit them, saving, attachments, and filling a draft.

THE rule (one place): a template is usable by its owner and, when shared, by every signed-in
user; it is editable (and deletable) by its owner and, when shared, by admins. A private
template is nobody else's business, admins included: it is a 404 for them, as for an id
that does not exist (PRODUCT.md "Compose", SECURITY.md R30). Functions that change state
commit once at their end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flask import abort
from sqlalchemy import Select, func, or_, select

from extensions import db
from models import (
    OUTGOING_DRAFT,
    MailTemplate,
    OutgoingAttachment,
    OutgoingMail,
    TemplateAttachment,
    User,
)
from services import compose, drafts
from services.errors import ValidationError
from services.inputs import is_database_id

MAX_NAME_LENGTH = 200
MAX_RESULTS = 200

# The views pass how an attachment's URL is spelled (url_for lives there).
TemplateAttachmentUrl = Callable[[TemplateAttachment], str]


def usable_condition(user: User):
    """The SQL condition "`user` may use this template": their own, or shared."""
    return or_(MailTemplate.owner_id == user.id, MailTemplate.shared.is_(True))


def usable_select(user: User, query: str | None = None) -> Select[tuple[MailTemplate]]:
    """Return a select of the templates `user` may use, by name, matching `query` if given.

    The search looks in the name, the subject and the body (case-insensitive substring).
    """
    statement = select(MailTemplate).where(usable_condition(user))
    text = (query or "").strip().lower()
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        statement = statement.where(
            or_(
                func.lower(MailTemplate.name).like(pattern, escape="\\"),
                func.lower(MailTemplate.subject).like(pattern, escape="\\"),
                func.lower(MailTemplate.body_html).like(pattern, escape="\\"),
            )
        )
    return statement.order_by(func.lower(MailTemplate.name), MailTemplate.id)


def usable_templates(user: User, query: str | None = None) -> list[MailTemplate]:
    """Return the templates `user` may use (own and shared), searched by name and text."""
    return list(db.session.scalars(usable_select(user, query).limit(MAX_RESULTS)))


def owner_names(items: list[MailTemplate]) -> dict[int, str]:
    """Return the names of the templates' owners by user id (the list says who shared)."""
    ids = {t.owner_id for t in items}
    if not ids:
        return {}
    return dict(db.session.execute(select(User.id, User.name).where(User.id.in_(ids))).all())


def can_use(user: User, template: MailTemplate) -> bool:
    """Tell whether `user` may use (see, apply, duplicate) `template`."""
    return template.owner_id == user.id or template.shared


def can_edit(user: User, template: MailTemplate) -> bool:
    """Tell whether `user` may edit or delete `template`: its owner; admins if it is shared."""
    return template.owner_id == user.id or (template.shared and user.is_admin)


def template_for_use(user: User, template_id: int) -> MailTemplate:
    """Return a template `user` may use, or abort 404 (missing, or someone's private one)."""
    template = db.session.get(MailTemplate, template_id) if is_database_id(template_id) else None
    if template is None or not can_use(user, template):
        abort(404)
    return template


def template_for_edit(user: User, template_id: int) -> MailTemplate:
    """Return a template `user` may edit, else abort: 404 if they cannot even use it, 403 for
    a teammate's shared template (they can see it, so the refusal may say why)."""
    template = template_for_use(user, template_id)
    if not can_edit(user, template):
        abort(403, description="Only the template's owner or an admin can change it.")
    return template


def attachment_for_use(
    user: User, template_id: int, attachment_id: int
) -> tuple[MailTemplate, TemplateAttachment]:
    """Return (template, attachment) of a template `user` may use, or abort 404."""
    template = template_for_use(user, template_id)
    attachment = next((a for a in template.attachments if a.id == attachment_id), None)
    if attachment is None:
        abort(404)
    return template, attachment


# --------------------------------------------------------------------------- editing


def max_upload_bytes() -> int:
    """Return how large a template's attachments may be in all (the compose upload cap)."""
    return drafts.max_upload_bytes(None)


def editor_body(template: MailTemplate, attachment_url: TemplateAttachmentUrl) -> str:
    """Return the stored body with the template's cid: images pointing at their URLs."""
    return compose.body_for_editor(
        template.body_html or "", drafts.urls_by_cid(template.attachments, attachment_url)
    )


def _shared_flag(value: str | None) -> bool:
    if value in ("1", "shared"):
        return True
    if value in (None, "", "0", "private"):
        return False
    raise ValidationError({"shared": "Choose Private or Shared with the team."})


def apply_form(
    template: MailTemplate, form: Mapping[str, str], attachment_url: TemplateAttachmentUrl
) -> None:
    """Copy the editor's fields (name, subject, body, shared) onto a template; no commit.

    Raises ValidationError (field -> message) for a missing or too long name, a too long
    subject or body, or a sharing value other than private/shared.
    """
    errors: dict[str, str] = {}
    name = " ".join((form.get("name") or "").replace("\x00", "").split())
    if not name:
        errors["name"] = "Give the template a name."
    elif len(name) > MAX_NAME_LENGTH:
        errors["name"] = f"Keep the name under {MAX_NAME_LENGTH} characters."
    subject = drafts.one_line_subject(form.get("subject")).strip()
    if len(subject) > drafts.MAX_SUBJECT_LENGTH:
        errors["subject"] = f"Keep the subject under {drafts.MAX_SUBJECT_LENGTH} characters."
    body = (form.get("body_html") or "").replace("\x00", "")
    if len(body) > drafts.MAX_BODY_LENGTH:
        errors["body"] = "The template is too long to save."
    try:
        shared = _shared_flag(form.get("shared"))
    except ValidationError as exc:
        errors.update(exc.errors)
    if errors:
        raise ValidationError(errors)
    template.name, template.subject, template.shared = name, subject, shared
    template.body_html = drafts.clean_editor_html(
        body, drafts.urls_by_cid(template.attachments, attachment_url)
    )


def create_template(
    user: User, form: Mapping[str, str], attachment_url: TemplateAttachmentUrl
) -> MailTemplate:
    """Create a template of `user`'s from the editor's fields; commits."""
    template = MailTemplate(owner_id=user.id)
    apply_form(template, form, attachment_url)
    db.session.add(template)
    db.session.commit()
    return template


def update_template(
    user: User,
    template: MailTemplate,
    form: Mapping[str, str],
    attachment_url: TemplateAttachmentUrl,
) -> MailTemplate:
    """Save the editor's fields onto a template loaded through template_for_edit; commits."""
    apply_form(template, form, attachment_url)
    db.session.commit()
    return template


def duplicate_template(user: User, template: MailTemplate) -> MailTemplate:
    """Copy a usable template into a new private one of `user`'s (same blobs); commits."""
    copy = MailTemplate(
        owner_id=user.id,
        name=f"Copy of {template.name}"[:MAX_NAME_LENGTH],
        subject=template.subject,
        body_html=template.body_html,
        shared=False,
    )
    for attachment in template.attachments:
        copy.attachments.append(TemplateAttachment(**attachment.file_fields()))
    db.session.add(copy)
    db.session.commit()
    return copy


def delete_template(user: User, template: MailTemplate) -> None:
    """Delete a template loaded through template_for_edit; its blobs go to the GC; commits."""
    db.session.delete(template)
    db.session.commit()


def add_attachment(
    user: User,
    template: MailTemplate,
    *,
    filename: str,
    content_type: str,
    data: bytes,
    inline: bool = False,
) -> TemplateAttachment:
    """Store an uploaded file on a template (an inline image gets a Content-ID); commits.

    The compose upload limits apply (services/drafts.stored_upload raises ValidationError).
    """
    fields = drafts.stored_upload(
        filename=filename,
        content_type=content_type,
        data=data,
        inline=inline,
        limit=max_upload_bytes(),
        already=sum(a.size for a in template.attachments),
    )
    attachment = TemplateAttachment(**fields)
    template.attachments.append(attachment)
    db.session.commit()
    return attachment


def remove_attachment(user: User, template: MailTemplate, attachment: TemplateAttachment) -> None:
    """Remove a file from a template (its blob is left to the garbage collection); commits."""
    template.attachments.remove(attachment)
    db.session.commit()


# --------------------------------------------------------------------------- using


def apply_to_draft(user: User, draft: OutgoingMail, template: MailTemplate) -> OutgoingMail:
    """Fill a draft from a template: subject, body and attachments; commits.

    `draft` comes from services.access.outgoing_for_owner and `template` from
    template_for_use. The template's files become new rows of the draft pointing at the same
    blobs; an inline image keeps its Content-ID, so the body's cid: references stay right
    (one that the draft already holds is not added twice, nor is a file it already has).
    Raises ValidationError when the mail is no longer a draft. Smart-field chips are copied
    as they are: they are filled when the mail is sent.
    """
    if draft.state != OUTGOING_DRAFT:
        raise ValidationError({"__all__": "This mail is no longer a draft."})
    copy_into(draft, template)
    db.session.commit()
    return draft


def copy_into(mail: OutgoingMail, template: MailTemplate) -> None:
    """Copy a template's subject, body and files onto a mail (apply_to_draft, and each mail
    of a group email); no commit."""
    mail.subject = template.subject or ""
    mail.body_html = template.body_html or ""
    have_cids = {a.content_id for a in mail.attachments if a.content_id}
    have_files = {(a.blob_sha256, a.filename) for a in mail.attachments if not a.content_id}
    for attachment in template.attachments:
        if attachment.content_id:
            if attachment.content_id in have_cids:
                continue
        elif (attachment.blob_sha256, attachment.filename) in have_files:
            continue
        mail.attachments.append(OutgoingAttachment(**attachment.file_fields()))
