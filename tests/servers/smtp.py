"""A real SMTP server (aiosmtpd) on loopback that records what it receives."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

from tests.servers.dovecot import free_port


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class RecordingHandler:
    messages: list[ReceivedMail] = field(default_factory=list)
    # Scripted answers: RCPT TO per address, and DATA answers used up one per message.
    rcpt_answers: dict[str, str] = field(default_factory=dict)
    data_answers: list[str] = field(default_factory=list)
    transactions: int = 0  # MAIL FROM commands seen
    # Recipients taken per transaction (None: any number), as servers with a limit answer
    # the next ones "452 too many recipients" (RFC 5321 4.5.3.1.10).
    max_recipients: int | None = None
    ehlos: int = 0  # EHLO commands seen (two per connection with STARTTLS)
    # Called with each accepted message's bytes (e.g. to file a Sent copy as Gmail does).
    on_message: Callable[[bytes], None] | None = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.ehlos += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.transactions += 1
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.rcpt_answers.get(address)
        if answer is not None:
            return answer
        if self.max_recipients is not None and len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_answers:
            return self.data_answers.pop(0)
        if self.on_message is not None:
            self.on_message(envelope.original_content or envelope.content)
        self.messages.append(
            ReceivedMail(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content or envelope.content,
            )
        )
        return "250 Message accepted for delivery"


class OAuthRecordingHandler(RecordingHandler):
    """Also accepts AUTH XOAUTH2, checking the bearer token with `introspect(token)` (an
    RFC 7662 answer: {"active": bool, "username": ...}), as a provider's server would."""

    def __init__(self, introspect: Callable[[str], dict]) -> None:
        super().__init__()
        self.introspect = introspect
        self.oauth_logins: list[str] = []

    async def auth_XOAUTH2(self, server, args):
        if len(args) > 1:
            blob = args[1]
        else:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=False)
        try:
            fields = dict(
                part.split("=", 1)
                for part in base64.b64decode(blob).decode().split("\x01")
                if "=" in part
            )
        except (ValueError, UnicodeDecodeError):
            return AuthResult(success=False, handled=False)
        user, _, token = fields.get("user", ""), *fields.get("auth", "").partition("Bearer ")[1:]
        answer = self.introspect(token.strip())
        if answer.get("active") and answer.get("username") == user:
            self.oauth_logins.append(user)
            return AuthResult(success=True, auth_data=user)
        # RFC 7628 style: an error challenge, the client's empty answer, then 535.
        await server.challenge_auth(json.dumps({"status": "401", "schemes": "bearer"}))
        return AuthResult(success=False, handled=False)


class SMTPServer:
    """aiosmtpd on a free loopback port; STARTTLS and AUTH when credentials are given."""

    def __init__(
        self,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        implicit_tls: bool = False,
        smtputf8: bool = True,
        data_size_limit: int | None = None,
        oauth_introspect: Callable[[str], dict] | None = None,
    ) -> None:
        self.handler = (
            OAuthRecordingHandler(oauth_introspect) if oauth_introspect else RecordingHandler()
        )
        self.host = "127.0.0.1"
        self.port = free_port()
        self.username, self.password = username, password
        tls_context = None
        if cert_file and key_file:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_context.load_cert_chain(cert_file, key_file)
        kwargs = {}
        if username is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_require_tls=tls_context is not None and not implicit_tls,
            )
        else:
            kwargs.update(auth_require_tls=False)
        if data_size_limit is not None:
            kwargs.update(data_size_limit=data_size_limit)  # advertised as SIZE
        if implicit_tls:
            # TLS from the first byte (port 465 style): no STARTTLS.
            kwargs.update(ssl_context=tls_context)
        else:
            kwargs.update(tls_context=tls_context, require_starttls=tls_context is not None)
        self.controller = Controller(
            self.handler,
            hostname=self.host,
            port=self.port,
            enable_SMTPUTF8=smtputf8,
            **kwargs,
        )

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        # handled=False: aiosmtpd then answers 535 itself on failure.
        return AuthResult(success=ok, handled=False)

    @property
    def messages(self) -> list[ReceivedMail]:
        return self.handler.messages

    def start(self) -> SMTPServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
