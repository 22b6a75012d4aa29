"""The worker's side of Mail tab write-backs: apply a queued change to the mailbox.

services/mailbox.py changes the database at once and queues a job naming location ids; the
handlers here read those locations when the job runs (so an earlier move of the same mail,
queued first, is already reflected), talk to the server through mailsync.actions, and
record the result. A MailActionError means the attempt failed; the queue retries it.
"""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select, update

from dialect import lock_rows_in_order
from extensions import db
from mailsync import actions, store
from models import MailFolder, MessageLocation

location_t = MessageLocation.__table__


def write_seen(app: Flask, account_id: int, payload: dict) -> None:
    """Write each location's wanted \\Seen (still pending) to the server."""
    with app.app_context():
        rows = db.session.execute(
            select(location_t.c.id, MailFolder.name, location_t.c.uid, location_t.c.seen)
            .join(MailFolder, MailFolder.id == location_t.c.folder_id)
            .where(
                location_t.c.id.in_(payload.get("location_ids", [])),
                location_t.c.seen_pending.is_(True),
                location_t.c.deleted.is_(False),
                location_t.c.stale.is_(False),
            )
        ).all()
        db.session.remove()
    by_value: dict[bool, list[tuple[int, str, int]]] = {}
    for location_id, folder, uid, seen in rows:
        by_value.setdefault(bool(seen), []).append((location_id, folder, uid))
    changed_folders: set[str] = set()
    for seen, items in by_value.items():
        done = set(
            actions.set_seen(app, account_id, [(folder, uid) for _id, folder, uid in items], seen)
        )
        changed_folders.update(f for _id, f, u in items if (f, u) not in done)
        with app.app_context():
            # Only where the wanted value is still the one written: a newer opposite change
            # stays pending for its own job. One not written stays pending for the sync.
            written = [location_id for location_id, f, u in items if (f, u) in done]
            lock_rows_in_order(db.session.connection(), location_t, written)
            db.session.execute(
                update(location_t)
                .where(
                    location_t.c.id.in_(written),
                    location_t.c.seen.is_(seen),
                )
                .values(seen_pending=False)
            )
            db.session.commit()
            db.session.remove()
    if changed_folders:
        # Retried once a pass has read the folder again (see move).
        raise actions.FolderChangedError(changed_folders)


def move(app: Flask, account_id: int, payload: dict) -> None:
    """Move the locations (those in a folder with payload's `from_role`, if given) to the
    folder with payload's `role` or `destination_id`.

    Raises FolderChangedError, after moving the rest, while a folder's UIDs cannot be trusted.
    """
    with app.app_context():
        if payload.get("destination_id") is not None:
            destination = db.session.get(MailFolder, payload["destination_id"])
        else:
            destination = db.session.scalar(
                select(MailFolder)
                .where(MailFolder.account_id == account_id, MailFolder.role == payload.get("role"))
                .order_by(MailFolder.id.desc())
                .limit(1)
            )
        if destination is None or destination.account_id != account_id:
            raise actions.MailActionError(
                f"the account has no {payload.get('role') or 'destination'} folder"
            )
        destination_id, destination_name = destination.id, destination.name
        rows = _named_rows(payload)
        # Archiving takes the inbox copies only, decided where the moves queued before this
        # one have left them: mail the user moved elsewhere first stays there.
        from_role = payload.get("from_role")
        rows = [row for row in rows if not from_role or row.role == from_role]
        rebuilding = {row.name for row in rows if row.stale}
        refs = [(row.name, row.uid) for row in rows if not row.stale]
        db.session.remove()
    failure = None
    try:
        result = actions.move_locations(app, account_id, refs, destination_name=destination_name)
    except actions.MailActionError as exc:  # what moved before it is in its new folder
        result, failure = actions.MoveResult(moved=exc.moved), exc
    with app.app_context():
        record_moves(account_id, result.moved, destination_id)
        db.session.commit()
        db.session.remove()
    if failure is not None:
        raise failure
    if rebuilding or result.changed_folders:
        # Retried (the worker asks for a pass): the user's mail is found again once the
        # pass has read the folder, not guessed at from UIDs that may name other mail now.
        raise actions.FolderChangedError([*rebuilding, *result.changed_folders])


def _named_rows(payload: dict) -> list:
    """Return the live locations of the user's mail a move or label job names, each with its
    folder's name and role and whether it is stale (its folder is being rebuilt).

    A job names (location, message, folder) triples: after a UIDVALIDITY rebuild another
    mail may have taken over a location row, which is then left alone, and the user's mail
    is looked for in the folder it was in. Jobs queued by an older release name locations
    only.
    """
    sources = payload.get("sources") or [[id_, None, None] for id_ in payload["location_ids"]]
    columns = (
        location_t.c.id,
        location_t.c.message_id,
        location_t.c.uid,
        location_t.c.stale,
        MailFolder.name,
        MailFolder.role,
    )
    live = (
        select(*columns)
        .join(MailFolder, MailFolder.id == location_t.c.folder_id)
        .where(location_t.c.deleted.is_(False))
    )
    by_id = {
        row.id: row
        for row in db.session.execute(
            live.where(location_t.c.id.in_([source[0] for source in sources]))
        )
    }
    rows, taken = [], set()
    for location_id, message_id, folder_id in sources:
        row = by_id.get(location_id)
        if row is not None and message_id is not None and row.message_id != message_id:
            row = None  # another mail's now
        if row is None and message_id is not None:
            row = db.session.execute(
                live.where(
                    location_t.c.message_id == message_id, location_t.c.folder_id == folder_id
                )
                .order_by(location_t.c.stale, location_t.c.id)
                .limit(1)
            ).first()
        if row is not None and row.id not in taken:
            taken.add(row.id)
            rows.append(row)
    return rows


def record_moves(
    account_id: int, moved: dict[tuple[str, int], int | None], destination_id: int | None
) -> None:
    """Point moved locations at their new folder and UID; without a UID, drop the old row.

    The message keeps its identity either way; the next sync adds any missing location.
    """
    folders = {
        name: folder_id
        for folder_id, name in db.session.execute(
            select(MailFolder.id, MailFolder.name).where(MailFolder.account_id == account_id)
        )
    }
    for (folder_name, uid), new_uid in moved.items():
        location = db.session.scalar(
            select(MessageLocation).where(
                MessageLocation.folder_id == folders.get(folder_name), MessageLocation.uid == uid
            )
        )
        if location is None:
            continue
        taken = (
            destination_id is None
            or new_uid is None
            or db.session.scalar(
                select(MessageLocation.id).where(
                    MessageLocation.folder_id == destination_id, MessageLocation.uid == new_uid
                )
            )
        )
        if taken:
            # A \Seen change still on its way goes where the mail is (as when a pass lets a
            # location go): the next pass finds it there when the server gave no new UID.
            store.keep_pending_seen(location.folder_id, location_t.c.id == location.id)
            db.session.delete(location)
        else:
            location.folder_id, location.uid = destination_id, new_uid


def change_labels(app: Flask, account_id: int, payload: dict) -> None:
    """Remove payload's `remove` Gmail labels from the locations (X-GM-LABELS STORE), then
    from the stored labels, so the label folders follow before the next sync reads them."""
    remove = [str(label) for label in payload.get("remove", [])]
    if not remove:
        return
    with app.app_context():
        rows = _named_rows(payload)
        rebuilding = {row.name for row in rows if row.stale}
        rows = [row for row in rows if not row.stale]
        db.session.remove()
    written = set(
        actions.remove_labels(app, account_id, [(row.name, row.uid) for row in rows], remove)
    )
    done = [row for row in rows if (row.name, row.uid) in written]
    with app.app_context():
        for location in db.session.scalars(
            select(MessageLocation).where(MessageLocation.id.in_([row.id for row in done]))
        ):
            location.gm_labels = [label for label in location.gm_labels if label not in remove]
        db.session.flush()
        store.refresh_labels({row.message_id for row in done})  # the rows name their mail
        db.session.commit()
        db.session.remove()
    changed = {row.name for row in rows if (row.name, row.uid) not in written}
    if rebuilding or changed:
        raise actions.FolderChangedError([*rebuilding, *changed])
