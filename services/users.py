"""Users: setup, sign-in with throttling, password changes, admin management."""

from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from extensions import db
from models import SetupClaim, User
from services import throttle
from services.addresses import is_valid_address
from services.errors import ValidationError
from services.throttle import ThrottlePolicy, TooManyAttempts

log = logging.getLogger("threadline.auth")

MIN_PASSWORD_LENGTH = 10


class SetupAlreadyDone(Exception):
    """The first admin exists already; the setup form is closed."""


def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


def validate_email(email: str, field: str = "email") -> str:
    """Return the normalized address or raise ValidationError."""
    email = normalize_email(email)
    if not is_valid_address(email):
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


def _hash_password(password: str) -> str:
    """Hash a password with the configured method (PASSWORD_HASH_METHOD)."""
    return generate_password_hash(password, method=current_app.config["PASSWORD_HASH_METHOD"])


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
    return User(email=email, name=name, password_hash=_hash_password(password), is_admin=is_admin)


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


@functools.cache
def _dummy_password_hash(method: str) -> str:
    """A hash of a random password, made once per method, the method of users' hashes."""
    return generate_password_hash(secrets.token_urlsafe(16), method=method)


@dataclass(frozen=True)
class SignedIn:
    """A successful sign-in: the user and a fresh device token for the browser's cookie."""

    user: User
    device_token: str


def authenticate(
    *,
    email: str,
    password: str,
    ip: str,
    secret_key: str,
    policy: ThrottlePolicy,
    device_token: str | None = None,
) -> SignedIn | None:
    """Return a SignedIn for good credentials, None for bad ones; commits.

    Raises TooManyAttempts while this client must wait (services/throttle.py), without
    checking the password, so a guesser gains nothing from the right one.
    """
    email = normalize_email(email)
    user = get_user_by_email(email)
    device = throttle.device_of(secret_key, device_token, user, policy)
    try:
        throttle.check_login_allowed(email=email, ip=ip, device=device, policy=policy)
    except TooManyAttempts:
        log.warning("login throttled email=%r ip=%s device=%s", email, ip, device is not None)
        raise
    # An unknown address checks a dummy hash, so its answer takes as long as a real one's
    # and response times do not tell which addresses have accounts.
    method = current_app.config["PASSWORD_HASH_METHOD"]
    stored_hash = user.password_hash if user is not None else _dummy_password_hash(method)
    password_ok = check_password_hash(stored_hash, password or "")
    if user is not None and password_ok and not user.is_deactivated:
        throttle.forget_failures(action=throttle.ACTION_LOGIN, email=email, ip=ip, device=device)
        db.session.commit()
        log.info("login ok user=%s ip=%s", user.id, ip)
        return SignedIn(user, throttle.issue_device_token(secret_key, user))
    throttle.record_failure(action=throttle.ACTION_LOGIN, email=email, ip=ip, device=device)
    db.session.commit()
    log.info("login failed email=%r ip=%s device=%s", email, ip, device is not None)
    return None


def utcnow() -> datetime:
    """The clock of session ages (tests shift it)."""
    return datetime.now(UTC)


def session_start_stamp() -> int:
    """Return the sign-in time to keep in a new session (Unix seconds)."""
    return int(utcnow().timestamp())


def session_too_old(started: object, *, max_age_seconds: int) -> bool:
    """Tell whether a session that began at `started` (session_start_stamp) must end.

    A session without a stamp (signed in before this rule existed, or tampered with) is
    too old: failing closed costs one sign-in.
    """
    if not isinstance(started, int):
        return True
    return utcnow().timestamp() - started > max_age_seconds


def end_all_sessions(user: User, *, ip: str) -> None:
    """Invalidate every session of `user` (sign-out); commits."""
    user.session_epoch = (user.session_epoch or 0) + 1
    db.session.commit()
    log.info("logout user=%s ip=%s", user.id, ip)


def change_password(
    user: User, *, current: str, new: str, confirm: str, ip: str, policy: ThrottlePolicy
) -> None:
    """Change the user's own password; ends their other sessions; commits.

    Raises TooManyAttempts after repeated wrong current passwords (throttled like sign-in,
    per user), ValidationError for a wrong current password or a bad new one.
    """
    throttle.check_password_change_allowed(user, policy)
    if not check_password_hash(user.password_hash, current or ""):
        throttle.record_failure(action=throttle.ACTION_PASSWORD_CHANGE, email=user.email, ip=ip)
        db.session.commit()
        log.info("password change: wrong current password user=%s ip=%s", user.id, ip)
        raise ValidationError({"current": "That is not your current password."})
    _validate_password(new, "new")
    if new != confirm:
        raise ValidationError({"confirm": "The two new passwords differ."})
    throttle.forget_password_change_failures(user)
    user.password_hash = _hash_password(new)
    user.session_epoch = (user.session_epoch or 0) + 1
    db.session.commit()
    log.info("password changed user=%s ip=%s", user.id, ip)


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


MAX_NAME_LENGTH = 200
MAX_PHONE_LENGTH = 50


def _has_control(text: str) -> bool:
    return any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in text)


def update_profile(user: User, *, name: str, phone: str) -> None:
    """Change the user's own name (their From name) and phone (the "Your phone" smart field).

    Raises ValidationError for an empty or too long name, or either holding line breaks or
    other control characters (both reach mail headers or bodies). Commits.
    """
    name, phone = (name or "").strip(), (phone or "").strip()
    errors = {}
    if not name:
        errors["name"] = "Enter your name."
    elif len(name) > MAX_NAME_LENGTH or _has_control(name):
        errors["name"] = f"Use at most {MAX_NAME_LENGTH} characters, on one line."
    if len(phone) > MAX_PHONE_LENGTH or _has_control(phone):
        errors["phone"] = f"Use at most {MAX_PHONE_LENGTH} characters, on one line."
    if errors:
        raise ValidationError(errors)
    user.name, user.phone = name, phone or None
    db.session.commit()
