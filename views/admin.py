"""Admin: the team's users (add, make admin, deactivate) and mail sign-in (OAuth2 clients)."""

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from flask_login import current_user

from extensions import db
from mailsync.providers import OAUTH_PROVIDERS
from models import User
from services import oauth, users
from services.errors import ValidationError
from views.helpers import form_value, oauth_redirect_uri, render_invalid

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def require_admin():
    if not current_user.is_authenticated or not current_user.is_admin:
        abort(404)


def _user_or_404(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


@bp.get("/users")
def users_index():
    return render_template("admin/users.html", users=users.list_users(), errors={}, form={})


@bp.post("/users")
def users_create():
    try:
        users.create_user(
            email=form_value("email"),
            name=form_value("name"),
            password=request.form.get("password", ""),
            is_admin=request.form.get("is_admin") == "on",
        )
    except ValidationError as exc:
        return render_invalid(
            "admin/users.html", users=users.list_users(), errors=exc.errors, form=request.form
        )
    return redirect(url_for("admin.users_index"), code=303)


@bp.post("/users/<id:user_id>/role")
def users_role(user_id: int):
    user = _user_or_404(user_id)
    try:
        users.set_admin(current_user, user, request.form.get("is_admin") == "1")
    except ValidationError as exc:
        return render_invalid(
            "admin/users.html", users=users.list_users(), errors=exc.errors, form={}
        )
    return redirect(url_for("admin.users_index"), code=303)


@bp.post("/users/<id:user_id>/active")
def users_active(user_id: int):
    user = _user_or_404(user_id)
    try:
        users.set_deactivated(current_user, user, request.form.get("deactivated") == "1")
    except ValidationError as exc:
        return render_invalid(
            "admin/users.html", users=users.list_users(), errors=exc.errors, form={}
        )
    return redirect(url_for("admin.users_index"), code=303)


def _sign_in_page(errors: dict, status: int = 200):
    return render_invalid(
        "admin/sign_in.html",
        status,
        providers=list(OAUTH_PROVIDERS.values()),
        registrations=oauth.client_registrations(),
        redirect_uri=oauth_redirect_uri(),
        errors=errors,
    )


@bp.get("/mail-sign-in")
def sign_in_index():
    return _sign_in_page({})


@bp.post("/mail-sign-in/<provider>")
def sign_in_update(provider: str):
    try:
        oauth.save_client(
            current_app,
            provider,
            client_id=form_value(f"{provider}_client_id"),
            client_secret=request.form.get(f"{provider}_client_secret", ""),
        )
    except ValidationError as exc:
        return _sign_in_page(exc.errors, 422)
    return redirect(url_for("admin.sign_in_index"), code=303)
