"""Email accounts: add (test, then choose folders), status page, re-auth, pause, remove.

URL table (prefix /settings/accounts):
  GET  /                       index            the user's mailboxes
  GET  /new                    new              step 1: provider, credentials, server
  POST /new/preset             preset           apply a provider preset without JS
  GET  /new/server-fields      server_fields    fragment: preset server fields (htmx)
  POST /new/test               test             test the connection -> step 2: folders
  POST /                       create           save the tested account
  GET  /<id>                   show             status page (troubleshooting)
  GET  /<id>/progress          progress         fragment: progress bar, polled
  POST /<id>/sync              sync             Sync now
  POST /<id>/pause|resume      pause, resume
  GET  /<id>/reauth            reauth_form      re-enter password
  POST /<id>/reauth            reauth
  GET  /<id>/smtp              smtp_form        outgoing (SMTP) server, filled from the preset
  POST /<id>/smtp              smtp_update      test, then save it
  GET  /<id>/folders           folders_form     choose folders and horizon again
  POST /<id>/folders           folders_update
  GET  /<id>/remove            remove_form      keep or delete synced mail?
  POST /<id>/remove            remove
  POST /oauth/<provider>       oauth_start      "Sign in with Google / Microsoft"
  POST /<id>/oauth             oauth_again      "Sign in again" (same account, settings kept)
  GET  /oauth/callback         oauth_callback   the provider sends the browser back here
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user

from mailsync.folders import ServerFolder
from mailsync.providers import PROVIDERS, get_provider, oauth_provider_for_preset
from services import access, accounts, linking, oauth, signatures
from services.accounts import RateLimited
from services.errors import ValidationError
from views.helpers import (
    content_security_policy,
    form_value,
    oauth_redirect_uri,
    parse_float,
    parse_int,
    render_invalid,
    render_page_or_fragment,
)

bp = Blueprint("accounts", __name__, url_prefix="/settings/accounts")

STEP_TWO_FIELDS = ("folder_mode", "chosen_folders", "since")


@bp.app_context_processor
def attention_banner() -> dict:
    """Give base.html the accounts that need new credentials (the re-auth banner)."""
    if not current_user.is_authenticated:
        return {}
    return {"reauth_accounts": accounts.accounts_needing_attention(current_user)}


@bp.after_request
def allow_sign_in_redirects(response):
    """Widen the app CSP's form-action to the sign-in providers' authorization pages: browsers
    apply form-action to a form's redirects too, and "Sign in with ..." is a form (POST, CSRF)
    answered with a redirect to the provider."""
    if response.mimetype == "text/html" and current_user.is_authenticated:
        origins = sorted(
            {
                "{0.scheme}://{0.netloc}".format(urlsplit(provider.authorize_url))
                for provider in oauth.configured_providers(current_app)
            }
        )
        if origins:
            response.headers["Content-Security-Policy"] = content_security_policy(
                form_action=" ".join(origins)
            )
    return response


def _choices() -> dict:
    return {
        "providers": PROVIDERS,
        "oauth_providers": oauth.configured_providers(current_app),
        "since_choices": accounts.SINCE_CHOICES,
        "security_choices": accounts.SECURITY_CHOICES,
    }


def _server_form() -> dict:
    """Read step 1's fields (never the password) as create_account keyword arguments."""
    upload = request.files.get("ca_cert")
    ca = upload.read(accounts.CA_CERT_MAX_BYTES + 1) if upload and upload.filename else b""
    return {
        "provider": form_value("provider", "other"),
        "email_address": form_value("email_address"),
        "username": form_value("username"),
        "imap_host": form_value("imap_host"),
        "imap_port": parse_int(form_value("imap_port")),
        "imap_security": form_value("imap_security"),
        "smtp_host": form_value("smtp_host"),
        "smtp_port": parse_int(form_value("smtp_port")),
        "smtp_security": form_value("smtp_security"),
        "ca_cert_pem": ca.decode("latin-1") if ca else form_value("ca_cert_pem") or None,
    }


def _step_one(form: dict, errors: dict, status: int = 422, headers: dict | None = None):
    response = render_invalid("accounts/new.html", status, form=form, errors=errors, **_choices())
    response.headers.update(headers or {})
    return response


def _folder_context(folders: list[ServerFolder], mode: str, chosen: list[str], since: str):
    return {
        "folders": folders,
        "folders_json": json.dumps([[f.name, f.role] for f in folders]),
        "selected": {"folder_mode": mode, "chosen_folders": chosen, "since": since},
        **_choices(),
    }


def _step_two(form: dict, folders: list[ServerFolder], token: str, errors: dict, status=200):
    chosen = request.form.getlist("chosen_folders")
    context = _folder_context(folders, form.get("folder_mode", "all"), chosen, form.get("since"))
    return render_invalid(
        "accounts/choose.html", status, form=form, password_token=token, errors=errors, **context
    )


def _posted_folders() -> list[ServerFolder]:
    try:
        pairs = json.loads(request.form.get("folders_json") or "[]")
        return [ServerFolder(str(name), None, (), role) for name, role in pairs]
    except (TypeError, ValueError):
        return []


@bp.get("/")
def index():
    mine = accounts.list_accounts(current_user)
    progress = {account.id: accounts.account_progress(account) for account in mine}
    return render_template("accounts/index.html", accounts=mine, progress=progress)


@bp.get("/new")
def new():
    provider = get_provider(request.args.get("provider"))
    form = {
        "provider": provider.key,
        **provider.settings_for(request.args.get("email_address", "")),
    }
    return render_template("accounts/new.html", form=form, errors={}, **_choices())


@bp.post("/new/preset")
def preset():
    form = _server_form()
    form.update(get_provider(form["provider"]).settings_for(form["email_address"]))
    return render_template("accounts/new.html", form=form, errors={}, **_choices())


@bp.get("/new/server-fields")
def server_fields():
    provider = get_provider(request.args.get("provider"))
    form = {
        "provider": provider.key,
        **provider.settings_for(request.args.get("email_address", "")),
    }
    return render_template("accounts/partials/server_fields.html", form=form, **_choices())


@bp.post("/new/test")
def test():
    form = _server_form()
    password = request.form.get("password", "")
    try:
        folders = accounts.check_connection(
            current_user, app=current_app, password=password, **form
        )
    except ValidationError as exc:
        return _step_one(form, exc.errors)
    except RateLimited as exc:
        return _step_one(form, {"__all__": exc.message}, 429, {"Retry-After": str(exc.retry_after)})
    token = accounts.seal_password(current_app, current_user, password)
    return _step_two(form, folders, token, {})


@bp.post("/")
def create():
    form = _server_form()
    choice = {
        "folder_mode": form_value("folder_mode", "all"),
        "since": form_value("since", accounts.DEFAULT_SINCE),
    }
    try:
        password = accounts.open_sealed_password(
            current_app, current_user, request.form.get("password_token", "")
        )
        account = accounts.create_account(
            current_user, app=current_app, password=password,
            chosen_folders=request.form.getlist("chosen_folders"), **form, **choice,
        )  # fmt: skip
    except ValidationError as exc:
        if set(exc.errors) <= set(STEP_TWO_FIELDS):
            token = request.form.get("password_token", "")
            return _step_two({**form, **choice}, _posted_folders(), token, exc.errors, 422)
        return _step_one(form, exc.errors)
    except RateLimited as exc:
        return _step_one(form, {"__all__": exc.message}, 429, {"Retry-After": str(exc.retry_after)})
    accounts.request_sync(account.id)
    return redirect(url_for("accounts.show", account_id=account.id), code=303)


@bp.get("/<id:account_id>")
def show(account_id: int):
    account = access.account_for(current_user, account_id)
    return render_template(
        "accounts/show.html",
        account=account,
        aliases=linking.account_addresses(current_user, account),
        alias_errors={},
        signatures=signatures.account_signatures(account),
        **_live_status(account),
    )


@bp.get("/<id:account_id>/status")
def status(account_id: int):
    """The live part of the status page, polled while a sync runs."""
    account = access.account_for(current_user, account_id)
    return render_template(
        "accounts/partials/status.html", account=account, **_live_status(account)
    )


@bp.get("/<id:account_id>/runs/<id:run_id>")
def run_log(account_id: int, run_id: int):
    """Which messages one sync pass added, changed or removed."""
    account = access.account_for(current_user, account_id)
    run, entries = accounts.sync_run_log(account, run_id)
    return render_template("accounts/run.html", account=account, run=run, entries=entries)


@bp.get("/<id:account_id>/folders/<id:folder_id>/check")
def folder_check(account_id: int, folder_id: int):
    """A folder compared with the server: what one side has and the other lacks."""
    account = access.account_for(current_user, account_id)
    folder, check = accounts.folder_check(account, folder_id)
    return render_page_or_fragment(
        "accounts/check.html",
        "accounts/partials/check.html",
        targets=("folder-check",),
        account=account,
        folder=folder,
        check=check,
    )


@bp.post("/<id:account_id>/folders/<id:folder_id>/check")
def request_folder_check(account_id: int, folder_id: int):
    account = access.account_for(current_user, account_id)
    accounts.request_folder_check(current_user, account, folder_id)
    return redirect(
        url_for("accounts.folder_check", account_id=account.id, folder_id=folder_id), code=303
    )


@bp.post("/<id:account_id>/folders/<id:folder_id>/fetch-again")
def fetch_again(account_id: int, folder_id: int):
    account = access.account_for(current_user, account_id)
    count = accounts.fetch_again(current_user, account, folder_id)
    if count:
        flash(
            f"{count} messages will be fetched again by the next sync, which starts now. "
            "Compare again once it is done.",
            "ok",
        )
    else:
        flash("Nothing to fetch again: compare the folder with the server first.", "ok")
    return redirect(
        url_for("accounts.folder_check", account_id=account.id, folder_id=folder_id), code=303
    )


def _live_status(account) -> dict:
    """The status with what keeps it live: the poll URL (carrying where progress stood when
    polling began, for the time-left estimate) and that estimate."""
    status = accounts.account_status(
        account,
        interval_seconds=current_app.config["SYNC_INTERVAL_SECONDS"],
        idle_refresh_seconds=current_app.config["IDLE_REFRESH_SECONDS"],
    )
    now = time.time()
    start_done = parse_int(request.args.get("start_done"))
    start_at = parse_float(request.args.get("start_at"))
    progress = status["progress"]
    if start_done is None or start_done > progress.done:
        start_done, start_at = progress.done, now
    poll_url = url_for(
        "accounts.status", account_id=account.id, start_done=start_done, start_at=f"{start_at:.0f}"
    )
    return {
        "status": status,
        "live": accounts.status_is_live(status),
        "poll_url": poll_url,
        "eta_label": accounts.time_left_label(progress, start_done, start_at, now),
    }


@bp.post("/<id:account_id>/addresses")
def add_address(account_id: int):
    account = access.account_for(current_user, account_id)
    try:
        linking.add_own_address(current_user, account, request.form.get("address", "")[:320])
    except ValidationError as exc:
        page = render_template(
            "accounts/show.html",
            account=account,
            aliases=linking.account_addresses(current_user, account),
            alias_errors=exc.errors,
            signatures=signatures.account_signatures(account),
            **_live_status(account),
        )
        return page, 422
    return redirect(url_for("accounts.show", account_id=account.id, _anchor="addresses"), code=303)


@bp.post("/<id:account_id>/addresses/<id:address_id>/remove")
def remove_address(account_id: int, address_id: int):
    account = access.account_for(current_user, account_id)
    linking.remove_own_address(current_user, address_id)
    return redirect(url_for("accounts.show", account_id=account.id, _anchor="addresses"), code=303)


@bp.get("/<id:account_id>/progress")
def progress(account_id: int):
    account = access.account_for(current_user, account_id)
    in_list = request.args.get("bar") == "1"  # one of the accounts list's bars
    return render_template(
        "accounts/partials/progress.html",
        progress=accounts.account_progress(account),
        poll_url=url_for("accounts.progress", account_id=account.id, bar=1 if in_list else None),
        progress_id=f"sync-progress-{account.id}" if in_list else None,
        compact=in_list,
    )


@bp.post("/<id:account_id>/sync")
def sync(account_id: int):
    account = access.account_for(current_user, account_id)
    accounts.request_sync(account.id)
    return redirect(url_for("accounts.show", account_id=account.id), code=303)


@bp.post("/<id:account_id>/pause")
def pause(account_id: int):
    account = access.account_for(current_user, account_id)
    accounts.pause_account(current_user, account)
    return redirect(url_for("accounts.show", account_id=account.id), code=303)


@bp.post("/<id:account_id>/resume")
def resume(account_id: int):
    account = access.account_for(current_user, account_id)
    accounts.resume_account(current_user, account)
    accounts.request_sync(account.id)
    return redirect(url_for("accounts.show", account_id=account.id), code=303)


@bp.get("/<id:account_id>/reauth")
def reauth_form(account_id: int):
    account = access.account_for(current_user, account_id)
    return render_template("accounts/reauth.html", account=account, form={}, errors={})


@bp.post("/<id:account_id>/reauth")
def reauth(account_id: int):
    account = access.account_for(current_user, account_id)
    form = {"username": form_value("username")}
    try:
        accounts.update_credentials(
            current_user, account, request.form.get("password", ""), app=current_app, **form
        )
    except (ValidationError, RateLimited) as exc:
        errors = getattr(exc, "errors", {"__all__": str(exc)})
        status = 429 if isinstance(exc, RateLimited) else 422
        return render_invalid(
            "accounts/reauth.html", status, account=account, form=form, errors=errors
        )
    accounts.request_sync(account.id)
    return redirect(url_for("accounts.show", account_id=account.id), code=303)


@bp.get("/<id:account_id>/smtp")
def smtp_form(account_id: int):
    account = access.account_for(current_user, account_id)
    return render_template(
        "accounts/smtp.html", account=account, form=accounts.smtp_form(account), errors={},
        **_choices(),
    )  # fmt: skip


@bp.post("/<id:account_id>/smtp")
def smtp_update(account_id: int):
    account = access.account_for(current_user, account_id)
    form = {
        "smtp_host": form_value("smtp_host"),
        "smtp_port": parse_int(form_value("smtp_port")),
        "smtp_security": form_value("smtp_security"),
        "smtp_username": form_value("smtp_username"),
        "files_sent_copy": request.form.get("smtp_files_sent_copy") == "1",
        "max_message_mb": parse_float(form_value("max_message_mb")),
    }
    try:
        accounts.update_smtp_settings(
            current_user, account, app=current_app,
            smtp_password=request.form.get("smtp_password", ""), **form,
        )  # fmt: skip
    except (ValidationError, RateLimited) as exc:
        errors = getattr(exc, "errors", {"__all__": str(exc)})
        status = 429 if isinstance(exc, RateLimited) else 422
        shown = {**form, "smtp_files_sent_copy": form["files_sent_copy"]}
        shown["max_message_mb"] = form_value("max_message_mb")
        return render_invalid(
            "accounts/smtp.html", status, account=account, form=shown, errors=errors, **_choices()
        )
    return redirect(url_for("accounts.show", account_id=account.id), code=303)


@bp.get("/<id:account_id>/folders")
def folders_form(account_id: int):
    account = access.account_for(current_user, account_id)
    try:
        folders, errors = accounts.server_folders(current_user, account, app=current_app), {}
    except (ValidationError, RateLimited) as exc:
        folders, errors = [], getattr(exc, "errors", {"__all__": str(exc)})
    context = _folder_context(folders, account.folder_mode, account.chosen_folders, account.since)
    return render_template(
        "accounts/folders.html",
        account=account,
        errors=errors,
        # Step 2 of adding a mailbox with "Sign in with ..." (the password flow's step 2 is
        # accounts/choose.html, before the account exists).
        just_connected=request.args.get("connected") == "1",
        **context,
    )


@bp.post("/<id:account_id>/folders")
def folders_update(account_id: int):
    account = access.account_for(current_user, account_id)
    folders = _posted_folders()
    mode, chosen, since = (
        form_value("folder_mode"), request.form.getlist("chosen_folders"), form_value("since")
    )  # fmt: skip
    try:
        accounts.update_sync_settings(
            current_user, account, folder_mode=mode, chosen_folders=chosen, since=since,
            available=folders,
        )  # fmt: skip
    except ValidationError as exc:
        context = _folder_context(folders, mode, chosen, since)
        return render_invalid(
            "accounts/folders.html", account=account, errors=exc.errors, **context
        )
    return redirect(url_for("accounts.show", account_id=account.id), code=303)


@bp.get("/<id:account_id>/remove")
def remove_form(account_id: int):
    account = access.account_for(current_user, account_id)
    return render_template("accounts/remove.html", account=account)


@bp.post("/<id:account_id>/remove")
def remove(account_id: int):
    account = access.account_for(current_user, account_id)
    warning = accounts.remove_account(
        current_user, account, keep_mail=request.form.get("keep_mail") != "0", app=current_app
    )
    if warning:
        flash(warning, "warn")
    return redirect(url_for("accounts.index"), code=303)


# --------------------------------------------------------------------------- OAuth2 sign-in

OAUTH_FLOW = "oauth_flow"  # session key: what the callback must check


def _send_to_provider(key: str, account_id: int | None):
    authorization = oauth.start_authorization(current_app, key, redirect_uri=oauth_redirect_uri())
    session[OAUTH_FLOW] = {
        "provider": key,
        "state": authorization.state,
        "verifier": authorization.code_verifier,
        "account_id": account_id,
    }
    return redirect(authorization.url, code=303)


@bp.post("/oauth/<provider>")
def oauth_start(provider: str):
    try:
        return _send_to_provider(provider, None)
    except ValidationError as exc:
        return _step_one({"provider": "other"}, exc.errors)


@bp.post("/<id:account_id>/oauth")
def oauth_again(account_id: int):
    account = access.account_for(current_user, account_id)
    key = oauth_provider_for_preset(account.provider)
    try:
        if key is None:
            raise ValidationError({"__all__": "This mailbox does not sign in with OAuth2."})
        return _send_to_provider(key, account.id)
    except ValidationError as exc:
        return render_invalid("accounts/reauth.html", account=account, form={}, errors=exc.errors)


@bp.get("/oauth/callback")
def oauth_callback():
    flow = session.pop(OAUTH_FLOW, None)
    if not flow:  # used up or never started here (the back button, a bookmark)
        flash("That sign-in has expired or was not started here. Start it again.", "error")
        return redirect(url_for("accounts.new"), code=303)
    account = None
    if flow.get("account_id"):
        account = access.account_for(current_user, flow["account_id"])
    try:
        tokens = oauth.finish_callback(
            current_app,
            flow,
            redirect_uri=oauth_redirect_uri(),
            state=request.args.get("state", ""),
            code=request.args.get("code", ""),
            error=request.args.get("error", ""),
        )
        if account is not None:
            accounts.reauthorize_oauth_account(
                current_user, account, app=current_app, tokens=tokens
            )
        else:
            account = accounts.create_oauth_account(
                current_user, app=current_app, oauth_key=flow["provider"], tokens=tokens
            )
    except (ValidationError, RateLimited) as exc:
        errors = getattr(exc, "errors", {"__all__": str(exc)})
        status = 429 if isinstance(exc, RateLimited) else 422
        if account is not None:
            return render_invalid(
                "accounts/reauth.html", status, account=account, form={}, errors=errors
            )
        return _step_one({"provider": "other"}, errors, status)
    accounts.request_sync(account.id)
    if flow.get("account_id"):  # signed in again: back to its page
        return redirect(url_for("accounts.show", account_id=account.id), code=303)
    # A new mailbox: its newest mail is already coming in; the user chooses folders and
    # history next, as after a password sign-in.
    return redirect(url_for("accounts.folders_form", account_id=account.id, connected=1), code=303)
