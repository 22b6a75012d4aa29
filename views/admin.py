"""Admin: the team's users (add, make admin, deactivate)."""

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_login import current_user

from extensions import db
from models import User
from services import users
from services.errors import ValidationError
from views.helpers import form_value, render_invalid

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
