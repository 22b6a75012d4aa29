"""The CPU-bound half of the body pass: blob write, parse, dedup key (runs in worker processes).

Importing this module pulls in only the pure parse/blobstore code, so spawned workers start
fast. The same function runs inline when the batch set is too small to be worth a pool.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mailsync.blobstore import BlobStore
from mailsync.parse import ParsedMessage, identity_keys, parse_message

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

    The search text is the start of the body plus the attachment file names, so a search for
    "invoice" finds the mail that carries invoice-4471.pdf.
    """
    names = " ".join(a.filename for a in parsed.attachments if a.filename)
    body = parsed.text_body[:SEARCH_BODY_CHARS]
    return replace(
        parsed, text_body=f"{body}\n{names}" if names else body, html_body=None, attachments=[]
    )


def prepare_batch(blob_root: str, items: list[tuple[int, bytes]]) -> list[Prepared]:
    """Write each raw message to the blob store, then parse it; never raises on bad mail."""
    store = _stores.get(blob_root)
    if store is None:
        store = _stores[blob_root] = BlobStore(Path(blob_root))
    prepared = []
    for uid, raw in items:
        sha = store.put(raw)  # blob before row: a crash leaves at most an orphan blob
        parsed = parse_message(raw)
        key, candidate = identity_keys(raw)
        prepared.append(Prepared(uid, sha, for_search(parsed), key, len(raw), candidate))
    return prepared
