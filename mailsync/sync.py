"""The IMAP sync engine: folder discovery, backfill, incremental poll, flags, expunges.

Follows design/SYNC.md §3-§7. A location is (folder, UID); a message is its dedup key.
Backfill is a resumable set difference (remote UIDs - local UIDs, newest first); once it
completes, `last_seen_uid` is the watermark for `UID FETCH last+1:*`. Network I/O happens
with no database transaction open: fetch a batch, then one short transaction persists it
(blobs first, then rows). Every step is idempotent, so a kill or a dropped connection at
any point loses and duplicates nothing.
"""

from __future__ import annotations

import imaplib
import logging
import os
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from multiprocessing import get_context
from typing import Any

from flask import Flask
from imapclient import IMAPClient, imap_utf7
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from sqlalchemy import delete, func, select

from extensions import db
from mailsync import actions, imap, reparse, store
from mailsync.blobstore import blob_root
from mailsync.folders import NAME_ROLES
from mailsync.folders import SPECIAL_USE_ROLES as ATTRIBUTE_ROLES
from mailsync.parse import (
    IDENTITY_HEADER_FIELDS,
    header_dedup_key,
    parse_headers_only,
    placeholder_dedup_key,
)
from mailsync.prepare import Prepared, follow_parent_out, prepare_batch
from mailsync.storage_errors import storage_problem
from models import (
    GMAIL_LABEL,
    FailedUid,
    MailAccount,
    MailFolder,
    Message,
    MessageLabel,
    MessageLocation,
)
from services import search
from services.credentials import CredentialError

log = logging.getLogger("threadline.sync")

MAX_FULL_SIZE = 25 * 1024 * 1024  # above this, store headers only (mbsync MaxSize idea)
BODY_BATCH_MESSAGES = 30
BODY_BATCH_BYTES = 8 * 1024 * 1024
FETCH_AHEAD = 2  # body FETCHes queued on the fetch thread (bounded memory: 2 x 8 MB)
DB_BATCH_MESSAGES = 300  # fetched messages persisted per transaction (several body FETCHes)
META_BATCH = 500  # UIDs per metadata FETCH (SYNC.md §5)
FIRST_META_BATCH = 50  # the newest 50 land first so the inbox is usable within seconds
SEARCH_RANGE = 50_000  # UIDs per chunked UID SEARCH (bounded response lines)
RANGES_PER_QUERY = 200  # UID ranges looked up in the store per query
# Servers without CONDSTORE cannot say which flags changed, so every pass reads the flags of
# the newest FLAG_WINDOW stored UIDs (recent mail is right after one pass), and all of them
# every FULL_FLAG_SCAN_EVERY (a UID FETCH FLAGS of 100,000 UIDs costs about 1.6 s of parsing
# here, bench/RESULTS.md: every 10 minutes, not every 2).
FLAG_WINDOW = 2000
FULL_FLAG_SCAN_EVERY = timedelta(minutes=10)
MAX_UIDINVALID_RESYNCS = 5
OTHER_FOLDERS_INTERVAL_SECONDS = 600  # SYNC.md §1: other folders every 5 to 15 min
EVERY_PASS_ROLES = ("inbox", "sent", "all")  # Gmail's All Mail holds the inbox
# SYNC.md §4.6 step 1 (mbsync's idea): a UIDVALIDITY change is spurious when a sample of the
# stored UIDs still holds the same messages: none differ and 20, or 80% of them, match.
UIDVALIDITY_SAMPLE = 50
UIDVALIDITY_MIN_MATCHES = 20
UIDVALIDITY_MIN_SHARE = 0.8
MAX_FETCH_ATTEMPTS = 5
FAILED_RETRY_SECONDS = 300
CONNECTION_RETRIES = 3  # reconnects per pass: after 1, 2 and 4 s (a server restart's refusals)
RETRY_PAUSE_SECONDS = 1.0  # the first reconnect waits this long (doubling, plus jitter)
SEARCH_INDEX_EVERY_SECONDS = 10.0  # how far conversation search may lag a long backfill
PARSE_WORKERS = 2  # processes that parse and write blobs while the next batch downloads
POOL_THRESHOLD = 100  # fewer messages than this are parsed inline (no pool start-up cost)

HEADER_ITEM = f"BODY.PEEK[HEADER.FIELDS ({IDENTITY_HEADER_FIELDS})]"
META_ITEMS = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", HEADER_ITEM]
GMAIL_ITEMS = ["X-GM-MSGID", "X-GM-THRID", "X-GM-LABELS"]

HORIZON_DAYS = {"1m": 31, "3m": 92, "6m": 183, "1y": 366, "2y": 731, "all": None}

# Roles from RFC 6154 attributes, then common and localized names: mailsync/folders.py.
GMAIL_ROLES = ("all", "trash", "junk")

NETWORK_ERRORS = (
    OSError,
    socket.timeout,
    ssl.SSLError,
    imaplib.IMAP4.abort,
    IMAPClientAbortError,
)

Progress = Callable[[str, int, int], None]
# Tells whether the pass still holds its account's sync lease (False once another worker
# took it); the caller renews the lease in the background (jobs.LeaseKeeper).
Heartbeat = Callable[[], bool]
# Tells whether more urgent work waits for the worker (a pass IDLE pushed for another
# account): the pass then stops at its next batch boundary, as when its time is up.
YieldTo = Callable[[], bool]


class BudgetExceeded(Exception):
    """The run's time is up (its budget, or more urgent work waits): the next pass resumes."""


class LeaseLost(Exception):
    """Another worker took over the account's lease: this pass stops where it is."""


class FolderError(Exception):
    """A folder cannot be synced (gone, or UIDVALIDITY keeps changing); others go on."""


@dataclass
class SyncResult:
    account_id: int
    new: int = 0
    changed: int = 0
    deleted: int = 0
    error: str | None = None
    error_kind: str | None = None
    needs_user_action: bool = False
    complete: bool = True  # False when the pass stopped before every folder was done
    out_of_time: bool = False  # stopped for its budget, or to make way (below)
    made_way: bool = False  # stopped early because more urgent work waited (YieldTo)
    folder_errors: dict[str, str] = field(default_factory=dict)
    log: store.RunLog = field(default_factory=store.RunLog)  # message by message

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Resync:
    """What a QRESYNC EXAMINE reported about the stored state it was given (RFC 7162)."""

    modseq: int  # the stored HIGHESTMODSEQ sent with it
    known_high: int  # the known UIDs sent were 1:known_high (the watermark then)
    vanished: list[tuple[int, int]]  # UID ranges expunged since `modseq`
    changed: dict[int, dict]  # {uid: FETCH data} of the mail whose flags changed since


@dataclass
class Snapshot:
    """A folder's state as EXAMINE reported it at the start of this cycle."""

    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None
    # Set when EXAMINE used QRESYNC and the server answered for the stored UIDVALIDITY;
    # None sends the pass down the CONDSTORE + count + UID SEARCH path (SYNC.md §4.4).
    resync: Resync | None = None


@dataclass
class Meta:
    """Per-UID metadata from the cheap FETCH: flags, size, dates, header dedup key."""

    uid: int
    flags: tuple[bytes, ...]
    size: int
    internaldate: datetime | None
    header: bytes
    key: str | None
    gm_msgid: int | None = None
    gm_thrid: int | None = None
    gm_labels: list[str] = field(default_factory=list)


def uid_spans(uids: Iterable[int]) -> list[tuple[int, int]]:
    """Return the UIDs as ascending runs of consecutive values, (low, high) each."""
    spans: list[tuple[int, int]] = []
    for uid in sorted(set(uids)):
        if spans and uid == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], uid)
        else:
            spans.append((uid, uid))
    return spans


def uid_ranges(uids: Iterable[int]) -> str:
    """Return a compact, ascending UID set such as '1:5,9,12:14' (never descending ranges)."""
    return ",".join(f"{low}:{high}" if low != high else str(low) for low, high in uid_spans(uids))


def horizon_date(since: str, today: date | None = None) -> date | None:
    """Return the SEARCH SINCE date for an account horizon (one day early; SEARCH ignores time)."""
    days = HORIZON_DAYS.get(since, HORIZON_DAYS["3m"])
    if days is None:
        return None
    return (today or datetime.now(UTC).date()) - timedelta(days=days + 1)


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _labels(data: dict) -> list[str] | None:
    """Return the X-GM-LABELS of a FETCH item, decoded from modified UTF-7 (RFC 3501 5.1.3) as
    folder names are, or None when the response has none (Gmail can omit them, SYNC.md §4.3);
    an empty list means the message has no label (archived)."""
    if b"X-GM-LABELS" not in data:
        return None
    return [
        imap_utf7.decode(label) if isinstance(label, bytes) else label
        for label in data[b"X-GM-LABELS"]
    ]


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _header_bytes(data: dict) -> bytes:
    for key, value in data.items():
        if isinstance(key, bytes) and key.startswith(b"BODY[HEADER"):
            return value or b""
    return b""


def _fetch_bodies(conn: IMAPClient, batch: list[Meta]) -> tuple[list[tuple[int, bytes]], list[int]]:
    """FETCH BODY.PEEK[] for a batch (never RFC822); return (uid, raw) pairs and failures.

    Runs on the fetch thread: network only, no database access.
    """
    response = imap.uid_fetch(conn, uid_ranges(m.uid for m in batch), ["BODY.PEEK[]"])
    raws: list[tuple[int, bytes]] = []
    failed: list[int] = []
    for meta in batch:
        raw = response.get(meta.uid, {}).get(b"BODY[]")
        if not raw:
            # Exchange sometimes answers with no body; ask once more for that UID alone.
            again = imap.uid_fetch(conn, str(meta.uid), ["BODY.PEEK[]"])
            raw = again.get(meta.uid, {}).get(b"BODY[]")
        if raw:
            raws.append((meta.uid, raw))
        else:
            failed.append(meta.uid)
    return raws, failed


def _arrived_after(snapshot: Snapshot, uids: Iterable[int]) -> int:
    """Return how many of `uids` arrived after the snapshot (UID >= its UIDNEXT): mail fetched
    with the rest that the snapshot's message count does not include."""
    if snapshot.uidnext is None:
        return 0
    return sum(1 for uid in uids if uid >= snapshot.uidnext)


def _stored_copy(candidates: Iterable[tuple[int, int, bool]], size: int) -> int | None:
    """Return the stored message a new location is a copy of, or None to download it.

    A copy has the same header key and exactly the same size, and is not in this folder
    already: two mails with the same headers in one folder are downloaded and told apart by
    content (mailsync/IDENTITY.md).
    """
    for message_id, stored_size, in_this_folder in candidates:
        if stored_size == size and not in_this_folder:
            return message_id
    return None


def assign_roles(listing: list[tuple[tuple[bytes, ...], str]]) -> dict[str, str | None]:
    """Return {folder name: role} from SPECIAL-USE attributes, falling back to unique names."""
    roles: dict[str, str | None] = {}
    for flags, name in listing:
        lowered = {flag.lower() for flag in flags}
        role = next((ATTRIBUTE_ROLES[f] for f in lowered if f in ATTRIBUTE_ROLES), None)
        roles[name] = "inbox" if name.upper() == "INBOX" else role
    taken = set(roles.values())
    for role, names in NAME_ROLES.items():
        if role in taken:
            continue
        matches = [
            name
            for name in roles
            if roles[name] is None and name.lower().split("/")[-1].split(".")[-1] in names
        ]
        if len(matches) == 1:  # Nylas: guess a role only when exactly one folder matches
            roles[matches[0]] = role
    return roles


class AccountSync:
    """One sync run of one account over one IMAP connection (reconnecting after faults)."""

    def __init__(
        self,
        app: Flask,
        account_id: int,
        budget_seconds: float,
        progress: Progress | None,
        *,
        all_folders: bool = True,
        heartbeat: Heartbeat | None = None,
        yield_to: YieldTo | None = None,
    ):
        self.app = app
        self.account_id = account_id
        self.all_folders = all_folders
        self.heartbeat = heartbeat
        self.yield_to = yield_to
        self.other_folders_interval = timedelta(
            seconds=float(
                app.config.get("OTHER_FOLDERS_INTERVAL_SECONDS", OTHER_FOLDERS_INTERVAL_SECONDS)
            )
        )
        self.deadline = time.monotonic() + budget_seconds
        self.progress = progress
        self.result = SyncResult(account_id=account_id)
        self.conn: IMAPClient | None = None
        self.reached_server = False  # True once this pass has logged in
        self.blob_root = str(blob_root(app))
        self.pool: ProcessPoolExecutor | None = None
        self.fetch_thread: ThreadPoolExecutor | None = None
        # folder id -> (has stale locations, has failed UIDs), read once per ingest call
        self.folder_flags: dict[int, tuple[bool, bool]] = {}
        self.max_full_size = int(app.config.get("MAX_FULL_SIZE", MAX_FULL_SIZE))
        self.batch_messages = int(app.config.get("SYNC_BATCH_MESSAGES", BODY_BATCH_MESSAGES))
        self.batch_bytes = int(app.config.get("SYNC_BATCH_BYTES", BODY_BATCH_BYTES))
        self.fetch_in_thread = bool(app.config.get("SYNC_FETCH_THREAD", True))
        self.db_batch_messages = int(app.config.get("SYNC_DB_BATCH_MESSAGES", DB_BATCH_MESSAGES))
        # QRESYNC where offered; off only to compare against the older path (tests, bench/).
        self.use_qresync = bool(app.config.get("SYNC_QRESYNC", True))
        account = db.session.get(MailAccount, account_id)
        if account is None:
            raise LookupError(f"mail account {account_id} does not exist")
        self.ctx = store.context_for(account)
        self.since = horizon_date(account.since)
        db.session.commit()

    # ------------------------------------------------------------------ connection

    def _settings(self) -> imap.ConnectionSettings:
        account = db.session.get(MailAccount, self.account_id)
        try:
            settings = imap.account_settings(
                self.app, account, timeout=float(self.app.config.get("MAIL_TIMEOUT", 60))
            )
        except CredentialError as exc:
            # A corrupted token or a dropped key: only the user can fix it, like a wrong
            # password, so the account waits for it instead of retrying (R29).
            raise imap.MailConnectionError(imap.AUTH_FAILED, str(exc)) from exc
        db.session.commit()
        return settings

    def connect(self) -> IMAPClient:
        """Return the live connection, opening a fresh one if needed."""
        if self.conn is None:
            self.conn = imap.connect(
                self._settings(),
                allowed_ports=imap.allowed_ports(self.app.config),
                qresync=self.use_qresync,
            )
            self.reached_server = True
            capabilities = sorted(_decode(c) for c in self.conn.capabilities())
            account = db.session.get(MailAccount, self.account_id)
            if account.capabilities != capabilities:
                account.capabilities = capabilities
            db.session.commit()
        return self.conn

    def discard(self) -> None:
        """Throw the connection away; after a network error its protocol state is unknown."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.shutdown()
            except Exception:
                pass

    @property
    def gmail(self) -> bool:
        return b"X-GM-EXT-1" in self.connect().capabilities()

    @property
    def condstore(self) -> bool:
        return b"CONDSTORE" in self.connect().capabilities()

    @property
    def qresync(self) -> bool:
        # Gmail offers no QRESYNC, and its FETCH answers would lack X-GM-LABELS anyway.
        conn = self.connect()
        return imap.qresync_enabled(conn) and not self.gmail

    def check_budget(self) -> None:
        """Stop the pass when its time is up or its lease is lost (called between transactions)."""
        if self.out_of_time():
            raise BudgetExceeded()
        self.keep_lease()

    def out_of_time(self) -> bool:
        """True once the budget is spent or more urgent work waits (see YieldTo)."""
        if time.monotonic() > self.deadline:
            return True
        if self.yield_to is not None and self.yield_to():
            self.result.made_way = True
            return True
        return False

    def keep_lease(self) -> None:
        """Stop the pass when another worker took the account's lease (SYNC.md §1)."""
        if self.heartbeat is not None and not self.heartbeat():
            raise LeaseLost()

    def report(self, folder: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(folder, done, total)

    # ------------------------------------------------------------------ run

    def run(self) -> SyncResult:
        """Sync every enabled folder; never raises for mail-server trouble (see result.error)."""
        with search.thread_index_every(db.session, SEARCH_INDEX_EVERY_SECONDS):
            try:
                return self._run()
            except BaseException:
                # Ctrl-C or SIGTERM (jobs.SyncInterrupted) may land mid-transaction: drop the
                # half-stored batch before the index refresh on the way out commits.
                db.session.rollback()
                raise

    def _run(self) -> SyncResult:
        attempts = 0
        pending: list[int] | None = None
        try:
            # Mail stored by an older release is parsed and keyed again first, or the copies
            # downloaded from now on would not find their messages (mailsync/reparse.py).
            reparse.reparse_account(self.app, self.account_id)
            self.push_pending_seen()
            while True:
                try:
                    self.connect()
                    if pending is None:
                        pending = self.discover_folders()
                    while pending:
                        try:
                            self.sync_folder(pending[0])
                        except FolderError:
                            db.session.rollback()  # recorded on the folder; others go on
                        pending.pop(0)
                    break
                except (*NETWORK_ERRORS, imap.MailConnectionError) as exc:
                    if isinstance(exc, imap.MailConnectionError) and not self._retry_may_help(exc):
                        raise  # the server's answer proved a settings or credentials problem
                    if storage_problem(exc, self.app.instance_path) is not None:
                        raise  # a full disk is an OSError too; reconnecting cannot help
                    # SYNC.md §6: discard the connection, retry the (idempotent) folder fresh,
                    # also when it dropped while connecting (TLS, greeting, LOGIN).
                    db.session.rollback()
                    self.discard()
                    attempts += 1
                    log.warning(
                        "account %s: connection lost (%s), retry %s", self.account_id, exc, attempts
                    )
                    if attempts > CONNECTION_RETRIES:
                        if isinstance(exc, imap.MailConnectionError) and not exc.transient:
                            raise  # still refused: say so, not "kept dropping"
                        raise imap.MailConnectionError(
                            imap.NETWORK,
                            "The connection to the mail server kept dropping (a network "
                            "problem). Threadline will retry later.",
                        ) from exc
                    self._pause_before_retry(attempts)
        except BudgetExceeded:
            db.session.rollback()
            self.result.complete = False
            self.result.out_of_time = True
        except LeaseLost:
            db.session.rollback()
            log.warning("account %s: another worker took over the sync lease", self.account_id)
            self.result.complete = False
        except imap.MailConnectionError as exc:
            db.session.rollback()
            self.result.error = exc.message
            self.result.error_kind = exc.kind
            self.result.needs_user_action = exc.needs_user_action
        except Exception as exc:
            db.session.rollback()  # the unfinished batch: nothing of it stays half-stored
            problem = storage_problem(exc, self.app.instance_path)
            if problem is not None:
                log.error("account %s: %s (%s)", self.account_id, problem.message, exc)
                self.result.error = problem.message
                self.result.error_kind = problem.kind
            else:
                log.exception("account %s: sync failed", self.account_id)
                self.result.error = (
                    f"Sync failed unexpectedly ({type(exc).__name__}). It will retry."
                )
                self.result.error_kind = "internal"
        finally:
            if self.conn is not None:
                imap.safe_logout(self.conn)
                self.conn = None
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None
            if self.fetch_thread is not None:
                self.fetch_thread.shutdown(wait=True)
                self.fetch_thread = None
        return self.result

    def _retry_may_help(self, exc: imap.MailConnectionError) -> bool:
        """Tell whether reconnecting within this pass may succeed.

        Yes when the connection dropped, and when a server this pass already logged in to
        now refuses connections: it is restarting (it closed our connection, and refuses
        until it listens again). A server refusing from the start is down or misconfigured;
        that pass fails at once and the account backs off.
        """
        if exc.transient:
            return True
        return self.reached_server and exc.kind == imap.CONNECTION_REFUSED

    def _pause_before_retry(self, attempt: int) -> None:
        """Wait 1, 2, 4 ... s plus jitter before reconnecting (SYNC.md §6), within the budget."""
        pause = RETRY_PAUSE_SECONDS * 2 ** (attempt - 1) + random.uniform(0, RETRY_PAUSE_SECONDS)
        time.sleep(max(0.0, min(pause, self.deadline - time.monotonic())))

    # ------------------------------------------------------------------ folders

    def discover_folders(self) -> list[int]:
        """List folders, assign roles, decide which to sync; return due folder ids in order."""
        conn = self.connect()
        gmail = self.gmail
        listing = []
        for flags, delimiter, name in conn.list_folders():
            lowered = {f.lower() for f in flags}
            if b"\\noselect" in lowered or b"\\nonexistent" in lowered:
                continue
            listing.append((tuple(flags), _decode(name), _decode(delimiter or b"") or None))
        roles = assign_roles([(flags, name) for flags, name, _d in listing])
        account = db.session.get(MailAccount, self.account_id)
        chosen = set(account.chosen_folders or [])
        existing = {folder.name: folder for folder in account.folders}
        seen: set[str] = set()
        new_labels: set[str | None] = set()  # roles of folders that just became labels
        for flags, name, delimiter in listing:
            seen.add(name)
            role = roles[name]
            if gmail:
                enabled = role in GMAIL_ROLES  # All Mail holds everything but Trash and Spam
            elif account.folder_mode == "chosen":
                enabled = name in chosen or role == "sent"  # Sent is always synced
            else:
                enabled = True
            folder = existing.get(name)
            if folder is None:
                folder = MailFolder(account_id=self.account_id, name=name)
                db.session.add(folder)
            folder.delimiter = delimiter
            folder.attributes = sorted(_decode(f) for f in flags)
            folder.role = role
            folder.sync_enabled = enabled
            if gmail and not enabled:
                if folder.state != GMAIL_LABEL:
                    new_labels.add(role)
                folder.state = GMAIL_LABEL  # shown as a folder; All Mail holds its mail
            elif folder.state == GMAIL_LABEL:
                folder.state = "initial"
        for name, folder in existing.items():
            if name not in seen and folder.state == GMAIL_LABEL:
                folder.state = "gone"  # a deleted label: its MessageLabel rows go with it
                db.session.execute(delete(MessageLabel).where(MessageLabel.folder_id == folder.id))
            if name not in seen and folder.sync_enabled:
                # Renamed or deleted on the server: its messages survive only elsewhere.
                folder.sync_enabled = False
                folder.state = "gone"
                self.result.deleted += store.remove_folder_locations(folder.id, log=self.result.log)
                store.forget_failed_uids(folder.id)
                # Nothing is known of it any more; should it come back (renamed back), it is
                # synced from scratch rather than from cursors that no longer describe it.
                folder.server_message_count = folder.server_not_stored = None
                folder.uidvalidity = folder.uidnext = folder.highestmodseq = None
                folder.last_seen_uid = 0
                folder.initial_sync_complete = False
                folder.backfill_total = folder.backfill_done = 0
        db.session.commit()
        if new_labels:
            # Mail stored before its label's folder was known (a label created elsewhere, or
            # an account synced by a release without label folders) joins the label now.
            store.refresh_account_labels(self.account_id, inbox="inbox" in new_labels)
            db.session.commit()
        order = {"inbox": 0, "sent": 1, "all": 0}
        folders = [f for f in account.folders if f.sync_enabled and f.state != "error"]
        folders = [f for f in folders if self._due(f)]
        folders.sort(key=lambda f: (order.get(f.role or "", 2), f.name))
        ids = [f.id for f in folders]
        db.session.commit()
        return ids

    def _due(self, folder: MailFolder) -> bool:
        """Tell whether this pass syncs the folder (SYNC.md §1 cadence).

        INBOX and Sent every pass; other folders while their first backfill is incomplete,
        then every OTHER_FOLDERS_INTERVAL_SECONDS, unless the pass takes all folders ("Sync
        now", the CLI).
        """
        if self.all_folders or folder.role in EVERY_PASS_ROLES:
            return True
        if not folder.initial_sync_complete:
            return True
        last = _aware(folder.last_polled_at)
        return last is None or datetime.now(UTC) - last >= self.other_folders_interval

    def _polled(self, folder_id: int) -> None:
        folder = db.session.get(MailFolder, folder_id)
        folder.last_polled_at = datetime.now(UTC)
        db.session.commit()

    def status(self, name: str) -> dict[bytes, int]:
        """Return STATUS values, or {} when the server's answer cannot be parsed (163 sends ())."""
        items = [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY"]
        if self.condstore:
            items.append(b"HIGHESTMODSEQ")
        try:
            return dict(self.connect().folder_status(name, items))
        except (ValueError, IndexError, KeyError):
            return {}

    def examine(self, name: str, stored: tuple[int, int, int] | None = None) -> Snapshot:
        """EXAMINE a folder (read-only) and return its snapshot, filling a missing UIDNEXT.

        `stored` is (uidvalidity, highestmodseq, last_seen_uid) of a folder whose first sync
        is complete: where QRESYNC is on, EXAMINE then also asks what vanished and which
        flags changed since (see examine_resync).
        """
        conn = self.connect()
        info = None
        resync = None
        if stored is not None and self.qresync:
            info, resync = self.examine_resync(name, *stored)
        if info is None:
            info = conn.select_folder(name, readonly=True)
        uidnext = info.get(b"UIDNEXT")
        if uidnext is None:
            # 163/Winmail omit UIDNEXT on SELECT: ask STATUS, then the highest UID.
            try:
                uidnext = conn.folder_status(name, [b"UIDNEXT"]).get(b"UIDNEXT")
            except (ValueError, IndexError, KeyError, IMAPClientError):
                uidnext = None
            if uidnext is None and info.get(b"EXISTS"):
                last = imap.uid_fetch(conn, "*", ["UID"])
                uidnext = (max(last) + 1) if last else None
        return Snapshot(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=int(uidnext) if uidnext is not None else None,
            exists=int(info.get(b"EXISTS", 0)),
            highestmodseq=int(info[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in info else None,
            resync=resync,
        )

    def examine_resync(
        self, name: str, uidvalidity: int, modseq: int, last_seen: int
    ) -> tuple[dict | None, Resync | None]:
        """EXAMINE with QRESYNC (RFC 7162 §3.2.5); return the SELECT data and the Resync.

        The Resync is None when the answer cannot be trusted for the stored state: another
        UIDVALIDITY (the server then ignores the parameter), no HIGHESTMODSEQ, a modseq lower
        than the stored one (Dovecot's can go backwards; the full scan handles it) or a
        VANISHED set that does not parse. The SELECT data is None when the server refused the
        command, so the caller EXAMINEs the plain way.
        """
        conn = self.connect()
        try:
            answer = imap.examine_qresync(conn, name, uidvalidity, modseq, f"1:{last_seen}")
        except ValueError as exc:
            log.warning("account %s: %s: unreadable VANISHED (%s)", self.account_id, name, exc)
            return conn.select_folder(name, readonly=True), None
        except imaplib.IMAP4.error as exc:
            if isinstance(exc, imaplib.IMAP4.abort):
                raise
            log.warning("account %s: %s: EXAMINE (QRESYNC) refused: %s", self.account_id, name, exc)
            return None, None
        info = answer.info
        server_modseq = info.get(b"HIGHESTMODSEQ")
        if (
            info.get(b"UIDVALIDITY") != uidvalidity
            or server_modseq is None
            or int(server_modseq) < modseq
        ):
            return info, None
        resync = Resync(
            modseq=modseq, known_high=last_seen, vanished=answer.vanished, changed=answer.changed
        )
        return info, resync

    def _failed_due(self, folder_id: int) -> bool:
        now = datetime.now(UTC)
        return bool(
            db.session.scalar(
                select(func.count())
                .select_from(FailedUid)
                .where(
                    FailedUid.folder_id == folder_id,
                    FailedUid.attempts < MAX_FETCH_ATTEMPTS,
                    FailedUid.next_retry_at <= now,
                )
            )
        )

    def sync_folder(self, folder_id: int) -> None:
        """Sync one folder: STATUS check, EXAMINE, backfill or poll, flags, expunges."""
        self.check_budget()
        folder = db.session.get(MailFolder, folder_id)
        name = folder.name
        try:
            status = self.status(name)
            if self._unchanged(folder, status):
                db.session.commit()
                self._polled(folder_id)
                return
            stored = None
            if (
                folder.initial_sync_complete
                and folder.uidvalidity is not None
                and folder.highestmodseq is not None
                and folder.last_seen_uid >= 1
            ):
                stored = (folder.uidvalidity, folder.highestmodseq, folder.last_seen_uid)
            db.session.commit()
            snapshot = self.examine(name, stored)
        except imaplib.IMAP4.error as exc:
            if isinstance(exc, imaplib.IMAP4.abort):
                raise
            self._folder_failed(folder_id, f"The server refused to open this folder: {exc}")
            return
        folder = db.session.get(MailFolder, folder_id)
        reset = folder.uidvalidity is not None and folder.uidvalidity != snapshot.uidvalidity
        if reset:
            db.session.commit()
            spurious = self.uidvalidity_change_is_spurious(folder_id)
            folder = db.session.get(MailFolder, folder_id)
            if spurious:
                self._accept_uidvalidity(folder, snapshot)
                reset = False
            else:
                self._reset_uidvalidity(folder, snapshot)
                folder = db.session.get(MailFolder, folder_id)
        elif folder.uidvalidity is None:
            folder.uidvalidity = snapshot.uidvalidity
        if not reset:
            folder.uidinvalid_streak = 0
        folder.last_error = None
        if folder.state not in ("initial", "poll"):
            folder.state = "initial" if not folder.initial_sync_complete else "poll"
        db.session.commit()
        try:
            if not folder.initial_sync_complete:
                self.backfill(folder_id, snapshot)
            else:
                self.poll(folder_id, snapshot)
        except imaplib.IMAP4.error as exc:
            if isinstance(exc, imaplib.IMAP4.abort):
                raise
            # A NO/BAD on one folder (e.g. deleted meanwhile) must not stop the others.
            self._folder_failed(folder_id, f"The server refused a command in this folder: {exc}")
            return
        self._polled(folder_id)

    def _unchanged(self, folder: MailFolder, status: dict[bytes, int]) -> bool:
        # SYNC.md §4.2 step 2: one STATUS round trip decides that nothing changed.
        if not status or not folder.initial_sync_complete or not folder.identity_checked:
            return False
        if status.get(b"UIDVALIDITY") != folder.uidvalidity:
            return False
        if status.get(b"UIDNEXT") != folder.uidnext:
            return False
        if status.get(b"MESSAGES") != folder.server_message_count:
            return False
        if not self.condstore:
            return False  # flags may have changed: only a FETCH tells (see FLAG_WINDOW)
        if status.get(b"HIGHESTMODSEQ") != folder.highestmodseq:
            return False
        if store.has_guarded_changes(folder.id):
            return False  # a user change whose server side must be read again
        return not self._failed_due(folder.id)

    def _full_flag_scan_due(self, folder: MailFolder) -> bool:
        last = _aware(folder.last_full_flag_scan_at)
        return last is None or datetime.now(UTC) - last > FULL_FLAG_SCAN_EVERY

    def _folder_failed(self, folder_id: int, message: str) -> None:
        db.session.rollback()
        folder = db.session.get(MailFolder, folder_id)
        folder.last_error = message
        self.result.folder_errors[folder.name] = message
        db.session.commit()

    def uidvalidity_change_is_spurious(self, folder_id: int) -> bool:
        """Tell whether the selected folder's stored UIDs still hold the same messages.

        Fetches the dedup headers and size (X-GM-MSGID on Gmail) of a sample of stored UIDs.
        A UID that no longer exists says nothing, as does a message without Message-ID; any
        other difference means the UIDs were reassigned. The size counts too: a folder rebuilt
        with edited copies of its mail has the same headers at the same UIDs, but other mail
        (mailsync/IDENTITY.md). A refused FETCH counts as "not spurious".
        """
        sample = store.location_sample(folder_id, UIDVALIDITY_SAMPLE)
        db.session.commit()
        if not sample:
            return False
        gmail = self.gmail
        items = ["UID", "RFC822.SIZE", HEADER_ITEM] + (["X-GM-MSGID"] if gmail else [])
        try:
            response = imap.uid_fetch(self.connect(), uid_ranges(sample), items)
        except imaplib.IMAP4.error as exc:
            if isinstance(exc, imaplib.IMAP4.abort):
                raise
            return False
        matches = differ = 0
        for uid, (key, gm_msgid, size) in sample.items():
            data = response.get(uid)
            if data is None:
                continue  # expunged since the last sync
            if gmail and gm_msgid and data.get(b"X-GM-MSGID"):
                same = int(data[b"X-GM-MSGID"]) == gm_msgid
            else:
                header = _header_bytes(data)
                fetched = header_dedup_key(header) if header else None
                if fetched is None or key is None:
                    continue
                same = fetched == key and data.get(b"RFC822.SIZE") == size
            matches += same
            differ += not same
        return (
            differ == 0
            and matches > 0
            and (
                matches >= UIDVALIDITY_MIN_MATCHES or matches >= UIDVALIDITY_MIN_SHARE * len(sample)
            )
        )

    def _accept_uidvalidity(self, folder: MailFolder, snapshot: Snapshot) -> None:
        # The UIDs still name the same messages: keep locations and the watermark. Flags are
        # read again in full, since mod-sequences need not carry over to the new UIDVALIDITY.
        log.info(
            "account %s: folder %s changed UIDVALIDITY %s -> %s but kept its UIDs",
            self.account_id,
            folder.name,
            folder.uidvalidity,
            snapshot.uidvalidity,
        )
        folder.uidvalidity = snapshot.uidvalidity
        folder.highestmodseq = None
        folder.last_full_flag_scan_at = None
        db.session.commit()

    def _reset_uidvalidity(self, folder: MailFolder, snapshot: Snapshot) -> None:
        # SYNC.md §4.6: rebuild locations, keep messages; re-link by dedup key without bodies.
        folder.uidinvalid_streak += 1
        if folder.uidinvalid_streak > MAX_UIDINVALID_RESYNCS:
            folder.state = "error"
            folder.last_error = (
                "This folder's UIDVALIDITY changed on every check, so it was stopped. "
                "Other folders keep syncing."
            )
            self.result.folder_errors[folder.name] = folder.last_error
            db.session.commit()
            raise FolderError(folder.last_error)
        db.session.execute(
            MessageLocation.__table__.update()
            .where(MessageLocation.__table__.c.folder_id == folder.id)
            .values(stale=True)
        )
        store.forget_failed_uids(folder.id)
        folder.uidvalidity = snapshot.uidvalidity
        folder.uidnext = None
        folder.highestmodseq = None
        folder.last_seen_uid = 0
        folder.initial_sync_complete = False
        folder.server_message_count = None
        folder.state = "initial"
        db.session.commit()

    # ------------------------------------------------------------------ UID search

    def search_uids(self, low: int, high: int | None, since: date | None) -> list[int]:
        """Return server UIDs in [low, high] (chunked UID SEARCH), optionally SINCE a date."""
        conn = self.connect()
        extra: list[Any] = ["SINCE", since] if since else []
        if high is None or (high - low) // SEARCH_RANGE > 40:
            found = conn.search(["UID", f"{low}:*", *extra])
            return sorted(uid for uid in found if uid >= low and (high is None or uid <= high))
        result: list[int] = []
        for start in range(low, high + 1, SEARCH_RANGE):
            end = min(start + SEARCH_RANGE - 1, high)
            result.extend(conn.search(["UID", f"{start}:{end}", *extra]))
        return sorted(uid for uid in set(result) if low <= uid <= high)

    # ------------------------------------------------------------------ backfill

    def backfill(self, folder_id: int, snapshot: Snapshot) -> None:
        """Download remote-minus-local UIDs newest first; finish the folder when none remain."""
        folder = db.session.get(MailFolder, folder_id)
        name = folder.name
        high = (snapshot.uidnext - 1) if snapshot.uidnext else None
        db.session.commit()
        remote = self.search_uids(1, high, self.since) if high else []
        if high is None or snapshot.uidnext:
            # Mail that arrived after EXAMINE (UID >= snapshot UIDNEXT) joins this backfill.
            since = None if high else self.since
            remote = sorted(set(remote) | set(self.search_uids((high or 0) + 1, None, since)))
        local = store.local_uids(folder_id)
        now = datetime.now(UTC)
        skip = set(
            db.session.scalars(
                select(FailedUid.uid).where(
                    FailedUid.folder_id == folder_id,
                    (FailedUid.attempts >= MAX_FETCH_ATTEMPTS) | (FailedUid.next_retry_at > now),
                )
            )
        )
        if local and high:
            # A first sync split over several passes: what changed on the server since the
            # earlier passes, on mail they stored, is read now (the folder's modseq and count
            # are only taken when the backfill finishes, so no later poll would see it).
            local = self._refresh_stored(folder_id, local, high)
            folder = db.session.get(MailFolder, folder_id)
        work = sorted(set(remote) - local - skip, reverse=True)
        # Batches never mix the parts: a batch is stored newest first (ingest).
        parts = [work]
        if work and self.gmail and folder.role == "all":
            parts = self._inbox_first(work, high)
        folder.backfill_total = len(remote)
        folder.backfill_done = len(remote) - len(work)
        db.session.commit()
        self.report(name, len(remote) - len(work), len(remote))
        done = len(remote) - len(work)
        # With no message stored in the account yet nothing can match a dedup key, so the
        # first folder of a new account skips the header pre-fetch (most of a first sync).
        dedup_possible = bool(
            db.session.scalar(
                select(Message.id).where(Message.account_id == self.account_id).limit(1)
            )
        )
        db.session.commit()
        for chunk in self._batches(parts):
            self.check_budget()
            meta = self.fetch_meta(uid_ranges(chunk), set(chunk), headers=dedup_possible)
            self.ingest(folder_id, meta, newest_first=True)
            done += len(chunk)
            folder = db.session.get(MailFolder, folder_id)
            folder.backfill_done = done
            db.session.commit()
            self.report(name, done, len(remote))
        # Finished: the watermark starts at the snapshot; its modseq makes the next poll
        # re-read flags changed during backfill (SYNC.md §4.1 step 10).
        self.result.deleted += store.remove_stale_locations(folder_id, log=self.result.log)
        folder = db.session.get(MailFolder, folder_id)
        folder.last_seen_uid = max([*remote, (snapshot.uidnext or 1) - 1, folder.last_seen_uid])
        folder.uidnext = snapshot.uidnext
        folder.highestmodseq = snapshot.highestmodseq
        # The count includes the mail that arrived after EXAMINE and was stored with the rest.
        count = snapshot.exists + _arrived_after(snapshot, remote)
        folder.server_message_count = count
        # What the server has beyond the horizon, so the first poll's count check adds up.
        folder.server_not_stored = max(0, count - store.location_count(folder_id))
        folder.initial_sync_complete = True
        folder.state = "poll"
        folder.last_full_flag_scan_at = datetime.now(UTC)
        db.session.commit()

    @staticmethod
    def _batches(parts: list[list[int]]) -> Iterator[list[int]]:
        """Yield the metadata batches of the work set's parts, in order: the first one small
        (FIRST_META_BATCH) so the newest mail shows within seconds, then META_BATCH each."""
        size = FIRST_META_BATCH
        for part in parts:
            position = 0
            while position < len(part):
                yield part[position : position + size]
                position += size
                size = META_BATCH

    def _inbox_first(self, work: list[int], high: int | None) -> list[list[int]]:
        """Order All Mail's work set with the \\Inbox-labelled UIDs first (each part newest
        first), so a first Gmail sync fills the inbox before the rest (SYNC.md §4.5).

        The search is bounded by the account's horizon (it can time out on a million-message
        mailbox) and by the work set's UID range.
        """
        extra: list[Any] = ["SINCE", self.since] if self.since else []
        criteria = ["X-GM-LABELS", "\\Inbox", "UID", f"{min(work)}:{high or '*'}", *extra]
        inbox = set(self.connect().search(criteria)) & set(work)
        return [[uid for uid in work if uid in inbox], [uid for uid in work if uid not in inbox]]

    def _refresh_stored(self, folder_id: int, local: set[int], high: int) -> set[int]:
        """Drop stored UIDs the server no longer has and re-read the flags of the rest;
        return the UIDs still stored. For a backfill that resumes an earlier pass."""
        db.session.commit()
        gone = {uid for uid in local if uid <= high} - set(self.search_uids(1, high, None))
        if gone:
            self.result.deleted += store.remove_locations(folder_id, gone, log=self.result.log)
            db.session.commit()
        kept = local - gone
        items = ["FLAGS"] + (["X-GM-LABELS"] if self.gmail else [])
        for chunk in _chunks(sorted(kept), 5000):
            self.check_budget()
            response = imap.uid_fetch(self.connect(), uid_ranges(chunk), items)
            self._apply_flags(folder_id, response, max(chunk))
        return kept

    # ------------------------------------------------------------------ fetching

    def fetch_meta(
        self, uid_set: str, wanted: set[int] | None, *, headers: bool = True
    ) -> dict[int, Meta]:
        """FETCH flags, size, dates and dedup headers; drop UIDs we did not ask for."""
        items = (META_ITEMS if headers else META_ITEMS[:-1]) + (GMAIL_ITEMS if self.gmail else [])
        response = imap.uid_fetch(self.connect(), uid_set, items)
        metas: dict[int, Meta] = {}
        for uid, data in response.items():
            if wanted is not None and uid not in wanted:
                continue  # a UID we did not ask for (Nylas drops these too)
            if b"RFC822.SIZE" not in data:
                continue
            header = _header_bytes(data)
            labels = _labels(data) or []
            metas[uid] = Meta(
                uid=uid,
                flags=tuple(data.get(b"FLAGS", ())),
                size=int(data[b"RFC822.SIZE"]),
                internaldate=_aware(data.get(b"INTERNALDATE")),
                header=header,
                key=header_dedup_key(header) if header else None,
                gm_msgid=data.get(b"X-GM-MSGID"),
                gm_thrid=data.get(b"X-GM-THRID"),
                gm_labels=labels,
            )
        return metas

    def body_batches(self, metas: list[Meta]) -> Iterator[list[Meta]]:
        """Group messages into body FETCHes of at most N messages and about 8 MB."""
        batch: list[Meta] = []
        size = 0
        for meta in metas:
            if batch and (len(batch) >= self.batch_messages or size + meta.size > self.batch_bytes):
                yield batch
                batch, size = [], 0
            batch.append(meta)
            size += meta.size
        if batch:
            yield batch

    def ingest(
        self,
        folder_id: int,
        metas: dict[int, Meta],
        *,
        newest_first: bool,
        on_committed: Callable[[set[int]], None] | None = None,
    ) -> None:
        """Link known messages, download the rest in batches; one transaction per batch."""
        if not metas:
            return
        ordered = sorted(metas.values(), key=lambda m: m.uid, reverse=newest_first)
        if self.gmail:
            known_gm = store.existing_by_gm_msgid(
                self.account_id, [m.gm_msgid for m in ordered if m.gm_msgid]
            )
        else:
            known_gm = {}
        copies = store.copies_by_header_key(
            self.account_id, folder_id, [m.key for m in ordered if m.key]
        )
        links: list[store.Link] = []
        download: list[Meta] = []
        for meta in ordered:
            message_id = known_gm.get(meta.gm_msgid) if meta.gm_msgid else None
            if message_id is None and meta.key:
                message_id = _stored_copy(copies.get(meta.key, ()), meta.size)
            if message_id is None:
                download.append(meta)
            else:
                links.append(
                    store.Link(folder_id, meta.uid, message_id, meta.flags, meta.gm_labels)
                )
        takeover = store.has_stale_locations(folder_id)
        clear_failures = store.has_failed_uids(folder_id)
        self.folder_flags[folder_id] = (takeover, clear_failures)
        if links:
            store.link_locations(links, takeover=takeover)
            if clear_failures:
                store.clear_failed_uids(folder_id, [li.uid for li in links])
        db.session.commit()
        if on_committed and links:
            on_committed({li.uid for li in links})
        normal = [m for m in download if m.size <= self.max_full_size]
        oversized = [m for m in download if m.size > self.max_full_size]
        self._download(folder_id, normal, on_committed)
        for meta in oversized:
            self.check_budget()
            self._store_placeholder(folder_id, meta)
            if on_committed:
                on_committed({meta.uid})

    def _start_fetch(self, conn: IMAPClient, batch: list[Meta]) -> Future:
        if self.fetch_in_thread:
            return self._fetcher().submit(_fetch_bodies, conn, batch)
        done: Future = Future()
        try:
            done.set_result(_fetch_bodies(conn, batch))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def _fetcher(self) -> ThreadPoolExecutor:
        """Return the single thread that runs body FETCHes while this thread persists."""
        if self.fetch_thread is None:
            self.fetch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imap-fetch")
        return self.fetch_thread

    def _executor(self, count: int) -> Executor | None:
        """Return the parse worker pool when `count` messages make one worth starting."""
        workers = int(self.app.config.get("SYNC_PARSE_WORKERS", PARSE_WORKERS))
        if workers < 1 or count < POOL_THRESHOLD:
            return None
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=get_context("spawn"),
                initializer=follow_parent_out,
                initargs=(os.getpid(),),
            )
        return self.pool

    def _download(
        self,
        folder_id: int,
        metas: list[Meta],
        on_committed: Callable[[set[int]], None] | None,
    ) -> None:
        """Fetch bodies batch by batch and persist several fetched batches per transaction.

        Three things overlap: the next FETCHes (queued on the fetch thread, which only talks
        IMAP), the parse of batch k (worker processes) and, on this thread, the transaction
        that persists earlier batches. A transaction never waits for the network: it only
        contains batches whose bodies are already downloaded and parsed, and it commits
        before the next FETCH result is awaited. The order of commits is the fetch order,
        and `on_committed` (the watermark) only hears of UIDs after their commit.
        """
        executor = self._executor(len(metas))
        batches = list(self.body_batches(metas))
        # Fetched batches not yet persisted: (metas, failed UIDs, parse work).
        ready: list[tuple[list[Meta], list[int], Future | list[Prepared]]] = []

        def persist(count: int) -> None:
            group, ready[:count] = ready[:count], []
            if not group:
                return
            batch = [meta for metas_, _f, _w in group for meta in metas_]
            failed = [uid for _m, failed_, _w in group for uid in failed_]
            prepared = [
                p
                for _m, _f, work in group
                for p in (work.result() if isinstance(work, Future) else work)
            ]
            stored = self._persist(folder_id, batch, prepared, failed)
            if on_committed:
                on_committed(stored)

        def unpersisted(upto: int) -> int:
            return sum(len(metas_) for metas_, _f, _w in ready[:upto])

        conn = self.connect()
        queued = iter(batches)
        fetching: deque[tuple[list[Meta], Future]] = deque()  # FETCHes handed to the thread
        out_of_time = False

        def fetch_ahead() -> None:
            nonlocal out_of_time
            while len(fetching) < FETCH_AHEAD and not out_of_time:
                batch = next(queued, None)
                if batch is None:
                    return
                if self.out_of_time():
                    out_of_time = True
                    return
                fetching.append((batch, self._start_fetch(conn, batch)))

        try:
            fetch_ahead()
            while fetching:
                batch, future = fetching[0]
                raws, failed = future.result()
                fetching.popleft()
                fetch_ahead()
                if executor is not None:
                    work: Future | list[Prepared] = executor.submit(
                        prepare_batch, self.blob_root, raws
                    )
                else:
                    work = prepare_batch(self.blob_root, raws)
                ready.append((batch, failed, work))
                # Keep the newest batch in the workers; persist the older ones once enough.
                if unpersisted(len(ready) - 1) >= self.db_batch_messages:
                    persist(len(ready) - 1)
        except NETWORK_ERRORS:
            persist(len(ready))  # keep what was already downloaded; the retry starts after it
            raise
        finally:
            for _batch, future in fetching:
                if not future.cancel():
                    future.exception()  # wait until the connection is idle again
        persist(len(ready))
        if out_of_time:
            raise BudgetExceeded()

    def _persist(
        self, folder_id: int, batch: list[Meta], prepared: list[Prepared], failed: list[int]
    ) -> set[int]:
        """Store one prepared batch in one transaction; return the UIDs now handled."""
        metas = {meta.uid: meta for meta in batch}
        items = [
            store.Fetched(
                folder_id=folder_id,
                uid=p.uid,
                flags=metas[p.uid].flags,
                dedup_key=p.dedup_key,
                header_key=p.header_key,
                parsed=p.parsed,
                raw_sha256=p.raw_sha256,
                size=p.size,
                internaldate=metas[p.uid].internaldate,
                gm_msgid=metas[p.uid].gm_msgid,
                gm_thrid=metas[p.uid].gm_thrid,
                gm_labels=metas[p.uid].gm_labels,
            )
            for p in prepared
        ]
        takeover, clear_failures = self.folder_flags.get(folder_id, (True, True))
        self.result.new += store.store_batch(
            self.ctx, items, takeover=takeover, log=self.result.log
        )
        if clear_failures:
            store.clear_failed_uids(folder_id, [item.uid for item in items])
        for uid in failed:
            store.record_failed_uid(
                folder_id,
                uid,
                "The server returned no message body.",
                retry_after_seconds=FAILED_RETRY_SECONDS,
            )
        db.session.commit()
        self.keep_lease()  # a long download may not reach check_budget for a while
        return set(metas)

    def _store_placeholder(self, folder_id: int, meta: Meta) -> None:
        """Store an oversized message as headers only (is_placeholder), fetched on demand later."""
        response = imap.uid_fetch(self.connect(), str(meta.uid), ["BODY.PEEK[HEADER]"])
        header = response.get(meta.uid, {}).get(b"BODY[HEADER]") or meta.header
        parsed = parse_headers_only(header)
        item = store.Fetched(
            folder_id=folder_id,
            uid=meta.uid,
            flags=meta.flags,
            dedup_key=placeholder_dedup_key(parsed, meta.size),
            header_key=header_dedup_key(header),
            parsed=parsed,
            raw_sha256=None,
            size=meta.size,
            internaldate=meta.internaldate,
            is_placeholder=True,
            gm_msgid=meta.gm_msgid,
            gm_thrid=meta.gm_thrid,
            gm_labels=meta.gm_labels,
        )
        self.result.new += store.store_batch(self.ctx, [item], log=self.result.log)
        db.session.commit()

    # ------------------------------------------------------------------ poll

    def poll(self, folder_id: int, snapshot: Snapshot) -> None:
        """Fetch new UIDs above the watermark, then flags, then expunges; commit the cycle."""
        folder = db.session.get(MailFolder, folder_id)
        last_seen = folder.last_seen_uid
        previous_count = folder.server_message_count
        stored_modseq = folder.highestmodseq
        db.session.commit()
        rewound = snapshot.uidnext is not None and snapshot.uidnext <= last_seen
        if rewound:
            # The server rewound UIDNEXT (GMX): rewind the watermark, reconcile fully.
            last_seen = snapshot.uidnext - 1
            previous_count = None
        new_uids = self.fetch_new(folder_id, last_seen)
        # Mail that arrived after EXAMINE was fetched too, but is not in its count: the count
        # checks below use the snapshot's count plus it (none after a rewound UIDNEXT, whose
        # UIDs all lie above it).
        late = 0 if rewound else _arrived_after(snapshot, new_uids)
        counted = replace(snapshot, exists=snapshot.exists + late)
        self.retry_failed(folder_id)
        self.check_identities(folder_id, last_seen)
        resync = snapshot.resync
        if resync is not None and (stored_modseq != resync.modseq or rewound):
            resync = None  # not an answer about the state stored now: take the older path
        self.sync_flags(folder_id, snapshot, stored_modseq, resync)
        folder = db.session.get(MailFolder, folder_id)
        guard = folder.last_seen_uid
        db.session.commit()
        if resync is not None and previous_count is not None:
            # RFC 7162: the server named what was expunged; the count check still guards it.
            self.remove_vanished(folder_id, resync, guard)
            if self._count_unexplained(folder_id, counted):
                self.reconcile(folder_id, guard, counted)
        else:
            expected = None if previous_count is None else previous_count + len(new_uids) - late
            if expected != snapshot.exists or self._count_unexplained(folder_id, counted):
                self.reconcile(folder_id, guard, counted)
        folder = db.session.get(MailFolder, folder_id)
        folder.uidnext = snapshot.uidnext
        if snapshot.highestmodseq is not None:
            folder.highestmodseq = snapshot.highestmodseq
        folder.server_message_count = counted.exists
        db.session.commit()

    def check_identities(self, folder_id: int, last_seen: int) -> None:
        """Once per folder synced before content-based identity: download again the UIDs
        whose size differs from the message they were merged into (mailsync/IDENTITY.md)."""
        folder = db.session.get(MailFolder, folder_id)
        checked = folder.identity_checked
        db.session.commit()
        if checked:
            return
        sizes = store.location_sizes(folder_id, high=last_seen)
        db.session.commit()
        for chunk in _chunks(sorted(sizes), 2000):
            self.check_budget()
            # Sizes only: a merged UID is downloaded whole anyway, the rest need nothing.
            metas = self.fetch_meta(uid_ranges(chunk), set(chunk), headers=False)
            merged = {uid: m for uid, m in metas.items() if m.size != sizes[uid]}
            if merged:
                log.info("folder %s: %s mails were merged into others", folder_id, len(merged))
                store.remove_locations(folder_id, set(merged))
                db.session.commit()
                self.ingest(folder_id, merged, newest_first=False)
        folder = db.session.get(MailFolder, folder_id)
        folder.identity_checked = True
        db.session.commit()

    def fetch_new(self, folder_id: int, last_seen: int) -> set[int]:
        """`UID FETCH last+1:*`, keeping only UIDs > last (the N:* quirk); return those UIDs."""
        meta = self.fetch_meta(f"{last_seen + 1}:*", None)
        meta = {uid: m for uid, m in meta.items() if uid > last_seen}
        if not meta:
            return set()
        # A write-back's move records the mail at its new UID before a pass fetches it: that
        # location takes only the flags, through the guard that keeps a \Seen the user
        # changed since this FETCH (storing it anew would write the older one over it).
        moved = store.local_uids(folder_id, low=last_seen + 1) & set(meta)
        if moved:
            store.apply_flag_changes(
                folder_id, {uid: (meta[uid].flags, meta[uid].gm_labels) for uid in moved}
            )
            db.session.commit()
        pending = set(meta)
        state = {"watermark": last_seen}

        def committed(uids: set[int]) -> None:
            # The watermark never passes a UID that is not committed yet.
            pending.difference_update(uids)
            top = (min(pending) - 1) if pending else max(meta)
            if top > state["watermark"]:
                passed = sum(1 for uid in meta if state["watermark"] < uid <= top)
                state["watermark"] = top
                folder = db.session.get(MailFolder, folder_id)
                folder.last_seen_uid = top
                # The count checkpoint moves with the watermark (moves linked to stored mail
                # included): a pass that stops after this commit leaves a count the next
                # pass's check still adds up with. poll() sets the final count at its end.
                if folder.server_message_count is not None:
                    folder.server_message_count += passed
                db.session.commit()

        if moved:
            committed(moved)
        fetched = {uid: m for uid, m in meta.items() if uid not in moved}
        self.ingest(folder_id, fetched, newest_first=False, on_committed=committed)
        return set(meta)

    def retry_failed(self, folder_id: int) -> None:
        """Fetch again the UIDs whose earlier fetch failed and whose retry time has come."""
        now = datetime.now(UTC)
        uids = list(
            db.session.scalars(
                select(FailedUid.uid).where(
                    FailedUid.folder_id == folder_id,
                    FailedUid.attempts < MAX_FETCH_ATTEMPTS,
                    FailedUid.next_retry_at <= now,
                )
            )
        )
        db.session.commit()
        if uids:
            self.ingest(folder_id, self.fetch_meta(uid_ranges(uids), set(uids)), newest_first=False)

    # ------------------------------------------------------------------ flags

    def sync_flags(
        self,
        folder_id: int,
        snapshot: Snapshot,
        stored_modseq: int | None,
        resync: Resync | None = None,
    ) -> None:
        """Apply server flag changes: those QRESYNC reported, else CONDSTORE CHANGEDSINCE,
        else windowed scans (§4.3)."""
        folder = db.session.get(MailFolder, folder_id)
        last_seen = folder.last_seen_uid
        full_due = self._full_flag_scan_due(folder)
        db.session.commit()
        if last_seen < 1:
            return
        conn = self.connect()
        items = ["FLAGS"] + (["X-GM-LABELS"] if self.gmail else [])
        self._recheck_after_guard(folder_id, items, last_seen)
        if resync is not None:
            # Only the UIDs known then: mail fetched since came with its current flags, which
            # may be newer than the ones EXAMINE reported.
            high = min(last_seen, resync.known_high)
            self._apply_flags(folder_id, resync.changed, high, add_back=True)
            return
        if self.condstore and snapshot.highestmodseq is not None and stored_modseq is not None:
            if snapshot.highestmodseq == stored_modseq:
                return
            if snapshot.highestmodseq > stored_modseq:
                response = imap.uid_fetch(
                    conn, f"1:{last_seen}", items, modifiers=[f"CHANGEDSINCE {stored_modseq}"]
                )
                self._apply_flags(folder_id, response, last_seen, add_back=True)
                return
            full_due = True  # Dovecot HIGHESTMODSEQ went backwards: one full scan (Close)
        # Whole UID ranges, not just the stored UIDs: a UID the server has again (its \\Deleted
        # cleared by another client) shows up there too and is added back.
        local = sorted(store.local_uids(folder_id, high=last_seen))
        db.session.commit()
        if full_due:
            for chunk in _chunks(local, 5000):
                self.check_budget()
                response = imap.uid_fetch(conn, f"{chunk[0]}:{chunk[-1]}", items)
                self._apply_flags(folder_id, response, last_seen, add_back=True)
            folder = db.session.get(MailFolder, folder_id)
            folder.last_full_flag_scan_at = datetime.now(UTC)
            db.session.commit()
        elif local:
            low = local[-FLAG_WINDOW:][0]
            response = imap.uid_fetch(conn, f"{low}:{last_seen}", items)
            self._apply_flags(folder_id, response, last_seen, add_back=True)

    def push_pending_seen(self) -> None:
        """Write again the user's \\Seen changes an earlier write-back could not (§4.3)."""
        pending = store.pending_seen_writes(self.account_id)
        db.session.commit()
        for seen, rows in pending.items():
            try:
                done = set(
                    actions.set_seen(
                        self.app,
                        self.account_id,
                        [(folder, uid) for _id, folder, uid in rows],
                        seen,
                    )
                )
            except actions.MailActionError as exc:
                log.warning("account %s: \\Seen write-back failed again: %s", self.account_id, exc)
                continue
            store.seen_written([location_id for location_id, f, u in rows if (f, u) in done], seen)
            db.session.commit()

    def _recheck_after_guard(self, folder_id: int, items: list[str], last_seen: int) -> None:
        """Read again the flags of locations whose \\Seen the user changed in Threadline and
        whose guard window is over (SYNC.md §4.3): a change made elsewhere inside the window
        was kept out then, and CHANGEDSINCE will not report it again. The server wins now."""
        uids = store.guard_expired_uids(folder_id, high=last_seen)
        db.session.commit()
        for chunk in _chunks(sorted(uids), 5000):
            response = imap.uid_fetch(self.connect(), uid_ranges(chunk), items)
            self._apply_flags(folder_id, response, last_seen)
            store.end_guard(folder_id, chunk)
            db.session.commit()

    def _apply_flags(
        self, folder_id: int, response: dict, last_seen: int, *, add_back: bool = False
    ) -> None:
        """Apply the FLAGS of a FETCH response to the stored locations. With `add_back`,
        UIDs the server reports live (not \\Deleted) that Threadline does not store are
        fetched: a mail whose location was dropped when Threadline moved it away without
        MOVE/UIDPLUS, then undeleted elsewhere."""
        changes = {
            uid: (
                tuple(data.get(b"FLAGS", ())),
                _labels(data),
            )
            for uid, data in response.items()
            if uid <= last_seen and b"FLAGS" in data
        }
        if changes:
            self.result.changed += store.apply_flag_changes(folder_id, changes, log=self.result.log)
        db.session.commit()
        if add_back and changes:
            live = {uid for uid, (flags, _labels) in changes.items() if b"\\Deleted" not in flags}
            # Only the rows of these UIDs: a few changes far apart in a big folder would
            # otherwise read every stored UID between them.
            stored: set[int] = set()
            for spans in _chunks(uid_spans(live), RANGES_PER_QUERY):
                stored |= store.local_uids_in_ranges(folder_id, spans)
            self._add_back(folder_id, live - stored)

    def _add_back(self, folder_id: int, uids: set[int]) -> None:
        """Store server UIDs below the watermark that Threadline lacks (within the horizon)."""
        uids -= store.failed_uids_to_skip(folder_id)
        db.session.commit()
        if not uids:
            return
        metas = self.fetch_meta(uid_ranges(uids), uids)
        if self.since is not None:
            metas = {
                uid: meta
                for uid, meta in metas.items()
                if meta.internaldate is None or meta.internaldate.date() >= self.since
            }
        if metas:
            log.info("folder %s: %s mails found again on the server", folder_id, len(metas))
            self.ingest(folder_id, metas, newest_first=False)

    # ------------------------------------------------------------------ expunges

    def remove_vanished(self, folder_id: int, resync: Resync, guard: int) -> None:
        """Drop the stored locations whose UIDs the server reported VANISHED (RFC 7162).

        Only UIDs within the known range (<= the watermark sent, and <= `guard`) count, and
        they go through store.remove_locations like the UID SEARCH diff's, so the same
        guards, run log and unread bookkeeping apply. Ranges are looked up in the store, never
        expanded: a server may name large ranges.
        """
        high = min(guard, resync.known_high)
        ranges: list[tuple[int, int]] = []
        for low, top in sorted((low, min(top, high)) for low, top in resync.vanished):
            if low > high:
                break
            if ranges and low <= ranges[-1][1] + 1:  # overlapping or adjacent: one range
                ranges[-1] = (ranges[-1][0], max(top, ranges[-1][1]))
            else:
                ranges.append((low, top))
        for chunk in _chunks(ranges, RANGES_PER_QUERY):
            gone = store.local_uids_in_ranges(folder_id, chunk)
            db.session.commit()
            if gone:
                self.result.deleted += store.remove_locations(folder_id, gone, log=self.result.log)
                db.session.commit()

    def _count_unexplained(self, folder_id: int, snapshot: Snapshot) -> bool:
        """Tell whether the server's message count no longer equals what Threadline stores
        plus what the last reconcile found it does not store (\\Deleted, beyond the horizon)."""
        folder = db.session.get(MailFolder, folder_id)
        not_stored = folder.server_not_stored
        stored = store.location_count(folder_id)
        db.session.commit()
        return not_stored is None or stored + not_stored != snapshot.exists

    def reconcile(self, folder_id: int, guard: int, snapshot: Snapshot) -> None:
        """Make the stored UIDs match the server's (chunked UID SEARCH diff, SYNC.md §4.4).

        Locations whose UIDs vanished are dropped. UIDs the server has, not flagged \\Deleted
        and within the horizon, that Threadline lacks are fetched: e.g. a mail moved away
        without MOVE/UIDPLUS (left flagged \\Deleted, its location dropped) whose flag another
        client cleared. What remains unstored is counted, so mail-status can explain it and
        later polls only reconcile when that count stops adding up.

        Only local UIDs <= `guard` (the watermark taken before searching) are candidates, so
        a message stored after the search is never retracted by mistake.
        """
        missing: set[int] = set()
        if guard >= 1:
            skip = store.failed_uids_to_skip(folder_id)
            since: list[Any] = ["SINCE", self.since] if self.since else []
            for start in range(1, guard + 1, SEARCH_RANGE):
                end = min(start + SEARCH_RANGE - 1, guard)
                local = store.local_uids(folder_id, low=start, high=end)
                db.session.commit()
                self.check_budget()
                conn = self.connect()
                remote = set(conn.search(["UID", f"{start}:{end}"]))
                gone = local - remote
                if gone:
                    self.result.deleted += store.remove_locations(
                        folder_id, gone, log=self.result.log
                    )
                    db.session.commit()
                live = set(conn.search(["UID", f"{start}:{end}", "UNDELETED", *since]))
                missing |= {uid for uid in live - local - skip if start <= uid <= end}
        if missing:
            self._add_back(folder_id, missing)
        folder = db.session.get(MailFolder, folder_id)
        folder.server_not_stored = max(0, snapshot.exists - store.location_count(folder_id))
        db.session.commit()


def sync_account(
    account_id: int,
    *,
    app: Flask,
    budget_seconds: float = 90,
    progress: Progress | None = None,
    all_folders: bool = True,
    heartbeat: Heartbeat | None = None,
    yield_to: YieldTo | None = None,
) -> SyncResult:
    """Run one sync pass of an account within a time budget; errors land in the result.

    all_folders=False is a scheduled pass: folders other than INBOX and Sent are skipped when
    synced less than OTHER_FOLDERS_INTERVAL_SECONDS ago. `heartbeat` tells, between
    batches, whether the caller still holds its lease; `yield_to`, whether to stop early for
    more urgent work. Does not touch account state (see jobs.run_account_sync).
    """
    with app.app_context():
        try:
            engine = AccountSync(
                app,
                account_id,
                budget_seconds,
                progress,
                all_folders=all_folders,
                heartbeat=heartbeat,
                yield_to=yield_to,
            )
        except Exception as exc:  # e.g. undecryptable password
            db.session.rollback()
            return SyncResult(account_id=account_id, error=str(exc), error_kind="internal")
        result = engine.run()
        db.session.remove()
        return result
