"""Content-addressed store for raw messages: one file per sha256 under a root folder.

Raw bytes are stored before parsing (SECURITY.md R16), so a message can always be re-parsed
or downloaded as its original.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """Store and load raw message bytes by their sha256 (hex)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, sha: str) -> Path:
        if not _SHA.match(sha):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha[:2] / sha[2:4] / sha

    def put(self, raw: bytes) -> str:
        """Store `raw` (idempotent) and return its sha256 hex digest."""
        sha = hashlib.sha256(raw).hexdigest()
        path = self._path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_bytes(raw)
            os.replace(temporary, path)
        return sha

    def get(self, sha: str) -> bytes | None:
        """Return the stored bytes for `sha`, or None when they are missing."""
        try:
            return self._path(sha).read_bytes()
        except (FileNotFoundError, ValueError):
            return None
