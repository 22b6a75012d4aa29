"""The Mail tab: folders with unread counts, the conversation list, and its actions.

Every query starts from services.access (`owned_threads`, `owned_folders`); thread ids the
user does not own are ignored, never acted on. Blocked and deleted threads never show.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.orm import contains_eager

from dialect import id_in, is_sqlite, json_text, likely, lock_rows_in_order
from extensions import db
from models import (
    GMAIL_LABEL,
    Deal,
    Lead,
    MailFolder,
    Message,
    MessageLabel,
    MessageLocation,
    MessagePerson,
    Person,
    Project,
    Thread,
    User,
    UTCDateTime,
)
from services import access, job_queue
from services.errors import ValidationError
from services.inputs import search_text
from services.linking import own_addresses
from services.mail_display import (
    UNKNOWN_SENDER,
    display_text,
    sender_label,
    short_name,
    subject_label,
)
from services.preferences import get_preference
from services.request_memo import remembered
from services.search import (
    account_rows,
    first_matching_ids,
    match_expression,
    matching_threads_sql,
    remove_from_index,
    search_rowid,
)
from services.time_display import full_label, list_label, zone_for
from services.unread import unread_counts

PAGE_SIZE = 50
FEW_MATCHES = 2000  # matching conversations up to which the list is built from the matches
FEW_IDS = 200  # matching conversations up to which SQLite binds their ids (_few_ids)
SMALL_FOLDER = 2000  # folder messages up to which threads are found from the folder
# Role folders shown first, in this order; "archive" is Threadline's archive (Thread.archived)
# and "later" its Reply later list (Thread.reply_later), neither of them a server folder.
ROLE_FOLDERS = (
    ("inbox", "Inbox"),
    ("later", "Reply later"),
    ("sent", "Sent"),
    ("archive", "Archive"),
    ("trash", "Trash"),
    ("junk", "Spam"),
)
ROLE_KEYS = {key for key, _label in ROLE_FOLDERS}
LINKED_CHOICES = ("", "linked", "unlinked")
SHARING_CHOICES = ("", "shared", "private")
ACTIONS = ("read", "unread", "archive", "delete", "move", "later", "not_later")
# Keys of the lists that live in Threadline only, not in a server folder.
THREADLINE_LISTS = ("inbox", "later", "archive")
# Moving a conversation never drags along the user's own sent copies or drafts.
UNMOVED_ROLES = ("sent", "drafts")
DATE_FORMATS = {"iso": "%Y-%m-%d", "us": "%m/%d/%Y", "eu": "%d.%m.%Y"}


# --------------------------------------------------------------------------- query


@dataclass(frozen=True)
class MailboxQuery:
    """What the list shows: folder, search text, filters and the keyset cursor."""

    folder: str = "inbox"
    q: str = ""
    unread: bool = False
    attachments: bool = False
    linked: str = ""
    sharing: str = ""
    after: str = ""

    def params(self, **overrides) -> dict[str, str]:
        """Return the non-default values as URL parameters (cursor excluded unless given)."""
        values = replace(self, **{"after": "", **overrides})
        params = {
            "folder": values.folder if values.folder != "inbox" else "",
            "q": values.q,
            "unread": "1" if values.unread else "",
            "attachments": "1" if values.attachments else "",
            "linked": values.linked,
            "sharing": values.sharing,
            "after": values.after,
        }
        return {key: value for key, value in params.items() if value}

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.unread or self.attachments or self.linked or self.sharing)


def parse_query(values: Mapping[str, str]) -> MailboxQuery:
    """Build a MailboxQuery from GET or form values; unknown values fall back to defaults."""
    folder = (values.get("folder") or "inbox").strip()
    if folder not in ROLE_KEYS and not _folder_id(folder):
        folder = "inbox"
    linked = values.get("linked") or ""
    sharing = values.get("sharing") or ""
    return MailboxQuery(
        folder=folder,
        q=search_text(values.get("q")),
        unread=values.get("unread") in ("1", "on", "true"),
        attachments=values.get("attachments") in ("1", "on", "true"),
        linked=linked if linked in LINKED_CHOICES else "",
        sharing=sharing if sharing in SHARING_CHOICES else "",
        after=(values.get("after") or "")[:40],
    )


def _folder_id(key: str) -> int | None:
    if key.startswith("f") and key[1:].isdigit() and len(key) < 12:
        return int(key[1:])
    return None


# --------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class FolderEntry:
    key: str
    label: str
    unread: int
    role: str | None = None
    folder_id: int | None = None


def list_folders(user: User, *, counts: bool = True) -> list[FolderEntry]:
    """Return the sidebar: role folders, then the user's other synced folders.

    Unread counts are filled in unless `counts` is False (the page then loads them lazily).
    """
    folders = [
        folder
        for folder in _owned_folders(user)
        if folder.sync_enabled or folder.state == GMAIL_LABEL
    ]
    per_folder, list_unread = _unread_counts(user) if counts else ({}, {})
    role_unread: dict[str, int] = defaultdict(int, list_unread)
    for folder in folders:
        if folder.role in ROLE_KEYS and folder.role not in THREADLINE_LISTS:
            role_unread[folder.role] += per_folder.get(folder.id, 0)
    # Threadline's own lists always; a server role (Sent, Trash, Spam) only where a synced
    # folder has it, so the sidebar never offers a folder the server does not have.
    server_roles = {folder.role for folder in folders}
    entries = [
        FolderEntry(key, label, role_unread[key], key)
        for key, label in ROLE_FOLDERS
        if key in THREADLINE_LISTS or key in server_roles
    ]
    several_accounts = len({folder.account_id for folder in folders}) > 1
    for folder in folders:
        if folder.role in ROLE_KEYS and folder.role != "archive":
            continue
        # The server's Archive folder is not Threadline's Archive list: name it apart.
        label = "Archive (mailbox)" if folder.role == "archive" else folder_label(folder)
        if several_accounts:
            label = f"{folder.account.email_address}: {label}"
        entries.append(
            FolderEntry(
                f"f{folder.id}", label, per_folder.get(folder.id, 0), folder.role, folder.id
            )
        )
    return entries


def folder_label(folder: MailFolder) -> str:
    """Return a folder's name as shown: a Gmail system label without its "[Gmail]/" part."""
    if folder.state == GMAIL_LABEL and folder.name.startswith("[") and "]/" in folder.name:
        return folder.name.split("]/", 1)[1]
    return folder.name


def has_mailbox(user: User) -> bool:
    """Tell whether the user has connected a mailbox of their own."""
    return bool(_account_ids(user))


def folder_title(user: User, key: str) -> str:
    """Return the heading of a folder key ("Inbox", or a synced folder's name)."""
    folder_id = _folder_id(key)
    if folder_id is None:
        return dict(ROLE_FOLDERS).get(key, "Inbox")
    return folder_label(_own_folder(user, folder_id))


def move_destinations(user: User) -> list[FolderEntry]:
    """Return the folders a conversation can be moved to (not Sent or Drafts)."""
    folders = [
        folder
        for folder in _owned_folders(user)
        if folder.sync_enabled and folder.role not in UNMOVED_ROLES
    ]
    folders.sort(key=lambda folder: folder.role is None)  # those with a role first (stable)
    return [
        FolderEntry(f"f{folder.id}", folder.name, 0, folder.role, folder.id) for folder in folders
    ]


def _owned_folders(user: User) -> list[MailFolder]:
    """Return the folders of the user's mailboxes, with their accounts, by account and name;
    read once per web request (the sidebar and the Move menu both list them)."""
    query = (
        access.owned_folders(user)
        .options(contains_eager(MailFolder.account))
        .order_by(MailFolder.account_id, MailFolder.name)
    )
    return remembered("owned_folders", user.id, lambda: list(db.session.scalars(query)))


def _own_folder(user: User, folder_id: int) -> MailFolder:
    """Return one of the user's folders from the request's folder read (a folder page asks
    for its title and for each mailbox's list); any other id gets access's 404."""
    for folder in _owned_folders(user):
        if folder.id == folder_id:
            return folder
    return access.folder_for_owner(user, folder_id)  # not the user's: it aborts


def _unread_counts(user: User) -> tuple[dict[int, int], dict[str, int]]:
    """Count threads with an unread live message: per folder, and per Threadline list
    (Inbox, Reply later, Archive).

    Read from the rows services/unread.py keeps current (one GROUP BY over an index of the
    unread conversations' places), not by walking the unread messages on every request.
    """
    return unread_counts(_account_ids(user))


def _unread_live() -> ColumnElement[bool]:
    """Unread live messages, spelled exactly as ix_message_unread's WHERE so it is used."""
    return and_(
        Message.is_read.is_(False), Message.deleted_at.is_(None), Message.blocked.is_(False)
    )


# --------------------------------------------------------------------------- list


@dataclass(frozen=True)
class Chip:
    kind: str  # person | deal | lead | project
    record_id: int
    label: str


@dataclass
class ThreadRow:
    id: int
    subject: str
    participants: str
    snippet: str
    date_label: str
    date_title: str
    message_count: int
    shared: bool
    unread: bool = False
    has_attachments: bool = False
    needs_link_choice: bool = False
    reply_later: bool = False
    chips: list[Chip] = field(default_factory=list)


@dataclass
class ThreadPage:
    rows: list[ThreadRow]
    next_cursor: str | None


def list_threads(user: User, query: MailboxQuery, *, now: datetime | None = None) -> ThreadPage:
    """Return one page of conversations, newest first, after `query.after` (keyset)."""
    cursor = _decode_cursor(query.after)
    threads: list[Thread] = []
    # One query per mail account, merged here: with account_id = ? the (account_id,
    # last_date, id) index yields threads in page order and stops at the page; with
    # account_id IN (...) SQLite has to sort every thread of the user first.
    for account_id in _account_ids(user):
        search = _search_plan(query.q, account_id) if query.q else None
        if search is not None and search.common:
            walked = _walk_search(user, query, account_id, cursor, search)
            if walked is not None:
                threads.extend(walked)
                continue
        base = threads_select(user, query, account_id, search=search)
        threads.extend(_first_after(base, cursor, PAGE_SIZE + 1))
    threads.sort(key=_page_order, reverse=True)
    page, more = threads[:PAGE_SIZE], len(threads) > PAGE_SIZE
    rows = _rows(user, page, now or datetime.now(UTC))
    return ThreadPage(rows=rows, next_cursor=_encode_cursor(page[-1]) if more else None)


def keyset_page(
    stmt: Select[tuple[Thread]], after: str, size: int
) -> tuple[list[Thread], str | None]:
    """Return the first `size` threads of `stmt` in list order (newest first, undated last)
    after the cursor `after`, and the cursor of the next page (None on the last page).

    Reads at most size + 1 rows of an index ordered like the list (e.g. the record link
    indexes (deal_id, last_date, id)): the cost is the page's, not the whole list's.
    """
    found = _first_after(stmt, _decode_cursor(after), size + 1)
    page = found[:size]
    return page, _encode_cursor(page[-1]) if len(found) > size else None


def _first_after(
    stmt: Select[tuple[Thread]], cursor: tuple[datetime | None, int] | None, limit: int
) -> list[Thread]:
    """Return the first `limit` threads of `stmt` in list order after `cursor`."""
    found = list(
        db.session.scalars(
            (stmt if cursor is None else stmt.where(_after(cursor)))
            .order_by(*NEWEST_FIRST)
            .limit(limit)
        )
    )
    if cursor is not None and cursor[0] is not None and len(found) < limit:
        # Undated threads sort last: once the dated ones run out, continue with them.
        undated = stmt.where(Thread.last_date.is_(None)).order_by(Thread.id.desc())
        found += db.session.scalars(undated.limit(limit - len(found)))
    return found


STEPS = ("newer", "older")


def neighbour(user: User, query: MailboxQuery, thread: Thread, step: str) -> int | None:
    """Return the id of the conversation just above ("newer") or below ("older") `thread`
    in the query's list, or None at that end of the list.

    The conversation page's Newer / Older links (k / j) walk the list it was opened from,
    search and filters included. List order is (last_date DESC, id DESC) with undated
    threads last; each step is an index range read per account, like the list itself.
    """
    key = _page_order(thread)
    dated = thread.last_date is not None
    found: list[Thread] = []
    for account_id in _account_ids(user):
        base = threads_select(user, query, account_id)
        undated = base.where(Thread.last_date.is_(None))
        if step == "older":
            candidate = _first(base.where(_after((thread.last_date, thread.id))), descending=True)
            if candidate is None and dated:
                candidate = _first(undated, descending=True)
        elif dated:
            position = tuple_(Thread.last_date, Thread.id) > _row_value(thread)
            candidate = _first(base.where(position), descending=False)
        else:
            candidate = _first(undated.where(Thread.id > thread.id), descending=False)
            if candidate is None:
                candidate = _first(base.where(Thread.last_date.is_not(None)), descending=False)
        if candidate is not None:
            found.append(candidate)
    if step == "older":
        below = [t for t in found if _page_order(t) < key]
        return max(below, key=_page_order).id if below else None
    above = [t for t in found if _page_order(t) > key]
    return min(above, key=_page_order).id if above else None


# The list order. NULLS LAST / FIRST as SQLite sorts NULL (smallest) anyway, which SQLite then
# ignores (the index still serves it); PostgreSQL sorts NULL as the largest value.
NEWEST_FIRST = (Thread.last_date.desc().nulls_last(), Thread.id.desc())
OLDEST_FIRST = (Thread.last_date.asc().nulls_first(), Thread.id.asc())


def _first(stmt: Select[tuple[Thread]], *, descending: bool) -> Thread | None:
    """Return the first thread of `stmt` in list order (descending) or against it."""
    order = NEWEST_FIRST if descending else OLDEST_FIRST
    return db.session.scalars(stmt.order_by(*order).limit(1)).first()


def _row_value(thread: Thread):
    return tuple_(literal(thread.last_date, UTCDateTime()), literal(thread.id))


def _account_ids(user: User) -> list[int]:
    """Return the ids of the user's mailboxes; read once per web request (the Mail tab's
    list, folders, saving state and empty-state check each need them)."""
    return [account.id for account in access.own_accounts(user.id)]


def _page_order(thread: Thread) -> tuple[bool, datetime | None, int]:
    """Sort key of the list, for reverse=True: (last_date DESC NULLS LAST, id DESC)."""
    return thread.last_date is not None, thread.last_date, thread.id


def threads_select(
    user: User, query: MailboxQuery, account_id: int, *, search: SearchPlan | None = None
) -> Select[tuple[Thread]]:
    """Return the select of the user's threads of one mail account in the query's folder
    matching its filters (`search`: the query's search plan when the caller has it)."""
    stmt = access.owned_threads(user).where(Thread.account_id == account_id)
    stmt = stmt.where(_not(Thread.blocked))
    stmt = stmt.where(_folder_condition(user, query.folder, account_id))
    if query.unread:
        stmt = stmt.where(_has_unread())
    if query.attachments:
        stmt = stmt.where(
            exists().where(
                Message.thread_id == Thread.id, _live_message(), Message.has_attachments.is_(True)
            )
        )
    is_linked = or_(
        Thread.deal_id.is_not(None), Thread.lead_id.is_not(None), Thread.project_id.is_not(None)
    )
    if query.linked == "linked":
        stmt = stmt.where(is_linked)
    elif query.linked == "unlinked":
        stmt = stmt.where(~is_linked)
    if query.sharing:
        stmt = stmt.where(Thread.shared.is_(query.sharing == "shared"))
    if query.q:
        stmt = stmt.where((search or _search_plan(query.q, account_id)).condition)
    return stmt


def _folder_condition(user: User, key: str, account_id: int) -> ColumnElement[bool]:
    if key == "later":
        return Thread.reply_later.is_(True)  # spelled as ix_thread_reply_later's WHERE
    if key == "archive":
        # Spelled as ix_thread_archive_list's WHERE (with owned_threads' deleted_at IS NULL).
        return Thread.archived.is_(True)
    if key == "inbox":
        # Threadline's Inbox, not the server's: see Thread.in_inbox. Spelled as
        # ix_thread_inbox's WHERE, so only Inbox threads are walked.
        live = exists().where(Message.thread_id == Thread.id, _live_message())
        return and_(Thread.in_inbox.is_(True), Thread.archived.is_(False), live)
    folder_id = _folder_id(key)
    if folder_id is not None:
        folder = _own_folder(user, folder_id)
        if folder.account_id != account_id:
            return false()  # a folder holds only its own mailbox's mail
        if folder.state == GMAIL_LABEL:
            return _label_condition([folder.id])
        return _mail_condition([folder.id])
    # A server role (Sent, Trash, Spam): this mailbox's folders of that role, bound as ids.
    # Given them as a subquery, PostgreSQL estimated an average folder's share of all
    # locations and scanned every location to find an empty Trash empty (21 ms at 100,000).
    role_folders = [
        folder
        for folder in _owned_folders(user)
        if folder.role == key and folder.account_id == account_id
    ]
    folder_ids = [folder.id for folder in role_folders if folder.state != GMAIL_LABEL]
    labels = [folder.id for folder in role_folders if folder.state == GMAIL_LABEL]
    found = [_mail_condition(folder_ids)] if folder_ids else []
    if labels:  # Gmail's Sent is a label: its mail is found through the label's rows
        found.append(_label_condition(labels))
    return or_(*found) if found else false()


def _label_condition(folder_ids: list[int]) -> ColumnElement[bool]:
    """Threads with a live message carrying one of these Gmail labels (models.MessageLabel)."""
    return _threads_with(MessageLabel.message_id, MessageLabel.folder_id.in_(folder_ids))


def _mail_condition(folder_ids: list[int]) -> ColumnElement[bool]:
    """Threads with a live message in one of these server folders."""
    in_folder = and_(MessageLocation.folder_id.in_(folder_ids), MessageLocation.deleted.is_(False))
    return _threads_with(MessageLocation.message_id, in_folder)


def _threads_with(message_id, member: ColumnElement[bool]) -> ColumnElement[bool]:
    """Threads with a live message that has a row matching `member` in the table of the
    column `message_id` (a folder's locations, a label's rows)."""
    rows = select(literal(1)).select_from(message_id.class_).where(member)
    if _few_rows(rows, SMALL_FOLDER):
        # A small folder (often an empty Trash or Spam): take its few threads from its
        # rows; walking the account's threads newest first would pass all of them.
        # The ids are read first and bound as a list: given the subquery instead,
        # PostgreSQL still walks the account's list index expecting an early stop, and in
        # an empty folder it walks all of it (263 ms at 100,000 messages). No DISTINCT in
        # SQL: for it SQLite walks every message in thread order (100 ms for an empty
        # Trash at 100,000) instead of the folder's few rows (0.05 ms).
        thread_ids = db.session.scalars(
            select(Message.thread_id)
            .select_from(message_id.class_)
            .join(Message, message_id == Message.id)
            .where(member, _live_message())
        )
        return id_in(Thread.id, sorted(set(thread_ids)), db.engine.dialect.name)
    # A big folder: walk threads newest first (index order) and stop at the page.
    return exists().where(
        Message.thread_id == Thread.id, _live_message(), message_id == Message.id, member
    )


def _few_rows(rows: Select, limit: int) -> bool:
    """Tell whether `rows` has at most `limit` rows (reads at most limit + 1)."""
    found = rows.limit(limit + 1)
    return (db.session.scalar(select(func.count()).select_from(found.subquery())) or 0) <= limit


@dataclass(frozen=True)
class SearchPlan:
    """How one mailbox is searched for a query: the SQL condition on Thread, and whether the
    term is common (more than FEW_MATCHES conversations match)."""

    condition: ColumnElement[bool]
    common: bool = False
    sql: str = ""
    match: str = ""


def _search_plan(raw_query: str, account_id: int) -> SearchPlan:
    connection = db.session.connection()
    expression = match_expression(connection, raw_query)
    if expression is None:
        return SearchPlan(Thread.id.is_(None))  # nothing searchable: no results, not everything
    rows = account_rows(account_id)
    first = first_matching_ids(connection, expression, rows, limit=FEW_MATCHES + 1)
    if len(first) <= min(_few_ids(connection), FEW_MATCHES):
        # A handful of matches (a person's address, a rare word) are used as they are: a
        # second MATCH would cost the first again (a long prefix merges its whole doclist).
        return SearchPlan(id_in(Thread.id, first, connection.dialect.name))
    sql = matching_threads_sql(connection)
    matching = text(sql).bindparams(match=expression, **rows).columns(thread_id=Integer)
    if len(first) <= FEW_MATCHES:
        # A rare term: fetch just the few matching threads, then sort them (as many bound
        # ids cost more than the second MATCH).
        return SearchPlan(Thread.id.in_(matching))
    # A common term, where the whole set is needed (neighbour steps, and the fallback of
    # _walk_search): walk threads newest first (index order) and stop at the page, probing
    # each in the set of matching ids, which SQLite builds once. "+ 0" keeps SQLite from
    # driving the walk by the set (and sorting every match).
    return SearchPlan((Thread.id + 0).in_(matching), common=True, sql=sql, match=expression)


def _few_ids(connection) -> int:
    """Matching conversations up to which their ids are bound into the list query.

    On SQLite up to FEW_IDS: binding more costs more than a second MATCH. On PostgreSQL
    every set of matches the list is built from (FEW_MATCHES): given the MATCH as a
    subquery, its planner probed the search index once per conversation of the account when
    its statistics did not know the account yet (a new mailbox's first sync: 1.3 s a page).
    """
    return FEW_IDS if is_sqlite(connection) else FEW_MATCHES


WALK_FIRST_CHUNK = 4 * (PAGE_SIZE + 1)  # conversations looked at first; doubled each round
WALK_LIMIT = 50_000  # conversations walked before falling back to the whole set of matches


def _walk_search(
    user: User,
    query: MailboxQuery,
    account_id: int,
    cursor: tuple[datetime | None, int] | None,
    search: SearchPlan,
) -> list[Thread] | None:
    """Return the first PAGE_SIZE + 1 conversations of the list matching a common term, or
    None when this walk cannot tell (the caller then uses the whole set of matches).

    Walks the list (folder and filters, without the term) newest first through its index
    in chunks of growing size, and asks the search index only which conversations of each
    chunk's id range match: the work is bounded by the page and the matches' density, not
    by how many conversations match in the whole mailbox (the set the fallback builds).
    Each chunk's members are tested exactly, so the page is the one the full query gives;
    a chunk's id range is narrow when ids follow dates, as sync's store gives them.
    """
    # (Ids and dates only: building Thread objects for every row walked cost more than the
    # walk itself; the page's few are loaded at the end.)
    base = threads_select(user, replace(query, q=""), account_id).with_only_columns(
        Thread.id, Thread.last_date
    )
    hits: list[int] = []
    walked, size, position = 0, WALK_FIRST_CHUNK, cursor
    while walked < WALK_LIMIT:
        # After a dated position only dated threads come (an index range); the undated ones,
        # last in list order, are walked once those run out (as list_threads does).
        stmt = base if position is None else base.where(_after(position))
        chunk = db.session.execute(stmt.order_by(*NEWEST_FIRST).limit(size)).all()
        if chunk:
            ids = [thread_id for thread_id, _last_date in chunk]
            rows = {
                "first": search_rowid(account_id, min(ids)),
                "last": search_rowid(account_id, max(ids)),
            }
            matched = set(
                db.session.scalars(text(search.sql).bindparams(match=search.match, **rows))
            )
            hits.extend(thread_id for thread_id in ids if thread_id in matched)
        if len(hits) > PAGE_SIZE:
            return _threads_in_order(hits[: PAGE_SIZE + 1])
        walked += len(chunk)
        if len(chunk) == size:
            position = (chunk[-1][1], chunk[-1][0])
        elif position is not None and position[0] is not None:
            position = (None, _ALL_UNDATED)  # the dated threads ran out: the undated next
        else:
            return _threads_in_order(hits)  # the whole list was walked
        size *= 2
    return None


def _threads_in_order(ids: list[int]) -> list[Thread]:
    page = select(Thread).where(id_in(Thread.id, ids, db.engine.dialect.name))
    found = {t.id: t for t in db.session.scalars(page)}
    return [found[thread_id] for thread_id in ids]


_ALL_UNDATED = 2**31 - 1  # an id above every thread id: _after((None, it)) is every undated one


def _live_message() -> ColumnElement[bool]:
    # likely(): almost every message is live, so these columns' indexes are never worth it.
    return and_(likely(Message.deleted_at.is_(None)), likely(Message.blocked.is_(False)))


def _not(flag) -> ColumnElement[bool]:
    """Return `flag` is false, wrapped in SQLite's likely() so the planner skips its index.

    Without ANALYZE statistics SQLite prefers an index on a boolean (ix_thread_blocked)
    over the (last_date) index that serves ORDER BY ... LIMIT, and sorts every thread.
    """
    return likely(flag.is_(False))


def _has_unread() -> ColumnElement[bool]:
    return exists().where(
        Message.thread_id == Thread.id, _live_message(), Message.is_read.is_(False)
    )


def _encode_cursor(thread: Thread) -> str:
    if thread.last_date is None:
        return f"n.{thread.id}"
    micros = int(thread.last_date.timestamp() * 1_000_000)
    return f"{micros}.{thread.id}"


def _decode_cursor(value: str) -> tuple[datetime | None, int] | None:
    stamp, _, thread_id = (value or "").partition(".")
    if not thread_id.isdigit():
        return None
    if stamp == "n":
        return None, int(thread_id)
    if not stamp.isdigit():
        return None
    try:
        return datetime.fromtimestamp(int(stamp) / 1_000_000, UTC), int(thread_id)
    except (OverflowError, OSError, ValueError):
        return None


def _after(cursor: tuple[datetime | None, int]) -> ColumnElement[bool]:
    """Return the threads after the cursor among the dated (or, for an undated one, undated).

    Order is (last_date DESC, id DESC); SQLite sorts NULL dates last in DESC order, and
    list_threads fetches those separately. A row value keeps the (account_id, last_date, id)
    index range usable; an OR with the NULL case walked every newer thread (~25 ms deep).
    """
    last_date, thread_id = cursor
    if last_date is None:
        return and_(Thread.last_date.is_(None), Thread.id < thread_id)
    return tuple_(Thread.last_date, Thread.id) < tuple_(
        literal(last_date, UTCDateTime()), literal(thread_id)
    )


def _rows(user: User, threads: Sequence[Thread], now: datetime) -> list[ThreadRow]:
    """Build list rows for one page: two queries for messages and chips, none per row."""
    if not threads:
        return []
    ids = [thread.id for thread in threads]
    date_format = DATE_FORMATS.get(get_preference(user, "date_format"), "%Y-%m-%d")
    zone = zone_for(get_preference(user, "time_zone"))
    rows = {
        thread.id: ThreadRow(
            id=thread.id,
            subject=subject_label(thread.subject),
            participants="",
            snippet="",
            date_label=list_label(thread.last_date, now, zone, date_format),
            date_title=full_label(thread.last_date, zone),
            message_count=thread.message_count,
            shared=thread.shared,
            needs_link_choice=thread.needs_link_choice,
            reply_later=thread.reply_later,
        )
        for thread in threads
    }
    _fill_from_messages(user, rows)
    for thread_id, chip in _chips(user, threads):
        rows[thread_id].chips.append(chip)
    return [rows[thread_id] for thread_id in ids]


def _fill_from_messages(user: User, rows: dict[int, ThreadRow]) -> None:
    own = own_addresses(user)
    messages = db.session.execute(
        select(
            Message.thread_id,
            Message.from_name,
            Message.from_address,
            # Raw JSON text, decoded only for the user's own messages (the only ones whose
            # recipients are shown): decoding every row's list was the list's largest cost.
            json_text(Message.to),
            Message.is_read,
            Message.has_attachments,
            Message.snippet,
        )
        .where(id_in(Message.thread_id, list(rows), db.engine.dialect.name), _live_message())
        .order_by(Message.thread_id, Message.date, Message.id)
    ).all()
    senders: dict[int, list[str]] = defaultdict(list)
    recipients: dict[int, list[str]] = defaultdict(list)
    snippets: dict[int, list[str]] = defaultdict(list)  # oldest first
    for thread_id, from_name, from_address, to, is_read, has_attachments, snippet in messages:
        row = rows[thread_id]
        row.unread = row.unread or not is_read
        row.has_attachments = row.has_attachments or has_attachments
        snippets[thread_id].append(snippet)
        is_mine = bool(from_address) and from_address.lower() in own
        name = "me" if is_mine else sender_label(from_name, from_address)
        if name not in senders[thread_id]:
            senders[thread_id].append(name)
        if is_mine:
            recipients[thread_id] = _recipient_labels(to)
    for thread_id, row in rows.items():
        # The newest message's snippet, or the newest one with any text.
        row.snippet = next(filter(None, map(display_text, reversed(snippets[thread_id]))), "")
        names = senders[thread_id]
        if names == ["me"] and recipients[thread_id]:
            names = ["To: " + ", ".join(recipients[thread_id][:3])]
        elif len(names) > 1:
            names = [short_name(name) if name != "me" else name for name in names]
        label = ", ".join(names[:3]) + ("…" if len(names) > 3 else "")
        row.participants = label or UNKNOWN_SENDER


def _recipient_labels(to_json: str | None) -> list[str]:
    """Return display labels of a stored To list; malformed entries are skipped."""
    try:
        pairs = json.loads(to_json) if to_json else []
    except ValueError:
        return []
    labels = []
    for pair in pairs if isinstance(pairs, list) else []:
        if isinstance(pair, list) and len(pair) > 1:
            label = display_text(pair[0]) or display_text(pair[1])
            if label:
                labels.append(label)
    return labels


def _chips(user: User, threads: Sequence[Thread]) -> list[tuple[int, Chip]]:
    """Return (thread id, chip) for linked persons and the deal/lead/project the user may see."""
    ids = [thread.id for thread in threads]
    # The visibility condition itself, on the joined person: an IN (visible persons)
    # subquery made SQLite build the set of every visible person for each page (~30 ms).
    visible_person = access.visible_records(user, Person).whereclause
    person_rows = db.session.execute(
        select(Message.thread_id, Person.id, Person.name)
        .join(MessagePerson, MessagePerson.message_id == Message.id)
        .join(Person, Person.id == MessagePerson.person_id)
        .where(
            id_in(Message.thread_id, ids, db.engine.dialect.name), _live_message(), visible_person
        )
        .distinct()
        .order_by(Message.thread_id, Person.name)
    ).all()
    chips = [(thread_id, Chip("person", pid, name)) for thread_id, pid, name in person_rows]
    wanted = {
        "deal": {t.deal_id: t.id for t in threads if t.deal_id},
        "lead": {t.lead_id: t.id for t in threads if t.lead_id},
        "project": {t.project_id: t.id for t in threads if t.project_id},
    }
    parts = [
        access.visible_records(user, model)
        .where(model.id.in_(list(wanted[kind])))
        .with_only_columns(literal(kind).label("kind"), model.id, model.title)
        for kind, model in (("deal", Deal), ("lead", Lead), ("project", Project))
        if wanted[kind]
    ]
    if parts:
        for kind, record_id, title in db.session.execute(union_all(*parts)).all():
            record_threads = [t.id for t in threads if getattr(t, f"{kind}_id") == record_id]
            chips.extend((thread_id, Chip(kind, record_id, title)) for thread_id in record_threads)
    return chips


# --------------------------------------------------------------------------- actions


@dataclass
class ActionOutcome:
    notice: str
    warnings: list[str] = field(default_factory=list)


def apply_action(
    user: User, action: str, thread_ids: Sequence[int], *, destination_folder_id: int | None = None
) -> ActionOutcome:
    """Run a list action on the user's threads among `thread_ids`; others are ignored.

    Raises ValidationError for an unknown action or a move without a destination.
    """
    if action not in ACTIONS:
        raise ValidationError({"action": "Choose an action."})
    threads = list(
        db.session.scalars(access.owned_threads(user).where(Thread.id.in_(list(thread_ids)[:500])))
    )
    if not threads:
        return ActionOutcome("Select at least one conversation.")
    if action in ("read", "unread"):
        return mark_read(user, threads, read=action == "read")
    if action == "archive":
        return archive_threads(user, threads)
    if action == "delete":
        return delete_threads(user, threads)
    if action in ("later", "not_later"):
        return set_reply_later(threads, later=action == "later")
    if destination_folder_id is None:
        raise ValidationError({"destination": "Choose a folder."})
    return move_threads(user, threads, access.folder_for_owner(user, destination_folder_id))


# Write-backs: the request changes the database at once and queues the matching change of
# the mailbox for the worker (mailsync/writeback.py runs them). One key per account, so an
# account's write-backs run one at a time in the order the user made them.
WRITEBACK_SEEN = "mailbox.seen"
WRITEBACK_MOVE = "mailbox.move"
# Gmail: add or remove labels (X-GM-LABELS STORE) on All Mail locations, e.g. archiving.
WRITEBACK_LABELS = "mailbox.labels"
WRITEBACK_KINDS = (WRITEBACK_SEEN, WRITEBACK_MOVE, WRITEBACK_LABELS)
GMAIL_INBOX = "\\Inbox"
# How long a write-back that kept failing is still shown to its owner.
FAILURE_SHOWN_SECONDS = 24 * 3600


def writeback_key(account_id: int) -> str:
    """Return the queue key that orders an account's write-backs."""
    return f"mailbox:{account_id}"


def _merge_seen(old: dict, new: dict) -> dict:
    # The job reads each location's wanted \Seen from the database when it runs, so folding
    # read, unread, read into one job writes the last one only.
    return {
        "location_ids": sorted(set(old.get("location_ids", [])) | set(new["location_ids"])),
        "thread_ids": sorted(set(old.get("thread_ids", [])) | set(new["thread_ids"])),
    }


def _queue_writebacks(kind: str, groups: dict[int, list[MessageLocation]], **payload) -> None:
    """Queue one write-back per account for these locations.

    Each enqueue commits, so the user's change made so far lands with its job.
    """
    for account_id, locations in groups.items():
        if not locations:
            continue
        if kind in (WRITEBACK_MOVE, WRITEBACK_LABELS):
            # Which mail each location held, and where: the job must not move or relabel
            # other mail that takes a location over in a rebuilt folder (mailsync/writeback.py).
            payload["sources"] = sorted(
                {(location.id, location.message_id, location.folder_id) for location in locations}
            )
        job_queue.enqueue(
            kind,
            {
                "location_ids": sorted({location.id for location in locations}),
                "thread_ids": sorted({location.message.thread_id for location in locations}),
                **payload,
            },
            key=writeback_key(account_id),
            account_id=account_id,
            merge=_merge_seen if kind == WRITEBACK_SEEN else None,
        )


location_t = MessageLocation.__table__
message_t = Message.__table__
# Ids per statement: well under SQLite's limit of bound parameters.
_CHUNK = 500


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[start : start + _CHUNK] for start in range(0, len(ids), _CHUNK)]


def mark_read(user: User, threads: Sequence[Thread], *, read: bool) -> ActionOutcome:
    """Mark every live message of `threads` read or unread and queue the \\Seen write-back;
    commits."""
    messages = _live_messages(threads)
    groups = _server_locations(messages, lambda location: True)
    location_ids = [location.id for locations in groups.values() for location in locations]
    # Written by statements, every column every time, not by setting attributes: the ORM
    # leaves out a column whose loaded value equals the new one, and the worker may have
    # changed the row since it was loaded (a write-back clearing seen_pending): the change
    # would then never be written to the mailbox. Locations before messages, each in id
    # order, as the worker and a sync pass take them (no deadlock).
    now = datetime.now(UTC)
    for chunk in _chunks(sorted(location_ids)):
        lock_rows_in_order(db.session.connection(), location_t, chunk)
        db.session.execute(
            update(MessageLocation)
            .where(MessageLocation.id.in_(chunk))
            .values(
                seen=read,
                seen_changed_at=now,  # a concurrent sync keeps this value for a while
                seen_pending=True,  # until the server has it (the job, or a sync pass)
            )
        )
    for chunk in _chunks(sorted(message.id for message in messages)):
        lock_rows_in_order(db.session.connection(), message_t, chunk)
        # A newer wish than one a gone location left behind (store.keep_pending_seen).
        db.session.execute(
            update(Message).where(Message.id.in_(chunk)).values(is_read=read, seen_wanted=None)
        )
    _queue_writebacks(WRITEBACK_SEEN, groups)
    db.session.commit()
    word = "read" if read else "unread"
    return ActionOutcome(f"Marked {_count(threads)} {word}.")


def archive_threads(user: User, threads: Sequence[Thread]) -> ActionOutcome:
    """Archive in Threadline (links stay); with archive_in_mailbox also queue moving the inbox
    copies to the Archive folder. Commits."""
    for thread in threads:
        thread.archived = True
    if get_preference(user, "archive_in_mailbox"):
        groups = _locations_to_move(
            _live_messages(threads), lambda location: location.folder.role == "inbox"
        )
        _queue_writebacks(WRITEBACK_MOVE, groups, role="archive", from_role="inbox")
        _queue_inbox_label_removal(threads)
    db.session.commit()
    return ActionOutcome(f"Archived {_count(threads)}.")


def _queue_inbox_label_removal(threads: Sequence[Thread]) -> None:
    """Gmail's inbox is a label: taking mail out of it removes \\Inbox from the All Mail
    copy (UID STORE -X-GM-LABELS); All Mail itself cannot be moved out of."""
    labelled = _server_locations(
        _live_messages(threads),
        lambda location: location.folder.role == "all"
        and GMAIL_INBOX in (location.gm_labels or []),
    )
    _queue_writebacks(WRITEBACK_LABELS, labelled, remove=[GMAIL_INBOX])


def set_reply_later(threads: Sequence[Thread], *, later: bool) -> ActionOutcome:
    """Put the threads on the Reply later list, or take them off it; commits.

    Threadline keeps this list itself: the mail server and other mail programs never see it.
    """
    for thread in threads:
        thread.reply_later = later
    db.session.commit()
    if later:
        return ActionOutcome(f"Added {_count(threads)} to Reply later.")
    return ActionOutcome(f"Removed {_count(threads)} from Reply later.")


def delete_threads(user: User, threads: Sequence[Thread]) -> ActionOutcome:
    """Delete from Threadline everywhere (and the search index); with delete_in_mailbox also
    queue moving the mail to Trash. Commits."""
    now = datetime.now(UTC)
    messages = _live_messages(threads)
    if get_preference(user, "delete_in_mailbox"):
        groups = _locations_to_move(messages, lambda location: location.folder.role != "trash")
        _queue_writebacks(WRITEBACK_MOVE, groups, role="trash")
    for thread in threads:
        # Whole seconds, like a server's INTERNALDATE: mail received from this second on
        # brings the conversation back (mailsync.store.revive_threads).
        thread.deleted_at = now.replace(microsecond=0)
    for message in messages:
        message.deleted_at = message.user_deleted_at = now
    remove_from_index(db.session.connection(), [message.id for message in messages])
    db.session.commit()
    return ActionOutcome(f"Deleted {_count(threads)}.")


def move_threads(user: User, threads: Sequence[Thread], destination: MailFolder) -> ActionOutcome:
    """Queue moving the threads' mail (not sent copies or drafts) to `destination`; commits.

    Threadline's Inbox follows at once; the mail's folder changes when the worker has moved it.
    """
    threads = [thread for thread in threads if thread.account_id == destination.account_id]
    groups = _locations_to_move(
        _live_messages(threads),
        lambda location: location.folder_id != destination.id
        and location.folder.role not in UNMOVED_ROLES,
    )
    _queue_writebacks(WRITEBACK_MOVE, groups, destination_id=destination.id)
    if destination.role == "all":
        # Moved to Gmail's All Mail (out of the inbox): the MOVE above skips the All Mail
        # copy, so the \Inbox label is what changes.
        _queue_inbox_label_removal(threads)
    for thread in threads:  # moving decides Threadline's Inbox too
        thread.in_inbox = destination.role == "inbox"
        if thread.in_inbox:
            thread.archived = False
    name = destination.name
    db.session.commit()
    return ActionOutcome(f"Moved {_count(threads)} to {name}.")


@dataclass
class WritebackStatus:
    """What the Mail tab says about the user's changes on their way to the mailbox."""

    pending: bool = False
    failure: str | None = None


def writeback_status(user: User, *, thread_id: int | None = None) -> WritebackStatus:
    """Say whether the user's write-backs (or those touching one thread) are still queued,
    and describe one that kept failing, in plain words.

    A failure is shown for a day, and only until a later write-back of that account lands.
    """
    account_ids = _account_ids(user)
    if not account_ids:
        return WritebackStatus()
    status = WritebackStatus()
    unfinished, failures = job_queue.unfinished_and_failures(
        kinds=WRITEBACK_KINDS,
        account_ids=account_ids,
        keys=[writeback_key(a) for a in account_ids],
        since=datetime.now(UTC) - timedelta(seconds=FAILURE_SHOWN_SECONDS),
    )
    for job in unfinished:
        if thread_id is None or thread_id in job.payload.get("thread_ids", []):
            status.pending = True
            break
    newest_per_account = {}
    for job in failures:  # newest first
        newest_per_account.setdefault(job.key, job)
    for failed in newest_per_account.values():
        if thread_id is not None and thread_id not in failed.payload.get("thread_ids", []):
            continue
        status.failure = (
            "Some changes could not be saved to your mailbox "
            f"({failed.last_error}). They are kept in Threadline; "
            "check the mail account's settings."
        )
    return status


def _live_messages(threads: Sequence[Thread]) -> list[Message]:
    if not threads:
        return []
    return list(
        db.session.scalars(
            select(Message).where(
                Message.thread_id.in_([thread.id for thread in threads]),
                Message.deleted_at.is_(None),
            )
        )
    )


def _server_locations(messages: Sequence[Message], keep) -> dict[int, list[MessageLocation]]:
    """Group the messages' live locations that pass `keep` by account."""
    groups: dict[int, list[MessageLocation]] = defaultdict(list)
    for message in messages:
        for location in message.locations:
            if not location.deleted and keep(location):
                groups[message.account_id].append(location)
    return groups


def _locations_to_move(messages: Sequence[Message], keep) -> dict[int, list[MessageLocation]]:
    """Group the messages' live locations to move by account: those that pass `keep`, and
    those a queued move takes elsewhere first.

    Where a queued move leaves a location is known only once it has run, so the new job
    decides then (mailsync/writeback.move); leaving it out by the folder it is in now would
    lose the user's later move (move away, then back to the inbox, before the worker runs).
    """
    moving = {
        location_id
        for job in job_queue.unfinished_jobs(
            kinds=[WRITEBACK_MOVE], account_ids=sorted({m.account_id for m in messages})
        )
        for location_id in job.payload.get("location_ids", [])
    }
    return _server_locations(messages, lambda location: location.id in moving or keep(location))


def _count(threads: Sequence[Thread]) -> str:
    return "1 conversation" if len(threads) == 1 else f"{len(threads)} conversations"
