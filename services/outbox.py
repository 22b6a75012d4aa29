"""The one place that moves an outgoing mail through its states (models.OUTGOING_*).

The web side calls queue_send / cancel_to_draft / send_now; the worker (mailsync/send.py,
run by the send tick in jobs.py) claims due mail with claim_due (queued -> sending) and
records what the SMTP server said: mark_sent, retry_later (back to queued, later),
mark_failed, mark_uncertain ("may have been sent": a send a stopped worker left behind,
found by interrupted_sends).
Every state change is a conditional UPDATE on the expected old state, so a web request and
the worker racing for one mail never both win: Undo after the worker claimed the mail
fails with a plain message instead of leaving a sent mail back in Drafts.

Every function commits.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import and_, func, or_, select, update

from extensions import db
from models import (
    OUTGOING_DRAFT,
    OUTGOING_FAILED,
    OUTGOING_QUEUED,
    OUTGOING_SENDING,
    OUTGOING_SENT,
    OUTGOING_UNCERTAIN,
    MailAccount,
    OutgoingMail,
    User,
)
from services import smart_fields
from services.addresses import is_valid_address
from services.errors import ValidationError

UNDO_CHOICES = (0, 5, 10, 30)  # seconds; the "undo send" setting
DEFAULT_DAILY_SEND_LIMIT = 500
# Mail the user may still take back to the editor: waiting, refused, or of unknown fate.
RETURNABLE = (OUTGOING_QUEUED, OUTGOING_FAILED, OUTGOING_UNCERTAIN)
outgoing_t = OutgoingMail.__table__


def _now() -> datetime:
    return datetime.now(UTC)


def _has_line_break(value: str) -> bool:
    return "\r" in value or "\n" in value


def check_sendable(user: User, mail: OutgoingMail) -> None:
    """Raise ValidationError (field -> plain message) unless the mail may be sent as it is."""
    errors: dict[str, str] = {}
    account = db.session.get(MailAccount, mail.account_id) if mail.account_id else None
    if account is None or account.user_id != user.id or account.removed_at is not None:
        errors["account"] = "Choose one of your mail accounts to send from."
    elif not account.smtp_host:
        errors["account"] = (
            f"{account.email_address} has no outgoing (SMTP) server yet: add it in Settings > Mail accounts."
        )
    recipients = 0
    for field in ("to", "cc", "bcc"):
        bad = []
        for name, address in getattr(mail, field) or []:
            recipients += 1
            if _has_line_break(name) or _has_line_break(address) or not is_valid_address(address):
                bad.append(address or name)
        if bad:
            errors[field] = "Not a valid address: " + ", ".join(bad)
    if recipients == 0 and "to" not in errors:
        errors["to"] = "Add at least one recipient."
    if _has_line_break(mail.subject or ""):
        errors["subject"] = "The subject cannot contain line breaks."
    if any(_has_line_break(a.filename or "") for a in mail.attachments):
        errors["attachments"] = "An attachment name cannot contain line breaks."
    if account is not None and account.max_message_bytes:
        total = sum(attachment.size for attachment in mail.attachments)
        # Sent as base64 (4 bytes for 3, plus line breaks) beside an HTML and a text part;
        # the worker checks the exact size of the built message again.
        encoded = total * 137 // 100 + 2 * len((mail.body_html or "").encode())
        if encoded > account.max_message_bytes:
            limit_mb = account.max_message_bytes / 1_000_000
            errors["attachments"] = (
                f"This mail is {total / 1_000_000:.1f} MB with its attachments; "
                f"{account.email_address} accepts at most {limit_mb:.0f} MB. "
                "Remove an attachment or share a link instead."
            )
    missing = smart_fields.missing_fields(mail)
    if missing:
        errors["smart_fields"] = smart_fields.missing_message(missing)
    if errors:
        raise ValidationError(errors)


def sent_today(user: User) -> int:
    since = _now() - timedelta(days=1)
    return db.session.scalar(
        select(func.count())
        .select_from(outgoing_t)
        .where(
            outgoing_t.c.user_id == user.id,
            outgoing_t.c.state.in_((OUTGOING_SENDING, OUTGOING_SENT, OUTGOING_UNCERTAIN)),
            outgoing_t.c.updated_at >= since,
        )
    )


def daily_send_limit() -> int:
    """Return how many mails one user may send in 24 hours (DAILY_SEND_LIMIT)."""
    return int(current_app.config.get("DAILY_SEND_LIMIT", DEFAULT_DAILY_SEND_LIMIT))


def _waiting(user: User) -> int:
    return db.session.scalar(
        select(func.count())
        .select_from(outgoing_t)
        .where(outgoing_t.c.user_id == user.id, outgoing_t.c.state == OUTGOING_QUEUED)
    )


def check_room_for(user: User, count: int) -> None:
    """Raise ValidationError unless `count` more mails fit in the user's daily send limit.

    Mail already waiting in the queue counts as sent, so two large group emails queued one
    after the other cannot pass the check each on its own.
    """
    limit = daily_send_limit()
    room = max(0, limit - sent_today(user) - _waiting(user))
    if count > room:
        raise ValidationError(
            {
                "__all__": f"This would send {count} mails, but you may send only {room} more "
                f"in the next 24 hours (at most {limit} a day, mail still waiting to be sent "
                "included). Pick fewer recipients or try again later."
            }
        )


def _check_rate(user: User) -> None:
    limit = daily_send_limit()
    if sent_today(user) >= limit:
        raise ValidationError(
            {
                "__all__": f"You have sent {limit} mails in the last 24 hours, the most allowed. "
                "Try again later, or ask an admin to raise the limit."
            }
        )


def new_message_id(account: MailAccount) -> str:
    domain = account.email_address.rpartition("@")[2] or "threadline.invalid"
    return email.utils.make_msgid(domain=domain)


def queue_send(
    user: User, mail: OutgoingMail, *, undo_seconds: int = 0, send_at: datetime | None = None
) -> OutgoingMail:
    """Queue a draft (or a refused mail) to be sent: after the undo window, or at send_at.

    Raises ValidationError for a mail that cannot be sent (nothing changes then).
    """
    if mail.user_id != user.id or mail.state not in (OUTGOING_DRAFT, OUTGOING_FAILED):
        raise ValidationError({"__all__": "This mail is no longer a draft."})
    check_sendable(user, mail)
    _check_rate(user)
    now = _now()
    if send_at is not None and send_at <= now:
        raise ValidationError({"send_at": "Pick a time in the future."})
    account = db.session.get(MailAccount, mail.account_id)
    if not mail.message_id_header:
        mail.message_id_header = new_message_id(account)
    mail.state = OUTGOING_QUEUED
    mail.scheduled = send_at is not None
    mail.send_at = send_at or now + timedelta(seconds=max(0, undo_seconds))
    mail.error = None
    mail.attempts = 0
    db.session.commit()
    return mail


def queue_paced(user: User, mails: list[OutgoingMail], send_times: list[datetime]) -> None:
    """Queue new mails (not yet committed) each at its own time, in one transaction.

    For a group email: every mail is checked as queue_send checks one, and the lot against
    the daily limit up front. Raises ValidationError naming the first unsendable mail; then
    nothing is queued. Commits.
    """
    try:
        check_room_for(user, len(mails))
        for mail in mails:
            check_sendable(user, mail)
    except ValidationError:
        db.session.rollback()
        raise
    for mail, send_at in zip(mails, send_times, strict=True):
        account = db.session.get(MailAccount, mail.account_id)
        mail.message_id_header = mail.message_id_header or new_message_id(account)
        mail.state = OUTGOING_QUEUED
        mail.scheduled = False
        mail.send_at = send_at
        mail.error = None
        mail.attempts = 0
    db.session.commit()


def cancel_waiting(user: User, mail_ids: list[int]) -> int:
    """Take back the user's mails among `mail_ids` the worker has not begun sending: they
    are deleted, never sent. Return how many. Commits."""
    taken = 0
    for mail_id in mail_ids:
        # Conditional on "queued": a mail the worker claimed meanwhile is left to it.
        taken += db.session.execute(
            update(outgoing_t)
            .where(
                outgoing_t.c.id == mail_id,
                outgoing_t.c.user_id == user.id,
                outgoing_t.c.state == OUTGOING_QUEUED,
            )
            .values(state=OUTGOING_DRAFT, send_at=None, updated_at=_now())
        ).rowcount
    taken_mails = db.session.scalars(
        select(OutgoingMail).where(
            OutgoingMail.id.in_(mail_ids),
            OutgoingMail.user_id == user.id,
            OutgoingMail.state == OUTGOING_DRAFT,
        )
    )
    for mail in taken_mails:
        db.session.delete(mail)
    db.session.commit()
    return taken


def cancel_to_draft(user: User, mail: OutgoingMail) -> bool:
    """Undo / cancel: take a waiting, refused or uncertain mail back to Drafts.

    False when it is too late (the worker already began sending it).
    """
    if mail.user_id != user.id:
        return False
    changed = db.session.execute(
        update(outgoing_t)
        .where(outgoing_t.c.id == mail.id, outgoing_t.c.state.in_(RETURNABLE))
        .values(state=OUTGOING_DRAFT, send_at=None, scheduled=False, updated_at=_now())
    ).rowcount
    db.session.commit()
    db.session.refresh(mail)
    return changed == 1


def send_now(user: User, mail: OutgoingMail) -> bool:
    """A scheduled mail in the Outbox: send it at once instead. False if it already left."""
    if mail.user_id != user.id:
        return False
    changed = db.session.execute(
        update(outgoing_t)
        .where(outgoing_t.c.id == mail.id, outgoing_t.c.state == OUTGOING_QUEUED)
        .values(send_at=_now(), scheduled=False, updated_at=_now())
    ).rowcount
    db.session.commit()
    db.session.refresh(mail)
    return changed == 1


def outbox(user: User) -> list[OutgoingMail]:
    """What the Outbox lists: scheduled, sending, refused and uncertain mail, soonest first.

    A group email's mails waiting their turn are on its own page, not here (one row each
    would bury the rest); those refused or uncertain are here too, to edit and send again.
    """
    return list(
        db.session.scalars(
            select(OutgoingMail)
            .where(
                OutgoingMail.user_id == user.id,
                or_(
                    OutgoingMail.state.in_((OUTGOING_FAILED, OUTGOING_UNCERTAIN)),
                    and_(
                        OutgoingMail.state.in_((OUTGOING_QUEUED, OUTGOING_SENDING)),
                        OutgoingMail.group_send_id.is_(None),
                    ),
                ),
            )
            .order_by(OutgoingMail.send_at.is_(None), OutgoingMail.send_at, OutgoingMail.id)
        )
    )


def drafts(user: User) -> list[OutgoingMail]:
    return list(
        db.session.scalars(
            select(OutgoingMail)
            .where(OutgoingMail.user_id == user.id, OutgoingMail.state == OUTGOING_DRAFT)
            .order_by(OutgoingMail.updated_at.desc(), OutgoingMail.id.desc())
        )
    )


def claim_due(now: datetime | None = None, *, limit: int = 20) -> list[int]:
    """Worker: take queued mail whose time has come (queued -> sending); return their ids."""
    now = now or _now()
    candidates = list(
        db.session.scalars(
            select(outgoing_t.c.id)
            .where(outgoing_t.c.state == OUTGOING_QUEUED, outgoing_t.c.send_at <= now)
            .order_by(outgoing_t.c.send_at, outgoing_t.c.id)
            .limit(limit)
        )
    )
    claimed = []
    for mail_id in candidates:
        won = db.session.execute(
            update(outgoing_t)
            .where(outgoing_t.c.id == mail_id, outgoing_t.c.state == OUTGOING_QUEUED)
            .values(state=OUTGOING_SENDING, attempts=outgoing_t.c.attempts + 1, updated_at=now)
        ).rowcount
        db.session.commit()
        if won:
            claimed.append(mail_id)
    return claimed


# --------------------------------------------------------------------------- the worker's side
#
# Each function below moves one mail out of "sending" (claim_due put it there), as a
# conditional UPDATE: it returns False, changing nothing, when the mail is no longer sending
# (another worker's recovery settled it first).


def _settle(mail_id: int, **values) -> bool:
    changed = db.session.execute(
        update(outgoing_t)
        .where(outgoing_t.c.id == mail_id, outgoing_t.c.state == OUTGOING_SENDING)
        .values(updated_at=_now(), **values)
    ).rowcount
    db.session.commit()
    return changed == 1


def mark_sent(mail_id: int, *, error: str | None = None) -> bool:
    """sending -> sent. `error` notes recipients the server refused while taking the rest."""
    return _settle(mail_id, state=OUTGOING_SENT, sent_at=_now(), error=error)


def retry_later(mail_id: int, error: str, *, delay_seconds: float) -> bool:
    """sending -> queued again after a temporary failure, due in `delay_seconds`."""
    return _settle(
        mail_id,
        state=OUTGOING_QUEUED,
        send_at=_now() + timedelta(seconds=delay_seconds),
        error=error,
    )


def mark_failed(mail_id: int, error: str) -> bool:
    """sending -> failed: the server refused for good (its words in `error`)."""
    return _settle(mail_id, state=OUTGOING_FAILED, error=error)


def mark_uncertain(mail_id: int, error: str) -> bool:
    """sending -> uncertain: it may have been sent; never sent again without the user."""
    return _settle(mail_id, state=OUTGOING_UNCERTAIN, error=error)


def record_stored(mail_id: int, *, message_id: int | None, thread_id: int | None) -> None:
    """Note the stored message and conversation a sent mail became."""
    db.session.execute(
        update(outgoing_t)
        .where(outgoing_t.c.id == mail_id, outgoing_t.c.state == OUTGOING_SENT)
        .values(message_id=message_id, thread_id=thread_id)
    )
    db.session.commit()


def interrupted_sends(*, before: datetime | None = None) -> list[int]:
    """Return mail left in "sending" (since before `before`): a worker stopped mid-send."""
    query = select(outgoing_t.c.id).where(outgoing_t.c.state == OUTGOING_SENDING)
    if before is not None:
        query = query.where(outgoing_t.c.updated_at < before)
    return list(db.session.scalars(query.order_by(outgoing_t.c.id)))
