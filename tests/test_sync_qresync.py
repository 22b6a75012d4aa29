"""QRESYNC (RFC 7162): expunges and flag changes learnt from one EXAMINE, with the older
path (CONDSTORE + count check + chunked UID SEARCH diff) as the fallback and as the
reference the QRESYNC path must agree with (issue 14)."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from extensions import db
from mailsync import imap
from mailsync.imap import parse_uid_set
from models import MailFolder, MessageLocation
from tests.servers.dovecot import NO_QRESYNC, DovecotServer
from tests.sync_helpers import (
    command_log,
    folder_named,
    locations,
    message_count,
    raw_message,
    run_sync,
)

# ---------------------------------------------------------------------- the UID-set parser


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        (b"41,43:116", [(41, 41), (43, 116)]),
        ("7", [(7, 7)]),
        (b"9:3", [(3, 9)]),  # RFC 3501 sets may name a range either way round
        (b" 1:2,5 ", [(1, 2), (5, 5)]),
        (b"4294967295", [(4294967295, 4294967295)]),
    ],
)
def test_uid_set_parses_to_ascending_ranges(text, ranges):
    assert parse_uid_set(text) == ranges


@pytest.mark.parametrize(
    "text",
    [b"", b"*", b"1:*", b"0", b"0:3", b"1,,2", b"1, 2", b"a", b"4294967296", b"1:2:3", b"-1"],
)
def test_uid_set_rejects_what_is_not_a_set_of_uids(text):
    # An odd answer must never be read as a list of mail to delete.
    with pytest.raises(ValueError):
        parse_uid_set(text)


# ---------------------------------------------------------------------- against Dovecot


@pytest.fixture
def owner(make_user):
    return make_user()


@pytest.fixture
def account(owner, make_account, mail_user):
    return make_account(owner, mail_user)


@pytest.fixture
def no_qresync_dovecot(_profile_servers) -> DovecotServer:
    """Dovecot advertising CONDSTORE without QRESYNC (started once per test worker)."""
    if NO_QRESYNC.name not in _profile_servers:
        _profile_servers[NO_QRESYNC.name] = DovecotServer(NO_QRESYNC).start()
    return _profile_servers[NO_QRESYNC.name]


def imap_client(server, box, *, qresync: bool):
    settings = imap.ConnectionSettings(
        host=server.host,
        port=server.ssl_port,
        security="ssl",
        username=box.email,
        password=box.password,
        ca_cert_pem=server.ca_file.read_text(),
    )
    return imap.connect(settings, allowed_ports=None, qresync=qresync)


def deliver(server, box, numbers, folder: str = "INBOX") -> None:
    for n in numbers:
        server.deliver(box.email, raw_message(n, to=box.email), folder)


def qresync_examines(log) -> int:
    return sum(1 for line in log.lines if b"EXAMINE" in line and b"(QRESYNC (" in line)


def changedsince_fetches(log) -> int:
    return sum(1 for line in log.lines if b"CHANGEDSINCE" in line)


def folder_state(account_id: int, folder: str = "INBOX") -> dict[int, tuple[bool, bool, bool]]:
    """{uid: (seen, flagged, deleted)} of the locations Threadline stores for `folder`."""
    inbox = folder_named(account_id, folder)
    rows = db.session.execute(
        select(
            MessageLocation.uid,
            MessageLocation.seen,
            MessageLocation.flagged,
            MessageLocation.deleted,
        ).where(MessageLocation.folder_id == inbox.id, MessageLocation.stale.is_(False))
    ).all()
    return {uid: (seen, flagged, deleted) for uid, seen, flagged, deleted in rows}


def server_state(server, box, folder: str = "INBOX") -> dict[int, tuple[bool, bool, bool]]:
    state = {}
    for uid in server.uids(box.email, folder):
        flags = server.flags(box.email, folder, uid)
        state[uid] = ("\\Seen" in flags, "\\Flagged" in flags, "\\Deleted" in flags)
    return state


@pytest.mark.imap
def test_only_the_sync_engine_enables_qresync(dovecot, mail_user):
    # Once enabled, the server reports expunges as VANISHED for the whole connection: the
    # other users of imap.connect (write-backs, sending, IDLE) keep plain EXPUNGE.
    for qresync in (False, True):
        client = imap_client(dovecot, mail_user, qresync=qresync)
        try:
            assert imap.qresync_enabled(client) is qresync
            assert b"CONDSTORE" in client.threadline_enabled
        finally:
            imap.safe_logout(client)


@pytest.mark.imap
def test_expunges_and_flag_changes_arrive_without_a_uid_search(
    app, dovecot, mail_user, account, monkeypatch
):
    deliver(dovecot, mail_user, range(1, 31))
    assert run_sync(app, account).ok
    dovecot.doveadm("expunge", "-u", mail_user.email, "mailbox", "INBOX", "uid", "4,10:11,30")
    dovecot.add_flags(mail_user.email, "INBOX", 20, "\\Seen")
    dovecot.add_flags(mail_user.email, "INBOX", 21, "\\Flagged")
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.ok, result.error
    assert qresync_examines(log) == 1
    # Learnt from the EXAMINE alone: no UID SEARCH diff and no CHANGEDSINCE FETCH.
    assert log.count("UID SEARCH") == 0
    assert changedsince_fetches(log) == 0
    assert result.deleted == 4
    uids = [row.uid for row in locations(account.id)]
    assert uids == dovecot.uids(mail_user.email) == sorted(set(range(1, 31)) - {4, 10, 11, 30})
    assert message_count(account.id) == 26
    assert message_count(account.id, deleted=True) == 4
    state = folder_state(account.id)
    assert state[20] == (True, False, False) and state[21] == (False, True, False)
    assert state == server_state(dovecot, mail_user)
    # The removals went through the same path as the diff's: the run log names them.
    removed = [entry for entry in result.log.entries if entry[0] == "removed"]
    assert sorted(entry[2] for entry in removed) == [4, 10, 11, 30]


@pytest.mark.imap
def test_without_qresync_the_older_path_gives_the_same_result(
    app, no_qresync_dovecot, owner, make_account, monkeypatch
):
    server = no_qresync_dovecot
    box = server.add_user("older-path@mail.test", "mail-password-1")
    account = make_account(
        owner, box, imap_port=server.ssl_port, ca_cert_pem=server.ca_file.read_text()
    )
    deliver(server, box, range(1, 31))
    assert run_sync(app, account).ok
    server.doveadm("expunge", "-u", box.email, "mailbox", "INBOX", "uid", "4,10:11,30")
    server.add_flags(box.email, "INBOX", 20, "\\Seen")
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.ok, result.error
    assert qresync_examines(log) == 0 and b"QRESYNC" not in b"".join(log.lines)
    assert log.count("UID SEARCH") >= 1  # the count differed: the diff found the expunges
    assert result.deleted == 4
    assert folder_state(account.id) == server_state(server, box)


@pytest.mark.imap
def test_a_uidvalidity_change_still_takes_the_rebuild_path(
    app, dovecot, mail_user, account, monkeypatch
):
    deliver(dovecot, mail_user, range(1, 6), "Archive")
    assert run_sync(app, account).ok
    old = folder_named(account.id, "Archive").uidvalidity
    # The mailbox is rebuilt with other mail: same UIDs 1-3, other messages.
    dovecot.delete_folder(mail_user.email, "Archive")
    deliver(dovecot, mail_user, range(101, 104), "Archive")
    dovecot.set_uidvalidity(mail_user.email, "Archive", old + 7)
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.ok, result.error
    # QRESYNC was asked with the stored UIDVALIDITY (for each synced folder); the server
    # ignored it for Archive, as it must, and the rebuild ran.
    assert any(b"(QRESYNC (%d " % old in line for line in log.lines)
    archive = folder_named(account.id, "Archive")
    assert archive.uidvalidity == old + 7 and archive.initial_sync_complete
    assert log.count("UID SEARCH") >= 1  # the folder was listed again
    assert folder_state(account.id, "Archive") == server_state(dovecot, mail_user, "Archive")
    assert message_count(account.id) == 3 and message_count(account.id, deleted=True) == 5
    # The next pass uses QRESYNC with the new UIDVALIDITY.
    dovecot.expunge(mail_user.email, "Archive", 2)
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.deleted == 1 and log.count("UID SEARCH") == 0
    assert folder_state(account.id, "Archive") == server_state(dovecot, mail_user, "Archive")


@pytest.mark.imap
def test_no_stored_modseq_means_a_plain_examine(app, dovecot, mail_user, account, monkeypatch):
    deliver(dovecot, mail_user, range(1, 6))
    assert run_sync(app, account).ok
    inbox = folder_named(account.id, "INBOX")
    inbox.highestmodseq = None
    db.session.commit()
    dovecot.expunge(mail_user.email, "INBOX", 3)
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.ok and result.deleted == 1
    assert qresync_examines(log) == 0 and log.count("UID SEARCH") >= 1
    assert folder_state(account.id) == server_state(dovecot, mail_user)


@pytest.mark.imap
def test_an_unreadable_vanished_answer_falls_back_to_the_uid_search_diff(
    app, dovecot, mail_user, account, monkeypatch
):
    deliver(dovecot, mail_user, range(1, 11))
    assert run_sync(app, account).ok
    dovecot.doveadm("expunge", "-u", mail_user.email, "mailbox", "INBOX", "uid", "2,7")

    def unreadable(text):
        raise ValueError(f"not a UID set: {text!r}")

    monkeypatch.setattr(imap, "parse_uid_set", unreadable)
    with command_log(monkeypatch) as log:
        result = run_sync(app, account)
    assert result.ok, result.error
    assert qresync_examines(log) == 1 and log.count("UID SEARCH") >= 1
    assert result.deleted == 2
    assert folder_state(account.id) == server_state(dovecot, mail_user)


@pytest.mark.imap
def test_vanished_uids_beyond_the_known_range_are_not_removed(
    app, dovecot, mail_user, account, monkeypatch
):
    deliver(dovecot, mail_user, range(1, 6))
    assert run_sync(app, account).ok
    deliver(dovecot, mail_user, range(6, 9))  # UIDs 6-8, unknown to Threadline so far
    dovecot.expunge(mail_user.email, "INBOX", 1)
    original = imap.examine_qresync

    def overreaching(*args, **kwargs):
        answer = original(*args, **kwargs)
        answer.vanished.append((5 + 1, 4294967295))  # beyond the 1:5 Threadline sent
        return answer

    monkeypatch.setattr(imap, "examine_qresync", overreaching)
    result = run_sync(app, account)
    assert result.ok, result.error
    assert result.new == 3 and result.deleted == 1
    assert [row.uid for row in locations(account.id)] == [2, 3, 4, 5, 6, 7, 8]


@pytest.mark.imap
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_same_history_with_and_without_qresync_ends_in_the_same_state(
    app, seed, dovecot, no_qresync_dovecot, owner, make_account, monkeypatch
):
    """A random history of deliveries, expunges and flag changes, applied to a mailbox on a
    QRESYNC server and to one on a server without it, synced after each round: both copies
    equal their server (and so each other) after every pass."""
    rng = random.Random(seed)
    sides = []
    for n, server in enumerate((dovecot, no_qresync_dovecot)):
        box = server.add_user(f"history{seed}-{n}@mail.test", "mail-password-1")
        account = make_account(
            owner,
            box,
            imap_host=server.host,
            imap_port=server.ssl_port,
            ca_cert_pem=server.ca_file.read_text(),
        )
        sides.append((server, box, account.id))
    number = 0
    searches_after_first = {0: 0, 1: 0}
    examines_with_qresync = {0: 0, 1: 0}
    for round_ in range(6):
        live = dovecot.uids(sides[0][1].email)
        batch = rng.randint(0, 5) if round_ else 12
        new = list(range(number + 1, number + 1 + batch))
        number += batch
        expunged = rng.sample(live, min(len(live), rng.randint(0, 3)))
        changes = [
            (
                rng.choice(live),
                rng.choice(["add", "remove"]),
                rng.choice(["\\Seen", "\\Flagged", "\\Seen", "\\Deleted"]),
            )
            for _ in range(rng.randint(0, 4) if live else 0)
        ]
        for server, box, _account_id in sides:
            deliver(server, box, new)
            for uid, action, flag in changes:
                if action == "add":
                    server.add_flags(box.email, "INBOX", uid, flag)
                else:
                    server.remove_flags(box.email, "INBOX", uid, flag)
            if expunged:
                uid_set = ",".join(str(uid) for uid in expunged)
                server.doveadm("expunge", "-u", box.email, "mailbox", "INBOX", "uid", uid_set)
        assert dovecot.uids(sides[0][1].email) == no_qresync_dovecot.uids(sides[1][1].email)
        states = []
        for index, (server, box, account_id) in enumerate(sides):
            with command_log(monkeypatch) as log:
                result = run_sync(app, account_id)
            assert result.ok, (seed, round_, index, result.error)
            if round_:
                searches_after_first[index] += log.count("UID SEARCH")
            examines_with_qresync[index] += qresync_examines(log)
            state = folder_state(account_id)
            assert state == server_state(server, box), (seed, round_, index)
            states.append(
                (state, message_count(account_id), message_count(account_id, deleted=True))
            )
        assert states[0] == states[1], (seed, round_)
    assert examines_with_qresync[0] >= 1 and examines_with_qresync[1] == 0
    # With QRESYNC no pass needed the UID SEARCH diff; the older path diffs after expunges.
    assert searches_after_first[0] == 0, searches_after_first
    folders = db.session.scalars(select(MailFolder).where(MailFolder.name == "INBOX")).all()
    assert all(folder.last_error is None for folder in folders)
