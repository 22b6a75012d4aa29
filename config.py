"""Configuration: defaults, then instance/config.py, then THREADLINE_* environment variables."""

import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

ENV_PREFIX = "THREADLINE_"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # `flask serve`, sync process


class DefaultConfig:
    # Cookies: HttpOnly + SameSite=Lax always; Secure when served over HTTPS (THREADLINE_HTTPS=1).
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    # Idle lifetime: each request renews it (Flask checks the cookie's signed timestamp).
    PERMANENT_SESSION_LIFETIME = 60 * 60 * 12
    # Absolute lifetime from sign-in, however often the session is used (R26).
    SESSION_ABSOLUTE_LIFETIME_SECONDS = 14 * 24 * 3600
    WTF_CSRF_TIME_LIMIT = None  # the token lives as long as the session
    SQLALCHEMY_TRACK_MODIFICATIONS = False
    MAX_CONTENT_LENGTH = 40 * 1024 * 1024
    # One file attached in compose, at most (the From account's own limit may be lower).
    COMPOSE_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
    # Password checks (sign-in, password change) are throttled, services/throttle.py (R27):
    # past LOGIN_MAX_FAILURES failures per account (LOGIN_IP_MAX_FAILURES per client
    # address) within LOGIN_WINDOW_SECONDS, each attempt waits LOGIN_BACKOFF_BASE_SECONDS,
    # doubling per further failure up to LOGIN_BACKOFF_MAX_SECONDS. A browser holding a
    # device token (cookie DEVICE_COOKIE_NAME, set on sign-in) counts only its own failures.
    LOGIN_MAX_FAILURES = 5
    # werkzeug's hash method for new passwords (R28). Tests set a cheap one: scrypt costs
    # ~190 ms per hash and per check; tests/test_auth.py covers this default.
    PASSWORD_HASH_METHOD = "scrypt"
    LOGIN_IP_MAX_FAILURES = 20
    LOGIN_WINDOW_SECONDS = 15 * 60
    LOGIN_BACKOFF_BASE_SECONDS = 30
    LOGIN_BACKOFF_MAX_SECONDS = 15 * 60
    DEVICE_COOKIE_NAME = "device"  # "__Host-device" under HTTPS
    DEVICE_TOKEN_MAX_AGE_SECONDS = 365 * 24 * 3600
    # Reverse proxies in front of the app whose X-Forwarded-For/-Proto we believe (ProxyFix).
    # 0 ignores those headers: without a proxy any client could claim any address.
    TRUSTED_PROXY_HOPS = 0
    SYNC_INTERVAL_SECONDS = 120
    SYNC_START_DELAY_SECONDS = 5  # the worker's first scheduled pass, after it starts
    SYNC_BUDGET_SECONDS = 90  # one account's sync pass; backfill resumes on the next tick
    # A pass holds its account's lease this long past the last renewal; a thread renews it
    # every third of that, so a killed pass blocks the account for a minute at most.
    SYNC_LEASE_SECONDS = 60
    # Scheduled passes sync INBOX and Sent (Gmail: All Mail) every SYNC_INTERVAL_SECONDS, other
    # folders at most this often once their first backfill is done; "Sync now" takes all.
    OTHER_FOLDERS_INTERVAL_SECONDS = 600
    # Garbage collection (mailsync.gc), a scheduler job of its own: messages whose last
    # server location disappeared are hard-deleted after MESSAGE_GC_TTL_SECONDS (a move seen
    # within that time keeps the message), emptied threads after THREAD_GC_TTL_SECONDS.
    GC_INTERVAL_SECONDS = 5 * 60
    MESSAGE_GC_TTL_SECONDS = 30 * 60
    THREAD_GC_TTL_SECONDS = 7 * 24 * 3600
    MAIL_ALLOWED_PORTS = (993, 143)  # IMAP ports a mailbox may use; None allows any (R20)
    SMTP_ALLOWED_PORTS = (465, 587, 25)  # SMTP ports an account may send through (R20)
    # Sending (mailsync/send.py): the worker looks for due mail every SEND_POLL_SECONDS; a
    # temporary SMTP failure is retried after SEND_BACKOFF_SECONDS, doubling, and the mail
    # fails after SEND_MAX_ATTEMPTS tries. Each user sends at most DAILY_SEND_LIMIT a day.
    SEND_POLL_SECONDS = 5
    SEND_BACKOFF_SECONDS = 30
    SEND_MAX_ATTEMPTS = 5
    DAILY_SEND_LIMIT = 500
    # Group email (services/group_send.py): the most recipients one group email may have.
    # Its mails are paced by the account's provider preset (mailsync/providers.py).
    GROUP_SEND_MAX_RECIPIENTS = 100
    MAIL_CONNECTION_TESTS = 10  # connection tests per user per window (R20, R27)
    MAIL_CONNECTION_TEST_WINDOW_SECONDS = 10 * 60
    MAX_FULL_SIZE = 25 * 1024 * 1024  # larger messages are stored as header-only placeholders
    # Whether `flask serve` starts and supervises the one worker process (worker.py). 0 gives
    # a web-only process, for a layout of several web processes plus one `flask worker`.
    SCHEDULER_ENABLED = True
    # Sync passes are CPU-bound Python; the worker runs at a lower CPU priority
    # (os.nice(WORKER_NICE), which its MIME parse workers inherit) so pages stay quick.
    WORKER_NICE = 10
    # The job queue (services/job_queue.py): a running job's lease lasts this long past its
    # last renewal (renewed every third), so a killed worker's job runs again within it.
    JOB_LEASE_SECONDS = 60
    JOB_POLL_SECONDS = 1.0  # how often an idle worker looks for new jobs
    JOB_BACKOFF_SECONDS = 10  # first retry wait of a failed job; doubles per attempt
    JOB_MAX_ATTEMPTS = 5  # a write-back failing this often is shown to the user as failed
    JOB_KEEP_SECONDS = 7 * 24 * 3600  # finished jobs are deleted after this
    # Push (mailsync/idle.py): the worker keeps one IMAP IDLE connection on INBOX per running
    # account whose server offers IDLE, at most IDLE_MAX_CONNECTIONS in all; a change there
    # queues a sync pass at once. IDLE is re-issued every IDLE_RENEW_SECONDS (imapclient
    # advises 10 min; servers drop it after ~30, NATs after ~15: SYNC.md §4.7), the
    # connection's reads time out after IDLE_TIMEOUT_SECONDS, and the account list is read
    # again every IDLE_REFRESH_SECONDS. The scheduled polling keeps running regardless.
    IDLE_ENABLED = True
    IDLE_MAX_CONNECTIONS = 50
    IDLE_RENEW_SECONDS = 600
    IDLE_TIMEOUT_SECONDS = 30
    IDLE_REFRESH_SECONDS = 30
    HTTPS = False
    # Host names the app answers to (Flask 3.1 rejects others with 400, R33). None (the
    # default) serves any Host: no URL is built from it, all links are relative.
    TRUSTED_HOSTS = None
    # The address browsers use, e.g. https://crm.example.com: the OAuth2 redirect URL given to
    # Google and Microsoft is built from it (None: from the request's own address).
    PUBLIC_URL = None
    # Tests point OAuth2 endpoints and OAuth2 mailboxes' servers at local ones (services/oauth.py).
    OAUTH_ENDPOINTS = None
    OAUTH_MAIL_SERVERS = None
    HOST = "0.0.0.0"
    PORT = 5000


def _coerce(value: str):
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    if value.isdigit():
        return int(value)
    return value


def parse_port_list(value: str) -> tuple[int, ...] | None:
    """Return the ports of "993,143,1143" (or one number); "any" allows every port (None).

    Raises ValueError naming the variable, so a typo stops start-up instead of being ignored.
    """
    value = value.strip().lower()
    if value in ("any", "none", "*"):
        return None
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and 0 < int(part) < 65536 for part in parts):
        raise ValueError(
            f"THREADLINE_MAIL_ALLOWED_PORTS={value!r}: give port numbers separated by commas "
            "(993,143,1143) or 'any'."
        )
    return tuple(int(part) for part in parts)


def environment_overrides() -> dict:
    """Return THREADLINE_* environment variables as config keys (prefix stripped)."""
    overrides = {
        key[len(ENV_PREFIX) :]: _coerce(value)
        for key, value in os.environ.items()
        if key.startswith(ENV_PREFIX)
        and key not in ("THREADLINE_PASSWORD", "THREADLINE_MAIL_PASSWORD")
    }
    for key in ("MAIL_ALLOWED_PORTS", "SMTP_ALLOWED_PORTS"):
        if key in overrides:
            overrides[key] = parse_port_list(str(overrides[key]))
    if isinstance(overrides.get("TRUSTED_HOSTS"), str):
        # Flask wants a list; the environment gives "host1,host2" (".lan" matches subdomains).
        hosts = overrides["TRUSTED_HOSTS"].split(",")
        overrides["TRUSTED_HOSTS"] = [host.strip() for host in hosts if host.strip()]
    return overrides


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """Return the secret stored in path, creating it (mode 0600) on first use."""
    return read_or_create_file(path, lambda: secrets.token_urlsafe(nbytes).encode()).decode()


def read_or_create_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """Return the bytes stored in path; on first use store make()'s (mode 0600) and return them.

    Several processes may start at once on a fresh instance folder (web processes and the
    worker): the file appears whole or not at all (written aside, then hard-linked into
    place, which fails if it exists), so none reads a half-written file and all end up with
    the one value that won.
    """
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(value)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            return path.read_bytes().strip()  # another process won; its value is whole
    finally:
        os.unlink(draft)
    return value.strip()
