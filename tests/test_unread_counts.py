"""The kept unread counts (services/unread.py) against a plain COUNT(*), over random histories.

Each seed drives a random sequence of everything that changes what is unread or where it is
through the real functions: sync storing new mail and copies (sending files its Sent copy
the same way, mailsync.send.store_sent -> store.store_batch), server flag changes,
expunges, the Mail tab's read / unread / archive / delete / Reply later / move, the worker's
write-backs (seen_written, record_moves), blocking and unblocking an address, and a folder
whose role changes. After every step the sidebar's counts must equal the reference below,
written from PRODUCT.md's rule, not from the code: a folder or list counts the live, not
blocked conversations holding an unread live message there; the server's Inbox folder
leaves out conversations archived in Threadline.

(hypothesis is not installed: seeded `random` instead; THREADLINE_UNREAD_SEEDS=<n> runs more.)
"""

from __future__ import annotations

import itertools
import json
import os
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select, text

from extensions import db
from mailsync import store, writeback
from mailsync.parse import parse_message
from models import MailFolder, MessageLocation, Thread
from services import linking, mailbox, unread
from services.preferences import update_preferences
from tests.mail_fixtures import build_message

SEEDS = range(int(os.environ.get("THREADLINE_UNREAD_SEEDS", "8")))
STEPS = 40
SENDERS = ("Carla <carla@customer.test>", "Dan <dan@customer.test>", "Spam <x@spam.test>")
FOLDERS = (("INBOX", "inbox"), ("Sent", "sent"), ("Archive", "archive"), ("Trash", "trash"))

_REFERENCE_FOLDER = text(
    """
    SELECT l.folder_id, COUNT(DISTINCT t.id) FROM thread t
    JOIN message m ON m.thread_id = t.id
    JOIN message_location l ON l.message_id = m.id
    JOIN mail_folder f ON f.id = l.folder_id
    WHERE t.account_id = :account AND t.deleted_at IS NULL AND t.blocked = FALSE
      AND m.is_read = FALSE AND m.deleted_at IS NULL AND m.blocked = FALSE
      AND l.deleted = FALSE
      AND NOT (t.archived = TRUE AND coalesce(f.role, '') = 'inbox')
    GROUP BY l.folder_id
    """
)
_REFERENCE_LIST = """
    SELECT COUNT(*) FROM thread t
    WHERE t.account_id = :account AND t.deleted_at IS NULL AND t.blocked = FALSE AND ({})
      AND EXISTS (SELECT 1 FROM message m WHERE m.thread_id = t.id AND m.is_read = FALSE
                  AND m.deleted_at IS NULL AND m.blocked = FALSE)
"""
_LISTS = {
    "inbox": "t.in_inbox = TRUE AND t.archived = FALSE",
    "archive": "t.archived = TRUE",
    "later": "t.reply_later = TRUE",
}


def reference(account_id: int) -> tuple[dict[int, int], dict[str, int]]:
    """The counts by COUNT(*) over the mail itself."""
    params = {"account": account_id}
    per_folder = dict(db.session.execute(_REFERENCE_FOLDER, params).all())
    lists = {
        key: db.session.scalar(text(_REFERENCE_LIST.format(condition)), params)
        for key, condition in _LISTS.items()
    }
    return per_folder, lists


class World:
    """One mailbox and the random history applied to it."""

    def __init__(self, rng: random.Random, user, account) -> None:
        self.rng, self.user, self.account = rng, user, account
        self.folders = {}
        for name, role in (*FOLDERS, ("Projects", None)):
            folder = MailFolder(account_id=account.id, name=name, role=role)
            db.session.add(folder)
            self.folders[name] = folder
        db.session.commit()
        self.uids = {name: itertools.count(1) for name in self.folders}
        self.mails: list[tuple[str, bytes]] = []  # (dedup key, raw) stored so far
        self.clock = datetime(2026, 3, 1, 9, tzinfo=UTC)

    # ------------------------------------------------------------ sync side

    def new_mail(self) -> None:
        """Sync stores one to three new messages (some replies), maybe copies elsewhere."""
        items = []
        for _ in range(self.rng.randint(1, 3)):
            n = len(self.mails)
            self.clock += timedelta(minutes=self.rng.randint(1, 300))
            parent = self.rng.choice([None, *range(n)]) if n else None
            outgoing = self.rng.random() < 0.2
            raw = build_message(
                subject=f"Topic {parent if parent is not None else n}",
                sender=f"Me <{self.account.email_address}>"
                if outgoing
                else self.rng.choice(SENDERS),
                to="carla@customer.test" if outgoing else self.account.email_address,
                date=self.clock,
                message_id=f"<m{n}@customer.test>",
                in_reply_to=f"<m{parent}@customer.test>" if parent is not None else None,
                references=f"<m{parent}@customer.test>" if parent is not None else None,
            )
            self.mails.append((f"k{n}", raw))
            folder = "Sent" if outgoing else self.rng.choice(["INBOX", "INBOX", "Projects"])
            items.append(self._fetched(folder, n))
        if self.mails and self.rng.random() < 0.4:  # a copy of older mail turns up
            items.append(
                self._fetched(
                    self.rng.choice(list(self.folders)), self.rng.randrange(len(self.mails))
                )
            )
        store.store_batch(store.context_for(self.account), items)
        db.session.commit()

    def _fetched(self, folder: str, n: int) -> store.Fetched:
        key, raw = self.mails[n]
        return store.Fetched(
            folder_id=self.folders[folder].id,
            uid=next(self.uids[folder]),
            flags=[b"\\Seen"] if self.rng.random() < 0.4 else [],
            dedup_key=key,
            parsed=parse_message(raw),
            raw_sha256=None,
            size=len(raw),
            internaldate=self.clock,
        )

    def _location(self) -> MessageLocation | None:
        found = db.session.scalars(
            select(MessageLocation)
            .join(MailFolder, MailFolder.id == MessageLocation.folder_id)
            .where(MailFolder.account_id == self.account.id)
            .order_by(MessageLocation.id)
        ).all()
        return self.rng.choice(found) if found else None

    def flag_change(self) -> None:
        """The server reports \\Seen set or cleared on one location."""
        location = self._location()
        if location is None:
            return
        flags = [b"\\Seen"] if not location.seen else []
        store.apply_flag_changes(location.folder_id, {location.uid: (flags, [])})
        db.session.commit()

    def expunge(self) -> None:
        """A message left a folder on the server."""
        location = self._location()
        if location is None:
            return
        store.remove_locations(location.folder_id, [location.uid])
        db.session.commit()

    def write_back(self) -> None:
        """The worker ran the queued write-backs: \\Seen written, moves done."""
        pending = db.session.scalars(
            select(MessageLocation).where(MessageLocation.seen_pending.is_(True))
        ).all()
        for seen in (True, False):
            ids = [location.id for location in pending if location.seen is seen]
            if ids:
                store.seen_written(ids, seen)
        db.session.commit()
        for job in db.session.scalars(
            text("SELECT payload FROM job WHERE kind = :kind AND state = 'queued'").bindparams(
                kind=mailbox.WRITEBACK_MOVE
            )
        ).all():
            self._move(job)
        db.session.execute(text("DELETE FROM job"))
        db.session.commit()

    def _move(self, payload) -> None:
        payload = json.loads(payload) if isinstance(payload, str) else payload
        destination = payload.get("destination_id") or db.session.scalar(
            select(MailFolder.id).where(
                MailFolder.account_id == self.account.id, MailFolder.role == payload.get("role")
            )
        )
        name = db.session.get(MailFolder, destination).name
        moved = {}
        for location in db.session.scalars(
            select(MessageLocation).where(MessageLocation.id.in_(payload["location_ids"]))
        ):
            source = db.session.get(MailFolder, location.folder_id).name
            moved[(source, location.uid)] = next(self.uids[name])
        writeback.record_moves(self.account.id, moved, destination)

    def role_change(self) -> None:
        """Folder discovery gives "Projects" a role, or takes it away."""
        folder = self.folders["Projects"]
        folder.role = self.rng.choice([None, "junk", "inbox"])
        db.session.commit()

    # ------------------------------------------------------------ the Mail tab

    def _threads(self) -> list[Thread]:
        found = db.session.scalars(
            mailbox.access.owned_threads(self.user).order_by(Thread.id)
        ).all()
        return self.rng.sample(found, min(len(found), self.rng.randint(1, 3))) if found else []

    def tab_action(self) -> None:
        threads = self._threads()
        if not threads:
            return
        action = self.rng.choice(["read", "unread", "archive", "delete", "later", "not_later"])
        if action in ("read", "unread"):
            mailbox.mark_read(self.user, threads, read=action == "read")
        elif action == "archive":
            mailbox.archive_threads(self.user, threads)
        elif action == "delete":
            mailbox.delete_threads(self.user, threads)
        else:
            mailbox.set_reply_later(threads, later=action == "later")

    def move(self) -> None:
        threads = self._threads()
        if threads:
            destination = self.folders[self.rng.choice(["INBOX", "Archive", "Trash", "Projects"])]
            mailbox.move_threads(self.user, threads, destination)

    def block(self) -> None:
        entries = linking.blocked_entries(self.user)
        if entries:
            linking.unblock(self.user, entries[0].id)
        else:
            linking.block(self.user, "x@spam.test")


@pytest.mark.parametrize("seed", SEEDS)
def test_kept_unread_counts_equal_a_plain_count(app, make_user, make_stored_account, seed):
    rng = random.Random(seed)
    user = make_user(email="me@team.test")
    account = make_stored_account(user)
    world = World(rng, user, account)
    # Archive and delete also move the mail on the server in half the histories.
    update_preferences(
        user,
        {key: str(rng.random() < 0.5) for key in ("archive_in_mailbox", "delete_in_mailbox")},
    )
    steps = [
        (world.new_mail, 5),
        (world.flag_change, 3),
        (world.expunge, 1),
        (world.tab_action, 4),
        (world.move, 2),
        (world.write_back, 2),
        (world.block, 1),
        (world.role_change, 1),
    ]
    history = []
    for _ in range(STEPS):
        step = rng.choices([s for s, _w in steps], weights=[w for _s, w in steps])[0]
        step()
        history.append(step.__name__)
        assert db.session.scalar(text("SELECT count(*) FROM thread_unread_stale")) == 0
        assert mailbox._unread_counts(user) == _without_zeros(reference(account.id)), history


def _without_zeros(counts):
    per_folder, lists = counts
    return {key: n for key, n in per_folder.items() if n}, lists


def test_rebuild_gives_the_kept_rows(app, make_user, make_stored_account):
    """The migration's backfill (unread.rebuild) writes what the triggers kept."""
    rng = random.Random(99)
    user = make_user(email="me@team.test")
    world = World(rng, user, make_stored_account(user))
    for _ in range(15):
        rng.choice([world.new_mail, world.new_mail, world.tab_action, world.flag_change])()
    query = text("SELECT account_id, counted_in, thread_id FROM thread_unread ORDER BY 1, 2, 3")
    kept = db.session.execute(query).all()
    assert kept
    unread.rebuild(db.session.connection())
    db.session.commit()
    assert db.session.execute(query).all() == kept


def test_a_copy_flagged_deleted_decides_read_only_when_it_is_the_last(
    app, make_user, make_stored_account, make_stored_folder, make_mailbox_message
):
    """A server without MOVE leaves a moved original in its folder, flagged \\Deleted, with
    the \\Seen it had: while the live copy exists, the live copy's flags are the mail's."""
    from mailsync import store
    from models import MessageLocation

    account = make_stored_account(make_user())
    inbox = make_stored_folder(account, "INBOX", role="inbox")
    archive = make_stored_folder(account, "Archive", role="archive")
    message = make_mailbox_message(archive, is_read=False)  # the live copy, marked unread
    original = MessageLocation(
        folder_id=inbox.id, uid=7, message_id=message.id, seen=True, flagged=True, deleted=True
    )
    db.session.add(original)
    db.session.flush()
    store.refresh_messages([message.id])
    db.session.refresh(message)
    assert not message.is_read and not message.is_flagged
    db.session.execute(delete(MessageLocation).where(MessageLocation.folder_id == archive.id))
    store.refresh_messages([message.id])  # only the flagged original left: it counts
    db.session.refresh(message)
    assert message.is_read and message.is_flagged and message.deleted_at is None
