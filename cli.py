"""Flask CLI commands: `flask --app app <command> --help`."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
from datetime import UTC
from pathlib import Path

import click
from flask import Flask, current_app

import config
import models
import schema
from extensions import db
from mailsync import reparse
from models import User
from services import accounts, demo, users
from services.errors import ValidationError


def register(app: Flask) -> None:
    """Attach every Threadline command to `app.cli`."""
    commands = (
        init_db,
        create_user,
        seed_demo,
        serve,
        worker,
        sync_worker,
        add_account,
        sync,
        mail_status,
        reencrypt_mail_passwords,
    )
    for command in commands:
        app.cli.add_command(command)


@click.command("init-db")
def init_db() -> None:
    """Create or upgrade the database to this release's schema (idempotent)."""
    schema.upgrade_database()
    reparsed = reparse.reparse_all(current_app)
    if reparsed:
        click.echo(f"{reparsed} stored messages parsed again by this release.")
    click.echo(f"Database ready: {current_app.config['SQLALCHEMY_DATABASE_URI']}")


@click.command("create-user")
@click.argument("email")
@click.option("--name", required=True, help="Display name.")
@click.option("--admin", is_flag=True, help="Make the user an administrator.")
def create_user(email: str, name: str, admin: bool) -> None:
    """Create a user; the password comes from THREADLINE_PASSWORD or a prompt."""
    password = os.environ.get("THREADLINE_PASSWORD") or click.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )
    try:
        user = users.create_user(email=email, name=name, password=password, is_admin=admin)
    except ValidationError as exc:
        raise click.ClickException("; ".join(exc.errors.values())) from exc
    click.echo(f"Created {'admin' if user.is_admin else 'user'} {user.email} (id {user.id}).")


@click.command("seed-demo")
def seed_demo() -> None:
    """Fill a fresh database with a demo sales team, people, organizations and deals."""
    try:
        summary = demo.seed_demo()
    except ValidationError as exc:
        raise click.ClickException("; ".join(exc.errors.values())) from exc
    click.echo(
        f"Demo data ready: {summary.organizations} organizations, {summary.persons} people, "
        f"{summary.deals} deals, {summary.leads} leads, {summary.projects} projects, and a "
        f"demo mailbox of {summary.conversations} conversations for {summary.users[0][1]} "
        "(paused: it has no mail server behind it)."
    )
    click.echo("Sign in as any of:")
    for name, email, is_admin in summary.users:
        click.echo(f"  {email}  ({name}{', admin' if is_admin else ''})")
    click.echo(f"Password for all of them: {summary.password}")


@click.command("serve")
@click.option("--host", default=None, help="Bind address (default THREADLINE_HOST or 0.0.0.0).")
@click.option("--port", default=None, type=int, help="Port (default THREADLINE_PORT or 5000).")
@click.option("--threads", default=8, show_default=True, help="Worker threads.")
def serve(host: str | None, port: int | None, threads: int) -> None:
    """Serve Threadline (waitress) and supervise its one background worker process.

    With THREADLINE_SCHEDULER_ENABLED=0 only the web server runs: a layout of several web
    processes then runs exactly one `flask worker` beside them.
    """
    from waitress import serve as waitress_serve

    from worker import Supervisor

    _require_current_schema()
    logging.basicConfig(level=logging.INFO, format=config.LOG_FORMAT)
    app = current_app._get_current_object()
    supervisor = Supervisor() if app.config.get("SCHEDULER_ENABLED") else None
    # waitress ends on SIGINT (KeyboardInterrupt) only; SIGTERM must stop the worker too.
    signal.signal(signal.SIGTERM, _interrupt)
    host = host or app.config["HOST"]
    port = port or int(app.config["PORT"])
    click.echo(f"Threadline on http://{host}:{port}/")
    keep_startup_objects_out_of_gc()
    if supervisor is not None:
        supervisor.start()
    try:
        waitress_serve(app, host=host, port=port, threads=threads)
    except KeyboardInterrupt:
        pass
    finally:
        if supervisor is not None:
            supervisor.stop()


def keep_startup_objects_out_of_gc() -> None:
    """Move every object alive now (modules, mappers, templates...) out of the garbage
    collector's view before serving.

    They live as long as the process; without this, each full collection walks all of them
    and pauses the request it lands in for ~55 ms (bench/RESULTS.md). Not for tests, which
    build many apps in one process: frozen objects are never freed.
    """
    gc.collect()
    gc.freeze()


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt()


@click.command("worker")
def worker() -> None:
    """Run the background worker in the foreground until SIGTERM or Ctrl-C.

    It runs every piece of background work: the sync schedule, "Sync now" and the Mail
    tab's write-backs to the mail server. Run exactly one beside any number of web
    processes started with THREADLINE_SCHEDULER_ENABLED=0 (`flask serve` otherwise starts it).
    """
    from worker import run_worker

    _require_current_schema()
    logging.basicConfig(level=logging.INFO, format=config.LOG_FORMAT)
    click.echo("Threadline worker running; Ctrl-C or SIGTERM stops it.")
    run_worker(current_app._get_current_object())
    click.echo("Threadline worker stopped.")


sync_worker = click.Command(
    "sync-worker",
    callback=worker.callback,
    help="The same as `worker` (its former name).",
)


@click.command("add-account")
@click.argument("user_email")
@click.option("--imap-host", required=True, help="IMAP server name.")
@click.option("--imap-port", type=int, default=993, show_default=True)
@click.option(
    "--security", type=click.Choice(["ssl", "starttls"]), default="ssl", show_default=True
)
@click.option("--username", required=True, help="IMAP login name.")
@click.option("--email", "email_address", help="Mailbox address (default: the username).")
@click.option("--provider", default="other", show_default=True, help="Preset key.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), help="Private CA (PEM).")
@click.option("--smtp-host")
@click.option("--smtp-port", type=int)
@click.option("--smtp-security", type=click.Choice(["ssl", "starttls"]))
@click.option("--folders", default="all", show_default=True, help="all, or INBOX,Sent,...")
@click.option("--since", type=click.Choice([v for v, _ in accounts.SINCE_CHOICES]), default="3m")
def add_account(user_email: str, **options) -> None:
    """Connect a mailbox for a user; the password comes from THREADLINE_MAIL_PASSWORD or a prompt.

    The connection is tested first; on failure the reason is printed and the exit code is 1.
    """
    user = db.session.scalar(db.select(User).where(User.email == user_email.strip().lower()))
    if user is None:
        raise click.ClickException(f"No user {user_email}.")
    password = os.environ.get("THREADLINE_MAIL_PASSWORD") or click.prompt(
        "Mailbox password", hide_input=True
    )
    ca_file = options.pop("ca_file")
    folders = options.pop("folders").strip()
    options["email_address"] = options["email_address"] or options["username"]
    options["imap_security"] = options.pop("security")
    try:
        account = accounts.create_account(
            user,
            app=current_app._get_current_object(),
            password=password,
            ca_cert_pem=Path(ca_file).read_text() if ca_file else None,
            folder_mode="all" if folders == "all" else "chosen",
            chosen_folders=[] if folders == "all" else [f.strip() for f in folders.split(",")],
            **options,
        )
    except (ValidationError, accounts.RateLimited) as exc:
        reasons = exc.errors.values() if isinstance(exc, ValidationError) else [str(exc)]
        raise click.ClickException(" ".join(reasons)) from exc
    # No sync from here: this command exits at once, which would cut a background sync off
    # mid-pass (holding the account's lease). The running server picks the account up.
    click.echo(
        f"Connected {account.email_address} (account {account.id}); the running Threadline "
        f"syncs it within {current_app.config['SYNC_INTERVAL_SECONDS']} s, or run "
        f"`flask --app app sync --account {account.id}` to sync it now."
    )


def _require_current_schema() -> None:
    """Refuse to start on a database this release has not migrated (schema.py)."""
    try:
        schema.require_current()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def _stop_foreground_sync(_signum, _frame) -> None:
    """End a `flask sync` pass on SIGTERM the way Ctrl-C does (lease released, run marked)."""
    import jobs

    raise jobs.SyncInterrupted()


@click.command("sync")
@click.option("--account", "account_id", type=int, help="Sync only this account id.")
@click.option(
    "--all",
    "all_accounts",
    is_flag=True,
    help="Sync every due account; say which others are skipped, and why.",
)
@click.option("--budget", default=3600, show_default=True, help="Time budget in seconds.")
def sync(account_id: int | None, all_accounts: bool, budget: int) -> None:
    """Run one mail sync pass in the foreground; exit non-zero if any account fails."""
    import jobs
    from models import MailAccount

    if account_id is None and not all_accounts:
        raise click.UsageError("Give --account ID or --all.")
    _require_current_schema()
    failed = False
    if account_id is not None:
        if db.session.get(MailAccount, account_id) is None:
            raise click.ClickException(f"No mail account with id {account_id}.")
        ids = [account_id]
    else:
        ids = jobs.due_account_ids()
        # Say which accounts are not due, why and until when; exit non-zero for those held
        # back by a failure (a paused account is the user's choice).
        for account in _accounts_not_due(ids):
            click.echo(
                f"account {account.id} ({account.email_address}): skipped, {_skip_reason(account)}"
            )
            failed = failed or account.sync_state != models.SYNC_PAUSED
    db.session.commit()
    app = current_app._get_current_object()
    signal.signal(signal.SIGTERM, _stop_foreground_sync)
    for one_id in ids:
        with click.progressbar(length=1, label=f"account {one_id}") as bar:
            seen: dict[str, int] = {}

            def progress(
                folder: str, done: int, total: int, bar=bar, seen=seen, one_id=one_id
            ) -> None:
                bar.label = f"account {one_id} {folder}"
                bar.length = max(total, 1)
                bar.update(done - seen.get(folder, 0))
                seen[folder] = done

            try:
                result = jobs.run_account_sync(
                    app, one_id, budget_seconds=budget, progress=progress
                )
            except (KeyboardInterrupt, jobs.SyncInterrupted) as exc:
                # run_account_sync already released the lease and marked the run interrupted.
                click.echo(f"\naccount {one_id}: interrupted; run again to continue", err=True)
                signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
                raise SystemExit(128 + signum) from None
        if result is None:
            click.echo(f"account {one_id}: already syncing elsewhere, skipped")
            failed = True
        elif result.error:
            click.echo(f"account {one_id}: FAILED: {result.error}", err=True)
            failed = True
        else:
            partial = "" if result.complete else " (time budget reached; run again to continue)"
            click.echo(
                f"account {one_id}: {result.new} new, {result.changed} changed, "
                f"{result.deleted} deleted{partial}"
            )
    if failed:
        raise SystemExit(1)


def _accounts_not_due(due_ids: list[int]) -> list[models.MailAccount]:
    """Return the accounts (not removed ones) that a `sync --all` pass leaves out."""
    return list(
        db.session.scalars(
            db.select(models.MailAccount)
            .where(
                models.MailAccount.id.not_in(due_ids),
                models.MailAccount.removed_at.is_(None),
            )
            .order_by(models.MailAccount.id)
        )
    )


def _skip_reason(account: models.MailAccount) -> str:
    """Say in plain words why an account is not synced now, and until when."""
    if account.sync_state == models.SYNC_RUNNING and account.backoff_until is not None:
        until = account.backoff_until.astimezone(UTC).strftime("%H:%M UTC")
        reason = f"retrying after a failure until {until}"
        return f"{reason} ({account.last_error})" if account.last_error else reason
    label = accounts.STATE_LABELS.get(account.sync_state, account.sync_state).lower()
    fix = accounts.STATE_FIXES.get(account.sync_state)
    return f"{label}: {fix}" if fix else label


def _when(value) -> str | None:
    return value.isoformat() if value else None


@click.command("mail-status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def mail_status(as_json: bool) -> None:
    """Show each mail account's sync state and per-folder server/stored counts."""
    from sqlalchemy import select

    from mailsync.store import folder_stored_counts
    from models import MailAccount

    accounts = []
    for account in db.session.scalars(select(MailAccount).order_by(MailAccount.id)):
        stored = folder_stored_counts(account.id)
        accounts.append(
            {
                "id": account.id,
                "email": account.email_address,
                "state": account.sync_state,
                "last_success_at": _when(account.last_success_at),
                "last_error": account.last_error,
                "backoff_until": _when(account.backoff_until),
                "folders": [
                    {
                        "name": folder.name,
                        "role": folder.role,
                        "sync_enabled": folder.sync_enabled,
                        "gone": folder.state == "gone",
                        "server_count": folder.server_message_count,
                        "stored_count": stored.get(folder.id, 0),
                        "not_synced": folder.server_not_stored,
                        "backfill_done": folder.backfill_done,
                        "backfill_total": folder.backfill_total,
                        "last_error": folder.last_error,
                    }
                    for folder in sorted(account.folders, key=lambda f: f.name)
                ],
            }
        )
    if as_json:
        click.echo(json.dumps({"accounts": accounts}, indent=2))
        return
    for account in accounts:
        click.echo(
            f"{account['id']} {account['email']}: {account['state']}, "
            f"last success {account['last_success_at'] or 'never'}"
        )
        if account["last_error"]:
            click.echo(f"  last error: {account['last_error']}")
        for folder in account["folders"]:
            if folder["gone"]:
                click.echo(f"  {folder['name']}: gone from the server")
            elif folder["sync_enabled"]:
                line = (
                    f"  {folder['name']}: server {folder['server_count']}, "
                    f"stored {folder['stored_count']}"
                )
                if folder["not_synced"]:
                    line += (
                        f" ({folder['not_synced']} on the server not synced: flagged deleted, "
                        "older than the sync horizon, or failed to download)"
                    )
                click.echo(line)


@click.command("reencrypt-mail-passwords")
def reencrypt_mail_passwords() -> None:
    """Re-encrypt stored mail passwords with the newest key (README: rotating the mail key)."""
    result = accounts.reencrypt_mail_passwords(current_app._get_current_object())
    click.echo(f"{result.reencrypted} mail password(s) re-encrypted with the newest key.")
    if result.unreadable_account_ids:
        ids = ", ".join(map(str, result.unreadable_account_ids))
        click.echo(
            f"No key reads the password of account(s) {ids}; their owners must enter it again.",
            err=True,
        )
    if result.unreadable_oauth_clients:
        click.echo(
            "No key reads the OAuth2 client secret for "
            f"{', '.join(result.unreadable_oauth_clients)}; enter it again in Admin > Mail "
            "sign-in.",
            err=True,
        )
