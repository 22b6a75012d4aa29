"""mailsync.blobstore: round trip, idempotence, crash safety, legacy uncompressed blobs."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailsync.blobstore import ZSTD_MAGIC, BlobStore

RAW = b"From: a@example.com\r\nSubject: hi\r\n\r\n" + b"hello world\r\n" * 500


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "blobs")


def test_round_trip_layout_and_compression(store, tmp_path):
    sha = store.put(RAW)
    assert sha == hashlib.sha256(RAW).hexdigest()
    path = tmp_path / "blobs" / sha[:2] / sha[2:4] / sha
    assert path.is_file()
    stored = path.read_bytes()
    assert stored.startswith(ZSTD_MAGIC) and len(stored) < len(RAW) // 5
    assert store.get(sha) == RAW
    assert store.exists(sha)


def test_put_is_idempotent_and_marks_the_blob_as_wanted_again(store):
    sha = store.put(RAW)
    path = store.path_for(sha)
    os.utime(path, (1_000_000, 1_000_000))
    inode = path.stat().st_ino
    assert store.put(RAW) == sha
    assert path.stat().st_ino == inode  # not rewritten
    assert path.stat().st_mtime > 1_000_000  # but recent again, which discard() respects
    assert len(list(path.parent.iterdir())) == 1


def test_fsync_option(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    BlobStore(tmp_path / "plain").put(RAW)
    assert synced == []
    durable = BlobStore(tmp_path / "durable", fsync=True)
    assert durable.get(durable.put(RAW)) == RAW
    assert len(synced) == 1


def test_a_blob_directory_removed_behind_the_stores_back_is_made_again(store):
    first = store.put(b"first mail")
    directory = store.path_for(first).parent
    store.delete(first)
    directory.rmdir()  # e.g. a restore from a backup that had no such directory
    assert store.put(b"first mail") == first and store.get(first) == b"first mail"


def test_a_leftover_temp_file_of_the_same_name_is_neither_reused_nor_clobbered(store, monkeypatch):
    """A killed process that had our pid left a temp file with the name put() would pick."""
    import itertools
    import threading

    from mailsync import blobstore

    monkeypatch.setattr(blobstore, "_temp_ids", itertools.count(7))
    folder = store.path_for(hashlib.sha256(RAW).hexdigest()).parent
    folder.mkdir(parents=True)
    leftover = folder / f".tmp-{os.getpid()}-{threading.get_ident()}-7.part"
    leftover.write_bytes(b"someone else's partial write")
    assert store.get(store.put(RAW)) == RAW
    assert leftover.read_bytes() == b"someone else's partial write"


def test_empty_blob(store):
    assert store.get(store.put(b"")) == b""


def test_delete(store):
    sha = store.put(RAW)
    assert store.delete(sha)
    assert not store.exists(sha)
    assert not store.delete(sha)
    with pytest.raises(FileNotFoundError):
        store.get(sha)


def test_crash_during_write_leaves_no_blob(store, monkeypatch):
    sha = hashlib.sha256(RAW).hexdigest()

    def crash(src, dst):
        raise OSError("disk died")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.put(RAW)
    monkeypatch.undo()
    assert not store.exists(sha)
    assert list(store.path_for(sha).parent.iterdir()) == []  # temp file cleaned up
    assert store.get(store.put(RAW)) == RAW


def test_leftover_temp_file_is_not_a_blob(store):
    sha = hashlib.sha256(RAW).hexdigest()
    folder = store.path_for(sha).parent
    folder.mkdir(parents=True)
    (folder / ".tmp-abc.part").write_bytes(b"partial")  # as if killed mid-write
    assert not store.exists(sha)
    assert store.get(store.put(RAW)) == RAW


def test_uncompressed_legacy_blob_reads(store):
    sha = hashlib.sha256(RAW).hexdigest()
    path = store.path_for(sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(RAW)
    assert store.get(sha) == RAW


@pytest.mark.parametrize("bad", ["", "../../etc/passwd", "AB" * 32, "g" * 64])
def test_rejects_non_sha_names(store, bad):
    with pytest.raises(ValueError):
        store.get(bad)


def test_concurrent_puts(store):
    blobs = [RAW + bytes([i]) * i for i in range(40)] * 3
    with ThreadPoolExecutor(max_workers=8) as pool:
        shas = list(pool.map(store.put, blobs))
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(store.get, shas)) == blobs


def _age(store, sha):
    os.utime(store.path_for(sha), (1_000_000, 1_000_000))


def test_discard_deletes_an_old_unused_blob(store):
    sha = store.put(RAW)
    _age(store, sha)
    assert store.discard(sha, in_use=lambda: False, grace_seconds=600)
    assert not store.exists(sha)
    assert not store.discard(sha, in_use=lambda: False, grace_seconds=600)
    assert list(store.path_for(sha).parent.iterdir()) == []  # nothing left aside


def test_discard_keeps_a_blob_in_use_or_put_recently(store):
    sha = store.put(RAW)
    assert not store.discard(sha, in_use=lambda: False, grace_seconds=600)  # just written
    _age(store, sha)
    assert not store.discard(sha, in_use=lambda: True, grace_seconds=600)
    store.put(RAW)  # a sync stores the same bytes again; its row is not committed yet
    assert not store.discard(sha, in_use=lambda: False, grace_seconds=600)
    assert store.get(sha) == RAW


def test_put_during_discard_is_never_lost(store):
    sha = store.put(RAW)
    _age(store, sha)

    def in_use() -> bool:
        # Another process puts the same bytes while the blob is set aside.
        assert store.put(RAW) == sha
        return False

    assert store.discard(sha, in_use=in_use, grace_seconds=600)
    assert store.get(sha) == RAW
