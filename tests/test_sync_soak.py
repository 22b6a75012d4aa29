"""The seeded fault/soak test of the sync engine (issue 10): random server changes, cuts and kills.

Against the real Dovecot, each round changes the mailbox, partly before a sync pass and partly
from a thread while it runs: new mail, flags set with doveadm and from a second IMAP client
(so Threadline's connection, with the folder selected, gets unsolicited FETCH responses),
moves, expunges and UIDVALIDITY resets (a renumbering that keeps the mail, and a folder
deleted and rebuilt with other mail at the same UIDs, at times under the old headers). The
pass is a `flask sync` process killed with SIGKILL (the first one once its parse workers run)
or left to finish, a pass through a loopback proxy that cuts the connection, or one pass of a
first sync split over several. Then clean passes run until nothing changes, and Threadline
must equal `doveadm` UID by UID and flag by flag, with one message per distinct mail, no
location at a gone UID and no process left behind.

The choices come from one seeded random generator (the server state depends on the seed
only; when a kill lands is timing). `make soak` runs longer: THREADLINE_SOAK_ROUNDS and
THREADLINE_SOAK_SEEDS (comma separated) override the defaults; a failure prints both.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from extensions import db
from mailsync import imap
from mailsync import sync as sync_module
from models import MailFolder, Message, MessageLocation, SyncLease
from tests.servers.proxy import CuttingProxy
from tests.sync_helpers import imap_client, location_flags, raw_message, run_sync, split_backfills
from tests.test_sync_interrupt import alive, start_cli_sync, wait_for

pytestmark = pytest.mark.imap

ROUNDS = int(os.environ.get("THREADLINE_SOAK_ROUNDS", "6"))
SEEDS = [int(s) for s in os.environ.get("THREADLINE_SOAK_SEEDS", "1").split(",") if s.strip()]
FOLDERS = ("INBOX", "Projects")
# Enough that the first sync starts its parse workers: the first metadata batch (50) is
# parsed inline, the next one (130 >= POOL_THRESHOLD) in the worker pool.
FIRST_MAILS = 180
FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "$Soak")
MAX_CLEAN_PASSES = 8


@dataclass
class Mailbox:
    """What the test did to the server: the seeded generator, the next mail number, a log."""

    dovecot: object
    user: object
    rng: random.Random
    next_mail: int = 1
    next_uidvalidity: int = 1_000_000
    log: list[str] = field(default_factory=list)
    headers_of: dict[int, int] = field(default_factory=dict)  # mail number -> header number

    def mail(self, *, like: int | None = None) -> bytes:
        """A mail with its own content; `like` reuses an earlier mail's headers (Message-ID,
        Date, From, Subject, To) with a different, longer body: a different mail."""
        n = self.next_mail
        self.next_mail += 1
        self.headers_of[n] = like if like is not None else n
        return raw_message(
            self.headers_of[n],
            to=self.user.email,
            extra_headers=f"X-Soak-Mail: {n}\r\n",
            body=f"Soak mail {n}.\r\n" + "x" * (10 * n + self.rng.randrange(10)) + "\r\n",
        )

    def uids(self, folder: str) -> list[int]:
        return self.dovecot.uids(self.user.email, folder)


# ---------------------------------------------------------------------- server changes


def op_deliver(box: Mailbox) -> None:
    folder = box.rng.choice(FOLDERS)
    count = box.rng.randint(1, 3)
    for _ in range(count):
        box.dovecot.deliver(box.user.email, box.mail(), folder)
    box.log.append(f"deliver {count} to {folder}")


def op_flag(box: Mailbox) -> None:
    """Set or clear a flag with doveadm."""
    folder = box.rng.choice(FOLDERS)
    uids = box.uids(folder)
    if not uids:
        return
    uid, flag, add = box.rng.choice(uids), box.rng.choice(FLAGS), box.rng.random() < 0.6
    change = box.dovecot.add_flags if add else box.dovecot.remove_flags
    change(box.user.email, folder, uid, flag)
    box.log.append(f"{'add' if add else 'remove'} {flag} on {folder} {uid}")


def op_second_client_flags(box: Mailbox) -> None:
    """Change flags on a few UIDs from another IMAP client, as a phone would."""
    folder = box.rng.choice(FOLDERS)
    uids = box.uids(folder)
    if not uids:
        return
    chosen = box.rng.sample(uids, min(len(uids), box.rng.randint(1, 4)))
    flag, add = box.rng.choice(FLAGS), box.rng.random() < 0.6
    client = imap_client(box.dovecot, box.user)
    try:
        client.select_folder(folder)
        (client.add_flags if add else client.remove_flags)(chosen, [flag])
    finally:
        imap.safe_logout(client)
    box.log.append(f"client {'adds' if add else 'removes'} {flag} on {folder} {sorted(chosen)}")


def op_move(box: Mailbox) -> None:
    source = box.rng.choice(FOLDERS)
    target = next(f for f in FOLDERS if f != source)
    uids = box.uids(source)
    if not uids:
        return
    uid = box.rng.choice(uids)
    box.dovecot.move(box.user.email, source, uid, target)
    box.log.append(f"move {source} {uid} to {target}")


def op_expunge(box: Mailbox) -> None:
    folder = box.rng.choice(FOLDERS)
    uids = box.uids(folder)
    if not uids:
        return
    uid = box.rng.choice(uids)
    box.dovecot.expunge(box.user.email, folder, uid)
    box.log.append(f"expunge {folder} {uid}")


def op_renumber(box: Mailbox) -> None:
    """A new UIDVALIDITY over the same mail at the same UIDs (a server restore, a migration)."""
    folder = box.rng.choice(FOLDERS)
    box.next_uidvalidity += 1
    box.dovecot.set_uidvalidity(box.user.email, folder, box.next_uidvalidity)
    box.log.append(f"uidvalidity of {folder} -> {box.next_uidvalidity} (same mail)")


def op_rebuild_projects(box: Mailbox) -> None:
    """Delete Projects and create it again with other mail at the same UIDs (a real reset).

    Half the time each new mail has the headers of the old mail at its UID but other content
    (a restore of edited copies): only the size tells them apart.
    """
    out = box.dovecot.doveadm(
        "-f", "tab", "fetch", "-u", box.user.email, "uid hdr.x-soak-mail", "mailbox", "Projects",
        "ALL",
    )  # fmt: skip
    old = {int(uid): int(n) for uid, n in (line.split("\t") for line in out.splitlines()[1:])}
    same_headers = bool(old) and box.rng.random() < 0.5
    box.dovecot.delete_folder(box.user.email, "Projects")
    box.dovecot.create_folder(box.user.email, "Projects")
    box.next_uidvalidity += 1
    box.dovecot.set_uidvalidity(box.user.email, "Projects", box.next_uidvalidity)
    if same_headers:
        # A new folder numbers its mail from UID 1: fill the old gaps, then expunge the fill.
        for uid in range(1, max(old) + 1):
            like = box.headers_of[old[uid]] if uid in old else None
            box.dovecot.deliver(box.user.email, box.mail(like=like), "Projects")
        for uid in set(range(1, max(old) + 1)) - set(old):
            box.dovecot.expunge(box.user.email, "Projects", uid)
        box.log.append(f"rebuild Projects: other content under the old headers at {sorted(old)}")
    else:
        count = box.rng.randint(2, 6)
        for _ in range(count):
            box.dovecot.deliver(box.user.email, box.mail(), "Projects")
        box.log.append(f"rebuild Projects: {count} other mails instead of {len(old)}")


OPERATIONS = (
    (op_deliver, 4),
    (op_flag, 4),
    (op_second_client_flags, 4),
    (op_move, 3),
    (op_expunge, 3),
    (op_renumber, 1),
    (op_rebuild_projects, 1),
)


def changes_for_round(box: Mailbox, number: int) -> list:
    functions = [f for f, _w in OPERATIONS]
    weights = [w for _f, w in OPERATIONS]
    changes = box.rng.choices(functions, weights, k=box.rng.randint(2, 6))
    # The rare resets come every few rounds for sure, so a short run has them too.
    if number % 4 == 1:
        changes.insert(box.rng.randrange(len(changes) + 1), op_rebuild_projects)
    if number % 4 == 3:
        changes.insert(box.rng.randrange(len(changes) + 1), op_renumber)
    return changes


PASS_KINDS = ("kill", "cli", "cut", "split", "kill")


def pass_kinds(box: Mailbox) -> list[str]:
    """A kill of the first sync, then each kind of pass once in every five rounds, in a
    seeded order."""
    kinds: list[str] = ["kill"]
    while len(kinds) < ROUNDS:
        cycle = list(PASS_KINDS)
        box.rng.shuffle(cycle)
        kinds += cycle
    return kinds[:ROUNDS]


class ServerChanges(threading.Thread):
    """Apply a round's changes while the pass runs, with short pauses between them."""

    def __init__(self, box: Mailbox, changes: list, pauses: list[float]):
        super().__init__(name="soak-server-changes", daemon=True)
        self.box, self.changes, self.pauses = box, changes, pauses
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for change, pause in zip(self.changes, self.pauses, strict=True):
                time.sleep(pause)
                change(self.box)
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc


# ---------------------------------------------------------------------- passes


def instance_processes(instance: Path) -> list[int]:
    """Live processes started for this test's instance (a sync and its parse workers, which
    inherit THREADLINE_INSTANCE_PATH), other than this test process."""
    marker = f"THREADLINE_INSTANCE_PATH={instance}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        if pid == os.getpid():
            continue
        try:
            if marker in environ.read_bytes().split(b"\0") and alive(pid):
                found.append(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def lease_taken(account_id: int) -> bool:
    db.session.rollback()  # a fresh snapshot: the sync process writes the row
    taken = db.session.get(SyncLease, account_id) is not None
    db.session.rollback()
    return taken


def cli_pass(app, account_id: int, kill_after: float | None, *, workers: bool = False) -> str:
    """Run `flask sync` as its own process; SIGKILL it `kill_after` seconds into its pass (if
    still running), or, with `workers`, once its parse workers run; check that none of its
    processes outlive it."""
    instance = Path(app.instance_path)
    process = start_cli_sync(app, account_id)
    outcome = "finished"
    try:
        if kill_after is None:
            process.communicate(timeout=120)
        else:
            wait_for(
                lambda: lease_taken(account_id) or process.poll() is not None,
                seconds=30,
                what="the sync process to start its pass",
            )
            if workers:  # two parse workers and multiprocessing's resource tracker
                wait_for(
                    lambda: len(instance_processes(instance)) >= 4 or process.poll() is not None,
                    seconds=30,
                    what="the parse workers to start",
                )
            try:
                process.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                running = instance_processes(Path(app.instance_path))
                # The orphan check sees the pass's processes while they live (it can fail).
                # A process that is exiting has already let go of its memory, so its environ
                # reads empty, before it turns zombie: one missing from the listing must exit
                # on its own at once.
                if process.pid not in running:
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        raise AssertionError(f"the sync process is not listed: {running}") from None
                else:
                    process.send_signal(signal.SIGKILL)
                    outcome = f"killed ({len(running)} processes)"
            process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    wait_for(
        lambda: not instance_processes(instance),
        seconds=10,
        what=f"the processes of the killed sync to exit: {instance_processes(instance)}",
    )
    if outcome.startswith("killed"):
        # Its lease would block the next pass for SYNC_LEASE_SECONDS (test_sync_interrupt
        # checks that it runs out); here the next pass should start at once.
        db.session.execute(delete(SyncLease).where(SyncLease.account_id == account_id))
        db.session.commit()
    db.session.expire_all()
    return outcome


def cut_pass(app, account, dovecot, cut_after: int, cuts: int) -> str:
    """One pass through a proxy that cuts the first `cuts` connections after some bytes."""
    proxy = CuttingProxy(dovecot.host, dovecot.ssl_port, cut_after=cut_after, cuts=cuts)
    try:
        account.imap_port = proxy.port
        db.session.commit()
        result = run_sync(app, account)
    finally:
        proxy.close()
        account.imap_port = dovecot.ssl_port
        db.session.commit()
    return f"cut after {cut_after} B x{cuts}: {'ok' if result.ok else result.error_kind}"


def split_pass(app, account, batches: int) -> str:
    with split_backfills(batches):
        result = run_sync(app, account)
    return f"split at {batches} batches: complete={result.complete}"


# ---------------------------------------------------------------------- comparison


def server_state(box: Mailbox) -> dict[str, dict[int, tuple[frozenset[str], str, int]]]:
    """{folder: {uid: (flags, X-Soak-Mail, size)}} as doveadm reads the Maildir."""
    state = {}
    for folder in FOLDERS:
        out = box.dovecot.doveadm(
            "-f",
            "tab",
            "fetch",
            "-u",
            box.user.email,
            "uid flags size.virtual hdr.x-soak-mail",
            "mailbox",
            folder,
            "ALL",
        )
        rows = {}
        for line in out.splitlines()[1:]:
            if not line.strip():
                continue
            uid, flags, size, mail = line.split("\t")
            kept = frozenset(f for f in flags.split() if f != "\\Recent")
            rows[int(uid)] = (kept, mail.strip(), int(size))
        state[folder] = rows
    return state


def local_state(account_id: int) -> dict[str, dict[int, tuple[frozenset[str], int, int]]]:
    """{folder: {uid: (flags, message id, size)}} of Threadline's live locations."""
    db.session.expire_all()
    state: dict[str, dict] = {}
    rows = db.session.execute(
        select(MailFolder.name, MessageLocation, Message.id, Message.size)
        .join(MessageLocation, MessageLocation.folder_id == MailFolder.id)
        .join(Message, Message.id == MessageLocation.message_id)
        .where(MailFolder.account_id == account_id, MailFolder.name.in_(FOLDERS))
    )
    for name, location, message_id, size in rows:
        assert not location.stale, f"a stale location is left: {name} {location.uid}"
        flags = location_flags(location)
        folder = state.setdefault(name, {})
        assert location.uid not in folder, f"two locations at {name} {location.uid}"
        folder[location.uid] = (frozenset(flags), message_id, size)
    return {folder: state.get(folder, {}) for folder in FOLDERS}


def assert_threadline_equals_dovecot(box: Mailbox, account_id: int) -> None:
    server = server_state(box)
    local = local_state(account_id)
    message_of_mail: dict[str, int] = {}
    for folder in FOLDERS:
        assert sorted(local[folder]) == sorted(server[folder]), (
            f"{folder}: UIDs differ; only in Threadline "
            f"{sorted(set(local[folder]) - set(server[folder]))}, only on the server "
            f"{sorted(set(server[folder]) - set(local[folder]))}"
        )
        for uid, (flags, mail, size) in server[folder].items():
            local_flags, message_id, local_size = local[folder][uid]
            assert local_flags == flags, f"{folder} {uid}: flags {local_flags} != {flags}"
            assert local_size == size, f"{folder} {uid} holds another mail (size)"
            # One message per distinct mail: the same mail in both folders is one message.
            known = message_of_mail.setdefault(mail, message_id)
            assert known == message_id, f"mail {mail} is two messages ({known}, {message_id})"
    distinct = set(message_of_mail.values())
    assert len(distinct) == len(message_of_mail), "different mails share one message"
    live = set(
        db.session.scalars(
            select(Message.id).where(Message.account_id == account_id, Message.deleted_at.is_(None))
        )
    )
    assert live == distinct, f"messages with no mail on the server: {sorted(live - distinct)}"


# ---------------------------------------------------------------------- the test


@pytest.fixture
def account(app, make_user, make_account, mail_user):
    return make_account(make_user(), mail_user)


@pytest.mark.slow(seconds=20)
@pytest.mark.parametrize("seed", SEEDS)
def test_sync_survives_random_changes_cuts_and_kills(app, dovecot, mail_user, account, seed):
    box = Mailbox(dovecot=dovecot, user=mail_user, rng=random.Random(seed))
    dovecot.create_folder(mail_user.email, "Projects")  # not auto-created: it can be gone
    client = imap_client(dovecot, mail_user)
    try:
        for _ in range(FIRST_MAILS):
            client.append("INBOX", box.mail())
        for _ in range(10):
            client.append("Projects", box.mail())
    finally:
        imap.safe_logout(client)
    account_id = account.id
    started = time.monotonic()
    passes: list[str] = []
    try:
        for number, kind in enumerate(pass_kinds(box)):
            changes = changes_for_round(box, number)
            # Some changes land between passes, the rest while the pass runs.
            between = box.rng.randint(0, len(changes))
            before, during = changes[:between], changes[between:]
            pauses = [box.rng.uniform(0.0, 0.4) for _ in during]
            # Drawn before the changes start: their thread uses the generator meanwhile.
            kill_after = box.rng.uniform(0.0, 1.5)
            cut_after = box.rng.randrange(1_000, 120_000)
            cuts = box.rng.randint(1, sync_module.CONNECTION_RETRIES + 1)
            batches = box.rng.randint(1, 3)
            for change in before:
                change(box)
            box.log.append(f"round {number}: {kind} pass")
            began = time.monotonic()
            mutator = ServerChanges(box, during, pauses)
            mutator.start()
            if kind in ("kill", "cli"):
                outcome = cli_pass(
                    app,
                    account_id,
                    kill_after if kind == "kill" else None,
                    workers=number == 0,  # the first sync of the big INBOX
                )
            elif kind == "cut":
                outcome = cut_pass(app, account, dovecot, cut_after, cuts)
            else:
                outcome = split_pass(app, account, batches)
            mutator.join(timeout=60)
            assert mutator.error is None, f"changing the server failed: {mutator.error!r}"
            passes.append(f"{kind}: {outcome} ({time.monotonic() - began:.1f} s)")
        for _ in range(MAX_CLEAN_PASSES):
            result = run_sync(app, account_id)
            assert result.ok, result.error
            passes.append(
                f"clean: new={result.new} changed={result.changed} deleted={result.deleted}"
            )
            if result.complete and not (result.new or result.changed or result.deleted):
                break
        else:
            pytest.fail("the clean passes never settled")
        assert_threadline_equals_dovecot(box, account_id)
        assert not instance_processes(Path(app.instance_path))
    except BaseException:
        print(
            f"\nSOAK FAILED with seed {seed}; replay with THREADLINE_SOAK_SEEDS={seed} "
            f"THREADLINE_SOAK_ROUNDS={ROUNDS}"
        )
        print("\n".join(box.log))
        print("\n".join(passes))
        raise
    print(f"seed {seed}: {ROUNDS} rounds in {time.monotonic() - started:.1f} s")
    print("\n".join(box.log + passes))
