"""Server quirks Dovecot cannot produce, through the scripted fake IMAP server."""

from __future__ import annotations

import pytest

from tests.servers.fake_imap import FakeIMAPServer, FakeMessage, FakeState, Quirks
from tests.sync_helpers import folder_named, message_count, raw_message, run_sync


@pytest.fixture
def fake(dovecot):
    servers = []

    def start(quirks: Quirks, count: int = 3) -> FakeIMAPServer:
        state = FakeState(
            messages=[FakeMessage(uid=n, raw=raw_message(n)) for n in range(1, count + 1)],
            quirks=quirks,
        )
        server = FakeIMAPServer(state, dovecot.certs.cert_file, dovecot.certs.key_file)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def user(make_user):
    return make_user()


def test_netease_unsafe_login_is_avoided_by_sending_id(app, fake, user, make_account, mail_user):
    server = fake(Quirks(require_id=True, capabilities="IMAP4rev1 ID"))
    account = make_account(user, mail_user, imap_port=server.port)
    result = run_sync(app, account)
    assert result.ok, result.error
    assert message_count(account.id) == 3
    commands = [c.split(" ", 1)[1].split(" ")[0].upper() for c in server.state.commands]
    assert commands.index("ID") < commands.index("EXAMINE")


def test_missing_uidnext_and_empty_status_are_handled(app, fake, user, make_account, mail_user):
    server = fake(Quirks(omit_uidnext=True, empty_status=True))
    account = make_account(user, mail_user, imap_port=server.port)
    assert run_sync(app, account).ok
    assert message_count(account.id) == 3
    inbox = folder_named(account.id, "INBOX")
    assert inbox.initial_sync_complete and inbox.uidnext == 4 and inbox.last_seen_uid == 3
    assert run_sync(app, account).new == 0
    server.state.messages.append(FakeMessage(uid=9, raw=raw_message(9)))
    result = run_sync(app, account)
    assert result.ok and result.new == 1
    assert folder_named(account.id, "INBOX").last_seen_uid == 9
