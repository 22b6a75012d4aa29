"""Signatures of a mail account (Settings > Email accounts > an account > Signatures).

URL table (prefix /settings/accounts):
  GET  /<id>/signatures                      index       the account's signatures, a new one
  POST /<id>/signatures                      create
  GET  /<id>/signatures/<sid>                edit
  POST /<id>/signatures/<sid>                update
  POST /<id>/signatures/<sid>/default        make_default
  POST /<id>/signatures/<sid>/delete         delete

Owner only: every route loads through services.signatures (access.account_for), so another
user's account or signature is a 404, admins included.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from services import access, signatures
from services.errors import ValidationError
from views.helpers import render_invalid

bp = Blueprint("signatures", __name__, url_prefix="/settings/accounts")
PAGE = "signatures/page.html"
EDIT = "signatures/edit.html"


def _page(account, **context) -> dict:
    return {
        "account": account,
        "signatures": signatures.account_signatures(account),
        "max_image_bytes": signatures.MAX_IMAGE_BYTES,
        "form": {},
        "errors": {},
        **context,
    }


def _form() -> dict[str, str]:
    return {"name": request.form.get("name", ""), "body_html": request.form.get("body_html", "")}


@bp.get("/<id:account_id>/signatures")
def index(account_id: int):
    return render_template(PAGE, **_page(access.account_for(current_user, account_id)))


@bp.post("/<id:account_id>/signatures")
def create(account_id: int):
    account = access.account_for(current_user, account_id)
    try:
        signatures.create_signature(current_user, account, **_form())
    except ValidationError as exc:
        return render_invalid(PAGE, **_page(account, form=_form(), errors=exc.errors))
    flash("Signature added.", "ok")
    return redirect(url_for(".index", account_id=account.id), 303)


@bp.get("/<id:account_id>/signatures/<id:signature_id>")
def edit(account_id: int, signature_id: int):
    account, signature = signatures.signature_for_owner(current_user, account_id, signature_id)
    form = {"name": signature.name, "body_html": signature.body_html}
    return render_template(EDIT, **_page(account, signature=signature, form=form))


@bp.post("/<id:account_id>/signatures/<id:signature_id>")
def update(account_id: int, signature_id: int):
    account, signature = signatures.signature_for_owner(current_user, account_id, signature_id)
    try:
        signatures.update_signature(current_user, signature, **_form())
    except ValidationError as exc:
        context = _page(account, signature=signature, form=_form(), errors=exc.errors)
        return render_invalid(EDIT, **context)
    flash("Signature saved.", "ok")
    return redirect(url_for(".index", account_id=account_id), 303)


@bp.post("/<id:account_id>/signatures/<id:signature_id>/default")
def make_default(account_id: int, signature_id: int):
    _account, signature = signatures.signature_for_owner(current_user, account_id, signature_id)
    signatures.set_default(current_user, signature)
    flash(f"\u201c{signature.name}\u201d is now the default signature.", "ok")
    return redirect(url_for(".index", account_id=account_id), 303)


@bp.post("/<id:account_id>/signatures/<id:signature_id>/delete")
def delete(account_id: int, signature_id: int):
    _account, signature = signatures.signature_for_owner(current_user, account_id, signature_id)
    signatures.delete_signature(current_user, signature)
    flash("Signature deleted.", "ok")
    return redirect(url_for(".index", account_id=account_id), 303)
