"""A small OAuth2 authorization server on loopback (Authlib's server side), standing in for
Google's and Microsoft's in tests.

It auto-approves one configured user at /authorize (authorization code with PKCE S256
required), issues access tokens with a short, adjustable lifetime and a refresh token that
stays the same on refresh (as Google does), revokes a whole grant (RFC 7009, and
`revoke_user` for tests) and answers RFC 7662 introspection for resource servers that
authenticate with HTTP Basic: Dovecot's oauth2 passdb and the test SMTP server.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerToken
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import Flask, request
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.servers.dovecot import free_port

MAIL_SCOPE = "openid email https://mail.google.com/"


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str] = field(default_factory=list)

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        return client_secret == self.client_secret

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class Grant(TokenMixin):
    """One user's consent to one client: its refresh token and whether it was revoked."""

    client_id: str
    email: str
    scope: str
    refresh_token: str
    revoked: bool = False

    def check_client(self, client):
        return client.client_id == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return 0

    def is_expired(self):
        return False

    def is_revoked(self):
        return self.revoked


@dataclass
class AccessToken(TokenMixin):
    grant: Grant
    access_token: str
    issued_at: float
    expires_in: int

    def check_client(self, client):
        return self.grant.check_client(client)

    def get_scope(self):
        return self.grant.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self):
        return self.grant.revoked


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    email: str
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None = None

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


class OAuthServer:
    """The server, run in a thread; tests read and change its state directly."""

    def __init__(
        self,
        *,
        client_id: str = "threadline-test-client",
        client_secret: str = "threadline-test-secret",
        resource_id: str = "mail-server",
        resource_secret: str = "mail-server-secret",
        email: str = "oauth-user@example.test",
        token_lifetime: int = 3600,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.client = Client(client_id, client_secret)
        self.resource = Client(resource_id, resource_secret)
        self.email = email  # the user /authorize approves
        self.token_lifetime = token_lifetime
        # As Microsoft does: each refresh answers with a new refresh token and ends the old.
        self.rotate_refresh_tokens = False
        self.codes: dict[str, Code] = {}
        self.grants: dict[str, Grant] = {}  # by refresh token
        self.tokens: dict[str, AccessToken] = {}  # by access token
        self.refreshes = 0  # refresh_token grants answered
        self.introspections = 0
        self._lock = threading.Lock()
        self.app = self._make_app()
        self._server = make_server(
            self.host, self.port, self.app, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def endpoints(self) -> dict[str, str]:
        """Return the URLs a provider entry points at (Threadline's OAUTH_ENDPOINTS form)."""
        return {
            "authorize_url": f"{self.url}/authorize",
            "token_url": f"{self.url}/token",
            "revoke_url": f"{self.url}/revoke",
        }

    def introspection_url(self, *, with_credentials: bool = True) -> str:
        if not with_credentials:
            return f"{self.url}/introspect"
        return f"http://{self.resource.client_id}:{self.resource.client_secret}@{self.host}:{self.port}/introspect"

    def start(self) -> OAuthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ test controls

    def revoke_user(self, email: str) -> None:
        """Revoke every grant of `email` (the user removed the app's access)."""
        with self._lock:
            for grant in self.grants.values():
                if grant.email == email:
                    grant.revoked = True

    def expire_access_tokens(self) -> None:
        with self._lock:
            for token in self.tokens.values():
                token.issued_at = 0

    def introspect(self, access_token: str) -> dict:
        """Answer as /introspect does (for in-process resource servers such as aiosmtpd)."""
        with self._lock:
            self.introspections += 1
            token = self.tokens.get(access_token)
            if token is None or token.is_expired() or token.is_revoked():
                return {"active": False}
            return {"active": True, "username": token.grant.email, "scope": token.grant.scope}

    # ------------------------------------------------------------------ the Flask app

    def _make_app(self) -> Flask:
        app = Flask("threadline-test-oauth")
        outer = self

        def query_client(client_id):
            for client in (outer.client, outer.resource):
                if client.client_id == client_id:
                    return client
            return None

        def save_token(token, oauth_request):
            with outer._lock:
                grant = getattr(oauth_request, "refresh_token", None)
                if grant is not None:
                    outer.refreshes += 1
                if grant is None or "refresh_token" in token:  # a new grant, or rotated
                    grant = Grant(
                        oauth_request.client.client_id,
                        oauth_request.user["email"],
                        token.get("scope") or (grant.scope if grant else ""),
                        token["refresh_token"],
                    )
                    outer.grants[grant.refresh_token] = grant
                outer.tokens[token["access_token"]] = AccessToken(
                    grant, token["access_token"], time.time(), int(token["expires_in"])
                )

        server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
        server.register_token_generator(
            "default",
            BearerToken(
                lambda **kw: generate_token(42),
                lambda **kw: generate_token(48),
                lambda client, grant_type: outer.token_lifetime,
            ),
        )

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code, oauth_request):
                data = oauth_request.payload.data
                outer.codes[code] = Code(
                    code,
                    oauth_request.client.client_id,
                    oauth_request.payload.redirect_uri,
                    oauth_request.payload.scope,
                    oauth_request.user["email"],
                    data.get("code_challenge"),
                    data.get("code_challenge_method"),
                    data.get("nonce"),
                )

            def query_authorization_code(self, code, client):
                item = outer.codes.get(code)
                if item and item.client_id == client.client_id:
                    return item
                return None

            def delete_authorization_code(self, authorization_code):
                outer.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code):
                return {"email": authorization_code.email}

        class RefreshGrant(grants.RefreshTokenGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def authenticate_refresh_token(self, refresh_token):
                grant = outer.grants.get(refresh_token)
                if grant is not None and not grant.revoked:
                    return grant
                return None  # Authlib answers invalid_grant

            def authenticate_user(self, credential):
                return {"email": credential.email}

            @property
            def INCLUDE_NEW_REFRESH_TOKEN(self):  # noqa: N802 (Authlib's name)
                return outer.rotate_refresh_tokens

            def revoke_old_credential(self, refresh_token):
                # Google's refresh token stays valid; a rotated one is used up.
                if outer.rotate_refresh_tokens:
                    refresh_token.revoked = True

        class Revocation(RevocationEndpoint):
            CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def query_token(self, token_string, token_type_hint):
                token = outer.tokens.get(token_string)
                return token.grant if token else outer.grants.get(token_string)

            def revoke_token(self, token, oauth_request):
                token.revoked = True  # the whole grant goes, as with Google

        class Introspection(IntrospectionEndpoint):
            def query_token(self, token_string, token_type_hint):
                return outer.tokens.get(token_string)

            def check_permission(self, token, client, oauth_request):
                return client.client_id == outer.resource.client_id

            def introspect_token(self, token):
                return {
                    "active": True,
                    "username": token.grant.email,
                    "scope": token.grant.scope,
                    "client_id": token.grant.client_id,
                }

        server.register_grant(CodeGrant, [CodeChallenge(required=True)])
        server.register_grant(RefreshGrant)
        server.register_endpoint(Revocation)
        server.register_endpoint(Introspection)

        @app.get("/authorize")
        def authorize():
            # Auto-approve: the configured user has signed in and consented.
            try:
                grant = server.get_consent_grant(end_user={"email": outer.email})
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            return server.create_authorization_response(
                grant_user={"email": outer.email}, grant=grant
            )

        @app.post("/token")
        def issue_token():
            response = server.create_token_response()
            if response.status_code == 200 and request.form.get("grant_type") == (
                "authorization_code"
            ):
                # An OpenID Connect id_token naming the user (signature-less is enough here:
                # the client reads it straight from the token endpoint, OIDC Core 3.1.3.7).
                body = json.loads(response.get_data())
                email = outer.tokens[body["access_token"]].grant.email
                body["id_token"] = _unsigned_jwt(
                    {
                        "iss": outer.url,
                        "aud": outer.client.client_id,
                        "sub": email,
                        "email": email,
                        "email_verified": True,
                        "iat": int(time.time()),
                        "exp": int(time.time()) + 3600,
                    }
                )
                response.set_data(json.dumps(body))
            return response

        @app.post("/revoke")
        def revoke():
            return server.create_endpoint_response(Revocation.ENDPOINT_NAME)

        @app.post("/introspect")
        def introspect():
            with outer._lock:
                outer.introspections += 1
            return server.create_endpoint_response(Introspection.ENDPOINT_NAME)

        return app


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned_jwt(claims: dict) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass  # one line per request would drown the test output
