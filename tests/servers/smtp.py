"""A real SMTP server (aiosmtpd) on loopback that records what it receives."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.servers.dovecot import free_port


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class RecordingHandler:
    messages: list[ReceivedMail] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            ReceivedMail(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content or envelope.content,
            )
        )
        return "250 Message accepted for delivery"


class SMTPServer:
    """aiosmtpd on a free loopback port; STARTTLS and AUTH when credentials are given."""

    def __init__(
        self,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.handler = RecordingHandler()
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
                authenticator=self._authenticate, auth_require_tls=tls_context is not None
            )
        else:
            kwargs.update(auth_require_tls=False)
        self.controller = Controller(
            self.handler,
            hostname=self.host,
            port=self.port,
            tls_context=tls_context,
            require_starttls=tls_context is not None,
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
