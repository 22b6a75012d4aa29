"""Helpers for sync tests: build raw messages, count IMAP commands, run a sync."""

from __future__ import annotations

import imaplib
import re
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from imapclient.tls import IMAP4_TLS
from sqlalchemy import func, select

from extensions import db
from mailsync import sync as sync_module
from mailsync.sync import SyncResult, sync_account
from models import MailFolder, Message, MessageLocation

_COMMAND = re.compile(rb"^[A-Za-z0-9]+ (UID )?([A-Z]+)")


def raw_message(
    n: int,
    *,
    subject: str | None = None,
    sender: str = "alice@example.com",
    to: str = "box@mail.test",
    msgid: str | None = None,
    references: str | None = None,
    in_reply_to: str | None = None,
    extra_headers: str = "",
    body: str | None = None,
    date: datetime | None = None,
) -> bytes:
    """Return a small RFC 5322 message numbered n."""
    date = date or datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=n)
    headers = [
        f"From: Sender {n} <{sender}>",
        f"To: <{to}>",
        f"Subject: {subject if subject is not None else f'Message {n}'}",
        f"Date: {format_datetime(date)}",
        f"Message-ID: <{msgid or f'm{n}@example.com'}>",
    ]
    if references:
        headers.append(f"References: {references}")
    if in_reply_to:
        headers.append(f"In-Reply-To: {in_reply_to}")
    headers.append("MIME-Version: 1.0")
    headers.append("Content-Type: text/plain; charset=utf-8")
    text = "\r\n".join(headers) + "\r\n" + extra_headers
    return (text + "\r\n" + (body or f"Body of message {n}.\r\n")).encode()


class CommandLog:
    """Every IMAP command sent while active, as (name, line) pairs (UID prefix folded in)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def names(self) -> list[str]:
        out = []
        for line in self.lines:
            match = _COMMAND.match(line)
            if match:
                out.append(((match.group(1) or b"") + match.group(2)).decode().strip())
        return out

    def count(self, name: str) -> int:
        return sum(1 for n in self.names() if n == name)

    def body_fetches(self) -> int:
        """Return how many BODY.PEEK[] (full body) fetch commands were sent."""
        return sum(1 for line in self.lines if b"BODY.PEEK[]" in line)


@contextmanager
def command_log(monkeypatch):
    log = CommandLog()
    patched = []
    for cls in (imaplib.IMAP4, IMAP4_TLS):
        original = cls.__dict__["send"]

        def send(self, data, _original=original):
            log.lines.append(bytes(data))
            return _original(self, data)

        monkeypatch.setattr(cls, "send", send)
        patched.append((cls, original))
    yield log
    for cls, original in patched:
        monkeypatch.setattr(cls, "send", original)


def run_sync(app, account, **kwargs) -> SyncResult:
    """Sync an account and fail the test on an error; the account's id is read up front."""
    result = sync_account(account.id if hasattr(account, "id") else account, app=app, **kwargs)
    db.session.expire_all()
    return result


def message_count(account_id: int, *, deleted: bool = False) -> int:
    query = select(func.count()).select_from(Message).where(Message.account_id == account_id)
    query = query.where(
        Message.deleted_at.is_not(None) if deleted else Message.deleted_at.is_(None)
    )
    return db.session.scalar(query)


def folder_named(account_id: int, name: str) -> MailFolder:
    return db.session.scalar(
        select(MailFolder).where(MailFolder.account_id == account_id, MailFolder.name == name)
    )


def locations(account_id: int, folder: str = "INBOX") -> list[MessageLocation]:
    f = folder_named(account_id, folder)
    return list(
        db.session.scalars(
            select(MessageLocation)
            .where(MessageLocation.folder_id == f.id, MessageLocation.stale.is_(False))
            .order_by(MessageLocation.uid)
        )
    )


def message_by_msgid(account_id: int, msgid: str) -> Message:
    return db.session.scalar(
        select(Message).where(
            Message.account_id == account_id, Message.message_id_header == msgid.lower()
        )
    )


def imap_client(dovecot, mail_user):
    """A logged-in IMAP connection to the test Dovecot as `mail_user` (log it out after)."""
    from mailsync import imap

    return imap.connect(
        imap.ConnectionSettings(
            host=dovecot.host,
            port=dovecot.ssl_port,
            security="ssl",
            username=mail_user.email,
            password=mail_user.password,
            ca_cert_pem=dovecot.ca_file.read_text(),
        ),
        allowed_ports=None,
    )


def append_received_at(dovecot, mail_user, raw: bytes, received: datetime) -> None:
    """APPEND a message over IMAP with its INTERNALDATE set to `received` (doveadm save
    always stamps now), as when old mail is backfilled or copied in by another program."""
    from mailsync import imap

    client = imap_client(dovecot, mail_user)
    try:
        client.append("INBOX", raw, msg_time=received)
    finally:
        imap.safe_logout(client)


@contextmanager
def split_backfills(batches: int):
    """Make each backfill stop, as a spent budget does, after `batches` batches of 10 UIDs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sync_module, "FIRST_META_BATCH", 10)
        patch.setattr(sync_module, "META_BATCH", 10)
        original = sync_module.AccountSync.backfill

        def backfill(self, folder_id, snapshot):
            calls = {"n": 0}
            check = self.check_budget

            def counted():
                calls["n"] += 1
                if calls["n"] > batches:
                    raise sync_module.BudgetExceeded()
                check()

            self.check_budget = counted
            try:
                return original(self, folder_id, snapshot)
            finally:
                self.check_budget = check

        patch.setattr(sync_module.AccountSync, "backfill", backfill)
        yield


def location_flags(location) -> frozenset[str]:
    """The IMAP flags a stored location says the server has, as `doveadm fetch flags` lists
    them."""
    columns = (
        ("\\Seen", location.seen),
        ("\\Flagged", location.flagged),
        ("\\Answered", location.answered),
        ("\\Draft", location.draft),
        ("\\Deleted", location.deleted),
    )
    return frozenset({flag for flag, on in columns if on} | set(location.keywords or ()))
