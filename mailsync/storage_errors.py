"""Plain words for failures to write Threadline's own data: a full disk, a read-only folder.

The one place that tells such a failure from mail-server trouble. A sync pass that hits one
ends at once (retrying within the pass cannot help) with this message as the account's last
error; nothing is half-stored, since blobs are written before rows and each batch commits
in one transaction, and the next scheduled pass resumes where this one stopped.
"""

from __future__ import annotations

import errno
import sqlite3
from dataclasses import dataclass
from pathlib import Path

DISK_FULL = "disk_full"
DATA_NOT_WRITABLE = "data_not_writable"

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Only errors naming a file count: a socket can fail with EPERM too (a firewall rule).
NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# SQLite's messages for SQLITE_FULL, SQLITE_READONLY and a journal it cannot create.
SQLITE_DISK_FULL = ("database or disk is full",)
SQLITE_NOT_WRITABLE = ("readonly database", "unable to open database file")
# PostgreSQL's SQLSTATEs for a full disk (class 53: insufficient resources) and for a
# database that refuses writes (a read-only transaction, a standby, missing privileges).
POSTGRES_DISK_FULL = frozenset({"53100"})
POSTGRES_NOT_WRITABLE = frozenset({"25006", "42501"})


@dataclass(frozen=True)
class StorageProblem:
    kind: str
    message: str


def disk_full_message(data_folder: str | Path) -> str:
    """Return what to tell the user when the disk holding the data folder is full."""
    return (
        f"The disk holding Threadline's data is full ({data_folder}). Free some space; "
        "syncing resumes by itself."
    )


def not_writable_message(data_folder: str | Path) -> str:
    """Return what to tell the user when the data folder cannot be written."""
    return (
        f"Threadline cannot write to its data folder {data_folder}. Make it writable for the "
        "user Threadline runs as; syncing resumes by itself."
    )


def database_disk_full_message() -> str:
    """Return what to tell the user when the PostgreSQL server's disk is full."""
    return (
        "The database server's disk is full (PostgreSQL). Free some space on it; "
        "syncing resumes by itself."
    )


def database_not_writable_message() -> str:
    """Return what to tell the user when PostgreSQL refuses Threadline's writes."""
    return (
        "The database (PostgreSQL) refuses to store anything: it is read-only, a standby, "
        "or Threadline's database user lacks permission. Make it writable for Threadline; "
        "syncing resumes by itself."
    )


def storage_problem(exc: BaseException, data_folder: str | Path) -> StorageProblem | None:
    """Return the plain-words problem when `exc` is a failure to write Threadline's own
    data (blob store or database), else None (e.g. a network error)."""
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the sqlite3 error
    if isinstance(cause, OSError):
        if cause.errno in DISK_FULL_ERRNOS:
            return StorageProblem(DISK_FULL, disk_full_message(data_folder))
        if cause.errno in NOT_WRITABLE_ERRNOS and cause.filename is not None:
            return StorageProblem(DATA_NOT_WRITABLE, not_writable_message(data_folder))
    if isinstance(cause, sqlite3.OperationalError):
        text = str(cause).lower()
        if any(pattern in text for pattern in SQLITE_DISK_FULL):
            return StorageProblem(DISK_FULL, disk_full_message(data_folder))
        if any(pattern in text for pattern in SQLITE_NOT_WRITABLE):
            return StorageProblem(DATA_NOT_WRITABLE, not_writable_message(data_folder))
    sqlstate = getattr(cause, "sqlstate", None)  # psycopg's errors carry it
    if sqlstate in POSTGRES_DISK_FULL:
        return StorageProblem(DISK_FULL, database_disk_full_message())
    if sqlstate in POSTGRES_NOT_WRITABLE:
        return StorageProblem(DATA_NOT_WRITABLE, database_not_writable_message())
    return None
