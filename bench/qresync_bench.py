"""QRESYNC benchmark: sync passes on a large Dovecot folder with and without QRESYNC.

Run from the repository root:  python bench/qresync_bench.py [--messages 100000]
One mailbox, one Threadline account, first synced once; then, in alternating order each
round, the same kind of pass with QRESYNC (EXAMINE ... (QRESYNC ...), VANISHED) and without
it (the config switch SYNC_QRESYNC=False: CONDSTORE, count check, chunked UID SEARCH diff):
  - a pass with nothing new (one STATUS decides: both paths are the same by design),
  - a pass after 10 expunges made with doveadm,
  - a pass after 10 flag changes made with doveadm.
Prints the median of each and the ratio without/with; copy the output into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.databases import add_database_arguments, bench_app, run_on_database  # noqa: E402
from bench.sync_bench import add_dovecot_account  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402


def small_message(n: int, when: datetime, mailbox: str) -> bytes:
    """Return a short text message (a large folder of small mail keeps the seeding quick)."""
    headers = [
        f"From: Contact {n % 500} <contact{n % 500}@client{n % 50}.example>",
        f"To: <{mailbox}>",
        f"Subject: Update #{n // 4}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <qresync-bench-{n}@client.example>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    body = f"Status update number {n}. Nothing else to report today.\n" * 3
    return ("\n".join(headers) + "\n\n" + body).encode()


def fill_maildir(server: DovecotServer, email: str, count: int) -> None:
    """Write `count` messages straight into ~/Maildir/cur (doveadm save is far slower)."""
    home = server.users[email].home
    for sub in ("cur", "new", "tmp"):
        (home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
    cur = home / "Maildir" / "cur"
    start = datetime.now(UTC) - timedelta(days=400)
    for n in range(count):
        when = start + timedelta(minutes=5 * n)
        raw = small_message(n, when, email)
        flags = "S" if n % 3 else ""
        path = cur / f"{int(when.timestamp())}.M{n}P1.qrbench,S={len(raw)}:2,{flags}"
        path.write_bytes(raw)
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            os.chown(os.path.join(root, name), server.uid, server.gid)
    os.chown(home, server.uid, server.gid)


class SentCommands:
    """Count the IMAP command lines sent (imaplib's send), to show which path a pass took."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.originals = {}

    def __enter__(self):
        from imapclient.tls import IMAP4_TLS

        for cls in (imaplib.IMAP4, IMAP4_TLS):
            original = cls.__dict__["send"]
            self.originals[cls] = original

            def send(conn, data, _original=original):
                self.lines.append(bytes(data))
                return _original(conn, data)

            cls.send = send
        return self

    def __exit__(self, *exc) -> None:
        for cls, original in self.originals.items():
            cls.send = original

    def count(self, needle: bytes) -> int:
        return sum(1 for line in self.lines if needle in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    add_database_arguments(parser)
    run_on_database(parser.parse_args(), run)


def run(args) -> None:
    server = DovecotServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="threadline-qresync-bench-"))
    rng = random.Random(14)
    try:
        email = "bench@mail.test"
        user = server.add_user(email, "bench-password")
        t0 = time.perf_counter()
        fill_maildir(server, email, args.messages)
        server.doveadm("index", "-u", email, "INBOX")
        print(f"mailbox: {args.messages} messages, seeded in {time.perf_counter() - t0:.1f} s")

        from extensions import db
        from mailsync import sync as sync_module
        from models import MailFolder, MessageLocation
        from services import users

        app = bench_app(workdir, args.database_url)
        with app.app_context():
            owner = users.create_user(
                email="owner@team.test", name="Owner", password="owner password 1", is_admin=True
            )
            account_id = add_dovecot_account(app, owner, server, email, user.password)

        t0 = time.perf_counter()
        result = sync_module.sync_account(account_id, app=app, budget_seconds=7200)
        assert result.ok and result.complete, result
        print(f"first sync: {result.new} messages in {time.perf_counter() - t0:.1f} s")
        print(f"load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

        def stored_uids() -> set[int]:
            with app.app_context():
                inbox = db.session.scalar(
                    db.select(MailFolder).where(
                        MailFolder.account_id == account_id, MailFolder.name == "INBOX"
                    )
                )
                return set(
                    db.session.scalars(
                        db.select(MessageLocation.uid).where(MessageLocation.folder_id == inbox.id)
                    )
                )

        def timed_pass(qresync: bool) -> tuple[float, SentCommands]:
            app.config["SYNC_QRESYNC"] = qresync
            with SentCommands() as sent:
                t = time.perf_counter()
                outcome = sync_module.sync_account(account_id, app=app, budget_seconds=600)
                seconds = time.perf_counter() - t
            assert outcome.ok and outcome.complete, outcome
            return seconds, sent

        live = sorted(stored_uids())
        times: dict[tuple[str, bool], list[float]] = {}
        searches: dict[tuple[str, bool], int] = {}
        for round_ in range(args.rounds):
            order = (True, False) if round_ % 2 == 0 else (False, True)
            for qresync in order:
                seconds, sent = timed_pass(qresync)
                times.setdefault(("no change", qresync), []).append(seconds)
                searches[("no change", qresync)] = sent.count(b"UID SEARCH")
            for qresync in order:
                gone = sorted(rng.sample(live, 10))
                live = [uid for uid in live if uid not in set(gone)]
                server.doveadm(
                    "expunge", "-u", email, "mailbox", "INBOX", "uid", ",".join(map(str, gone))
                )
                seconds, sent = timed_pass(qresync)
                assert stored_uids() == set(live), "the pass did not remove exactly those 10"
                assert sent.count(b"(QRESYNC (") == (1 if qresync else 0)
                times.setdefault(("10 expunges", qresync), []).append(seconds)
                searches[("10 expunges", qresync)] = sent.count(b"UID SEARCH")
            for qresync in order:
                for uid in rng.sample(live, 10):
                    server.doveadm(
                        "flags",
                        "add",
                        "-u",
                        email,
                        "\\Flagged",
                        "mailbox",
                        "INBOX",
                        "uid",
                        str(uid),
                    )
                seconds, sent = timed_pass(qresync)
                times.setdefault(("10 flag changes", qresync), []).append(seconds)
                searches[("10 flag changes", qresync)] = sent.count(b"UID SEARCH")

        print(f"passes over the whole account (6 folders), median of {args.rounds}:")
        for kind in ("no change", "10 expunges", "10 flag changes"):
            with_q = statistics.median(times[(kind, True)])
            without_q = statistics.median(times[(kind, False)])
            print(
                f"  {kind:16s} with QRESYNC {with_q * 1000:8.1f} ms "
                f"({searches[(kind, True)]} UID SEARCH); without {without_q * 1000:8.1f} ms "
                f"({searches[(kind, False)]} UID SEARCH); ratio without/with "
                f"{without_q / with_q:.2f}x"
            )
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
