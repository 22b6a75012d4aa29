"""Locate the shared raw-mail corpus (never copied into the repo) for tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_MESSAGES = {"INDEX.tsv", "SOURCES.md", "CORE_SUBSET.txt"}


def shared_dir() -> Path:
    """Return $THREADLINE_SHARED, else <repo>/../shared."""
    return Path(os.environ.get("THREADLINE_SHARED") or REPO.parent / "shared")


def corpus_dir() -> Path | None:
    """Return the raw email corpus directory, or None when it is absent."""
    folder = shared_dir() / "corpus" / "emails"
    return folder if folder.is_dir() else None


def corpus_files() -> list[Path]:
    """Return every message file of the corpus, sorted; [] when the corpus is absent."""
    folder = corpus_dir()
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name not in NOT_MESSAGES)


def skip_reason() -> str:
    """Explain how to point the tests at the corpus."""
    return (
        f"email corpus not found at {shared_dir() / 'corpus' / 'emails'}; "
        "set THREADLINE_SHARED to the shared/ directory"
    )


def read_message(path: Path) -> bytes:
    """Read one corpus message, dropping a leading mbox "From " line."""
    raw = path.read_bytes()
    if raw.startswith(b"From "):
        newline = raw.find(b"\n")
        raw = raw[newline + 1 :] if newline >= 0 else b""
    return raw
