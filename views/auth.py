"""Setup of a fresh install, sign in, sign out, change own password."""

from urllib.parse import urlparse

from flask import (
    Blueprint,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_user, logout_user

from services import users
from services.errors import ValidationError
from services.throttle import ThrottlePolicy, TooManyAttempts
from views.helpers import form_value, render_invalid

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    # Only same-site paths: never redirect to another host after sign-in.
    if target and target.startswith("/") and not target.startswith("//"):
        parsed = urlparse(target)
        if not parsed.netloc and not parsed.scheme:
            return target
    return url_for("index")


def _too_many_attempts(template: str, exc: TooManyAttempts, *, errors: dict, **context):
    # One generic message: it does not say whether the account exists or which limit hit.
    errors = {**errors, "__all__": "Too many failed attempts. Wait a few minutes and try again."}
    response = render_invalid(template, status=429, errors=errors, **context)
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def start_session(user) -> None:
    """Sign `user` in to this request's session (also the tests' `login` fixture)."""
    session.clear()  # a fresh session on sign-in (no fixation)
    login_user(user)
    session.permanent = True
    session["signed_in_at"] = users.session_start_stamp()  # for the absolute lifetime


@bp.get("/setup")
def setup():
    if not users.needs_setup():
        return redirect(url_for("auth.login"))
    return render_template("auth/setup.html", errors={}, form={})


@bp.post("/setup")
def setup_submit():
    try:
        user = users.create_first_admin(
            email=form_value("email"),
            name=form_value("name"),
            password=request.form.get("password", ""),
        )
    except users.SetupAlreadyDone:
        # Someone else finished setup (maybe a moment ago, in a concurrent request).
        return redirect(url_for("auth.login"), 303)
    except ValidationError as exc:
        return render_invalid("auth/setup.html", errors=exc.errors, form=request.form)
    start_session(user)
    return redirect(url_for("index"))


@bp.get("/login")
def login():
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", errors={}, form={}, next=request.args.get("next", ""))


@bp.post("/login")
def login_submit():
    email = form_value("email")
    next_url = request.form.get("next", "")
    config = current_app.config
    try:
        signed_in = users.authenticate(
            email=email,
            password=request.form.get("password", ""),
            ip=request.remote_addr or "unknown",
            device_token=request.cookies.get(config["DEVICE_COOKIE_NAME"]),
            secret_key=current_app.secret_key,
            policy=ThrottlePolicy.from_config(config),
        )
    except TooManyAttempts as exc:
        return _too_many_attempts(
            "auth/login.html", exc, errors={}, form={"email": email}, next=next_url
        )
    if signed_in is None:
        return render_invalid(
            "auth/login.html",
            status=401,
            errors={"__all__": "Wrong email or password."},
            form={"email": email},
            next=next_url,
        )
    start_session(signed_in.user)
    response = redirect(_safe_next(next_url))
    # Long-lived and apart from the session, so it survives sign-out: this browser stays
    # known to the account and is not slowed by other clients' failures.
    response.set_cookie(
        config["DEVICE_COOKIE_NAME"],
        signed_in.device_token,
        max_age=config["DEVICE_TOKEN_MAX_AGE_SECONDS"],
        path="/",
        secure=bool(config.get("SESSION_COOKIE_SECURE")),
        httponly=True,
        samesite="Lax",
    )
    return response


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        users.end_all_sessions(
            current_user._get_current_object(), ip=request.remote_addr or "unknown"
        )
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


@bp.get("/account/password")
def password():
    return render_template("auth/password.html", errors={}, done=False)


@bp.post("/account/password")
def password_submit():
    user = current_user._get_current_object()
    try:
        users.change_password(
            user,
            current=request.form.get("current", ""),
            new=request.form.get("new", ""),
            confirm=request.form.get("confirm", ""),
            ip=request.remote_addr or "unknown",
            policy=ThrottlePolicy.from_config(current_app.config),
        )
    except TooManyAttempts as exc:
        return _too_many_attempts("auth/password.html", exc, errors={}, done=False)
    except ValidationError as exc:
        return render_invalid("auth/password.html", errors=exc.errors, done=False)
    login_user(user)  # keep this session alive under the new epoch; others are ended
    return render_template("auth/password.html", errors={}, done=True)
