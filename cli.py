"""Flask CLI commands: `flask --app app <command> --help`."""

from __future__ import annotations

import os

import click
from flask import Flask, current_app

from extensions import db
from services import demo, users
from services.errors import ValidationError


def register(app: Flask) -> None:
    """Attach every Threadline command to `app.cli`."""
    for command in (init_db, create_user, seed_demo, serve):
        app.cli.add_command(command)


@click.command("init-db")
def init_db() -> None:
    """Create the database tables (idempotent)."""
    db.create_all()
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
        f"{summary.deals} deals, {summary.leads} leads, {summary.projects} projects."
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
    """Serve Threadline with the production WSGI server (waitress)."""
    from waitress import serve as waitress_serve

    host = host or current_app.config["HOST"]
    port = port or int(current_app.config["PORT"])
    click.echo(f"Threadline on http://{host}:{port}/")
    waitress_serve(current_app._get_current_object(), host=host, port=port, threads=threads)
