"""Compare a folder on the server with what Threadline stored (the account page's check).

Silent loss is what CRM users fear most, so the account page can ask the worker to list,
for one folder, the mail the server has in the sync range that Threadline lacks, and the
mail Threadline keeps that the server no longer has. "Fetch again" (services.accounts)
then queues the missing UIDs for the sync engine's retry of failed fetches.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
from datetime import UTC, datetime

from imapclient.exceptions import IMAPClientError
from sqlalchemy import select

from extensions import db
from mailsync import actions, imap, store
from mailsync.sync import horizon_date
from models import FolderCheck, MailFolder, Message, MessageLocation

FOLDER_CHECK_LIMIT = 200  # entries kept per list; the counts are exact
SUBJECT_FIELD = b"BODY[HEADER.FIELDS (SUBJECT)]"


def compare_folder(app, folder_id: int) -> None:
    """Run the comparison and record it in folder_check (done or failed); commits."""
    with app.app_context():
        folder = db.session.get(MailFolder, folder_id)
        if folder is None:
            return
        account_id, name = folder.account_id, folder.name
        uidvalidity = folder.uidvalidity
        last_seen = folder.last_seen_uid
        since = horizon_date(folder.account.since)
        stored_before = store.local_uids(folder_id)
        db.session.rollback()  # no transaction held across the network
    try:
        server_all, in_range, subjects = _server_uids(
            app, account_id, name, uidvalidity, since, last_seen, stored_before
        )
    except actions.MailActionError as exc:
        with app.app_context():
            _record(folder_id, state="failed", error=exc.message)
        return
    with app.app_context():
        local = store.local_uids(folder_id)  # again: a sync may have stored some meanwhile
        missing_here = sorted(in_range - local)
        missing_there = sorted(local - server_all)
        there_rows = _stored_subjects(folder_id, missing_there[:FOLDER_CHECK_LIMIT])
        _record(
            folder_id,
            state="done",
            server_count=len(in_range),
            stored_count=len(local & in_range),
            missing_here_count=len(missing_here),
            missing_there_count=len(missing_there),
            missing_here=[
                [uid, subjects.get(uid, "")] for uid in missing_here[:FOLDER_CHECK_LIMIT]
            ],
            missing_there=there_rows,
        )


def _server_uids(
    app, account_id: int, name: str, uidvalidity, since, last_seen: int, stored: set[int]
):
    """Return (all UIDs, UIDs the sync should have stored, {uid: subject} of those not in
    `stored`); a MailActionError when the folder's UIDs are not those Threadline stored."""
    settings, allowed_ports, _roles = actions.account_settings(app, account_id)
    client = actions.connect(settings, allowed_ports)
    try:
        if not actions.select_as_stored(client, name, uidvalidity, readonly=True):
            # Comparing UIDs of two numberings would list everything as missing.
            raise actions.MailActionError(
                "the mail server has renumbered this folder (a new UIDVALIDITY); "
                "compare again once the next sync has read it"
            )
        server_all = set(client.search(["ALL"]))
        # What sync stores: undeleted mail in the horizon, up to the last UID it reached
        # (newer mail is simply not synced yet).
        criteria = ["UNDELETED", *(["SINCE", since] if since else [])]
        in_range = {uid for uid in client.search(criteria) if uid <= last_seen}
        wanted = sorted(in_range - stored)[:FOLDER_CHECK_LIMIT]
        subjects = {}
        if wanted:
            response = client.fetch(wanted, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
            for uid, data in response.items():
                header = data.get(SUBJECT_FIELD) or b""
                parsed = email.message_from_bytes(header, policy=email.policy.default)
                subjects[uid] = str(parsed.get("subject", "") or "")[:255]
        return server_all, in_range, subjects
    except (OSError, imaplib.IMAP4.error, IMAPClientError) as exc:
        raise actions.MailActionError(actions.describe_failure(exc)) from exc
    finally:
        imap.safe_logout(client)


def _stored_subjects(folder_id: int, uids: list[int]) -> list[list]:
    if not uids:
        return []
    rows = db.session.execute(
        select(MessageLocation.uid, Message.id, Message.subject)
        .join(Message, Message.id == MessageLocation.message_id)
        .where(MessageLocation.folder_id == folder_id, MessageLocation.uid.in_(uids))
        .order_by(MessageLocation.uid)
    ).all()
    return [[uid, message_id, subject] for uid, message_id, subject in rows]


def _record(folder_id: int, **values) -> None:
    check = db.session.get(FolderCheck, folder_id)
    if check is None:
        check = FolderCheck(folder_id=folder_id)
        db.session.add(check)
    for key, value in values.items():
        setattr(check, key, value)
    check.checked_at = datetime.now(UTC)
    db.session.commit()
