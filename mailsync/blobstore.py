"""Content-addressed raw-mail store: sha256(raw) names the file, zstd compresses it (SYNC.md §2.5).

Layout: ``<root>/ab/cd/<sha256>``. Writes go to a temp file in the same directory and are moved
into place with ``os.replace``, so a crash never leaves a partial blob under a real name. fsync
is off by default because it costs ~20x in put() throughput (measured 5,100/s vs 260/s on the
dev VM); a killed process still never leaves a partial blob, only an OS crash or power loss can
lose the last unsynced writes. Pass ``fsync=True`` where that matters more than ingest speed. Blobs
written uncompressed by older code still read, because compression is detected by magic bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

ZSTD_LEVEL = 3
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_temp_ids = itertools.count()  # next() on it is atomic under the GIL


def blob_root(app) -> Path:
    """Return where an app keeps its raw mail (the one place that says so)."""
    return Path(app.instance_path) / "blobs"


def app_blob_store(app) -> BlobStore:
    """Return the raw-mail store of `app`."""
    return BlobStore(blob_root(app))


class BlobStore:
    """Store raw messages by sha256 under root; safe to share between threads."""

    def __init__(self, root: Path, *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        # zstd (de)compressor objects are reusable but not thread-safe: one pair per thread.
        self._local = threading.local()
        # "ab/cd" directories known to exist: a first sync would otherwise mkdir per blob
        # (nothing removes them; a vanished one is made again, see put).
        self._made_dirs: set[str] = set()

    def path_for(self, sha: str) -> Path:
        """Return the file path of a blob; ValueError if sha is not a sha256 hex digest."""
        if not _SHA256.fullmatch(sha):
            raise ValueError(f"not a sha256 hex digest: {sha!r}")
        return Path(self._folder(sha), sha)

    def _folder(self, sha: str) -> str:
        """The layout, in one place: <root>/ab/cd (a string: put() runs once per message)."""
        return f"{self.root}/{sha[0:2]}/{sha[2:4]}"

    def put(self, raw: bytes) -> str:
        """Store raw bytes (idempotent) and return their sha256 hex digest.

        A blob already stored is not rewritten, but its mtime is moved to now: `discard` keeps
        a blob put this recently, since the row that will reference it may not be committed yet.
        """
        sha = hashlib.sha256(raw).hexdigest()
        folder = self._folder(sha)  # path_for's, without re-checking our own digest
        path = f"{folder}/{sha}"
        try:
            os.utime(path)  # already stored
            return sha
        except FileNotFoundError:
            pass  # not stored, or discard() just took it away: write it anew
        data = self._compressor().compress(raw)
        if sha[0:4] not in self._made_dirs:
            os.makedirs(folder, exist_ok=True)
            self._made_dirs.add(sha[0:4])
        fd, tmp_name = self._temp_file(folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        return sha

    def _temp_file(self, folder: str) -> tuple[int, str]:
        """Create a private temp file in `folder` for put(); return (fd, path).

        Named by process, thread and a counter (what tempfile.mkstemp's random names and
        checks cost was a tenth of a first sync's time per blob); O_EXCL still refuses a
        leftover of a killed process that had the same pid, and the next name is tried.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for _attempt in range(100):
            name = f"{folder}/.tmp-{os.getpid()}-{threading.get_ident()}-{next(_temp_ids)}.part"
            try:
                return os.open(name, flags, 0o600), name
            except FileExistsError:
                continue
            except FileNotFoundError:  # the folder was removed behind our back: make it again
                os.makedirs(folder, exist_ok=True)
        raise FileExistsError(f"no free temp file name in {folder}")

    def get(self, sha: str) -> bytes:
        """Return the raw bytes of a blob; FileNotFoundError if it is not stored."""
        data = self.path_for(sha).read_bytes()
        if data.startswith(ZSTD_MAGIC):
            return self._decompressor().decompress(data)
        return data  # legacy uncompressed blob

    def exists(self, sha: str) -> bool:
        """Return True if the blob is stored."""
        return self.path_for(sha).is_file()

    def delete(self, sha: str) -> bool:
        """Remove a blob; return False if it was not there."""
        try:
            self.path_for(sha).unlink()
        except FileNotFoundError:
            return False
        return True

    def discard(self, sha: str, *, in_use: Callable[[], bool], grace_seconds: float) -> bool:
        """Delete a blob no row uses any more; return True if it was deleted.

        Safe against a sync in another process storing the same bytes again: put() skips
        writing a blob that exists, and its row commits a little later. So the blob is first
        moved aside (a put() from then on writes a fresh file), then kept if it was put within
        `grace_seconds` or `in_use()` (asked after the move) says a row references it.
        """
        path = self.path_for(sha)
        aside = path.with_name(f".gc-{sha}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            recent = time.time() - aside.stat().st_mtime < grace_seconds
            if recent or in_use():
                os.replace(aside, path)  # identical bytes even if put() wrote it meanwhile
                return False
            aside.unlink()
        except BaseException:
            if aside.exists():
                os.replace(aside, path)
            raise
        return True

    def _compressor(self) -> zstandard.ZstdCompressor:
        """Return this thread's reusable compressor."""
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            # write_content_size lets decompress() size its output without streaming
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
            self._local.compressor = compressor
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        """Return this thread's reusable decompressor."""
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
            self._local.decompressor = decompressor
        return decompressor
