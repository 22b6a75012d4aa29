"""Users: setup, sign-in with throttling, password changes, admin management."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from extensions import db
from models import LoginFailure, SetupClaim, User
from services.errors import ValidationError

log = logging.getLogger("threadline.auth")

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD_LENGTH = 10


class SetupAlreadyDone(Exception):
    """The first admin exists already; the setup form is closed."""


class LoginThrottled(Exception):
    """Too many recent failures for this address or client; retry after `retry_after` s."""

    def __init__(self, retry_after: int):
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


def validate_email(email: str, field: str = "email") -> str:
    """Return the normalized address or raise ValidationError."""
    email = normalize_email(email)
    if not EMAIL_RE.match(email) or len(email) > 320:
        raise ValidationError({field: "Enter a valid email address, like ana@example.com."})
    return email


def _validate_password(password: str, field: str = "password") -> None:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise ValidationError({field: f"Use at least {MIN_PASSWORD_LENGTH} characters."})


def needs_setup() -> bool:
    """Tell whether this install has no user yet (the setup page creates the first admin)."""
    return db.session.scalar(select(func.count(User.id))) == 0


def get_user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == normalize_email(email)))


def _new_user(*, email: str, name: str, password: str, is_admin: bool) -> User:
    """Validate the fields and return an unsaved user with a hashed password."""
    errors: dict[str, str] = {}
    try:
        email = validate_email(email)
    except ValidationError as exc:
        errors.update(exc.errors)
    name = (name or "").strip()
    if not name:
        errors["name"] = "Enter a name."
    elif len(name) > 200:
        errors["name"] = "Keep the name under 200 characters."
    try:
        _validate_password(password)
    except ValidationError as exc:
        errors.update(exc.errors)
    if "email" not in errors and get_user_by_email(email) is not None:
        errors["email"] = "A user with this email already exists."
    if errors:
        raise ValidationError(errors)
    return User(
        email=email, name=name, password_hash=generate_password_hash(password), is_admin=is_admin
    )


def create_user(*, email: str, name: str, password: str, is_admin: bool = False) -> User:
    """Create a user with a hashed password; commits. Raises ValidationError."""
    user = _new_user(email=email, name=name, password=password, is_admin=is_admin)
    db.session.add(user)
    db.session.commit()
    return user


def create_first_admin(*, email: str, name: str, password: str) -> User:
    """Create the first admin of a fresh install; commits.

    Raises SetupAlreadyDone once any user exists, also when another setup form won a race:
    the admin and the SetupClaim singleton row are inserted in one transaction, and the
    database refuses a second claim. Raises ValidationError for bad fields.
    """
    if not needs_setup():
        raise SetupAlreadyDone()
    user = _new_user(email=email, name=name, password=password, is_admin=True)
    db.session.add(user)
    try:
        db.session.flush()
        db.session.add(SetupClaim(id=SetupClaim.SINGLETON_ID, user_id=user.id))
        db.session.commit()
    except IntegrityError as exc:
        # The claim (or, with the same address, the user) already exists: another setup won.
        db.session.rollback()
        raise SetupAlreadyDone() from exc
    return user


def _recent_failures(email: str, ip: str, window: timedelta) -> tuple[int, int, datetime | None]:
    since = datetime.now(UTC) - window
    by_email = db.session.scalar(
        select(func.count(LoginFailure.id)).where(
            LoginFailure.email == email, LoginFailure.created_at >= since
        )
    )
    by_ip = db.session.scalar(
        select(func.count(LoginFailure.id)).where(
            LoginFailure.ip == ip, LoginFailure.created_at >= since
        )
    )
    oldest = db.session.scalar(
        select(func.min(LoginFailure.created_at)).where(
            or_(LoginFailure.email == email, LoginFailure.ip == ip),
            LoginFailure.created_at >= since,
        )
    )
    return by_email or 0, by_ip or 0, oldest


def authenticate(
    *, email: str, password: str, ip: str, max_failures: int = 5, window_seconds: int = 900
) -> User | None:
    """Return the user for good credentials, None for bad ones; commits failures.

    Raises LoginThrottled after `max_failures` failures for the address (or 4x that for
    the client IP) within the window, even when the password is right, so guessing stops.
    """
    email = normalize_email(email)
    window = timedelta(seconds=window_seconds)
    by_email, by_ip, oldest = _recent_failures(email, ip, window)
    if by_email >= max_failures or by_ip >= max_failures * 4:
        elapsed = datetime.now(UTC) - (oldest or datetime.now(UTC))
        retry_after = max(1, int((window - elapsed).total_seconds()))
        log.warning("login throttled email=%r ip=%s", email, ip)
        raise LoginThrottled(retry_after)
    user = get_user_by_email(email)
    if (
        user is not None
        and not user.is_deactivated
        and check_password_hash(user.password_hash, password or "")
    ):
        db.session.execute(delete(LoginFailure).where(LoginFailure.email == email))
        db.session.commit()
        log.info("login ok user=%s ip=%s", user.id, ip)
        return user
    db.session.add(LoginFailure(email=email, ip=ip))
    db.session.commit()
    log.info("login failed email=%r ip=%s", email, ip)
    return None


def end_all_sessions(user: User) -> None:
    """Invalidate every session of `user` (logout, password change); commits."""
    user.session_epoch = (user.session_epoch or 0) + 1
    db.session.commit()


def change_password(user: User, *, current: str, new: str, confirm: str) -> None:
    """Change the user's own password; ends their other sessions; commits."""
    if not check_password_hash(user.password_hash, current or ""):
        raise ValidationError({"current": "That is not your current password."})
    _validate_password(new, "new")
    if new != confirm:
        raise ValidationError({"confirm": "The two new passwords differ."})
    user.password_hash = generate_password_hash(new)
    user.session_epoch = (user.session_epoch or 0) + 1
    db.session.commit()


def list_users() -> list[User]:
    return list(db.session.scalars(select(User).order_by(User.name)))


def set_admin(actor: User, user: User, is_admin: bool) -> None:
    """Grant or revoke admin; an admin cannot demote themself (keeps one admin). Commits."""
    if not actor.is_admin:
        raise ValidationError({"__all__": "Only admins can change roles."})
    if user.id == actor.id and not is_admin:
        raise ValidationError({"__all__": "You cannot remove your own admin role."})
    user.is_admin = is_admin
    db.session.commit()


def set_deactivated(actor: User, user: User, deactivated: bool) -> None:
    """Deactivate or reactivate a user; nothing of theirs is deleted. Commits."""
    if not actor.is_admin:
        raise ValidationError({"__all__": "Only admins can deactivate users."})
    if user.id == actor.id:
        raise ValidationError({"__all__": "You cannot deactivate yourself."})
    user.is_deactivated = deactivated
    if deactivated:
        user.session_epoch = (user.session_epoch or 0) + 1
    db.session.commit()
