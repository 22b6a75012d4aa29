"""Times as people read them: in the user's time zone, relative in lists (one place).

Stored times are UTC. A user's zone is a personal setting, first taken from the browser
(static/js/app.js posts it once); until then times show in UTC, labelled as such.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from flask import g
from flask_login import current_user

from services.preferences import PreferenceSpec, get_preference, register


@lru_cache(maxsize=1)
def zone_names() -> tuple[str, ...]:
    """Return the IANA zone names this machine knows, sorted ("Europe/Berlin", ...)."""
    return tuple(sorted(name for name in available_timezones() if "/" in name or name == "UTC"))


register(
    PreferenceSpec(
        "time_zone",
        "Time zone",
        "",
        (("", "Not set yet: taken from my browser"),) + tuple((n, n) for n in zone_names()),
        "Times in Threadline are shown in this zone.",
    )
)


def zone_for(name: str | None) -> ZoneInfo:
    """Return the zone called `name`, UTC when unset or unknown."""
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def current_zone_name() -> str:
    """Return the signed-in user's zone setting, "" when not set yet (read once per request)."""
    if "time_zone_name" not in g:
        signed_in = current_user.is_authenticated
        g.time_zone_name = get_preference(current_user, "time_zone") if signed_in else ""
    return g.time_zone_name


def current_zone() -> ZoneInfo:
    """Return the signed-in user's zone (UTC until one is set)."""
    return zone_for(current_zone_name())


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def list_label(value: datetime | None, now: datetime, zone: ZoneInfo, date_format: str) -> str:
    """Return a list's short label: "07:03" today, "Tue" this week, "3 Dec" this year."""
    if value is None:
        return ""
    local, today = _aware(value).astimezone(zone), _aware(now).astimezone(zone)
    if local.date() == today.date():
        return local.strftime("%H:%M")
    if today.date() - timedelta(days=6) <= local.date() < today.date():
        return local.strftime("%a")
    if local.year == today.year:
        return local.strftime("%-d %b")
    return local.strftime(date_format)


def full_label(value: datetime | None, zone: ZoneInfo) -> str:
    """Return the absolute time with its zone, e.g. "2026-12-05 07:03 CET" (for hover)."""
    if value is None:
        return ""
    return _aware(value).astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def date_label(value: datetime | None, zone: ZoneInfo, date_format: str = "%Y-%m-%d") -> str:
    """Return the local calendar date of `value`."""
    if value is None:
        return ""
    return _aware(value).astimezone(zone).strftime(date_format)


def local_time(value: datetime | None, style: str = "full") -> str:
    """Template filter: `when|local_time` (absolute with zone) or `|local_time("date")`."""
    zone = current_zone()
    if style == "date":
        return date_label(value, zone)
    return full_label(value, zone)


def set_time_zone_from_browser(user, name: str) -> bool:
    """Store the browser's zone when the user has none yet; return whether it was stored."""
    from services.preferences import update_preferences

    if name not in zone_names() or get_preference(user, "time_zone"):
        return False
    update_preferences(user, {"time_zone": name})
    return True
