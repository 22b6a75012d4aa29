"""The CPU-bound half of the body pass: blob write, parse, dedup key (runs in worker processes).

Importing this module pulls in only the pure parse/blobstore code, so spawned workers start
fast and small: a worker imports the module of every function it is handed (the work and the
pool's initializer), and one from mailsync.sync would load the whole app into each worker
(about 45 MB more each). The same function runs inline when the batch set is too small to be
worth a pool.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mailsync.blobstore import BlobStore
from mailsync.parse import ParsedMessage, parse_with_identity

PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a process gets when its parent dies
ORPHAN_CHECK_SECONDS = 1.0  # how often a parse worker checks that its sync process lives
_stores: dict[str, BlobStore] = {}
SEARCH_BODY_CHARS = 20_000  # the text kept for the search index (services/search.py)


@dataclass
class Prepared:
    uid: int
    raw_sha256: str
    parsed: ParsedMessage  # html dropped, text cut for search; the blob keeps the rest
    dedup_key: str
    size: int
    header_key: str | None = None


def for_search(parsed: ParsedMessage) -> ParsedMessage:
    """Return `parsed` slimmed to what storing and indexing need (cheap to pass between processes).

    The search text is the start of the body, of a calendar invitation's summary, of each
    attached message (a mail forwarded as an attachment) and the attachment file names, so a
    search for "invoice" finds the mail
    that carries invoice-4471.pdf.
    """
    names = " ".join(a.filename for a in parsed.attachments if a.filename)
    texts = [parsed.text_body, *parsed.texts_below]
    body = "\n".join(text[:SEARCH_BODY_CHARS] for text in texts if text)
    return replace(
        parsed,
        text_body=f"{body}\n{names}" if names else body,
        html_body=None,
        attachments=[],
        attached_texts=[],
        invitation="",
    )


def prepare_batch(blob_root: str, items: list[tuple[int, bytes]]) -> list[Prepared]:
    """Write each raw message to the blob store, then parse it; never raises on bad mail."""
    store = _stores.get(blob_root)
    if store is None:
        store = _stores[blob_root] = BlobStore(Path(blob_root))
    prepared = []
    for uid, raw in items:
        sha = store.put(raw)  # blob before row: a crash leaves at most an orphan blob
        parsed, key, candidate = parse_with_identity(raw)
        prepared.append(Prepared(uid, sha, for_search(parsed), key, len(raw), candidate))
    return prepared


def follow_parent_out(parent_pid: int) -> None:
    """Initialize a parse worker: make it exit as soon as the sync process that started it dies.

    A sync killed with SIGKILL cannot shut its pool down, and an idle worker waits for work
    forever (with it, multiprocessing's resource tracker, which exits once no process holds
    its pipe). On Linux the kernel delivers SIGKILL when the parent dies (prctl
    PR_SET_PDEATHSIG); elsewhere, and for a parent that died before this ran, a watchdog
    thread notices that the worker was re-parented.
    """
    # Ctrl-C reaches the whole process group; the sync process stops its pool itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        # The kernel ties this to the *thread* that started the worker; the pass's own
        # thread starts the pool and shuts it down before it ends, so that is the pass.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(
        target=_exit_when_orphaned, args=(parent_pid,), name="parent-watch", daemon=True
    ).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(1)
