"""The instance folder holds the database, raw mail and the secret key: private to the
service's user (0700 folders, 0600 files), including files SQLite creates later."""

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from app import create_app
from extensions import db
from mailsync.blobstore import app_blob_store
from services.credentials import secret_box

pytestmark = pytest.mark.sqlite_only("the SQLite database file's mode")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask():
    """Start from the usual 022, as a shell would, whatever earlier tests set."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _app(instance: Path):
    return create_app({"TESTING": True, "INSTANCE_PATH": str(instance), "SCHEDULER_ENABLED": False})


def test_everything_under_the_instance_folder_is_private(tmp_path, permissive_umask, monkeypatch):
    monkeypatch.delenv("THREADLINE_MAIL_KEYS", raising=False)
    instance = tmp_path / "instance"
    app = _app(instance)
    with app.app_context():
        sha = app_blob_store(app).put(b"Subject: hi\r\n\r\nbody\r\n")
        with db.engine.connect() as connection:
            connection.execute(text("CREATE TABLE scratch (x)"))
            connection.execute(text("INSERT INTO scratch VALUES (1)"))
            connection.commit()
            # While a connection is open the WAL and shared-memory files exist.
            database = instance / "threadline.db"
            secret_box(app)  # the mail-password key is created on first use
            files = [database, instance / "secret.key", instance / "mail.key"]
            files.append(app_blob_store(app).path_for(sha))
            files += [p for p in (Path(f"{database}-wal"), Path(f"{database}-shm")) if p.exists()]
            assert Path(f"{database}-wal").exists()
            for path in files:
                assert mode(path) == 0o600, (path, oct(mode(path)))
        blob = app_blob_store(app).path_for(sha)
        for folder in (instance, instance / "blobs", blob.parent.parent, blob.parent):
            assert mode(folder) == 0o700, (folder, oct(mode(folder)))
        db.engine.dispose()


def test_an_existing_readable_instance_folder_is_made_private(tmp_path, permissive_umask):
    instance = tmp_path / "instance"
    (instance / "blobs").mkdir(parents=True)
    (instance / "secret.key").write_text("old-secret")
    (instance / "threadline.db").touch()
    os.chmod(instance, 0o755)
    app = _app(instance)
    with app.app_context():
        db.engine.dispose()
    assert app.config["SECRET_KEY"] == "old-secret"
    assert mode(instance) == 0o700
    assert mode(instance / "blobs") == 0o700
    assert mode(instance / "secret.key") == 0o600
    assert mode(instance / "threadline.db") == 0o600
