"""Settings: personal preferences and profile (mail features add their sections here)."""

from flask import Blueprint, abort, render_template, request
from flask_login import current_user

from services import preferences, users
from services.errors import ValidationError
from services.time_display import set_time_zone_from_browser
from views.helpers import render_invalid

bp = Blueprint("settings", __name__, url_prefix="/settings")


@bp.get("/")
def index():
    return render_template(
        "settings/page.html",
        specs=preferences.PREFERENCES,
        values=preferences.all_preferences(current_user),
        errors={},
        saved=False,
    )


@bp.post("/preferences")
def update():
    try:
        preferences.update_preferences(current_user, request.form.to_dict())
    except ValidationError as exc:
        return render_invalid(
            "settings/page.html",
            specs=preferences.PREFERENCES,
            values={**preferences.all_preferences(current_user), **request.form.to_dict()},
            errors=exc.errors,
            saved=False,
        )
    return render_template(
        "settings/page.html",
        specs=preferences.PREFERENCES,
        values=preferences.all_preferences(current_user),
        errors={},
        saved=True,
    )


@bp.get("/profile")
def profile():
    form = {"name": current_user.name, "phone": current_user.phone or ""}
    return render_template("settings/profile.html", form=form, errors={}, saved=False)


@bp.post("/profile")
def update_profile():
    form = {"name": request.form.get("name", ""), "phone": request.form.get("phone", "")}
    try:
        users.update_profile(current_user, name=form["name"], phone=form["phone"])
    except ValidationError as exc:
        return render_invalid("settings/profile.html", form=form, errors=exc.errors, saved=False)
    return render_template("settings/profile.html", form=form, errors={}, saved=True)


@bp.post("/time-zone")
def time_zone():
    """Store the browser's time zone the first time a page asks (static/js/app.js)."""
    name = request.form.get("time_zone", "")[:64]
    if not set_time_zone_from_browser(current_user, name):
        abort(409)
    return "", 204
