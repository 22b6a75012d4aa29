"""Alembic environment for Threadline, run by Flask-Migrate (`flask db ...`) and schema.py.

The database is the app's (Flask-SQLAlchemy's engine); schema.py hands in a connection it
already holds (config.attributes["connection"]), so a migration runs inside its lock.
"""

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

import legacy_schema
import schema
from services.search import is_search_table

config = context.config
# Keep the app's loggers (threadline.*) working after Alembic sets up its own.
fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")

target_db = current_app.extensions["migrate"].db


def include_object(obj, name, type_, reflected, compare_to):
    # The search tables are built by services/search.py, not by models: never drop them.
    return not (type_ == "table" and is_search_table(name))


def process_revision_directives(context, revision, directives):
    # `flask db migrate` with no model change writes no empty revision.
    if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
        directives[:] = []
        logger.info("No changes in schema detected.")


def run_migrations(connection) -> None:
    conf_args = dict(current_app.extensions["migrate"].configure_args)
    conf_args.setdefault("process_revision_directives", process_revision_directives)
    context.configure(
        connection=connection,
        target_metadata=target_db.metadata,
        include_object=include_object,
        compare_server_default=True,
        **conf_args,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) migrations are not supported: run them on a database.")

given = config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    # `flask db ...` run directly: the same lock as init-db, and the same first step for a
    # database from before migrations, which only init-db takes (legacy_schema.py).
    with schema.migration_lock(target_db.engine), target_db.engine.connect() as connection:
        if legacy_schema.needs_adoption(connection):
            raise SystemExit(schema.NOT_CURRENT)
        run_migrations(connection)
