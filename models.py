"""SQLAlchemy 2.0 typed models: users, CRM records, mail accounts and synced mail.

Timestamps are timezone-aware UTC. Every sync key has a unique constraint and every
filter column an index (SYNC.md §2, §7).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from extensions import db

PARSE_VERSION = 7  # mailsync/reparse.py: raise it when stored mail must be parsed again


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Store UTC datetimes; always hand back timezone-aware values (SQLite drops tzinfo)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


VISIBILITY_EVERYONE = "everyone"
VISIBILITY_OWNER = "owner"
VISIBILITIES = (VISIBILITY_EVERYONE, VISIBILITY_OWNER)


# --------------------------------------------------------------------------- users


class User(UserMixin, db.Model):
    __tablename__ = "user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lowercased
    name: Mapped[str] = mapped_column(String(200))
    # The sender's phone for the "Your phone" smart field.
    phone: Mapped[str | None] = mapped_column(String(50))
    password_hash: Mapped[str] = mapped_column(String(300))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_deactivated: Mapped[bool] = mapped_column(Boolean, default=False)
    # Bumped on logout and password change; sessions carrying an older value are dead.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return not self.is_deactivated

    def get_id(self) -> str:
        # The epoch travels in the session so logout elsewhere invalidates this cookie.
        return f"{self.id}:{self.session_epoch}"

    def __repr__(self) -> str:
        return f"<User {self.id} {self.email}>"


class SetupClaim(db.Model):
    """The one row that says the first admin exists: inserted in the admin's transaction.

    Its fixed primary key makes the database refuse a second insert, so concurrent setup
    forms cannot each create an admin (a count-then-insert check can be raced).
    """

    __tablename__ = "setup_claim"

    SINGLETON_ID = 1

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<SetupClaim user={self.user_id}>"


class Preference(db.Model):
    """One per-user setting; keys and defaults live in services/preferences.py."""

    __tablename__ = "preference"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(100))
    value: Mapped[Any] = mapped_column(JSON)

    def __repr__(self) -> str:
        return f"<Preference {self.user_id} {self.key}={self.value!r}>"


class LoginFailure(db.Model):
    """A failed password check, kept for throttling (services/throttle.py).

    `action` is "login" or "password_change"; `device` is the id inside a valid device
    token the attempt carried (such failures count against that token only), else NULL.
    """

    __tablename__ = "login_failure"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    ip: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(20), default="login", server_default="login")
    device: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    def __repr__(self) -> str:
        return f"<LoginFailure {self.action} {self.email} {self.ip}>"


class ConnectionTest(db.Model):
    """A mailbox connection test, kept for rate limiting (R20, R27).

    In the database rather than in memory, so the limit holds across workers and restarts.
    """

    __tablename__ = "connection_test"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    def __repr__(self) -> str:
        return f"<ConnectionTest user={self.user_id} {self.created_at:%Y-%m-%d %H:%M:%S}>"


# --------------------------------------------------------------------------- CRM records


class OwnedRecord:
    """Columns every CRM record has: owner, visibility, timestamps."""

    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    visibility: Mapped[str] = mapped_column(String(20), default=VISIBILITY_EVERYONE, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, index=True
    )


class Organization(OwnedRecord, db.Model):
    __tablename__ = "organization"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    domain: Mapped[str | None] = mapped_column(String(255), index=True)
    address: Mapped[str | None] = mapped_column(Text)

    owner: Mapped[User] = relationship()
    persons: Mapped[list[Person]] = relationship(back_populates="organization")

    def __repr__(self) -> str:
        return f"<Organization {self.id} {self.name}>"


class Person(OwnedRecord, db.Model):
    __tablename__ = "person"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    phone: Mapped[str | None] = mapped_column(String(50))
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organization.id", ondelete="SET NULL"), index=True
    )

    owner: Mapped[User] = relationship()
    organization: Mapped[Organization | None] = relationship(back_populates="persons")
    emails: Mapped[list[PersonEmail]] = relationship(
        back_populates="person",
        cascade="all, delete-orphan",
        order_by="(PersonEmail.is_primary.desc(), PersonEmail.id)",
    )

    @property
    def primary_email(self) -> str | None:
        return self.emails[0].email if self.emails else None

    def __repr__(self) -> str:
        return f"<Person {self.id} {self.name}>"


class PersonEmail(db.Model):
    """An address of a person; an address belongs to at most one person (lowercased)."""

    __tablename__ = "person_email"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    is_primary: Mapped[bool] = mapped_column(Boolean, default=False)

    person: Mapped[Person] = relationship(back_populates="emails")

    def __repr__(self) -> str:
        return f"<PersonEmail {self.email}>"


DEAL_STAGES = ("lead_in", "qualified", "proposal", "negotiation", "contract_sent")
DEAL_STAGE_LABELS = {
    "lead_in": "Lead in",
    "qualified": "Qualified",
    "proposal": "Proposal made",
    "negotiation": "Negotiation",
    "contract_sent": "Contract sent",
}
DEAL_STATUSES = ("open", "won", "lost")
LEAD_STATUSES = ("open", "converted", "archived")
PROJECT_STATUSES = ("open", "closed")
CURRENCIES = ("USD", "EUR", "GBP", "CNY", "JPY", "CAD", "AUD", "CHF")


class Deal(OwnedRecord, db.Model):
    __tablename__ = "deal"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200), index=True)
    value: Mapped[Decimal] = mapped_column(Numeric(14, 2), default=Decimal("0"))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    stage: Mapped[str] = mapped_column(String(30), default=DEAL_STAGES[0], index=True)
    status: Mapped[str] = mapped_column(String(10), default="open", index=True)
    expected_close_date: Mapped[date | None] = mapped_column(Date)
    person_id: Mapped[int | None] = mapped_column(
        ForeignKey("person.id", ondelete="SET NULL"), index=True
    )
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organization.id", ondelete="SET NULL"), index=True
    )

    owner: Mapped[User] = relationship()
    person: Mapped[Person | None] = relationship()
    organization: Mapped[Organization | None] = relationship()

    def __repr__(self) -> str:
        return f"<Deal {self.id} {self.title}>"


class Lead(OwnedRecord, db.Model):
    __tablename__ = "lead"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200), index=True)
    value: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    status: Mapped[str] = mapped_column(String(10), default="open", index=True)
    person_id: Mapped[int | None] = mapped_column(
        ForeignKey("person.id", ondelete="SET NULL"), index=True
    )
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organization.id", ondelete="SET NULL"), index=True
    )
    deal_id: Mapped[int | None] = mapped_column(ForeignKey("deal.id", ondelete="SET NULL"))

    owner: Mapped[User] = relationship()
    person: Mapped[Person | None] = relationship()
    organization: Mapped[Organization | None] = relationship()
    deal: Mapped[Deal | None] = relationship()

    def __repr__(self) -> str:
        return f"<Lead {self.id} {self.title}>"


class Project(OwnedRecord, db.Model):
    __tablename__ = "project"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(10), default="open", index=True)
    person_id: Mapped[int | None] = mapped_column(
        ForeignKey("person.id", ondelete="SET NULL"), index=True
    )
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organization.id", ondelete="SET NULL"), index=True
    )

    owner: Mapped[User] = relationship()
    person: Mapped[Person | None] = relationship()
    organization: Mapped[Organization | None] = relationship()

    def __repr__(self) -> str:
        return f"<Project {self.id} {self.title}>"


RECORD_MODELS: dict[str, type] = {
    "person": Person,
    "organization": Organization,
    "deal": Deal,
    "lead": Lead,
    "project": Project,
}


# --------------------------------------------------------------------------- mail accounts

# Account sync states (SYNC.md §2.1). Only "running" accounts are scheduled.
SYNC_RUNNING = "running"
SYNC_PAUSED = "paused"
SYNC_NEEDS_REAUTH = "needs_reauth"
SYNC_NEEDS_APP_PASSWORD = "needs_app_password"
SYNC_IMAP_DISABLED = "imap_disabled"
SYNC_ERROR = "error"
AUTH_BLOCKED_STATES = (SYNC_NEEDS_REAUTH, SYNC_NEEDS_APP_PASSWORD, SYNC_IMAP_DISABLED)

# How an account signs in to its servers: a password (or app password), or OAuth2 tokens
# (SASL XOAUTH2) from "Sign in with Google / Microsoft".
AUTH_PASSWORD = "password"
AUTH_XOAUTH2 = "xoauth2"


class OAuthClient(db.Model):
    """Threadline's registration with an OAuth2 provider ("google", "microsoft"), entered by
    an admin; the secret is encrypted like mail passwords (services/credentials.py)."""

    __tablename__ = "oauth_client"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(20), unique=True)
    client_id: Mapped[str] = mapped_column(String(500))
    client_secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<OAuthClient {self.provider} {self.client_id}>"


class MailAccount(db.Model):
    __tablename__ = "mail_account"
    __table_args__ = (UniqueConstraint("user_id", "email_address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    email_address: Mapped[str] = mapped_column(String(320))
    provider: Mapped[str] = mapped_column(String(40), default="other")
    username: Mapped[str] = mapped_column(String(320))
    # Fernet token; the key lives in instance/mail.key, never in the database. It holds the
    # secret the server sign-in sends: the password, or for auth_type "xoauth2" the current
    # OAuth2 access token (services/oauth.py renews it before token_expires_at).
    password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    auth_type: Mapped[str] = mapped_column(
        String(20), default=AUTH_PASSWORD, server_default=AUTH_PASSWORD
    )
    refresh_token_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    imap_host: Mapped[str] = mapped_column(String(255))
    imap_port: Mapped[int] = mapped_column(Integer, default=993)
    imap_security: Mapped[str] = mapped_column(String(10), default="ssl")  # ssl | starttls
    smtp_host: Mapped[str | None] = mapped_column(String(255))
    smtp_port: Mapped[int | None] = mapped_column(Integer)
    smtp_security: Mapped[str | None] = mapped_column(String(10))
    # Sending: blank username/password mean "the IMAP ones" (most providers share them).
    smtp_username: Mapped[str | None] = mapped_column(String(320))
    smtp_password_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The provider files its own copy of sent mail in Sent (Gmail): no IMAP APPEND then.
    smtp_files_sent_copy: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # Largest mail the provider accepts, attachments included (preset, or the user's setting).
    max_message_bytes: Mapped[int | None] = mapped_column(Integer)
    ca_cert_pem: Mapped[str | None] = mapped_column(Text)
    folder_mode: Mapped[str] = mapped_column(String(10), default="all")  # all | chosen
    chosen_folders: Mapped[list[str]] = mapped_column(JSON, default=list)
    since: Mapped[str] = mapped_column(String(5), default="3m")
    sync_state: Mapped[str] = mapped_column(String(30), default=SYNC_RUNNING, index=True)
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    backoff_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when the user removed the account but kept its synced mail; never synced again.
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Which release's parser and identity rule stored its messages (mailsync/reparse.py).
    # Older accounts (server default 1) are parsed again from their raw mail before they sync.
    parse_version: Mapped[int] = mapped_column(Integer, default=PARSE_VERSION, server_default="1")
    # When the worker's IMAP IDLE connection for this account was last seen live (mailsync/
    # idle.py renews it every IDLE_REFRESH_SECONDS); NULL while there is none. The web
    # processes read it: nothing the worker knows lives in their memory.
    idle_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
    folders: Mapped[list[MailFolder]] = relationship(
        back_populates="account", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:
        return f"<MailAccount {self.id} {self.email_address} {self.sync_state}>"


class MailFolder(db.Model):
    """One server mailbox and its sync cursors (SYNC.md §2.2)."""

    __tablename__ = "mail_folder"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(500))
    delimiter: Mapped[str | None] = mapped_column(String(5))
    attributes: Mapped[list[str]] = mapped_column(JSON, default=list)
    role: Mapped[str | None] = mapped_column(String(20), index=True)
    sync_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # initial | poll | error | gone, or GMAIL_LABEL for a Gmail label (never synced itself)
    state: Mapped[str] = mapped_column(String(20), default="initial")
    last_error: Mapped[str | None] = mapped_column(Text)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uidnext: Mapped[int | None] = mapped_column(BigInteger)
    highestmodseq: Mapped[int | None] = mapped_column(BigInteger)
    last_seen_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    initial_sync_complete: Mapped[bool] = mapped_column(Boolean, default=False)
    server_message_count: Mapped[int | None] = mapped_column(Integer)
    backfill_total: Mapped[int] = mapped_column(Integer, default=0)
    backfill_done: Mapped[int] = mapped_column(Integer, default=0)
    uidinvalid_streak: Mapped[int] = mapped_column(Integer, default=0)
    last_full_flag_scan_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The end of the last pass that synced this folder; scheduled passes take folders other
    # than INBOX and Sent only every OTHER_FOLDERS_INTERVAL_SECONDS (SYNC.md §1 cadence).
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # How many of the server's messages Threadline does not store (flagged \Deleted, older
    # than the horizon, failed to download), as the last reconcile counted: it explains
    # mail-status's two counts, and a poll reconciles when the sum stops matching.
    server_not_stored: Mapped[int | None] = mapped_column(Integer)
    # False for folders synced before content-based identity: one pass compares each stored
    # UID's size with its message and downloads again the ones merged by mistake.
    identity_checked: Mapped[bool] = mapped_column(Boolean, default=True, server_default=false())

    account: Mapped[MailAccount] = relationship(back_populates="folders")

    def __repr__(self) -> str:
        return f"<MailFolder {self.id} {self.name}>"


# MailFolder.state of a Gmail label: listed by the server, shown in the Mail tab, never
# synced itself (All Mail holds its mail; MessageLabel says which).
GMAIL_LABEL = "label"


# See Thread.__table_args__; SQLite ignores it (its CREATE INDEX has no NULLS clause).
NEWEST_LAST_DATE = {"postgresql_ops": {"last_date": "NULLS FIRST"}}


class Thread(db.Model):
    """A conversation. Visibility and the one deal/lead/project link live here."""

    __tablename__ = "thread"
    # Every (..., last_date, id) index is read backwards for "newest first", which the lists
    # spell last_date DESC NULLS LAST (SQLite's NULL order, services.mailbox.NEWEST_FIRST). A
    # PostgreSQL B-tree read backwards yields NULLS FIRST unless built with last_date NULLS
    # FIRST; without it PostgreSQL sorted every thread of the account (133 ms at 100k).
    # The Mail tab lists an account's threads newest first, keyset-paginated on (last_date, id).
    # The partial indexes hold only the Inbox's and the Archive's threads, so a small Inbox
    # (or Archive) in a big mailbox is listed without walking every thread; services.mailbox
    # repeats their WHERE terms exactly.
    __table_args__ = (
        Index("ix_thread_account_last_date", "account_id", "last_date", "id", **NEWEST_LAST_DATE),
        # A record page's conversations, newest first, a page at a time (keyset).
        Index("ix_thread_deal_last_date", "deal_id", "last_date", "id", **NEWEST_LAST_DATE),
        Index("ix_thread_lead_last_date", "lead_id", "last_date", "id", **NEWEST_LAST_DATE),
        Index("ix_thread_project_last_date", "project_id", "last_date", "id", **NEWEST_LAST_DATE),
        Index(
            "ix_thread_inbox",
            "account_id",
            "last_date",
            "id",
            sqlite_where=text("in_inbox IS 1 AND archived IS 0 AND deleted_at IS NULL"),
            postgresql_where=text("in_inbox IS true AND archived IS false AND deleted_at IS NULL"),
            **NEWEST_LAST_DATE,
        ),
        Index(
            "ix_thread_reply_later",
            "account_id",
            "last_date",
            "id",
            sqlite_where=text("reply_later IS 1 AND deleted_at IS NULL"),
            postgresql_where=text("reply_later IS true AND deleted_at IS NULL"),
            **NEWEST_LAST_DATE,
        ),
        Index(
            "ix_thread_archive_list",
            "account_id",
            "last_date",
            "id",
            sqlite_where=text("archived IS 1 AND deleted_at IS NULL"),
            postgresql_where=text("archived IS true AND deleted_at IS NULL"),
            **NEWEST_LAST_DATE,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), index=True
    )
    gm_thrid: Mapped[int | None] = mapped_column(BigInteger, index=True)
    subject: Mapped[str] = mapped_column(String(255), default="")
    normalized_subject: Mapped[str] = mapped_column(String(255), default="", index=True)
    first_date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_date: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    # In Threadline's Inbox: set when mail of the thread lands in an inbox folder, cleared
    # only by moving it in Threadline. Archiving it in another mail program changes nothing
    # here (PRODUCT.md, Archive and delete); archiving in Threadline sets `archived`.
    in_inbox: Mapped[bool] = mapped_column(Boolean, default=False)
    archived: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    deal_id: Mapped[int | None] = mapped_column(
        ForeignKey("deal.id", ondelete="SET NULL"), index=True
    )
    lead_id: Mapped[int | None] = mapped_column(
        ForeignKey("lead.id", ondelete="SET NULL"), index=True
    )
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("project.id", ondelete="SET NULL"), index=True
    )
    # Auto-linking found several open deals/leads/projects: ask the owner to choose.
    needs_link_choice: Mapped[bool] = mapped_column(Boolean, default=False)
    # Every message of the thread is hidden by the owner's blocked addresses.
    blocked: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    # The owner put it on the "Reply later" list (Threadline only; the server never sees it).
    reply_later: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # When garbage collection removed its last message; the empty thread (with its links and
    # id table) is kept THREAD_GC_TTL_SECONDS, so mail that comes back rejoins it.
    emptied_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)

    account: Mapped[MailAccount] = relationship()

    def __repr__(self) -> str:
        return f"<Thread {self.id} {self.subject!r}>"


class ThreadUnread(db.Model):
    """A live conversation with an unread live message, and one place it counts in: a
    Threadline list ("inbox", "archive", "later") or a server folder ("f<folder id>").

    Kept by services/unread.py (triggers note changes, commits recompute them), so the
    sidebar's unread counts are one index range per account, not a walk over the mail.
    """

    __tablename__ = "thread_unread"

    account_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    counted_in: Mapped[str] = mapped_column(String(20), primary_key=True)
    thread_id: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)

    def __repr__(self) -> str:
        return f"<ThreadUnread {self.thread_id} {self.counted_in}>"


class ThreadUnreadStale(db.Model):
    """A conversation whose ThreadUnread rows must be recomputed before the commit."""

    __tablename__ = "thread_unread_stale"

    # Not unique on purpose: on PostgreSQL a second transaction noting the same conversation
    # would wait for the first at a unique key (a new lock, deadlock-prone beside the rows
    # both update); duplicates cost nothing, the commit's refresh takes them all.
    id: Mapped[int] = mapped_column(primary_key=True)
    thread_id: Mapped[int] = mapped_column(Integer)

    def __repr__(self) -> str:
        return f"<ThreadUnreadStale {self.thread_id}>"


class Message(db.Model):
    """A message as users see and link it; its folder/UID places are MessageLocation rows."""

    __tablename__ = "message"
    __table_args__ = (
        UniqueConstraint("account_id", "dedup_key"),
        Index("ix_message_account_date", "account_id", "date"),
        Index("ix_message_account_header_key", "account_id", "header_key"),
        # The unread filter of the Mail tab.
        Index("ix_message_thread_read", "thread_id", "is_read"),
        # Unread counts: a partial index holding only live unread messages, covering what
        # the count needs, so counting reads a few index pages instead of message rows.
        # Queries must repeat these terms exactly for the database to use it
        # (services.mailbox._unread_live).
        Index(
            "ix_message_unread",
            "account_id",
            "thread_id",
            "is_read",
            "deleted_at",
            "blocked",
            sqlite_where=text("is_read IS 0 AND deleted_at IS NULL AND blocked IS 0"),
            postgresql_where=text("is_read IS false AND deleted_at IS NULL AND blocked IS false"),
        ),
        # Almost always empty: storing a location asks it, for every batch (store.py).
        Index(
            "ix_message_seen_wanted",
            "id",
            sqlite_where=text("seen_wanted IS NOT NULL"),
            postgresql_where=text("seen_wanted IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), index=True
    )
    thread_id: Mapped[int | None] = mapped_column(
        ForeignKey("thread.id", ondelete="SET NULL"), index=True
    )
    # The message's identity in its account: header fields plus a body digest
    # (mailsync/IDENTITY.md). header_key (header fields only) finds copies before download.
    dedup_key: Mapped[str] = mapped_column(String(64))
    header_key: Mapped[str | None] = mapped_column(String(64))
    gm_msgid: Mapped[int | None] = mapped_column(BigInteger, index=True)
    message_id_header: Mapped[str | None] = mapped_column(String(998), index=True)
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    references: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(String(255), default="")
    from_name: Mapped[str] = mapped_column(String(255), default="")
    from_address: Mapped[str] = mapped_column(String(320), default="", index=True)
    to: Mapped[list[list[str]]] = mapped_column(JSON, default=list)  # [[name, address], ...]
    cc: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    bcc: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    reply_to: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    internaldate: Mapped[datetime | None] = mapped_column(UTCDateTime)
    size: Mapped[int] = mapped_column(Integer, default=0)
    # Indexed so garbage collection can tell whether another row still uses a blob.
    raw_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    is_placeholder: Mapped[bool] = mapped_column(Boolean, default=False)  # oversized: headers only
    snippet: Mapped[str] = mapped_column(String(300), default="")
    has_attachments: Mapped[bool] = mapped_column(Boolean, default=False)
    parse_error: Mapped[str | None] = mapped_column(Text)
    is_read: Mapped[bool] = mapped_column(Boolean, default=False)
    # The user's \Seen change, not yet on the server, of a location that went (the mail was
    # moved or renumbered elsewhere): the location the mail turns up at next gets it, and
    # writes it (store.keep_pending_seen). None: nothing waiting.
    seen_wanted: Mapped[bool | None] = mapped_column(Boolean)
    is_flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    is_draft: Mapped[bool] = mapped_column(Boolean, default=False)
    is_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    # Every participant other than the owner is blocked (kept, so unblocking restores it).
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    # Hidden everywhere: deleted by the user in Threadline, or gone from every server folder.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # When the user deleted it in Threadline: unlike mail gone from the server, it stays
    # deleted when a location (re)appears, e.g. its copy in Trash or a server flag change.
    user_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When sync saw the last location disappear (None while it has one); garbage collection
    # hard-deletes it MESSAGE_GC_TTL_SECONDS later unless a location came back (a move).
    orphaned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    thread: Mapped[Thread | None] = relationship()
    locations: Mapped[list[MessageLocation]] = relationship(
        back_populates="message", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:
        return f"<Message {self.id} {self.subject!r}>"


class MessageLocation(db.Model):
    """One (folder, UID) place of a message, with its server flags (SYNC.md §2.3)."""

    __tablename__ = "message_location"
    __table_args__ = (
        UniqueConstraint("folder_id", "uid"),
        # Cover "where is this message" (counts, moves) and "what is in this folder" (small
        # folders are listed from their locations) without reading the rows.
        Index("ix_message_location_message", "message_id", "folder_id", "deleted"),
        Index("ix_message_location_folder", "folder_id", "deleted", "message_id"),
        # The few locations with a user \Seen change to write back or read again: every poll
        # asks (store.GUARDED), so it must not walk a big folder's rows to learn "none".
        Index(
            "ix_message_location_guarded",
            "folder_id",
            "uid",
            sqlite_where=text("seen_changed_at IS NOT NULL OR seen_pending IS 1"),
            postgresql_where=text("seen_changed_at IS NOT NULL OR seen_pending IS true"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("mail_folder.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"))
    seen: Mapped[bool] = mapped_column(Boolean, default=False)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    answered: Mapped[bool] = mapped_column(Boolean, default=False)
    draft: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)
    # When Threadline first saw the mail here (None: before this was kept). A user's
    # read/unread that could not reach the server goes to places found after it only.
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    gm_labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    stale: Mapped[bool] = mapped_column(Boolean, default=False)
    # When the user last changed \Seen here from Threadline: for a short while a sync keeps
    # that value, since flags it fetched before the write-back reached the server are stale.
    seen_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The user's \Seen change is not on the server yet (the write-back failed): each sync
    # pass tries again, and until then this value wins over the server's (SYNC.md §4.3).
    seen_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    message: Mapped[Message] = relationship(back_populates="locations")
    folder: Mapped[MailFolder] = relationship()

    def __repr__(self) -> str:
        return f"<MessageLocation folder={self.folder_id} uid={self.uid}>"


class MessageLabel(db.Model):
    """A Gmail label on a message: the label's folder (a listed, never selected MailFolder
    with state GMAIL_LABEL) holds the message.

    Derived from the locations' X-GM-LABELS by mailsync.store.refresh_labels, so a label lists
    its conversations through an index (labels are not folders: SYNC.md §4.5).
    """

    __tablename__ = "message_label"

    # (folder_id, message_id) lists a label; the message_id index serves the refresh.
    folder_id: Mapped[int] = mapped_column(
        ForeignKey("mail_folder.id", ondelete="CASCADE"), primary_key=True
    )
    message_id: Mapped[int] = mapped_column(
        ForeignKey("message.id", ondelete="CASCADE"), primary_key=True, index=True
    )

    def __repr__(self) -> str:
        return f"<MessageLabel folder={self.folder_id} message={self.message_id}>"


class MessageIdIndex(db.Model):
    """JWZ id table: Message-ID -> thread, with phantoms for referenced-but-unseen ids."""

    __tablename__ = "message_id_index"
    __table_args__ = (UniqueConstraint("account_id", "msgid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), index=True
    )
    msgid: Mapped[str] = mapped_column(String(998))
    thread_id: Mapped[int] = mapped_column(ForeignKey("thread.id", ondelete="CASCADE"), index=True)
    is_phantom: Mapped[bool] = mapped_column(Boolean, default=True)

    def __repr__(self) -> str:
        return f"<MessageIdIndex {self.msgid} -> {self.thread_id}>"


class MessagePerson(db.Model):
    """A message matched by address to a person (From, To, Cc, Reply-To)."""

    __tablename__ = "message_person"
    __table_args__ = (UniqueConstraint("message_id", "person_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("message.id", ondelete="CASCADE"), index=True
    )
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)

    def __repr__(self) -> str:
        return f"<MessagePerson m={self.message_id} p={self.person_id}>"


class OwnAddress(db.Model):
    """An address of the user's own besides their sign-in and account addresses (an alias).

    Learned from the From of their Sent folder, or added by hand; never matched to persons,
    never "another participant" for blocking. An `ignored` row keeps a removed one from being
    learned again.
    """

    __tablename__ = "own_address"
    __table_args__ = (UniqueConstraint("user_id", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(10))  # added | sent | ignored
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<OwnAddress u={self.user_id} {self.address} ({self.source})>"


class PastLinkOffer(db.Model):
    """An open offer to link a user's past mail with an address just added to a person.

    Made when an address is added (from a conversation or a People page); it stays until
    the user links or dismisses it (PRODUCT.md "Linking").
    """

    __tablename__ = "past_link_offer"
    __table_args__ = (UniqueConstraint("user_id", "person_id", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<PastLinkOffer u={self.user_id} p={self.person_id} {self.address}>"


class FailedUid(db.Model):
    """A UID whose fetch or store failed; retried with backoff, never blocks the watermark."""

    __tablename__ = "failed_uid"
    __table_args__ = (UniqueConstraint("folder_id", "uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int] = mapped_column(
        ForeignKey("mail_folder.id", ondelete="CASCADE"), index=True
    )
    uid: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<FailedUid folder={self.folder_id} uid={self.uid}>"


class SyncRun(db.Model):
    """One sync pass of an account, for the troubleshooting page."""

    __tablename__ = "sync_run"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), index=True
    )
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    new_count: Mapped[int] = mapped_column(Integer, default=0)
    changed_count: Mapped[int] = mapped_column(Integer, default=0)
    deleted_count: Mapped[int] = mapped_column(Integer, default=0)
    # Entries beyond the ones kept in sync_run_entry (a first sync adds thousands).
    entries_not_kept: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"<SyncRun {self.id} account={self.account_id}>"


class SyncRunEntry(db.Model):
    """One message a sync pass added, changed or removed (its first entries: RunLog.limit).

    The folder and subject are copied, so the log still reads after the mail is collected.
    """

    __tablename__ = "sync_run_entry"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sync_run.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # added | changed | removed
    folder: Mapped[str] = mapped_column(String(500))
    uid: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("message.id", ondelete="SET NULL"))
    subject: Mapped[str] = mapped_column(String(255), default="")

    message: Mapped[Message | None] = relationship()

    def __repr__(self) -> str:
        return f"<SyncRunEntry {self.run_id} {self.kind} {self.folder}:{self.uid}>"


class FolderCheck(db.Model):
    """The last comparison of a folder's UIDs on the server with what Threadline stored.

    Asked for on the account page and run by the worker (mailsync.actions.compare_folder):
    `missing_here` are [uid, subject, size] the server has in the sync range and Threadline
    lacks, `missing_there` are [uid, message_id, subject] Threadline keeps that the server no
    longer has. Each list keeps its first FOLDER_CHECK_LIMIT entries; the counts are exact.
    """

    __tablename__ = "folder_check"

    folder_id: Mapped[int] = mapped_column(
        ForeignKey("mail_folder.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(10), default="queued")  # queued | done | failed
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    server_count: Mapped[int] = mapped_column(Integer, default=0)
    stored_count: Mapped[int] = mapped_column(Integer, default=0)
    missing_here_count: Mapped[int] = mapped_column(Integer, default=0)
    missing_there_count: Mapped[int] = mapped_column(Integer, default=0)
    missing_here: Mapped[list] = mapped_column(JSON, default=list)
    missing_there: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"<FolderCheck {self.folder_id} {self.state}>"


class SyncLease(db.Model):
    """A per-account lease so only one worker syncs an account at a time (SYNC.md §1)."""

    __tablename__ = "sync_lease"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<SyncLease {self.account_id} {self.owner}>"


JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"


class Job(db.Model):
    """One piece of work the web side asks the worker to do (services/job_queue.py).

    Jobs with the same `key` run one at a time in id order; `lease_owner` holds a running job
    until `lease_expires_at`, after which another worker may take it again (a crashed one).
    """

    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_claim", "state", "run_after"),
        Index("ix_job_key", "key", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    key: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), index=True
    )
    state: Mapped[str] = mapped_column(String(20), default=JOB_QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind} {self.state}>"


class BlockedAddress(db.Model):
    """An address (`someone@example.com`) or domain (`@example.com`) a user blocked."""

    __tablename__ = "blocked_address"
    __table_args__ = (UniqueConstraint("user_id", "entry"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    entry: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<BlockedAddress {self.user_id} {self.entry}>"


class ImageAllowance(db.Model):
    """A sender whose remote images a user chose to always show."""

    __tablename__ = "image_allowance"
    __table_args__ = (UniqueConstraint("user_id", "sender"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    sender: Mapped[str] = mapped_column(String(320))

    def __repr__(self) -> str:
        return f"<ImageAllowance {self.user_id} {self.sender}>"


# An outgoing mail's life (services/outbox.py is the one place that moves it along):
# draft -> queued (waits for send_at: the undo window or "send later") -> sending -> sent.
# Undo and "cancel" take a queued mail back to draft. A refusal (5xx) makes it `failed`
# with the server's words, in the Outbox; a mail found `sending` after a crash and not in the
# Sent folder becomes `uncertain` ("may have been sent"), never resent silently.
OUTGOING_DRAFT = "draft"
OUTGOING_QUEUED = "queued"
OUTGOING_SENDING = "sending"
OUTGOING_SENT = "sent"
OUTGOING_FAILED = "failed"
OUTGOING_UNCERTAIN = "uncertain"


class OutgoingMail(db.Model):
    """A mail a user writes in Threadline: a draft, then a queued, sent or failed send."""

    __tablename__ = "outgoing_mail"
    __table_args__ = (
        Index("ix_outgoing_mail_user_state", "user_id", "state"),
        Index("ix_outgoing_mail_due", "state", "send_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    # The From account; a draft outlives a removed account (the user picks another).
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("mail_account.id", ondelete="SET NULL"), index=True
    )
    state: Mapped[str] = mapped_column(String(20), default=OUTGOING_DRAFT)
    to: Mapped[list[list[str]]] = mapped_column(JSON, default=list)  # [[name, address], ...]
    cc: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    bcc: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    # reply | reply_all | forward, and the message it answers or forwards.
    reply_kind: Mapped[str | None] = mapped_column(String(10))
    source_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("message.id", ondelete="SET NULL")
    )
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    references: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The CRM record it was written from (person, organization, deal, lead, project).
    record_kind: Mapped[str | None] = mapped_column(String(20))
    record_id: Mapped[int | None] = mapped_column(Integer)
    # Fixed when the mail is first queued, so every attempt and the Sent copy share it.
    message_id_header: Mapped[str | None] = mapped_column(String(998), index=True)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    scheduled: Mapped[bool] = mapped_column(Boolean, default=False)  # "send later", not undo
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # After sending: the conversation and the stored message it became.
    thread_id: Mapped[int | None] = mapped_column(
        ForeignKey("thread.id", ondelete="SET NULL"), index=True
    )
    message_id: Mapped[int | None] = mapped_column(ForeignKey("message.id", ondelete="SET NULL"))
    # One of a group email's individual mails (GroupSend.id). No foreign key: SQLite cannot
    # add one to an existing table without copying it, and both rows go with their user.
    group_send_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    attachments: Mapped[list[OutgoingAttachment]] = relationship(
        back_populates="mail", cascade="all, delete-orphan", order_by="OutgoingAttachment.id"
    )

    def __repr__(self) -> str:
        return f"<OutgoingMail {self.id} {self.state}>"


class StoredFile:
    """The columns of a file Threadline keeps for mail it writes (a draft's or a template's);
    with a content_id it is an inline image (`cid:`)."""

    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255), default="application/octet-stream")
    size: Mapped[int] = mapped_column(Integer, default=0)
    # Bytes live in the blob store (mailsync/blobstore.py); gc keeps blobs named here.
    blob_sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def file_fields(self) -> dict[str, Any]:
        """The values a copy of this file takes (the same blob: nothing is stored twice)."""
        return {
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "blob_sha256": self.blob_sha256,
            "content_id": self.content_id,
        }


class OutgoingAttachment(StoredFile, db.Model):
    """A file of an outgoing mail; with a content_id it is an inline image (`cid:`)."""

    __tablename__ = "outgoing_attachment"

    id: Mapped[int] = mapped_column(primary_key=True)
    mail_id: Mapped[int] = mapped_column(
        ForeignKey("outgoing_mail.id", ondelete="CASCADE"), index=True
    )

    mail: Mapped[OutgoingMail] = relationship(back_populates="attachments")

    def __repr__(self) -> str:
        return f"<OutgoingAttachment {self.id} {self.filename!r}>"


# --------------------------------------------------------------------------- templates


class MailTemplate(db.Model):
    """A reusable subject and body (smart-field chips included), private or shared."""

    __tablename__ = "mail_template"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    # False: only the owner sees it; True: the whole team may use it (owner and admins edit).
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    attachments: Mapped[list[TemplateAttachment]] = relationship(
        back_populates="template", cascade="all, delete-orphan", order_by="TemplateAttachment.id"
    )

    def __repr__(self) -> str:
        return f"<MailTemplate {self.id} {self.name!r}>"


class TemplateAttachment(StoredFile, db.Model):
    """A file of a template, copied into each mail written from it; content_id: inline image."""

    __tablename__ = "template_attachment"

    id: Mapped[int] = mapped_column(primary_key=True)
    template_id: Mapped[int] = mapped_column(
        ForeignKey("mail_template.id", ondelete="CASCADE"), index=True
    )

    template: Mapped[MailTemplate] = relationship(back_populates="attachments")

    def __repr__(self) -> str:
        return f"<TemplateAttachment {self.id} {self.filename!r}>"


class Signature(db.Model):
    """One of an account's signatures (rich text); at most one is the account's default."""

    __tablename__ = "signature"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    body_html: Mapped[str] = mapped_column(Text, default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<Signature {self.id} {self.name!r}>"


GROUP_SENDING = "sending"
GROUP_DONE = "done"
GROUP_CANCELLED = "cancelled"


class GroupSend(db.Model):
    """One template sent to many people as individual mails (OutgoingMail.group_send_id)."""

    __tablename__ = "group_send"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("mail_account.id", ondelete="SET NULL")
    )
    template_id: Mapped[int | None] = mapped_column(
        ForeignKey("mail_template.id", ondelete="SET NULL")
    )
    subject: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(20), default=GROUP_SENDING)
    total: Mapped[int] = mapped_column(Integer, default=0)
    # Seconds between two of its mails, from the account's provider limits.
    pause_seconds: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<GroupSend {self.id} {self.state}>"
