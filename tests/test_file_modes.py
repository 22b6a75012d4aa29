"""The instance folder holds the database, raw mail and the secret key: private to the
service's user (0700 folders, 0600 files), including files SQLite creates later."""

import os
import stat
import subprocess
import sys
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


def test_processes_starting_at_once_share_one_whole_secret_key_and_mail_key(tmp_path):
    """Web processes and the worker started together on a fresh instance folder: each reads
    the one key that was created, never a half-written file or a key of its own."""
    import config
    from services.credentials import load_keys

    instance = tmp_path / "instance"
    script = (
        "import sys; from pathlib import Path; import config;"
        " from services.credentials import load_keys;"
        " p = Path(sys.argv[1]);"
        " print(config.read_or_create_secret(p / 'secret.key'), load_keys(p)[0].decode())"
    )
    env = {**os.environ}
    env.pop("THREADLINE_MAIL_KEYS", None)
    repo = Path(__file__).resolve().parents[1]
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(instance)],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = {process.communicate(timeout=60)[0].strip() for process in starts}
    assert all(process.returncode == 0 for process in starts)
    secret, mail_key = outputs.pop().split()
    assert outputs == set()  # every process got the same pair
    assert config.read_or_create_secret(instance / "secret.key") == secret
    assert load_keys(instance)[0].decode() == mail_key
    assert sorted(path.name for path in instance.iterdir()) == ["mail.key", "secret.key"]
    assert mode(instance / "secret.key") == mode(instance / "mail.key") == 0o600


def test_a_key_file_appears_whole_even_while_another_process_is_writing_it(tmp_path):
    """Each starter makes its own value slowly; one wins, and every starter returns it."""
    import threading
    import time

    import config

    path = tmp_path / "secret.key"
    start = threading.Barrier(6)
    got: list[bytes] = []

    def slow_value(n: int) -> bytes:
        time.sleep(0.2)  # the others look meanwhile: no file yet, not a half-written one
        return f"value-{n}\n".encode()

    def starter(n: int) -> None:
        start.wait()
        got.append(config.read_or_create_file(path, lambda: slow_value(n)))

    threads = [threading.Thread(target=starter, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(got) == 6 and len(set(got)) == 1 and got[0].startswith(b"value-")
    assert path.read_bytes().strip() == got[0]
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no drafts left
