"""Mail tab actions on the IMAP server: \\Seen flags, moves, and fetching placeholder bodies.

Each call opens its own app context to read the account (so no database transaction is held
across network I/O), connects through mailsync.imap, works folder by folder with UID
commands, and logs out. Every failure becomes a MailActionError with a message in plain words.
"""

from __future__ import annotations

import imaplib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import select

from extensions import db
from mailsync import imap, store
from mailsync.blobstore import app_blob_store
from mailsync.parse import IDENTITY_HEADER_FIELDS, header_dedup_key, header_key, parse_message
from models import MailAccount, MailFolder, Message
from services.credentials import CredentialError

SEEN = b"\\Seen"
DELETED = b"\\Deleted"
ACTION_TIMEOUT = 20.0
_COPYUID_RE = re.compile(rb"COPYUID\s+\d+\s+([\d:,]+)\s+([\d:,]+)", re.IGNORECASE)

# A location on the server: (folder name, UID).
Location = tuple[str, int]


class MailActionError(Exception):
    """The server could not be updated; `message` says why in plain words. `moved`: what a
    move did before it failed (recorded all the same: that mail is in its new place)."""

    def __init__(self, message: str, *, moved: dict[Location, int | None] | None = None):
        super().__init__(message)
        self.message = message
        self.moved = moved or {}


class FolderChangedError(MailActionError):
    """A change waits for a sync pass: the folders' UIDs may name other mail now (a new
    UIDVALIDITY), so Threadline must read them again before it can find the user's mail."""

    def __init__(self, folders: Iterable[str]):
        self.folders = sorted(set(folders))
        names = ", ".join(f'"{name}"' for name in self.folders)
        super().__init__(
            f"The folder {names} changed on the mail server; the change waits until "
            "Threadline has read it again."
        )


@dataclass
class MoveResult:
    """Each moved location's new UID (None when the server did not say), and the folders
    left alone because their UIDVALIDITY is not the stored one."""

    moved: dict[Location, int | None] = field(default_factory=dict)
    changed_folders: list[str] = field(default_factory=list)


def set_seen(app, account_id: int, locations: Sequence[Location], seen: bool) -> list[Location]:
    """Add or remove \\Seen on each location (+FLAGS / -FLAGS, never FLAGS); return those
    written (see _store_each_folder).

    Not .SILENT: the server answers with the flags of each mail it changed, which tells the
    UIDs it no longer has (another mail program moved or deleted the mail meanwhile). STORE
    on those is an OK that changed nothing; they are not written, so the change stays
    pending until a sync pass finds where the mail went.
    """

    def store(client: IMAPClient, uids: list[int]) -> set[int]:
        if seen:
            answered = client.add_flags(uids, [SEEN])
        else:
            answered = client.remove_flags(uids, [SEEN])
        # Mail marked \Deleted is on its way out (a move by COPY, \Deleted, EXPUNGE in
        # another mail program): the change must reach the copy, so it is not written yet.
        present = {uid for uid, flags in answered.items() if DELETED not in flags} & set(uids)
        unanswered = sorted(set(uids) - set(answered))
        if unanswered:
            # A server may leave out mail whose flags did not change: ask which are there.
            listed = ",".join(map(str, unanswered))
            present |= set(client.search(["UID", listed, "UNDELETED"]))
        return present

    return _store_each_folder(app, account_id, locations, store)


def remove_labels(
    app, account_id: int, locations: Sequence[Location], labels: list[str]
) -> list[Location]:
    """Remove Gmail labels from each location (UID STORE -X-GM-LABELS.SILENT); return those
    written (see _store_each_folder)."""
    if not labels:
        return []
    return _store_each_folder(
        app,
        account_id,
        locations,
        lambda client, uids: client.remove_gmail_labels(uids, labels, silent=True),
    )


def _store_each_folder(
    app,
    account_id: int,
    locations: Sequence[Location],
    store: Callable[[IMAPClient, list[int]], set[int] | None],
) -> list[Location]:
    """SELECT each folder of the locations and `store` on its UIDs, on one connection;
    return the locations stored on (a folder whose UIDs now name other mail is skipped, and
    UIDs `store` says the folder no longer has; None: every one)."""
    if not locations:
        return []
    settings, allowed_ports, _folders = account_settings(app, account_id)
    uidvalidity = stored_uidvalidity(app, account_id)
    client = connect(settings, allowed_ports)
    done: list[Location] = []
    try:
        for folder, uids in _by_folder(locations).items():
            if not select_as_stored(client, folder, uidvalidity.get(folder)):
                continue
            present = store(client, uids)
            done += [(folder, uid) for uid in uids if present is None or uid in present]
    except (OSError, imaplib.IMAP4.error, IMAPClientError) as exc:
        raise MailActionError(describe_failure(exc)) from exc
    finally:
        imap.safe_logout(client)
    return done


def select_as_stored(
    client: IMAPClient, folder: str, uidvalidity: int | None, *, readonly: bool = False
) -> bool:
    """SELECT the folder; tell whether its UIDs still name the mail Threadline stored there.

    After a UIDVALIDITY change (RFC 3501 §2.3.1.1) a stored UID may name other mail: the
    change waits for the next sync pass to read the folder again rather than land on it.
    """
    selected = client.select_folder(folder, readonly=readonly)
    return uidvalidity is None or selected.get(b"UIDVALIDITY") in (None, uidvalidity)


def move_locations(
    app,
    account_id: int,
    locations: Sequence[Location],
    destination_role: str | None = None,
    *,
    destination_name: str | None = None,
) -> MoveResult:
    """Move locations to the folder with `destination_role` (or named `destination_name`).

    Uses MOVE when the server advertises it, else COPY + \\Deleted + UID EXPUNGE. The result
    holds each moved location's new UID when the server reported it (COPYUID, RFC 4315).
    """
    if not locations:
        return MoveResult()
    settings, allowed_ports, folders = account_settings(app, account_id)
    destination = destination_name or folders.get(destination_role or "")
    if destination is None:
        raise MailActionError(f"the account has no {destination_role or 'destination'} folder")
    uidvalidity = stored_uidvalidity(app, account_id)
    client = connect(settings, allowed_ports)
    result = MoveResult()
    try:
        for folder, uids in _by_folder(locations).items():
            if folder == destination:
                continue
            try:
                trusted = select_as_stored(client, folder, uidvalidity.get(folder))
            except (imaplib.IMAP4.error, IMAPClientError) as exc:
                if not _is_missing_folder(exc):
                    raise
                trusted = False  # deleted on the server: the next pass lets its mail go
            if not trusted:
                result.changed_folders.append(folder)
                continue
            new_uids = _move_uids(client, uids, destination)
            for uid in uids:
                result.moved[(folder, uid)] = new_uids.get(uid)
    except (OSError, imaplib.IMAP4.error, IMAPClientError) as exc:
        raise MailActionError(describe_failure(exc), moved=result.moved) from exc
    finally:
        imap.safe_logout(client)
    return result


def _move_uids(client: IMAPClient, uids: list[int], destination: str) -> dict[int, int]:
    """Move the selected folder's `uids` to `destination`; return {old UID: new UID} for
    those whose new UID is known."""
    reports_uids = client.has_capability("MOVE") and client.has_capability("UIDPLUS")
    # Without COPYUID the new UIDs are found by the mail's header fields and size (as sync
    # finds copies): a later queued move or \Seen of this mail then finds it at once.
    identities = {} if reports_uids else _identities(client, uids)
    first_new = {} if reports_uids else client.folder_status(destination, [b"UIDNEXT"])
    if client.has_capability("MOVE"):
        client._imap.untagged_responses.pop("COPYUID", None)
        response = client.move(uids, destination)
        # RFC 6851: MOVE reports COPYUID in an untagged OK, which imaplib files by code.
        untagged = client._imap.untagged_responses.pop("COPYUID", [])
        moved = _parse_copyuid([*(b"COPYUID " + item for item in untagged), _as_bytes(response)])
    else:
        moved = _parse_copyuid([_as_bytes(client.copy(uids, destination))])
        client.add_flags(uids, [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        # Without UIDPLUS a plain EXPUNGE would also remove mail the user flagged \Deleted
        # elsewhere, so the originals stay flagged for the user's own client to expunge.
    missing = {uid: key for uid, key in identities.items() if uid not in moved}
    if missing and first_new.get(b"UIDNEXT"):
        moved.update(_copies_by_identity(client, destination, first_new[b"UIDNEXT"], missing))
    return moved


_IDENTITY_ITEMS = [f"BODY.PEEK[HEADER.FIELDS ({IDENTITY_HEADER_FIELDS})]", "RFC822.SIZE"]


def _identities(client: IMAPClient, uids: list[int]) -> dict[int, tuple[str, int]]:
    """Return {uid: (header key, size)} of the selected folder's mail that has a Message-ID."""
    found = {}
    for uid, data in client.fetch(uids, _IDENTITY_ITEMS).items():
        header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER")), None)
        key = header_dedup_key(header or b"")
        if key is not None and data.get(b"RFC822.SIZE") is not None:
            found[uid] = (key, int(data[b"RFC822.SIZE"]))
    return found


def _copies_by_identity(
    client: IMAPClient, destination: str, first_new: int, wanted: dict[int, tuple[str, int]]
) -> dict[int, int]:
    """Return {old UID: new UID} for the copies that arrived in `destination` from UID
    `first_new` on, matched by header key and size; a match that is not one to one is left
    for the next sync."""
    client.select_folder(destination, readonly=True)
    arrived = _identities(client, [f"{first_new}:*"])
    new_by_key: dict[tuple[str, int], list[int]] = defaultdict(list)
    for uid, key in arrived.items():
        if uid >= first_new:  # "N:*" names the last mail even when nothing is newer
            new_by_key[key].append(uid)
    old_by_key: dict[tuple[str, int], list[int]] = defaultdict(list)
    for uid, key in wanted.items():
        old_by_key[key].append(uid)
    return {
        old[0]: new_by_key[key][0]
        for key, old in old_by_key.items()
        if len(old) == 1 and len(new_by_key.get(key, [])) == 1
    }


def _parse_copyuid(responses: Iterable[bytes]) -> dict[int, int]:
    mapping: dict[int, int] = {}
    for response in responses:
        for match in _COPYUID_RE.finditer(response or b""):
            sources, targets = _uid_set(match.group(1)), _uid_set(match.group(2))
            if len(sources) == len(targets):
                mapping.update(zip(sources, targets, strict=True))
    return mapping


def _uid_set(text: bytes) -> list[int]:
    uids: list[int] = []
    for part in text.decode().split(","):
        start, _, end = part.partition(":")
        low, high = int(start), int(end or start)
        step = 1 if high >= low else -1
        uids.extend(range(low, high + step, step))
    return uids


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value or "").encode()


def _by_folder(locations: Sequence[Location]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for folder, uid in locations:
        groups[folder].append(int(uid))
    return groups


def account_settings(app, account_id: int):
    """Return (connection settings, allowed ports, {role: folder name}) of an account."""
    with app.app_context():
        account = db.session.get(MailAccount, account_id)
        if account is None:
            raise MailActionError("the mail account no longer exists")
        try:
            settings = imap.account_settings(
                app, account, timeout=app.config.get("MAIL_ACTION_TIMEOUT", ACTION_TIMEOUT)
            )
        except CredentialError as exc:
            raise MailActionError(exc.args[0]) from exc
        except imap.MailConnectionError as exc:  # an OAuth2 token could not be renewed
            raise MailActionError(exc.message) from exc
        folders = {
            role: name
            for role, name in db.session.execute(
                select(MailFolder.role, MailFolder.name)
                .where(MailFolder.account_id == account_id, MailFolder.role.is_not(None))
                .order_by(MailFolder.id.desc())
            )
        }
    return settings, imap.allowed_ports(app.config), folders


def stored_uidvalidity(app, account_id: int) -> dict[str, int | None]:
    """Return {folder name: the UIDVALIDITY its stored UIDs belong to} of an account."""
    with app.app_context():
        return dict(
            db.session.execute(
                select(MailFolder.name, MailFolder.uidvalidity).where(
                    MailFolder.account_id == account_id
                )
            ).all()
        )


def connect(settings: imap.ConnectionSettings, allowed_ports) -> IMAPClient:
    """Connect and log in; a failure is a MailActionError in plain words."""
    try:
        return imap.connect(settings, allowed_ports=allowed_ports)
    except imap.MailConnectionError as exc:
        raise MailActionError(exc.message) from exc


def _is_missing_folder(exc: BaseException) -> bool:
    """Whether the server's error says the folder does not exist (RFC 5530 NONEXISTENT,
    TRYCREATE, or in words: servers without response codes)."""
    words = str(exc).lower()
    return any(
        sign in words
        for sign in ("nonexistent", "trycreate", "doesn't exist", "does not exist", "no such")
    )


def describe_failure(exc: BaseException) -> str:
    """Plain words for a network or IMAP error during an action."""
    if isinstance(exc, OSError):
        return "the connection to the mail server was lost"
    if _is_missing_folder(exc):
        return (
            "a folder of this change no longer exists on the mail server (deleted or "
            "renamed in another mail program); Threadline shows the mail where the server "
            "has it after its next sync"
        )
    return f"the mail server refused the change ({str(exc)[:200]})"


def fetch_full_message(app, message_id: int) -> None:
    """Download the body of a header-only placeholder on demand and store it; commits.

    Reads the locations first and writes after the download, so no transaction is held across
    network I/O. Raises MailActionError when no server location still has the message.
    """
    with app.app_context():
        message = db.session.get(Message, message_id)
        if message is None:
            raise MailActionError("the message no longer exists")
        account_id = message.account_id
        expected_header_key = message.header_key
        locations = [(loc.folder.name, loc.uid) for loc in message.locations if not loc.stale]
    settings, allowed_ports, _folders = account_settings(app, account_id)
    uidvalidity = stored_uidvalidity(app, account_id)
    client = connect(settings, allowed_ports)
    raw = None
    changed_folders = []
    try:
        for folder, uid in locations:
            if not select_as_stored(client, folder, uidvalidity.get(folder), readonly=True):
                changed_folders.append(folder)
                continue
            raw = client.fetch([uid], ["BODY.PEEK[]"]).get(uid, {}).get(b"BODY[]")
            if raw and expected_header_key and header_key(raw) != expected_header_key:
                raw = None  # other mail at this UID: never stored as this message's body
            if raw:
                break
    except (OSError, imaplib.IMAP4.error, IMAPClientError) as exc:
        raise MailActionError(describe_failure(exc)) from exc
    finally:
        imap.safe_logout(client)
    if not raw and changed_folders:
        raise FolderChangedError(changed_folders)
    if not raw:
        raise MailActionError("the mail server no longer has this message")
    with app.app_context():
        sha = app_blob_store(app).put(raw)
        store.replace_placeholder(message_id, sha, parse_message(raw), len(raw))
        db.session.commit()
