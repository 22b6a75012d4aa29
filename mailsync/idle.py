"""Push with IMAP IDLE (RFC 2177): the worker's watchers of the accounts' INBOXes.

The worker (worker.py) runs one `IdleWatchers`: a thread that reads the account list every
IDLE_REFRESH_SECONDS and keeps one `Watcher` thread per running account whose server offers
IDLE (the capabilities the last sync pass recorded), at most IDLE_MAX_CONNECTIONS in all. A
watcher holds one connection of its own that EXAMINEs INBOX and IDLEs; any change the server
reports there (EXISTS, EXPUNGE, FETCH flags, VANISHED) calls `on_change(account_id)`, which
queues the account's ordinary sync pass through the job queue. So the watcher never writes
mail itself, and the account's two connections are this one and the pass's (SYNC.md §1).

IDLE is only a wake-up (SYNC.md §4.7): the scheduled polling keeps running whatever happens
here. A server without IDLE, one that rejects it, a dropped connection or bad credentials
never reach the account's state or the user; the watcher logs, waits (backoff with jitter)
and tries again. Accounts that are paused, removed or blocked on credentials get no watcher,
and a watcher whose account's server settings or password changed is replaced.

Whether an account's IDLE connection is live is published in `mail_account.idle_seen_at`
(renewed every refresh; cleared when the connection drops), so every web process can show
it (services.accounts.push_status).
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import Flask
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import select, update

from extensions import db
from mailsync import imap
from models import SYNC_RUNNING, MailAccount
from services import job_queue

log = logging.getLogger("threadline.idle")

# Untagged responses that mean the mailbox changed; "* OK Still here" keep-alives do not.
CHANGE_RESPONSES = frozenset({b"EXISTS", b"EXPUNGE", b"FETCH", b"VANISHED", b"RECENT"})
# How often a waiting watcher looks up from the socket, so a stop takes effect quickly.
CHECK_SECONDS = 1.0
# A wait on the socket that ends this much earlier than asked, with nothing read, means
# the socket woke for an EOF or error (imapclient's idle_check swallows both).
EARLY_WAKE_FRACTION = 0.5
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 300.0
STOP_SECONDS = 2.0  # how long a stopping watcher waits for the server's goodbye


@dataclass(frozen=True)
class IdleSettings:
    """The IDLE_* configuration (config.py)."""

    enabled: bool
    max_connections: int
    renew_seconds: float
    timeout_seconds: float
    refresh_seconds: float

    @classmethod
    def from_config(cls, config) -> IdleSettings:
        """Read the IDLE_* settings from an app's config."""
        return cls(
            enabled=bool(config.get("IDLE_ENABLED", True)),
            max_connections=int(config.get("IDLE_MAX_CONNECTIONS", 50)),
            renew_seconds=float(config.get("IDLE_RENEW_SECONDS", 600)),
            timeout_seconds=float(config.get("IDLE_TIMEOUT_SECONDS", 30)),
            refresh_seconds=float(config.get("IDLE_REFRESH_SECONDS", 30)),
        )


class IdleUnavailable(Exception):
    """The server does not offer IDLE, or refused it: poll only, and look again later."""


class ConnectionDropped(Exception):
    """The server said BYE or the socket ended."""


# --------------------------------------------------------------------------- plain functions


def account_fingerprint(account: MailAccount) -> str:
    """Return a digest of what a connection to the account is made from (server, login).

    A watcher made from other values (the user changed the password or server) is replaced.
    An OAuth2 account's stored access token changes at every renewal, which changes nothing
    for a connection already signed in: its sign-in method counts, not the token.
    """
    secret = (
        account.auth_type
        if account.auth_type == "xoauth2"
        else (account.password_encrypted or b"").hex()
    )
    parts = (
        account.imap_host,
        str(account.imap_port),
        account.imap_security,
        account.username,
        secret,
        account.ca_cert_pem or "",
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def watchable_accounts(limit: int) -> dict[int, str]:
    """Return {account id: fingerprint} of the accounts to watch, lowest ids first.

    Running (not paused, not blocked on credentials), not removed, and the server's recorded
    capabilities include IDLE; at most `limit` of them.
    """
    if limit <= 0:
        return {}
    accounts = db.session.scalars(
        select(MailAccount)
        .where(MailAccount.sync_state == SYNC_RUNNING, MailAccount.removed_at.is_(None))
        .order_by(MailAccount.id)
    )
    wanted: dict[int, str] = {}
    for account in accounts:
        if "IDLE" in (account.capabilities or []):
            wanted[account.id] = account_fingerprint(account)
            if len(wanted) >= limit:
                break
    return wanted


def publish_live(app: Flask, live: Iterable[int], gone: Iterable[int] = ()) -> None:
    """Record in the database which accounts' IDLE connections are live now (and which not).

    A failure is only logged: the next refresh writes again.
    """
    live, gone = list(live), list(gone)
    if not live and not gone:
        return
    with app.app_context():
        try:
            if live:
                db.session.execute(
                    update(MailAccount)
                    .where(MailAccount.id.in_(live))
                    .values(idle_seen_at=datetime.now(UTC))
                )
            if gone:
                db.session.execute(
                    update(MailAccount).where(MailAccount.id.in_(gone)).values(idle_seen_at=None)
                )
            db.session.commit()
        except Exception:
            db.session.rollback()
            log.exception("recording the IDLE connections failed")
        finally:
            db.session.remove()


def mailbox_changed(responses: Iterable) -> bool:
    """Tell whether untagged IDLE responses report a change to the mailbox."""
    for response in responses:
        if len(response) >= 2 and response[1] in CHANGE_RESPONSES:
            return True
    return False


def said_bye(responses: Iterable) -> bool:
    """Tell whether the server is closing the connection (`* BYE`)."""
    return any(response and response[0] == b"BYE" for response in responses)


def keep_alive(client: IMAPClient) -> None:
    """Turn on TCP keepalive, so a dead network ends a quiet connection within minutes."""
    sock = client.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def start_idle(client: IMAPClient) -> None:
    """Send IDLE; raise IdleUnavailable when the server answers anything but a continuation.

    imapclient raises IMAPClientError for an unexpected answer (a tagged NO, BAD or even OK),
    after which the server is not idling: SYNC.md §4.7 says to fall back to polling then.
    """
    try:
        client.idle()
    except IMAPClientError as exc:
        raise IdleUnavailable(f"the server refused IDLE: {exc}") from exc


def backoff_seconds(failures: int) -> float:
    """Return the wait before reconnecting after `failures` failures in a row (with jitter)."""
    base = job_queue.backoff_seconds(failures, BACKOFF_BASE_SECONDS, cap=BACKOFF_CAP_SECONDS)
    return base * random.uniform(0.8, 1.2)


# --------------------------------------------------------------------------- one account


class Watcher:
    """A thread holding one account's IDLE connection on INBOX, reconnecting as needed."""

    def __init__(
        self,
        app: Flask,
        account_id: int,
        fingerprint: str,
        settings: IdleSettings,
        on_change: Callable[[int], None],
    ) -> None:
        self.app = app
        self.account_id = account_id
        self.fingerprint = fingerprint
        self.settings = settings
        self.on_change = on_change
        self.stopped = threading.Event()
        self.live = threading.Event()  # set while the connection is idling
        self.connections = 0  # how many times IDLE was started on a fresh connection
        self.renewals = 0  # how many times IDLE was re-issued on a live connection
        self.idling = False  # the server is in IDLE (only DONE may be sent)
        self.failures = 0  # failed connections since the last one that reached IDLE
        self.thread = threading.Thread(target=self._run, name=f"idle-{account_id}", daemon=True)

    def start(self) -> Watcher:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to end (it closes its connection within a few seconds)."""
        self.stopped.set()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._watch()
                continue  # a stop, or the server ended IDLE cleanly: the loop decides
            except IdleUnavailable as exc:
                # Not a fault: this server is polled; look again after a long while.
                log.info("account %s: no push (%s); polling only", self.account_id, exc)
                wait = self.settings.renew_seconds
            except imap.MailConnectionError as exc:
                self.failures += 1
                wait = backoff_seconds(self.failures)
                if exc.needs_user_action:
                    # Wrong password, untrusted certificate: the sync pass reports it and
                    # the account stops (then so does this watcher); logging in again and
                    # again could lock the mailbox (SYNC.md §6).
                    wait = self.settings.renew_seconds
                log.info(
                    "account %s: IDLE connection failed (%s); again in %.0f s",
                    self.account_id,
                    exc.kind,
                    wait,
                )
            except Exception as exc:
                self.failures += 1
                wait = backoff_seconds(self.failures)
                log.info(
                    "account %s: IDLE connection lost (%s: %s); again in %.0f s",
                    self.account_id,
                    type(exc).__name__,
                    exc,
                    wait,
                )
            self.stopped.wait(wait)

    def _connect(self) -> IMAPClient:
        with self.app.app_context():
            try:
                account = db.session.get(MailAccount, self.account_id)
                if account is None:
                    raise IdleUnavailable("the account is gone")
                settings = imap.account_settings(
                    self.app, account, timeout=self.settings.timeout_seconds
                )
            except IdleUnavailable:
                raise
            except Exception as exc:  # an unreadable password: the sync pass reports it
                raise IdleUnavailable(f"cannot read the account: {exc}") from exc
            finally:
                db.session.remove()
        return imap.connect(settings, allowed_ports=imap.allowed_ports(self.app.config))

    def _watch(self) -> None:
        """Connect, EXAMINE INBOX and IDLE until stopped or the connection fails."""
        client = self._connect()
        try:
            if b"IDLE" not in client.capabilities():
                raise IdleUnavailable("the server does not offer IDLE")
            keep_alive(client)
            client.select_folder("INBOX", readonly=True)
            self._start_idle(client)
            self.connections += 1
            self._set_live(True)
            self.failures = 0  # the backoff starts over after a connection that worked
            if self.connections > 1:
                # Changes made while the connection was down are otherwise seen only by the
                # next scheduled pass.
                self._changed()
            self._idle(client)
        finally:
            self._set_live(False)
            self._close(client)

    def _idle(self, client: IMAPClient) -> None:
        renew_at = time.monotonic() + self.settings.renew_seconds
        while not self.stopped.is_set():
            wait = max(0.0, min(CHECK_SECONDS, renew_at - time.monotonic()))
            began = time.monotonic()
            responses = client.idle_check(timeout=wait)
            if said_bye(responses):
                raise ConnectionDropped("the server said BYE")
            if mailbox_changed(responses):
                self._changed()
            woke_early = not responses and time.monotonic() - began < wait * EARLY_WAKE_FRACTION
            if time.monotonic() >= renew_at or woke_early:
                # Re-issue IDLE before servers or NATs drop it, and after an early wake-up,
                # which only a round trip can tell apart from an EOF: DONE on a dead
                # connection raises (socket error or read timeout).
                self.idling = False
                _text, responses = client.idle_done()
                if said_bye(responses):
                    raise ConnectionDropped("the server said BYE")
                if mailbox_changed(responses):
                    self._changed()
                if self.stopped.is_set():
                    return
                self._start_idle(client)
                self.renewals += 1
                renew_at = time.monotonic() + self.settings.renew_seconds

    def _changed(self) -> None:
        try:
            self.on_change(self.account_id)
        except Exception:
            # A busy database: the scheduled pass still comes; the connection is fine.
            log.exception(
                "account %s: queueing a sync after an IDLE change failed", self.account_id
            )

    def _set_live(self, live: bool) -> None:
        if live == self.live.is_set():
            return
        if live:
            publish_live(self.app, [self.account_id])  # recorded before it is said to be live
            self.live.set()
        else:
            self.live.clear()
            if not self.stopped.is_set():
                # A stopped watcher's record is its manager's: a replacement may be live.
                publish_live(self.app, [], [self.account_id])

    def _start_idle(self, client: IMAPClient) -> None:
        start_idle(client)
        self.idling = True

    def _close(self, client: IMAPClient) -> None:
        """End IDLE and log out politely, but never wait long (the network may be dead)."""
        try:
            client.socket().settimeout(STOP_SECONDS)
            if self.idling:
                self.idling = False
                client.idle_done()
        except Exception:
            pass
        imap.safe_logout(client)


# --------------------------------------------------------------------------- all accounts


class IdleWatchers:
    """The worker's watchers: one per watchable account, following the account list."""

    def __init__(self, app: Flask, on_change: Callable[[int], None]) -> None:
        self.app = app
        self.on_change = on_change
        self.settings = IdleSettings.from_config(app.config)
        self.watchers: dict[int, Watcher] = {}
        self.retired: list[Watcher] = []  # stopped, maybe still saying goodbye to the server
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="idle-watchers", daemon=True)

    def start(self) -> IdleWatchers:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.refresh()
            except Exception:
                log.exception("refreshing the IDLE watchers failed")
            self.stopped.wait(self.settings.refresh_seconds)

    def live_count(self) -> int:
        """Return how many watchers hold a live IDLE connection now."""
        return sum(1 for watcher in self.watchers.values() if watcher.live.is_set())

    def refresh(self) -> None:
        """Start and stop watchers to match the account list; renew the live ones' record."""
        with self.app.app_context():
            try:
                wanted = watchable_accounts(self.settings.max_connections)
            finally:
                db.session.remove()
        for account_id, watcher in list(self.watchers.items()):
            if wanted.get(account_id) != watcher.fingerprint:
                watcher.stop()  # paused, removed, re-authenticated, or over the limit
                del self.watchers[account_id]
                self.retired.append(watcher)
        self.retired = [watcher for watcher in self.retired if watcher.thread.is_alive()]
        publish_live(
            self.app, [], [w.account_id for w in self.retired if w.account_id not in wanted]
        )
        for account_id, fingerprint in wanted.items():
            if self.stopped.is_set():
                return
            if account_id not in self.watchers:
                self.watchers[account_id] = Watcher(
                    self.app, account_id, fingerprint, self.settings, self.on_change
                ).start()
        publish_live(self.app, [a for a, watcher in self.watchers.items() if watcher.live.is_set()])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every watcher and wait (up to `timeout` in all) for their connections to close."""
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
        watchers = [*self.watchers.values(), *self.retired]
        for watcher in watchers:
            watcher.stop()
        deadline = time.monotonic() + timeout
        for watcher in watchers:
            watcher.join(max(0.0, deadline - time.monotonic()))
        publish_live(self.app, [], [watcher.account_id for watcher in watchers])
