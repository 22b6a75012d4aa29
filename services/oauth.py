"""OAuth2 sign-in for mailboxes ("Sign in with Google / Microsoft").

The admin registers Threadline with a provider and enters its client id and secret here
(the secret encrypted like mail passwords). A user's sign-in is the authorization code flow
with PKCE (S256) and a state value, through Authlib's client; the mailbox address comes from
the id_token the token endpoint returns. Access and refresh tokens are stored encrypted on
the account (the access token where a password would be), and `fresh_access_token` is the
one place that renews the access token before it expires.

Provider endpoints live in mailsync/providers.py; the app setting OAUTH_ENDPOINTS overrides
them (tests point them at a local authorization server).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from flask import Flask
from requests import RequestException
from sqlalchemy import select

from extensions import db
from mailsync import imap
from mailsync.providers import (
    OAUTH_PROVIDERS,
    OAuthProvider,
    oauth_provider,
    oauth_provider_for_preset,
)
from models import AUTH_XOAUTH2, MailAccount, OAuthClient, utcnow
from services.credentials import CredentialError, secret_box
from services.errors import ValidationError

log = logging.getLogger("threadline.oauth")

# Renew an access token this long before it expires, so a sync pass or a send that starts
# just before the expiry does not sign in with a token that dies half-way.
REFRESH_MARGIN = timedelta(minutes=5)
HTTP_TIMEOUT_SECONDS = 20
REVOKE_TIMEOUT_SECONDS = 5  # a user waits on it while removing the account
CLIENT_ID_MAX = 500
CLIENT_SECRET_MAX = 1000


@dataclass(frozen=True)
class Tokens:
    """What a finished sign-in (or a refresh) gave: the tokens and, on sign-in, the address."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    email: str | None = None


# --------------------------------------------------------------------------- admin settings


def provider(app: Flask, key: str) -> OAuthProvider:
    """Return OAuth2 provider `key` with the app's endpoint overrides; 404-style KeyError."""
    return oauth_provider(key, app.config.get("OAUTH_ENDPOINTS"))


def client_registrations() -> dict[str, OAuthClient]:
    """Return the stored client registrations by provider key."""
    return {row.provider: row for row in db.session.scalars(select(OAuthClient))}


def configured_providers(app: Flask) -> list[OAuthProvider]:
    """Return the providers an admin has registered Threadline with, in a stable order."""
    stored = client_registrations()
    return [provider(app, key) for key in OAUTH_PROVIDERS if key in stored]


def save_client(app: Flask, key: str, *, client_id: str, client_secret: str) -> None:
    """Store (or, with a blank client id, remove) the registration with provider `key`;
    commits. A blank secret keeps the stored one. Raises ValidationError."""
    if key not in OAUTH_PROVIDERS:
        raise ValidationError({"__all__": "Unknown sign-in provider."})
    client_id, client_secret = client_id.strip(), client_secret.strip()
    row = db.session.scalar(select(OAuthClient).where(OAuthClient.provider == key))
    if not client_id:
        if row is not None:
            db.session.delete(row)
            db.session.commit()
        return
    errors = {}
    if len(client_id) > CLIENT_ID_MAX or any(c.isspace() for c in client_id):
        errors[f"{key}_client_id"] = "Paste the client ID exactly as the provider shows it."
    if len(client_secret) > CLIENT_SECRET_MAX:
        errors[f"{key}_client_secret"] = "That secret is too long."
    if row is None and not client_secret:
        errors[f"{key}_client_secret"] = "Enter the client secret."
    if errors:
        raise ValidationError(errors)
    if row is None:
        row = OAuthClient(provider=key)
        db.session.add(row)
    row.client_id = client_id
    if client_secret:
        row.client_secret_encrypted = secret_box(app).encrypt(client_secret)
    row.updated_at = utcnow()
    db.session.commit()
    log.info("OAuth2 client for %s saved", key)


def _session(app: Flask, key: str, **kwargs) -> tuple[OAuth2Session, OAuthProvider]:
    row = db.session.scalar(select(OAuthClient).where(OAuthClient.provider == key))
    if row is None:
        raise ValidationError(
            {"__all__": "Sign-in with this provider is not set up. Ask an administrator."}
        )
    chosen = provider(app, key)
    session = OAuth2Session(
        row.client_id,
        secret_box(app).decrypt(row.client_secret_encrypted),
        scope=chosen.scope,
        # Both providers accept the secret in the form body; Microsoft documents only that.
        token_endpoint_auth_method="client_secret_post",
        code_challenge_method="S256",
        **kwargs,
    )
    return session, chosen


# --------------------------------------------------------------------------- the sign-in


@dataclass(frozen=True)
class Authorization:
    """Where to send the browser, and what the callback must check (kept in the session)."""

    url: str
    state: str
    code_verifier: str


def start_authorization(app: Flask, key: str, *, redirect_uri: str) -> Authorization:
    """Return the provider's authorization URL with a fresh state and PKCE verifier.

    Raises ValidationError when the provider is not set up.
    """
    if key not in OAUTH_PROVIDERS:
        raise ValidationError({"__all__": "Unknown sign-in provider."})
    session, chosen = _session(app, key, redirect_uri=redirect_uri)
    verifier = generate_token(64)  # RFC 7636 §4.1: 43-128 characters
    url, state = session.create_authorization_url(
        chosen.authorize_url, code_verifier=verifier, **dict(chosen.authorize_params)
    )
    return Authorization(url, state, verifier)


def finish_authorization(
    app: Flask, key: str, *, redirect_uri: str, code: str, code_verifier: str
) -> Tokens:
    """Exchange the callback's code for tokens and read the address from the id_token.

    Raises ValidationError in plain words (refused, unreachable, no address, no refresh token).
    """
    session, chosen = _session(app, key, redirect_uri=redirect_uri)
    try:
        token = session.fetch_token(
            chosen.token_url,
            grant_type="authorization_code",
            code=code,
            code_verifier=code_verifier,
            timeout=HTTP_TIMEOUT_SECONDS,
        )
    except OAuthError as exc:
        log.info("OAuth2 code exchange with %s refused: %s", key, exc.error)
        raise ValidationError(
            {"__all__": f"{chosen.label} did not accept the sign-in ({exc.error}). Try again."}
        ) from None
    except RequestException as exc:
        log.info("OAuth2 code exchange with %s failed: %s", key, type(exc).__name__)
        raise ValidationError(
            {"__all__": f"{chosen.label} could not be reached. Try again in a moment."}
        ) from None
    email = _id_token_email(token.get("id_token"), audience=session.client_id)
    if not email:
        raise ValidationError(
            {"__all__": f"{chosen.label} did not say which mailbox signed in. Try again."}
        )
    if not token.get("refresh_token"):
        raise ValidationError(
            {"__all__": f"{chosen.label} gave no lasting access (no refresh token). Try again."}
        )
    return _tokens(token, email=email)


def finish_callback(
    app: Flask, flow: dict, *, redirect_uri: str, state: str, code: str, error: str
) -> Tokens:
    """Check the provider's answer against the flow started in this browser session (the
    state, RFC 6749 §10.12), then finish it. Raises ValidationError in plain words."""
    expected = str(flow.get("state") or "")
    if not expected or not secrets.compare_digest(expected, state):
        raise ValidationError(
            {"__all__": "This sign-in was not started here or has expired. Start it again."}
        )
    if error:
        message = (
            "The sign-in was cancelled."
            if error == "access_denied"
            else f"The provider refused the sign-in ({error[:100]})."
        )
        raise ValidationError({"__all__": message})
    if not code:
        raise ValidationError({"__all__": "The provider sent no sign-in code. Start it again."})
    return finish_authorization(
        app,
        flow["provider"],
        redirect_uri=redirect_uri,
        code=code,
        code_verifier=flow["verifier"],
    )


def _tokens(token: dict, *, email: str | None = None) -> Tokens:
    expires_at = None
    if token.get("expires_at"):
        expires_at = datetime.fromtimestamp(int(token["expires_at"]), tz=utcnow().tzinfo)
    return Tokens(token["access_token"], token.get("refresh_token"), expires_at, email)


def _id_token_email(id_token: str | None, *, audience: str) -> str | None:
    """Return the email claim of an id_token received from the token endpoint.

    The token came straight from the provider's token endpoint over a verified connection,
    so, as OpenID Connect Core 3.1.3.7 (6) allows, TLS stands in for the signature check;
    the audience must still be this client.
    """
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (AttributeError, IndexError, ValueError, binascii.Error):
        return None
    audiences = claims.get("aud")
    audiences = audiences if isinstance(audiences, list) else [audiences]
    if audience not in audiences:
        return None
    # Microsoft puts the address in "email" when the email scope is granted, else in
    # preferred_username (the sign-in name, the address for mailboxes).
    email = claims.get("email") or claims.get("preferred_username")
    if not isinstance(email, str) or "@" not in email:
        return None
    return email.strip().lower()


def store_tokens(app: Flask, account: MailAccount, tokens: Tokens) -> None:
    """Put new tokens on the account, encrypted (no commit). A refresh that returned no
    new refresh token keeps the old one (Google reuses it; Microsoft rotates it)."""
    box = secret_box(app)
    account.auth_type = AUTH_XOAUTH2
    account.password_encrypted = box.encrypt(tokens.access_token)
    if tokens.refresh_token:
        account.refresh_token_encrypted = box.encrypt(tokens.refresh_token)
    account.token_expires_at = tokens.expires_at


def revoke_grant(app: Flask, account: MailAccount) -> str | None:
    """Give up the account's grant at its provider (RFC 7009), as its removal asks; return
    None when done (or when there is none), else what the user can do instead.

    Best effort: the removal goes ahead whatever the provider says. Microsoft has no
    revocation endpoint; the user removes the app's access in their account there.
    """
    key = oauth_provider_for_preset(account.provider)
    if account.auth_type != AUTH_XOAUTH2 or key is None:
        return None
    chosen = provider(app, key)
    if chosen.revoke_url is None:
        return (
            f"{chosen.label} lets apps keep their access until you remove it: see the apps "
            f"with access to your {chosen.label} account."
        )
    try:
        refresh_token = secret_box(app).decrypt(account.refresh_token_encrypted or b"")
        session, chosen = _session(app, key)
    except (CredentialError, ValidationError):
        return None  # nothing usable is stored, or sign-in is no longer set up
    account_id = account.id
    db.session.commit()  # no transaction open while the provider answers
    try:
        response = session.revoke_token(
            chosen.revoke_url,
            token=refresh_token,
            token_type_hint="refresh_token",
            timeout=REVOKE_TIMEOUT_SECONDS,
        )
        revoked = response.status_code == 200
    except RequestException as exc:
        log.info("account %s: revoking the grant failed: %s", account_id, exc)
        revoked = False
    if revoked:
        log.info("account %s: OAuth2 grant revoked at %s", account_id, chosen.label)
        return None
    return (
        f"{chosen.label} could not be reached to end Threadline's access; remove it among the "
        f"apps with access to your {chosen.label} account."
    )


# --------------------------------------------------------------------------- renewal


def fresh_access_token(app: Flask, account: MailAccount) -> str:
    """Return a usable access token for the account, renewing it first when it expires
    within REFRESH_MARGIN (the new tokens are saved; commits).

    Raises MailConnectionError: AUTH_FAILED when the grant was revoked or expired
    (invalid_grant) or cannot be read, so the account waits for "Sign in again"; NETWORK
    when the provider could not be reached (retried later). The database transaction is
    ended before the request to the provider, so none is held across network I/O.
    """
    box = secret_box(app)
    expires_at = account.token_expires_at
    if expires_at is not None and expires_at - REFRESH_MARGIN > utcnow():
        try:
            return box.decrypt(account.password_encrypted)
        except CredentialError:
            pass  # unreadable: renew it below
    key = oauth_provider_for_preset(account.provider)
    try:
        if key is None:
            raise ValidationError({"__all__": "not an OAuth2 provider"})
        refresh_token = box.decrypt(account.refresh_token_encrypted or b"")
        session, chosen = _session(app, key)
    except (CredentialError, ValidationError) as exc:
        raise imap.MailConnectionError(imap.AUTH_FAILED, imap.OAUTH_LOGIN_MESSAGE) from exc
    account_id = account.id
    db.session.commit()  # no transaction open while the provider answers
    try:
        token = session.refresh_token(
            chosen.token_url, refresh_token=refresh_token, timeout=HTTP_TIMEOUT_SECONDS
        )
    except OAuthError as exc:
        log.info("account %s: token refresh refused: %s", account_id, exc.error)
        if exc.error in ("invalid_grant", "invalid_client", "unauthorized_client"):
            raise imap.MailConnectionError(imap.AUTH_FAILED, imap.OAUTH_LOGIN_MESSAGE) from exc
        raise imap.MailConnectionError(
            imap.NETWORK, f"{chosen.label} could not renew the sign-in right now; will retry."
        ) from exc
    except RequestException as exc:
        raise imap.MailConnectionError(
            imap.NETWORK, f"{chosen.label} could not be reached to renew the sign-in; will retry."
        ) from exc
    tokens = _tokens(token)
    account = db.session.get(MailAccount, account_id)
    store_tokens(app, account, tokens)
    db.session.commit()
    log.info("account %s: access token renewed", account_id)
    return tokens.access_token
