"""Mail credentials encrypted at rest with Fernet; the key lives outside the database.

The key comes from THREADLINE_MAIL_KEYS (comma-separated, newest first) or from
instance/mail.key (mode 0600, created on first use). Several keys allow rotation:
MultiFernet decrypts with any and `rotate` re-encrypts with the newest.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config import read_or_create_file


class CredentialError(Exception):
    """A stored secret cannot be decrypted (wrong or missing key, corrupted value)."""


def load_keys(instance_path: str | Path, configured: str | None = None) -> list[bytes]:
    """Return the Fernet keys, newest first, creating instance/mail.key when none exist."""
    configured = configured or os.environ.get("THREADLINE_MAIL_KEYS")
    if configured:
        return [key.strip().encode() for key in configured.split(",") if key.strip()]
    # Created whole or not at all: the web processes and the worker may start at once.
    stored = read_or_create_file(Path(instance_path) / "mail.key", Fernet.generate_key)
    return [line.strip() for line in stored.splitlines() if line.strip()]


class SecretBox:
    """Encrypt and decrypt short secrets (mail passwords)."""

    def __init__(self, keys: list[bytes]):
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes, *, ttl: int | None = None) -> str:
        try:
            return self._fernet.decrypt(bytes(token), ttl=ttl).decode()
        except (InvalidToken, TypeError, ValueError) as exc:
            raise CredentialError(
                "The stored mail password cannot be read. Enter the password again."
            ) from exc

    def rotate(self, token: bytes) -> bytes:
        """Return the token re-encrypted with the newest key; raise CredentialError."""
        try:
            return self._fernet.rotate(bytes(token))
        except (InvalidToken, TypeError, ValueError) as exc:
            raise CredentialError("The stored mail password cannot be read.") from exc


def secret_box(app) -> SecretBox:
    """Return the app's SecretBox (cached on the app)."""
    box = app.extensions.get("threadline_secret_box")
    if box is None:
        box = SecretBox(load_keys(app.instance_path, app.config.get("MAIL_KEYS")))
        app.extensions["threadline_secret_box"] = box
    return box
