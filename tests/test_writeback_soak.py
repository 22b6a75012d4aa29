"""The seeded soak of Mail tab write-backs: the user's actions interleaved with other changes.

Against the real Dovecot, each round the user does a few things through the real route
(mark read or unread, archive and delete with the mailbox settings on, move to a folder; one
conversation or several), new mail arrives (new conversations and replies to the user's),
another mail program changes mail the user never touches (flags, moves, expunges), and the
worker's jobs and sync passes run in a seeded order: jobs before a pass, after it, not at all
this round, through "Sync now", or in a thread while the user acts. A small model says, for every mail (by its Message-ID),
which folder it belongs in and whether it is \\Seen. Whenever the worker has run every
queued job the server must match the model already (the jobs alone wrote it, not a pass
retrying pending \\Seen). At the end jobs and clean passes run until nothing changes, and
the server must match the model while Threadline matches the server UID by UID and flag by
flag, with one message row per mail, nothing left pending and no job that failed.

The model stays exact because other clients only touch mail of their own (never in a
conversation of the user's), and the user's actions are read from what Threadline shows:
a conversation acts on its live messages Threadline has stored at that moment.
THREADLINE_WBSOAK_SEEDS (comma separated) and THREADLINE_WBSOAK_ROUNDS override the
defaults; a failure prints both and the round log.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

import pytest
from sqlalchemy import func, select

from extensions import db
from mailsync.sync import sync_account
from models import JOB_DONE, Job, MailFolder, Message, MessageLocation, Thread
from services.preferences import update_preferences
from tests.queue_helpers import run_pending_jobs, run_sync_now
from tests.servers.dovecot import PROFILES, DovecotServer
from tests.sync_helpers import location_flags, raw_message, run_sync
from worker import run_one_job

pytestmark = pytest.mark.imap

ACTIONS_URL = "/mail/threads/actions"
SEEDS = [int(s) for s in os.environ.get("THREADLINE_WBSOAK_SEEDS", "1,2,3,4,5").split(",") if s]
ROUNDS = int(os.environ.get("THREADLINE_WBSOAK_ROUNDS", "20"))
FOLDERS = ("INBOX", "Archive", "Trash", "Projects")
MOVE_DESTINATIONS = ("INBOX", "Archive", "Projects")
OTHER_CLIENT_FOLDERS = ("INBOX", "Archive", "Projects")
FIRST_TOPICS = 5
FIRST_OTHERS = 4
MAX_SETTLE_PASSES = 6


@dataclass
class Mail:
    """What one delivered mail should be: its folder and \\Seen (None: expunged)."""

    number: int
    msgid: str
    topic: int | None  # the user's conversation; None for mail only other clients touch
    folder: str | None
    seen: bool = False
    flagged: bool = False
    deleted: bool = False  # deleted by the user in Threadline


@dataclass
class Soak:
    """The seeded generator, the model, and what each round did."""

    seed: int
    rng: random.Random
    app: object
    client: object
    dovecot: object
    user: object
    account_id: int
    folder_ids: dict[str, int] = field(default_factory=dict)
    mails: dict[int, Mail] = field(default_factory=dict)
    topics: int = 0
    recent: set[int] = field(default_factory=set)  # the topics of the user's last action
    log: list[str] = field(default_factory=list)

    def where(self, text: str) -> str:
        return f"seed {self.seed}: {text}"

    # ------------------------------------------------------------------ the server

    def deliver(self, *, topic: int | None = None, folder: str = "INBOX") -> Mail:
        """Deliver a mail: a reply in `topic`, else a new conversation (the user's, or with
        topic=-1 one only other clients touch)."""
        number = len(self.mails) + 1
        msgid = f"wb{number}.s{self.seed}@soak.test"
        references = None
        if topic is None:
            self.topics += 1
            topic = self.topics
            subject = f"Topic {topic}"
        elif topic == -1:
            subject = f"Other mail {number}"
        else:
            root = min(m.number for m in self.mails.values() if m.topic == topic)
            references = f"<{self.mails[root].msgid}>"
            subject = f"Re: Topic {topic}"
        raw = raw_message(
            number,
            subject=subject,
            to=self.user.email,
            msgid=msgid,
            references=references,
            in_reply_to=references,
            extra_headers=f"X-Soak-Mail: {number}\r\n",
        )
        self.dovecot.deliver(self.user.email, raw, folder)
        mail = Mail(number, msgid, topic if topic != -1 else None, folder)
        self.mails[number] = mail
        return mail

    def server_state(self) -> dict[tuple[str, int], tuple[frozenset[str], int]]:
        """{(folder, uid): (flags, mail number)} of every folder, as doveadm reads it."""
        state = {}
        for folder in FOLDERS:
            out = self.dovecot.doveadm(
                "-f", "tab", "fetch", "-u", self.user.email, "uid flags hdr.x-soak-mail",
                "mailbox", folder, "ALL",
            )  # fmt: skip
            for line in out.splitlines()[1:]:
                if not line.strip():
                    continue
                uid, flags, number = line.split("\t")
                if "\\Deleted" in flags.split():
                    continue  # a moved original on a server without MOVE: gone for users
                kept = frozenset(f for f in flags.split() if f != "\\Recent")
                state[(folder, int(uid))] = (kept, int(number))
        return state

    def server_place(self, mail: Mail) -> tuple[str, int]:
        (place,) = [p for p, (_f, n) in self.server_state().items() if n == mail.number]
        return place

    # ------------------------------------------------------------------ Threadline

    def stored(self) -> dict[str, tuple[int, int, bool]]:
        """{Message-ID: (message id, thread id, live)} of the account's messages."""
        db.session.expire_all()
        rows = db.session.execute(
            select(
                Message.message_id_header, Message.id, Message.thread_id, Message.deleted_at
            ).where(Message.account_id == self.account_id)
        ).all()
        return {msgid: (mid, tid, deleted is None) for msgid, mid, tid, deleted in rows}

    def conversations(self) -> dict[int, tuple[int, list[Mail]]]:
        """{topic: (thread id, its mails Threadline shows)} of the user's live conversations."""
        stored = self.stored()
        by_msgid = {mail.msgid.lower(): mail for mail in self.mails.values()}
        live_threads = set(
            db.session.scalars(
                select(Thread.id).where(
                    Thread.account_id == self.account_id, Thread.deleted_at.is_(None)
                )
            )
        )
        members: dict[int, list[Mail]] = {}
        for msgid, (_mid, thread_id, live) in stored.items():
            if live and thread_id in live_threads:
                members.setdefault(thread_id, []).append(by_msgid[msgid])
        found = {}
        for thread_id, mails in members.items():
            topics = {mail.topic for mail in mails}
            assert len(topics) == 1, self.where(f"thread {thread_id} mixes topics {topics}")
            (topic,) = topics
            if topic is None:
                continue
            assert topic not in found, self.where(f"topic {topic} is two live conversations")
            assert not any(mail.deleted for mail in mails), self.where(
                f"thread {thread_id} shows mail the user deleted"
            )
            found[topic] = (thread_id, sorted(mails, key=lambda m: m.number))
        return found


# ---------------------------------------------------------------------- steps


def user_action(soak: Soak) -> None:
    """One action of the user's on one or several conversations, through the route."""
    shown = soak.conversations()
    if not shown:
        return
    # Half the time the user comes back to conversations just acted on (changes their mind
    # while the first write-back may still be queued).
    pool = sorted(set(shown) & soak.recent) if soak.rng.random() < 0.5 else []
    pool = pool or sorted(shown)
    topics = soak.rng.sample(pool, soak.rng.randint(1, min(3, len(pool))))
    soak.recent = set(topics)
    action = soak.rng.choices(
        ("read", "unread", "archive", "delete", "move"), weights=(2, 2, 2, 1, 4)
    )[0]
    data: dict = {"action": action, "thread_id": [shown[topic][0] for topic in topics]}
    destination = None
    if action == "move":
        destination = soak.rng.choice(MOVE_DESTINATIONS)
        data["destination"] = soak.folder_ids[destination]
    response = soak.client.post(ACTIONS_URL, data=data)
    assert response.status_code == 303, soak.where(f"{action}: status {response.status_code}")
    mails = [mail for topic in topics for mail in shown[topic][1]]
    for mail in mails:
        if action in ("read", "unread"):
            mail.seen = action == "read"
        elif action == "archive" and mail.folder == "INBOX":
            mail.folder = "Archive"
        elif action == "delete":
            mail.folder = "Trash"
            mail.deleted = True
        elif action == "move":
            mail.folder = destination
    soak.log.append(
        f"user {action}{f' to {destination}' if destination else ''} topics {sorted(topics)} "
        f"(mails {[mail.number for mail in mails]})"
    )


def new_mail(soak: Soak) -> None:
    """A new conversation, a reply in one of the user's, or mail for other clients."""
    roll = soak.rng.random()
    open_topics = sorted({m.topic for m in soak.mails.values() if m.topic is not None})
    if roll < 0.5 and open_topics:
        topic = soak.rng.choice(open_topics)
        mail = soak.deliver(topic=topic)
        what = f"reply {mail.number} in topic {topic}"
    elif roll < 0.75:
        mail = soak.deliver(folder=soak.rng.choice(("INBOX", "INBOX", "Projects")))
        what = f"new topic {mail.topic} (mail {mail.number}) in {mail.folder}"
    else:
        mail = soak.deliver(topic=-1, folder=soak.rng.choice(OTHER_CLIENT_FOLDERS))
        what = f"other mail {mail.number} in {mail.folder}"
    soak.log.append(f"deliver {what}")


def other_client(soak: Soak) -> None:
    """Another mail program changes mail of its own: a flag, a move or an expunge; or the
    server gives a folder a new UIDVALIDITY and keeps its UIDs (a restore, a migration)."""
    if soak.rng.random() < 0.25:
        folder = soak.rng.choice(OTHER_CLIENT_FOLDERS)
        soak.dovecot.set_uidvalidity(soak.user.email, folder, soak.rng.randint(10**6, 2**31))
        soak.log.append(f"server renumbers {folder} (new UIDVALIDITY, same UIDs)")
        return
    theirs = [m for m in soak.mails.values() if m.topic is None and m.folder is not None]
    if not theirs:
        return
    mail = soak.rng.choice(theirs)
    folder, uid = soak.server_place(mail)
    assert folder == mail.folder, soak.where(f"mail {mail.number} is in {folder}")
    kind = soak.rng.choices(("flag", "move", "expunge"), weights=(5, 2, 1))[0]
    email = soak.user.email
    if kind == "flag":
        flag = soak.rng.choice(("\\Seen", "\\Flagged"))
        add = soak.rng.random() < 0.6
        (soak.dovecot.add_flags if add else soak.dovecot.remove_flags)(email, folder, uid, flag)
        if flag == "\\Seen":
            mail.seen = add
        else:
            mail.flagged = add
        soak.log.append(f"other client {'adds' if add else 'removes'} {flag} on {mail.number}")
    elif kind == "move":
        destination = soak.rng.choice([f for f in OTHER_CLIENT_FOLDERS if f != folder])
        soak.dovecot.move(email, folder, uid, destination)
        mail.folder = destination
        soak.log.append(f"other client moves {mail.number} to {destination}")
    else:
        soak.dovecot.expunge(email, folder, uid)
        mail.folder = None
        soak.log.append(f"other client expunges {mail.number}")


def run_jobs(soak: Soak) -> None:
    ran = run_pending_jobs(soak.app)
    soak.log.append(f"jobs: {ran} ran")
    assert_jobs_wrote_everything(soak)


def sync_pass(soak: Soak) -> None:
    result = run_sync(soak.app, soak.account_id)
    assert result.ok, soak.where(f"sync pass failed: {result.error}")
    soak.log.append(f"sync: new={result.new} changed={result.changed} deleted={result.deleted}")


def sync_now(soak: Soak) -> None:
    """Press "Sync now": its pass is queued behind the write-backs; the worker runs them all."""
    ran = run_sync_now(soak.app, soak.account_id)
    soak.log.append(f"sync now: {ran} jobs ran")
    assert_jobs_wrote_everything(soak)


def assert_jobs_wrote_everything(soak: Soak) -> None:
    """Once the worker has run every queued job the mailbox has all the user did: the jobs
    alone, not a later pass writing pending \\Seen again, must have put it there."""
    assert_server_matches_model(soak, soak.server_state())
    pending = db.session.scalars(
        select(MessageLocation.id).where(MessageLocation.seen_pending.is_(True))
    ).all()
    assert not pending, soak.where(f"locations still pending after the jobs ran: {pending}")


class Worker(threading.Thread):
    """The worker beside the web side: every queued job, a pass, then the jobs queued since."""

    def __init__(self, soak: Soak):
        super().__init__(name="soak-worker", daemon=True)
        self.soak = soak
        self.error: BaseException | None = None
        self.report = ""

    def run(self) -> None:
        try:
            before = self.run_jobs()
            result = sync_account(self.soak.account_id, app=self.soak.app)
            after = self.run_jobs()
            self.report = f"{before} jobs, pass ok={result.ok}, {after} jobs"
            if not result.ok:
                raise AssertionError(f"the pass failed: {result.error}")
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def run_jobs(self) -> int:
        ran = 0
        while run_one_job(self.soak.app, "soak-worker"):
            ran += 1
        return ran


def actions_while_the_worker_runs(soak: Soak) -> None:
    """The user acts while the worker runs jobs and a pass: a change may land between the
    pass reading the flags and storing them, or while its write-back is on its way."""
    sync_pass(soak)  # Threadline has every mail: what the user acts on is what the model says
    pauses = [soak.rng.uniform(0.0, 0.2) for _ in range(soak.rng.randint(1, 3))]
    soak.log.append("user acts while the worker runs")
    worker = Worker(soak)
    worker.start()
    for pause in pauses:
        time.sleep(pause)
        user_action(soak)
    worker.join(timeout=120)
    assert not worker.is_alive(), soak.where("the worker did not finish")
    assert worker.error is None, soak.where(f"the worker failed: {worker.error!r}")
    soak.log.append(f"worker: {worker.report}")


def steps_for_round(soak: Soak) -> list:
    if soak.rng.random() < 0.25:
        return [actions_while_the_worker_runs]
    steps = [user_action] * soak.rng.randint(1, 4)
    steps += [new_mail] * soak.rng.choice((0, 1, 1, 2))
    steps += [other_client] * soak.rng.choice((0, 0, 1, 2))
    soak.rng.shuffle(steps)
    # The worker and the passes: jobs before the pass, after it, not this round (so the
    # next round's actions queue behind them), or "Sync now", at times amid the actions.
    processing = soak.rng.choice(
        ([run_jobs, sync_pass], [sync_pass, run_jobs], [sync_pass], [run_jobs], [sync_now], [], [])
    )
    at = soak.rng.randint(len(steps) // 2, len(steps))
    return steps[:at] + processing + steps[at:]


# ---------------------------------------------------------------------- the end state


def settle(soak: Soak) -> None:
    """Run jobs and clean passes until a round changes nothing."""
    for _ in range(MAX_SETTLE_PASSES):
        ran = run_pending_jobs(soak.app)
        result = run_sync(soak.app, soak.account_id)
        assert result.ok, soak.where(f"clean pass failed: {result.error}")
        soak.log.append(
            f"settle: {ran} jobs, new={result.new} changed={result.changed} "
            f"deleted={result.deleted}"
        )
        if not ran and result.complete and not (result.new or result.changed or result.deleted):
            return
    pytest.fail(soak.where("jobs and passes never settled"))


def assert_server_matches_model(soak: Soak, server) -> None:
    places: dict[int, list[tuple[str, int]]] = {}
    for place, (_flags, number) in server.items():
        places.setdefault(number, []).append(place)
    for mail in soak.mails.values():
        found = places.get(mail.number, [])
        if mail.folder is None:
            assert not found, soak.where(f"expunged mail {mail.number} is at {found}")
            continue
        assert len(found) == 1, soak.where(f"mail {mail.number} is at {found}, not once")
        ((folder, uid),) = found
        assert folder == mail.folder, soak.where(
            f"mail {mail.number} (topic {mail.topic}) is in {folder}, not {mail.folder}"
        )
        flags = server[(folder, uid)][0]
        assert ("\\Seen" in flags) == mail.seen, soak.where(
            f"mail {mail.number} in {folder} {uid}: server flags {set(flags)}, model "
            f"seen={mail.seen}"
        )
        assert ("\\Flagged" in flags) == mail.flagged, soak.where(
            f"mail {mail.number}: server flags {set(flags)}, model flagged={mail.flagged}"
        )


def local_locations(soak: Soak) -> dict[tuple[str, int], tuple[frozenset[str], str, object]]:
    """{(folder, uid): (flags, Message-ID, location)} of every location of the account."""
    db.session.expire_all()
    rows = db.session.execute(
        select(MailFolder.name, MessageLocation, Message.message_id_header)
        .join(MessageLocation, MessageLocation.folder_id == MailFolder.id)
        .join(Message, Message.id == MessageLocation.message_id)
        .where(MailFolder.account_id == soak.account_id)
    )
    local = {}
    for folder, location, msgid in rows:
        if location.deleted:
            continue  # flagged \Deleted on the server, as server_state leaves it out
        flags = location_flags(location)
        place = (folder, location.uid)
        assert place not in local, soak.where(f"two locations at {place}")
        local[place] = (frozenset(flags), msgid, location)
    return local


def assert_threadline_matches_server(soak: Soak, server) -> None:
    local = local_locations(soak)
    assert sorted(local) == sorted(server), soak.where(
        f"locations differ: only in Threadline {sorted(set(local) - set(server))}, "
        f"only on the server {sorted(set(server) - set(local))}"
    )
    for place, (flags, number) in server.items():
        local_flags, msgid, location = local[place]
        mail = soak.mails[number]
        assert msgid == mail.msgid.lower(), soak.where(
            f"{place} holds mail {number} on the server, {msgid} in Threadline"
        )
        assert local_flags == flags, soak.where(
            f"{place} (mail {number}): flags {set(local_flags)} in Threadline, {set(flags)} "
            "on the server"
        )
        assert not location.stale and not location.seen_pending, soak.where(
            f"{place} (mail {number}): stale={location.stale} seen_pending={location.seen_pending}"
        )
    counts = dict(
        db.session.execute(
            select(Message.message_id_header, func.count())
            .where(Message.account_id == soak.account_id)
            .group_by(Message.message_id_header)
        ).all()
    )
    stored = soak.stored()
    for mail in soak.mails.values():
        msgid = mail.msgid.lower()
        if mail.folder is None:
            assert not stored.get(msgid, (0, 0, False))[2], soak.where(
                f"expunged mail {mail.number} is still a live message"
            )
            continue
        assert counts.get(msgid) == 1, soak.where(
            f"mail {mail.number} is {counts.get(msgid, 0)} message rows"
        )
        message = db.session.get(Message, stored[msgid][0])
        assert (message.deleted_at is not None) == mail.deleted, soak.where(
            f"mail {mail.number}: deleted_at={message.deleted_at}, model deleted={mail.deleted}"
        )
        assert message.is_read == mail.seen, soak.where(
            f"mail {mail.number}: is_read={message.is_read}, model seen={mail.seen}"
        )


def assert_queue_is_done(soak: Soak) -> None:
    jobs = db.session.execute(select(Job.id, Job.kind, Job.state, Job.last_error)).all()
    unfinished = [job for job in jobs if job.state != JOB_DONE]
    assert not unfinished, soak.where(f"jobs not done: {unfinished}")
    errors = [job for job in jobs if job.last_error]
    assert not errors, soak.where(f"jobs that failed an attempt: {errors}")


# ---------------------------------------------------------------------- the test


@pytest.fixture
def me(make_user):
    return make_user(email="me@soak.test", name="Me")


@pytest.fixture
def dovecot(request, _profile_servers):
    """The session's Dovecot, or (parametrized indirectly) one imitating another server."""
    name = getattr(request, "param", "standard")
    if name not in _profile_servers:
        _profile_servers[name] = DovecotServer(PROFILES[name]).start()
    return _profile_servers[name]


@pytest.mark.slow(seconds=10)
@pytest.mark.parametrize("dovecot", ["standard", "no-move-uidplus"], indirect=True)
@pytest.mark.parametrize("seed", SEEDS)
def test_write_backs_survive_interleaved_actions_and_changes(
    app, dovecot, mail_user, me, make_account, login, seed
):
    dovecot.create_folder(mail_user.email, "Projects")
    # A write-back waiting for a pass after a new UIDVALIDITY is retried at once, behind it.
    app.config.update(JOB_BACKOFF_SECONDS=0)
    account = make_account(me, mail_user)
    update_preferences(me, {"archive_in_mailbox": "True", "delete_in_mailbox": "True"})
    soak = Soak(
        seed=seed,
        rng=random.Random(seed),
        app=app,
        client=login(me),
        dovecot=dovecot,
        user=mail_user,
        account_id=account.id,
    )
    started = time.monotonic()
    try:
        for _ in range(FIRST_TOPICS):
            soak.deliver()
        for _ in range(FIRST_OTHERS):
            soak.deliver(topic=-1, folder=soak.rng.choice(OTHER_CLIENT_FOLDERS))
        sync_pass(soak)
        soak.folder_ids = dict(
            db.session.execute(
                select(MailFolder.name, MailFolder.id).where(
                    MailFolder.account_id == soak.account_id
                )
            ).all()
        )
        for number in range(ROUNDS):
            soak.log.append(f"round {number}")
            for step in steps_for_round(soak):
                step(soak)
        soak.log.append("settle")
        settle(soak)
        server = soak.server_state()
        assert_server_matches_model(soak, server)
        assert_threadline_matches_server(soak, server)
        assert_queue_is_done(soak)
    except BaseException:
        print(
            f"\nWRITE-BACK SOAK FAILED with seed {seed}; replay with "
            f"THREADLINE_WBSOAK_SEEDS={seed} THREADLINE_WBSOAK_ROUNDS={ROUNDS}"
        )
        print("\n".join(soak.log))
        raise
    print(
        f"seed {seed}: {ROUNDS} rounds, {len(soak.mails)} mails in {time.monotonic() - started:.1f} s"
    )
