"""A throwaway PostgreSQL server on loopback, started by the tests themselves.

`initdb` writes a cluster into a temp directory and `pg_ctl` serves it on a free loopback
port, with its Unix socket in that directory too, so nothing of the machine's own
PostgreSQL (if any) is used or changed. PostgreSQL refuses to run as root: under root (CI)
the cluster belongs to the `postgres` system user of Debian's package and the programs run
as that user. Trust authentication on loopback, one superuser role for the tests.

Durability is switched off (fsync, synchronous_commit): the data lives for one session.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.servers.dovecot import free_port

ROLE = "threadline"
SYSTEM_USER = "postgres"  # created by Debian's postgresql package
_databases = itertools.count(1)


def postgres_bin_dir() -> Path | None:
    """The directory of initdb and pg_ctl (Debian keeps them out of PATH), or None."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


class PostgresServer:
    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed: run `make system-test-deps`")
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="threadline-postgres-"))
        self.data = self.root / "data"
        self.host = "127.0.0.1"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as_user = ["runuser", "-u", SYSTEM_USER, "--"]

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as_user, str(self.bin_dir / program), *args]
        # The app's umask (077) would be fine for PostgreSQL; its own checks want 0700/0750.
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> PostgresServer:
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            ROLE,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C.UTF-8",
            "--no-sync",
        )
        options = " ".join(
            [
                f"-c listen_addresses={self.host}",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.root / "server.log"),
            "--options",
            options,
            "--wait",
            "start",
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn("postgres")):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "--pgdata", str(self.data), "--mode", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str) -> str:
        return f"host={self.host} port={self.port} user={ROLE} dbname={database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` (psycopg 3 driver)."""
        return f"postgresql+psycopg://{ROLE}@{self.host}:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """Run one statement in the maintenance database, outside a transaction."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(sql)

    def create_database(self, *, template: str | None = None, name: str | None = None) -> str:
        """Create a new empty database (a copy of `template` when given); return its name."""
        name = name or f"test_{os.getpid()}_{next(_databases)}"
        # FILE_COPY: copying a small template's files beats WAL-logging each page.
        copy = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{copy}')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
