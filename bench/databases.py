"""The database a benchmark runs on: SQLite by default, any URL, or a throwaway PostgreSQL."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="an empty database to use instead of SQLite, e.g. postgresql+psycopg://user@host/db",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="start a throwaway PostgreSQL (as the tests do) and run on it",
    )


def run_on_database(args: argparse.Namespace, run: Callable[[argparse.Namespace], None]) -> None:
    """Call run(args) with args.database_url set; a --postgres server is stopped after."""
    if not args.postgres:
        run(args)
        return
    from tests.servers.postgres import PostgresServer

    server = PostgresServer().start()
    try:
        args.database_url = server.url(server.create_database(name="bench"))
        run(args)
    finally:
        server.stop()


def bench_app(workdir: Path, database_url: str | None, **config):
    """Return the benchmark's app on `database_url` (default: SQLite in `workdir`), its schema
    upgraded as `flask init-db` does (a reused database may be older); `config` adds settings."""
    import schema
    from app import create_app

    app = create_app(
        {
            "INSTANCE_PATH": str(workdir / "instance"),
            "SQLALCHEMY_DATABASE_URI": database_url or f"sqlite:///{workdir / 'threadline.db'}",
            "SECRET_KEY": "bench",
            "SCHEDULER_ENABLED": False,
            "MAIL_ALLOWED_PORTS": None,
            **config,
        }
    )
    with app.app_context():
        schema.upgrade_database()
    return app
