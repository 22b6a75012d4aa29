"""The parse worker processes of a first sync (mailsync/prepare.py): small and self-contained."""

from __future__ import annotations

from mailsync.sync import POOL_THRESHOLD, AccountSync


def test_parse_workers_load_the_parser_not_the_app(app, make_user, make_stored_account):
    """A spawned worker imports the module of every function it is handed, the pool's
    initializer included. With one from mailsync.sync each worker loaded the whole app
    (Flask, SQLAlchemy, the models): about 45 MB more per worker, and a first sync's process
    tree peaked above its 250 MB target (bench/RESULTS.md)."""
    account = make_stored_account(make_user())
    sync = AccountSync(app, account.id, 60, None)
    pool = sync._executor(POOL_THRESHOLD)
    assert pool is not None
    try:
        # eval is a builtin: handing it over imports nothing in the worker.
        modules = set(pool.submit(eval, "list(__import__('sys').modules)").result(timeout=60))
    finally:
        pool.shutdown()
    assert "mailsync.prepare" in modules  # the initializer ran
    assert not {"flask", "sqlalchemy", "models", "mailsync.sync"} & modules
