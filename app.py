"""Threadline application factory: config, extensions, blueprints, CLI, scheduler."""

from __future__ import annotations

import functools
import logging
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, redirect, render_template, session, url_for
from flask_login import current_user, login_fresh, logout_user
from flask_wtf.csrf import CSRFError
from htmx_flask import make_response, request
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.middleware.proxy_fix import ProxyFix

import config
from extensions import csrf, db, htmx, login_manager, migrate
from mailsync.storage_errors import DISK_FULL, storage_problem
from services import preferences
from services.records import format_money
from services.time_display import current_zone_name, local_time
from views.form_input import ThreadlineRequest
from views.helpers import content_security_policy

# Endpoints anyone may reach without signing in; every other endpoint requires a user.
PUBLIC_ENDPOINTS = {
    "static",
    "auth.login",
    "auth.login_submit",
    "auth.setup",
    "auth.setup_submit",
    "health.healthz",
}
PUBLIC_BLUEPRINTS = {"tracking"}

CONTENT_SECURITY_POLICY = content_security_policy()


def make_instance_private(instance: Path) -> None:
    """Create the instance folder readable by this user only, and keep it that way.

    It holds the database, raw mail and the secret key. The umask covers what is created
    later by anyone in this process (SQLite's -wal/-shm files, blob folders); chmod covers
    what an older version left readable. Only the top level is tightened: a 0700 folder
    already keeps others out of everything below it, and walking all blobs would be slow.
    """
    os.umask(0o077)  # process-wide, so it is set before the database is first opened
    instance.mkdir(parents=True, exist_ok=True)
    _keep_private(instance, 0o700)
    for path in instance.iterdir():
        if path.is_symlink():
            continue  # an operator's choice (e.g. blobs on another disk); leave it alone
        _keep_private(path, 0o700 if path.is_dir() else 0o600)


def _keep_private(path: Path, mode: int) -> None:
    """Remove the permissions `path` has beyond `mode`; warn if they cannot be removed.

    A path that already has no more than `mode` is not touched, so a read-only instance
    folder (a read-only mount, or one owned by another user: `flask mail-status` on a
    backup) stays as it is instead of failing the start-up with EROFS or EPERM.
    """
    if stat.S_IMODE(path.stat().st_mode) & ~mode == 0:
        return
    try:
        path.chmod(mode)
    except OSError as exc:
        logging.getLogger("threadline").warning(
            "cannot make %s private (%s); other users of this machine may read it",
            path,
            exc.strerror,
        )


def instance_database_uri(database: Path, *, read_only: bool) -> str:
    """Return the SQLAlchemy URI of the instance's SQLite database.

    Read-only, SQLite cannot create the WAL index (-shm) next to the database, and opening
    a WAL database then fails; a database with no -wal or -shm file beside it has nothing
    in flight (no process writes it), so it is opened as immutable, which needs neither.
    """
    if not read_only:
        return f"sqlite:///{database}"
    idle = not any(Path(f"{database}{suffix}").exists() for suffix in ("-wal", "-shm"))
    return f"sqlite:///file:{database}?mode=ro{'&immutable=1' if idle else ''}&uri=true"


def create_app(test_config: dict | None = None) -> Flask:
    """Create and configure a Threadline app."""
    instance_path = (test_config or {}).get("INSTANCE_PATH") or os.environ.get(
        "THREADLINE_INSTANCE_PATH"
    )
    app = Flask(
        __name__,
        instance_path=str(Path(instance_path).resolve()) if instance_path else None,
        instance_relative_config=True,
    )
    app.config.from_object(config.DefaultConfig)
    app.config.from_pyfile("config.py", silent=True)
    app.config.update(config.environment_overrides())
    if test_config:
        app.config.update(test_config)

    instance = Path(app.instance_path)
    make_instance_private(instance)
    # A read-only instance (a read-only mount, a backup, another user's folder) can still
    # be inspected, e.g. by `flask mail-status`: nothing is created or changed at start-up.
    read_only = not os.access(instance, os.W_OK)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = config.read_or_create_secret(instance / "secret.key")
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        app.config["SQLALCHEMY_DATABASE_URI"] = instance_database_uri(
            instance / "threadline.db", read_only=read_only
        )
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})
    if app.config.get("HTTPS"):
        app.config.update(
            SESSION_COOKIE_SECURE=True,
            REMEMBER_COOKIE_SECURE=True,
            SESSION_COOKIE_NAME="__Host-session",
            # Flask-Login's cookie, should "remember me" ever be offered (R26); the
            # __Host- prefix needs Secure, Path=/ and no Domain.
            REMEMBER_COOKIE_NAME="__Host-remember_token",
            REMEMBER_COOKIE_PATH="/",
            DEVICE_COOKIE_NAME="__Host-device",
        )
    if app.config.get("TRUSTED_PROXY_HOPS"):
        # The client address (sign-in throttling) and scheme come from X-Forwarded-*: only
        # the last `hops` entries, the ones our proxies added, are believed (clients forge).
        hops = int(app.config["TRUSTED_PROXY_HOPS"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

    db.init_app(app)
    migrate.init_app(app, db)
    csrf.init_app(app)
    htmx.init_app(app)
    app.request_class = ThreadlineRequest  # htmx-flask's, with fields without NULs
    login_manager.init_app(app)
    login_manager.session_protection = "strong"
    login_manager.login_view = "auth.login"

    import models  # noqa: F401  (register tables)
    from services.search import keep_thread_index_current
    from services.unread import keep_unread_current

    # No DDL here: `flask init-db` (run by `make run`) migrates the database (schema.py).
    keep_thread_index_current(Session)
    keep_unread_current(Session)

    _register_blueprints(app)
    _register_hooks(app)
    _register_error_handlers(app)

    import cli

    cli.register(app)
    logging.getLogger("threadline").setLevel(app.config.get("LOG_LEVEL", "INFO"))

    return app


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    # WAL lets the scheduler write while pages read; busy_timeout absorbs short lock waits.
    if dbapi_connection.__class__.__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # 32 MB of page cache per connection (the default is 2 MB): a mailbox of 100,000
        # messages is ~200 MB, and list and count queries touch rows all over it.
        cursor.execute("PRAGMA cache_size=-32768")
        cursor.close()


def _register_blueprints(app: Flask) -> None:
    from views import BLUEPRINTS
    from views.helpers import DatabaseIdConverter

    # Before any route is added: rules look their converters up when they are registered.
    app.url_map.converters["id"] = DatabaseIdConverter
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)

    @app.get("/")
    def index():
        return redirect(url_for("deals.index"))


@login_manager.user_loader
def _load_user(session_id: str):
    from models import User

    user_id, _, epoch = session_id.partition(":")
    if not user_id.isdigit():
        return None
    user = db.session.get(User, int(user_id))
    if user is None or str(user.session_epoch) != epoch or user.is_deactivated:
        return None
    return user


@login_manager.unauthorized_handler
def _unauthorized():
    login_url = url_for("auth.login", next=request.full_path if request.method == "GET" else None)
    if request.htmx:
        # A 302 would be swapped into the target element; tell htmx to navigate instead.
        return make_response("", 401, redirect=login_url)
    return redirect(login_url)


def _register_hooks(app: Flask) -> None:
    from services.access import can_manage_record, linked_record_for
    from services.users import needs_setup, session_too_old

    def reject_untrusted_host():
        # A Host outside TRUSTED_HOSTS leaves no URL adapter, so no page (they all build URLs)
        # can render; answer before CSRF, login or an error page tries to (R33).
        if isinstance(request.routing_exception, SecurityError):
            return Response("Unknown host.\n", 400, mimetype="text/plain")
        return None

    app.before_request_funcs.setdefault(None, []).insert(0, reject_untrusted_host)

    @app.before_request
    def reject_cross_site_writes():
        # R25's second layer behind the CSRF token: browsers say where a write came from.
        if request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
            return None
        if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
            raise CSRFError("The request came from another site.")
        origin = request.headers.get("Origin")
        # Compare hosts only: behind a TLS proxy the scheme seen here may differ.
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise CSRFError("The request came from another origin.")
        return None

    @app.before_request
    def require_setup_and_login():
        endpoint = request.endpoint or ""
        if endpoint in PUBLIC_ENDPOINTS or endpoint.split(".")[0] in PUBLIC_BLUEPRINTS:
            return None
        if not app.extensions.get("threadline_setup_done"):
            if needs_setup():
                return redirect(url_for("auth.setup"))
            app.extensions["threadline_setup_done"] = True
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        # Flask-Login's "strong" protection only marks a permanent session non-fresh when
        # the cookie comes from another address or user agent; no sign-in here is ever
        # non-fresh otherwise (no "remember me"), so such a session ends (R26).
        moved_cookie = not login_fresh()
        # Each request renews the idle lifetime; this limit ends even a daily-used
        # session, so a stolen cookie does not work forever (R26).
        too_old = session_too_old(
            session.get("signed_in_at"),
            max_age_seconds=app.config["SESSION_ABSOLUTE_LIFETIME_SECONDS"],
        )
        if moved_cookie or too_old:
            logout_user()
            session.clear()
            return login_manager.unauthorized()
        return None

    app.add_template_filter(local_time, "local_time")
    app.add_template_global(format_money, "format_money")

    @app.context_processor
    def time_zone_unset():
        # The page asks the browser for its zone once (static/js/app.js) until one is stored.
        return {"time_zone_unset": current_user.is_authenticated and not current_zone_name()}

    @app.context_processor
    def keyboard_shortcuts():
        # Single-key shortcuts can be turned off (WCAG 2.1.4): <body data-keyboard-shortcuts>
        # tells static/js/app.js. A function, so only full pages (base.html) read the setting,
        # once per render.
        @functools.cache
        def keyboard_shortcuts_on() -> bool:
            return not current_user.is_authenticated or bool(
                preferences.get_preference(current_user, "keyboard_shortcuts")
            )

        return {"keyboard_shortcuts_on": keyboard_shortcuts_on}

    @app.context_processor
    def navigation():
        return {"nav_endpoints": set(app.blueprints)}

    @app.context_processor
    def record_permissions():
        # Templates hide the controls a user cannot use; services.records refuses them anyway.
        # A linked record (a deal's person, a lead's deal) is named only to those who can
        # open it: templates ask services.access through visible_link, never decide.
        return {
            "can_manage_record": can_manage_record,
            "visible_link": lambda record: linked_record_for(current_user, record),
        }

    @app.after_request
    def security_headers(response):
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        headers.setdefault("X-DNS-Prefetch-Control", "off")
        if request.endpoint != "static":
            headers.setdefault("Cache-Control", "no-store")
            response.vary.add("HX-Request")
            response.vary.add("HX-Target")
        if app.config.get("HTTPS"):
            headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response


def _register_error_handlers(app: Flask) -> None:
    def wants_json() -> bool:
        return request.path.startswith("/api/") or request.path == "/healthz"

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        message = "Your form expired or came from another site. Reload the page and try again."
        if request.htmx:
            return render_template("errors/flash.html", message=message), 400
        return render_template("errors/error.html", code=400, message=message), 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if wants_json():
            return jsonify(error=error.name), error.code
        messages = {
            404: "This page does not exist, or you do not have access to it.",
            405: "That action is not allowed here.",
            413: "That upload is too large.",
            429: "Too many attempts. Wait a moment and try again.",
        }
        message = messages.get(error.code or 500, error.description)
        if request.htmx:
            response = app.make_response(
                (render_template("errors/flash.html", message=message), error.code)
            )
        else:
            response = app.make_response(
                (render_template("errors/error.html", code=error.code, message=message), error.code)
            )
        for key, value in error.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        db.session.rollback()
        code, message = (
            500,
            "Something went wrong on our side. Nothing you entered was lost; try again.",
        )
        problem = storage_problem(error, app.instance_path)
        if problem is not None:  # not a bug: the disk or the database refuses writes
            code = 503
            cause = (
                "the disk holding its data is full"
                if problem.kind == DISK_FULL
                else "it cannot write its data (a read-only folder or database)"
            )
            message = (
                f"Threadline could not save this: {cause}. Ask whoever runs Threadline to fix "
                "it, then try again."
            )
        if request.htmx:
            return render_template("errors/flash.html", message=message), code
        return render_template("errors/error.html", code=code, message=message), code
