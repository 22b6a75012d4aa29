"""Signatures: several per mail account, exactly one default while the account has any.

The rules live here: the first signature of an account becomes its default, deleting the
default hands it to the oldest one left (or to none), and a signature's HTML is sanitized with
the received-mail policy (no scripts, no remote images; inline images only as small raster
``data:`` URIs, which sending turns into cid: parts, mailsync/send.py). Only the account's
owner sees or changes its signatures: every loader goes through services.access.account_for.
Functions that change state commit once at their end.
"""

from __future__ import annotations

import re
from typing import Any

from flask import abort
from sqlalchemy import select

from extensions import db
from models import MailAccount, Signature, User
from services.access import account_for, own_sending_accounts
from services.errors import ValidationError
from services.mail_render import sanitize_email_html
from services.preferences import PreferenceSpec, register

MAX_NAME_LENGTH = 200
MAX_IMAGE_BYTES = 100 * 1024  # each inline image, decoded
MAX_BODY_LENGTH = 600_000  # the HTML with its data: images
POSITION_KEY = "signature_position"
# The editor marks the signature block <div data-signature="ID"> so it can be swapped; the
# draft sanitizer keeps it (services/drafts.py), sending and received mail never do.
MARKER_ATTRIBUTES = {"div": {"data-signature"}}

register(
    PreferenceSpec(
        POSITION_KEY,
        "Signature position in replies",
        "above",
        (
            ("above", "Above the quoted text (where you write)"),
            ("below", "Below the quoted text"),
        ),
        "New mail always ends with the signature; this places it in replies and forwards.",
    )
)

_DATA_IMAGE = re.compile(r"data:image/[a-z]+;base64,([a-z0-9+/=\s]*)", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")


def account_signatures(account: MailAccount) -> list[Signature]:
    """Return an account's signatures, oldest first."""
    return list(
        db.session.scalars(
            select(Signature).where(Signature.account_id == account.id).order_by(Signature.id)
        )
    )


def default_signature(account: MailAccount) -> Signature | None:
    """Return the account's default signature, or None when it has none."""
    return db.session.scalar(
        select(Signature).where(Signature.account_id == account.id, Signature.is_default)
    )


def signature_for_owner(
    user: User, account_id: int, signature_id: int
) -> tuple[MailAccount, Signature]:
    """Return (account, signature) of one of the user's own accounts, or abort 404."""
    account = account_for(user, account_id)
    signature = db.session.scalar(
        select(Signature).where(Signature.id == signature_id, Signature.account_id == account.id)
    )
    if signature is None:
        abort(404)
    return account, signature


def compose_choices(user: User) -> dict[str, dict[str, Any]]:
    """Return, per sending account id, its signatures for the editor (static/js/signatures.js):
    ``{"<account id>": {"default": id or None, "signatures": [{"id", "name", "html"}]}}``."""
    accounts = list(db.session.scalars(own_sending_accounts(user)))
    rows = db.session.scalars(
        select(Signature)
        .where(Signature.account_id.in_([a.id for a in accounts]))
        .order_by(Signature.id)
    )
    choices: dict[str, dict[str, Any]] = {
        str(a.id): {"default": None, "signatures": []} for a in accounts
    }
    for signature in rows:
        entry = choices[str(signature.account_id)]
        entry["signatures"].append(
            {"id": signature.id, "name": signature.name, "html": signature.body_html}
        )
        if signature.is_default:
            entry["default"] = signature.id
    return choices


def clean_signature_html(body_html: str) -> str:
    """Return the signature HTML sanitized for storage.

    Raises ValidationError when it is too long or an inline image is over MAX_IMAGE_BYTES.
    """
    body = (body_html or "").replace("\x00", "")
    if len(body) > MAX_BODY_LENGTH:
        raise ValidationError({"body_html": "This signature is too long to save."})
    # cid: images have no part to point at here: only data: images can stay inline.
    clean = sanitize_email_html(body, cid_url=lambda _cid: None, allow_remote_images=False).html
    for match in _DATA_IMAGE.finditer(clean):
        encoded = re.sub(r"\s", "", match.group(1))
        size = len(encoded) * 3 // 4 - encoded.count("=")
        if size > MAX_IMAGE_BYTES:
            raise ValidationError(
                {
                    "body_html": f"An image in a signature may be at most "
                    f"{MAX_IMAGE_BYTES // 1024} KB (this one is {-(-size // 1024)} KB): "
                    "use a smaller image."
                }
            )
    return clean


def _checked(name: str, body_html: str) -> tuple[str, str]:
    errors: dict[str, str] = {}
    name = " ".join((name or "").replace("\x00", "").split())
    if not name:
        errors["name"] = "Give the signature a name (e.g. Work, Short)."
    elif len(name) > MAX_NAME_LENGTH:
        errors["name"] = f"Keep the name under {MAX_NAME_LENGTH} characters."
    try:
        body = clean_signature_html(body_html)
    except ValidationError as exc:
        errors.update(exc.errors)
        body = ""
    if not errors and not _TAG.sub("", body).strip() and "<img" not in body:
        errors["body_html"] = "Write the signature (text or an image)."
    if errors:
        raise ValidationError(errors)
    return name, body


def create_signature(user: User, account: MailAccount, *, name: str, body_html: str) -> Signature:
    """Add a signature to one of the user's accounts (its first becomes the default); commits.

    Raises ValidationError for a missing name or body, or an image over the size limit.
    """
    account = account_for(user, account.id)
    name, body = _checked(name, body_html)
    signature = Signature(
        account_id=account.id,
        name=name,
        body_html=body,
        is_default=default_signature(account) is None,
    )
    db.session.add(signature)
    db.session.commit()
    return signature


def update_signature(user: User, signature: Signature, *, name: str, body_html: str) -> Signature:
    """Change a signature's name and text; commits. Raises ValidationError like create."""
    signature_for_owner(user, signature.account_id, signature.id)
    signature.name, signature.body_html = _checked(name, body_html)
    db.session.commit()
    return signature


def set_default(user: User, signature: Signature) -> None:
    """Make a signature its account's only default; commits."""
    signature_for_owner(user, signature.account_id, signature.id)
    for other in db.session.scalars(
        select(Signature).where(Signature.account_id == signature.account_id)
    ):
        other.is_default = other.id == signature.id
    db.session.commit()


def delete_signature(user: User, signature: Signature) -> None:
    """Delete a signature; a deleted default passes to the oldest one left, if any. Commits."""
    signature_for_owner(user, signature.account_id, signature.id)
    account_id, was_default = signature.account_id, signature.is_default
    db.session.delete(signature)
    db.session.flush()
    if was_default:
        heir = db.session.scalar(
            select(Signature)
            .where(Signature.account_id == account_id)
            .order_by(Signature.id)
            .limit(1)
        )
        if heir is not None:
            heir.is_default = True
    db.session.commit()
