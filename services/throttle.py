"""Throttling of password checks (sign-in, password change) and device tokens (R27).

OWASP's device-cookie scheme ("Slow Down Online Guessing Attacks with Device Cookies"):
a browser that signed in to an account before carries a signed device token for it, and
its attempts are judged only by its own failures, so a guesser elsewhere cannot lock the
owner out. Attempts without such a token are slowed per account and per client address,
with a delay that doubles with each failure past the limit; while a delay runs the password
is not checked at all, so the right password does not help a guesser either.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import ColumnElement, and_, delete, func, select

from extensions import db
from models import LoginFailure, User

ACTION_LOGIN = "login"
ACTION_PASSWORD_CHANGE = "password_change"
DEVICE_TOKEN_SALT = "threadline-device-token"
MAX_DOUBLINGS = 20  # keeps 2**n small; the delay is capped long before


class TooManyAttempts(Exception):
    """Too many recent failed password checks; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class ThrottlePolicy:
    """The limits, from the LOGIN_* and DEVICE_TOKEN_* settings (defaults in config.py)."""

    max_failures: int  # per account, or per device token, before delays start
    ip_max_failures: int  # per client address, across accounts
    window_seconds: int  # failures older than this are forgotten
    backoff_base_seconds: int  # the first delay; each further failure doubles it
    backoff_max_seconds: int
    device_token_max_age_seconds: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ThrottlePolicy:
        """Read the policy from an app config."""
        return cls(
            max_failures=int(config["LOGIN_MAX_FAILURES"]),
            ip_max_failures=int(config["LOGIN_IP_MAX_FAILURES"]),
            window_seconds=int(config["LOGIN_WINDOW_SECONDS"]),
            backoff_base_seconds=int(config["LOGIN_BACKOFF_BASE_SECONDS"]),
            backoff_max_seconds=int(config["LOGIN_BACKOFF_MAX_SECONDS"]),
            device_token_max_age_seconds=int(config["DEVICE_TOKEN_MAX_AGE_SECONDS"]),
        )


def utcnow() -> datetime:
    """The clock of every throttling decision (tests shift it)."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------- device tokens


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=DEVICE_TOKEN_SALT)


def issue_device_token(secret_key: str, user: User) -> str:
    """Return a new signed device token binding this browser to `user`."""
    return _serializer(secret_key).dumps({"user": user.id, "nonce": secrets.token_urlsafe(16)})


def device_of(
    secret_key: str, token: str | None, user: User | None, policy: ThrottlePolicy
) -> str | None:
    """Return the token's device id if it is a valid, unexpired token of `user`, else None."""
    if not token or user is None:
        return None
    try:
        data = _serializer(secret_key).loads(token, max_age=policy.device_token_max_age_seconds)
    except BadData:
        return None
    if not isinstance(data, dict) or data.get("user") != user.id:
        return None
    nonce = data.get("nonce")
    return nonce if isinstance(nonce, str) else None


# --------------------------------------------------------------------------- delays


def backoff_seconds(failures: int, limit: int, policy: ThrottlePolicy) -> int:
    """Return the delay owed after `failures` recent failures: none below `limit`, then
    the base delay, doubling with each further failure, capped."""
    if failures < limit:
        return 0
    doublings = min(failures - limit, MAX_DOUBLINGS)
    return min(policy.backoff_max_seconds, policy.backoff_base_seconds * 2**doublings)


def _retry_after(failures: ColumnElement[bool], limit: int, policy: ThrottlePolicy) -> int:
    now = utcnow()
    since = now - timedelta(seconds=policy.window_seconds)
    count, last = db.session.execute(
        select(func.count(LoginFailure.id), func.max(LoginFailure.created_at)).where(
            failures, LoginFailure.created_at >= since
        )
    ).one()
    delay = backoff_seconds(count or 0, limit, policy)
    if not delay:
        return 0
    return max(0, math.ceil((last + timedelta(seconds=delay) - now).total_seconds()))


def _same_client(action: str, email: str, ip: str, device: str | None) -> ColumnElement[bool]:
    # With a device token a client is that token; without one, this address for this account.
    if device is not None:
        return and_(LoginFailure.action == action, LoginFailure.device == device)
    return and_(
        LoginFailure.action == action,
        LoginFailure.email == email,
        LoginFailure.ip == ip,
        LoginFailure.device.is_(None),
    )


def check_login_allowed(*, email: str, ip: str, device: str | None, policy: ThrottlePolicy) -> None:
    """Raise TooManyAttempts while a sign-in attempt must wait.

    A valid device token is judged only by its own failures; anything else by the failures
    without a token for this account and, separately, for this client address.
    """
    if device is not None:
        retry_after = _retry_after(
            _same_client(ACTION_LOGIN, email, ip, device), policy.max_failures, policy
        )
    else:
        untrusted = and_(LoginFailure.action == ACTION_LOGIN, LoginFailure.device.is_(None))
        retry_after = max(
            _retry_after(and_(untrusted, LoginFailure.email == email), policy.max_failures, policy),
            _retry_after(and_(untrusted, LoginFailure.ip == ip), policy.ip_max_failures, policy),
        )
    if retry_after:
        raise TooManyAttempts(retry_after)


def check_password_change_allowed(user: User, policy: ThrottlePolicy) -> None:
    """Raise TooManyAttempts while this user's password changes must wait."""
    failures = and_(LoginFailure.action == ACTION_PASSWORD_CHANGE, LoginFailure.email == user.email)
    retry_after = _retry_after(failures, policy.max_failures, policy)
    if retry_after:
        raise TooManyAttempts(retry_after)


def record_failure(*, action: str, email: str, ip: str, device: str | None = None) -> None:
    """Add one failed password check to the session (the caller commits)."""
    db.session.add(
        LoginFailure(action=action, email=email, ip=ip, device=device, created_at=utcnow())
    )


def forget_failures(*, action: str, email: str, ip: str, device: str | None = None) -> None:
    """Drop the failures of the client that just got the password right (caller commits).

    Failures from other clients stay: a success here must not reset a guesser's count.
    """
    db.session.execute(delete(LoginFailure).where(_same_client(action, email, ip, device)))


def forget_password_change_failures(user: User) -> None:
    """Drop the user's failed password-change checks after a right one (caller commits)."""
    db.session.execute(
        delete(LoginFailure).where(
            LoginFailure.action == ACTION_PASSWORD_CHANGE, LoginFailure.email == user.email
        )
    )
