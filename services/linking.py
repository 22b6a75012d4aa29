"""Linking and blocking: persons by address, deals/leads/projects by rule, blocked addresses.

The rules themselves are pure functions in services/linking_rules.py; this module applies
them to rows. PRODUCT.md "Linking" and "Blocked addresses".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Select, and_, delete, func, select, true, update

from dialect import json_text
from extensions import db
from models import (
    BlockedAddress,
    Deal,
    Lead,
    MailAccount,
    Message,
    MessagePerson,
    OwnAddress,
    PastLinkOffer,
    Person,
    PersonEmail,
    Project,
    Thread,
    User,
)
from services.access import accessible_to, own_accounts
from services.addresses import is_valid_address
from services.errors import ValidationError
from services.linking_rules import (
    LinkTarget,
    decide_auto_link,
    message_is_hidden,
    normalize_block_entry,
)
from services.preferences import get_preference

LINK_MODELS = {"deal": Deal, "lead": Lead, "project": Project}
LINK_COLUMNS = {"deal": "deal_id", "lead": "lead_id", "project": "project_id"}
_CHUNK = 500  # addresses per IN (...) query


def message_participants(message: Message) -> list[str]:
    """Return the lowercased addresses of From, To, Cc and Reply-To."""
    addresses = [message.from_address]
    for field in (message.to, message.cc, message.reply_to):
        addresses.extend(pair[1] for pair in field or [] if len(pair) > 1)
    return [address.lower() for address in addresses if address]


def own_addresses(user: User) -> set[str]:
    """Return the user's own addresses: sign-in address, each mail account's address and
    login name, and their aliases (learned from Sent or added; not the removed ones)."""
    return own_addresses_of(user.id, user.email)


def own_addresses_of(user_id: int, sign_in_address: str) -> set[str]:
    aliases = db.session.scalars(
        select(OwnAddress.address).where(
            OwnAddress.user_id == user_id, OwnAddress.source != "ignored"
        )
    )
    found = {sign_in_address.lower(), *aliases}
    for account in own_accounts(user_id):
        found.add(account.email_address.lower())
        if "@" in (account.username or ""):
            found.add(account.username.strip().lower())
    return found


def learn_own_addresses(user_id: int, account_id: int, addresses: Iterable[str]) -> set[str]:
    """Record From addresses of the user's Sent mail as their own; return those now own.

    An address the user removed (`ignored`) stays removed. Flushes only.
    """
    wanted = {a.strip().lower() for a in addresses if a and "@" in a}
    if not wanted:
        return set()
    known = dict(
        db.session.execute(
            select(OwnAddress.address, OwnAddress.source).where(
                OwnAddress.user_id == user_id, OwnAddress.address.in_(wanted)
            )
        ).all()
    )
    new = wanted - set(known)
    db.session.add_all(
        OwnAddress(user_id=user_id, account_id=account_id, address=a, source="sent") for a in new
    )
    db.session.flush()
    if new:
        unlink_own_addresses(user_id, new)
        user = db.session.get(User, user_id)
        if blocked_entries(user):  # mail to the alias alone may now count as blocked
            refresh_blocked_flags(user)
    return {a for a in wanted if known.get(a) != "ignored"}


def unlink_own_addresses(user_id: int, addresses: set[str]) -> int:
    """Undo person links of the user's mail that only an alias of theirs made; flushes.

    Mail stored before an alias was learned (INBOX syncs before Sent) may have been matched
    to a person who has that address; a link that another address still justifies stays.
    """
    person_ids = set(
        db.session.scalars(select(PersonEmail.person_id).where(PersonEmail.email.in_(addresses)))
    )
    if not person_ids:
        return 0
    own_accounts = select(MailAccount.id).where(MailAccount.user_id == user_id)
    rows = db.session.execute(
        select(MessagePerson, Message)
        .join(Message, Message.id == MessagePerson.message_id)
        .where(MessagePerson.person_id.in_(person_ids), Message.account_id.in_(own_accounts))
    ).all()
    emails: dict[int, set[str]] = {}
    for person_id, email in db.session.execute(
        select(PersonEmail.person_id, PersonEmail.email).where(
            PersonEmail.person_id.in_(person_ids)
        )
    ):
        emails.setdefault(person_id, set()).add(email)
    removed = 0
    for link, message in rows:
        others = emails.get(link.person_id, set()) - addresses
        if not others & set(message_participants(message)):
            db.session.delete(link)
            removed += 1
    db.session.flush()
    return removed


def account_addresses(user: User, account: MailAccount) -> list[OwnAddress]:
    """Return the aliases shown on an account's page (learned there or added there)."""
    return list(
        db.session.scalars(
            select(OwnAddress)
            .where(OwnAddress.user_id == user.id, OwnAddress.account_id == account.id)
            .order_by(OwnAddress.address)
        )
    )


def add_own_address(user: User, account: MailAccount, address: str) -> OwnAddress:
    """Add an alias by hand; commits. Raises ValidationError for a bad or known address."""
    value = (address or "").strip().lower()
    if not is_valid_address(value):
        raise ValidationError({"address": "Enter an address like you@example.com."})
    row = db.session.scalar(
        select(OwnAddress).where(OwnAddress.user_id == user.id, OwnAddress.address == value)
    )
    if row is None:
        row = OwnAddress(user_id=user.id, account_id=account.id, address=value, source="added")
        db.session.add(row)
    elif row.source == "ignored":
        row.source, row.account_id = "added", account.id
    elif value in own_addresses(user):
        raise ValidationError({"address": f"{value} is already one of your addresses."})
    unlink_own_addresses(user.id, {value})
    refresh_blocked_flags(user)
    db.session.commit()
    return row


def remove_own_address(user: User, address_id: int | None) -> None:
    """Stop treating an alias as the user's own; commits. It is not learned again."""
    row = db.session.scalar(
        select(OwnAddress).where(OwnAddress.id == address_id, OwnAddress.user_id == user.id)
    )
    if row is None or row.source == "ignored":
        return
    row.source = "ignored"
    refresh_blocked_flags(user)
    db.session.commit()


# --------------------------------------------------------------------------- persons


def _visible_to(model, user_id: int | None):
    """access.accessible_to, or no condition without a user (every record counts)."""
    return true() if user_id is None else accessible_to(model, user_id)


def persons_for_addresses(
    addresses: Iterable[str], *, visible_to: int | None = None
) -> dict[str, int]:
    """Return {lowercased address: person id} for the addresses that belong to a person.

    An address belongs to at most one person (PersonEmail.email is unique and lowercased),
    so the match is exact on the lowercased address; unknown addresses are left out. With
    `visible_to` (a user id) only persons that user can access match: a mailbox's mail links
    only to records its owner can see, so a teammate's private person never collects it.
    """
    wanted = sorted(
        {address.strip().lower() for address in addresses if address and "@" in address}
    )
    found: dict[str, int] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        rows = db.session.execute(
            select(PersonEmail.email, PersonEmail.person_id)
            .join(Person, Person.id == PersonEmail.person_id)
            .where(PersonEmail.email.in_(chunk), _visible_to(Person, visible_to))
        )
        found.update({email: person_id for email, person_id in rows})
    return found


def past_messages_for_address(user: User, address: str) -> Select:
    """Return a select of the live messages of `user`'s own mailboxes that mention `address`.

    Only the acting user's mailboxes: linking past mail is an owner's action, and a count or a
    link over a teammate's mail would leak it (and could make it visible through the person).
    """
    pattern = f'%"{address.lower()}"%'
    own_accounts = select(MailAccount.id).where(MailAccount.user_id == user.id)
    return select(Message.id).where(
        Message.account_id.in_(own_accounts),
        Message.deleted_at.is_(None),
        (func.lower(Message.from_address) == address.lower())
        # ilike: SQLite's LIKE ignores ASCII case, PostgreSQL's does not.
        | json_text(Message.to).ilike(pattern)
        | json_text(Message.cc).ilike(pattern)
        | json_text(Message.reply_to).ilike(pattern),
    )


def _unlinked_past_messages(user: User, person: Person, address: str) -> Select:
    linked = select(MessagePerson.message_id).where(MessagePerson.person_id == person.id)
    return past_messages_for_address(user, address).where(Message.id.not_in(linked))


def count_past_conversations(user: User, person: Person, address: str) -> int:
    """Count `user`'s conversations that mention `address` and are not yet linked to `person`."""
    query = _unlinked_past_messages(user, person, address)
    message_ids = select(Message.thread_id).where(Message.id.in_(query)).distinct()
    return db.session.scalar(select(func.count()).select_from(message_ids.subquery())) or 0


def link_past_conversations(user: User, person: Person, address: str) -> int:
    """Link `user`'s past messages mentioning `address` to `person`; commits; the count.

    The offer to do so, if any, is settled.
    """
    ids = db.session.scalars(_unlinked_past_messages(user, person, address))
    rows = [MessagePerson(message_id=message_id, person_id=person.id) for message_id in ids]
    db.session.add_all(rows)
    _forget_offer(user, person.id, address)
    db.session.commit()
    return len(rows)


def link_thread_to_person(user: User, person: Person, thread: Thread, address: str) -> int:
    """Link the messages of one conversation that mention `address` to `person`; flushes."""
    ids = db.session.scalars(
        _unlinked_past_messages(user, person, address).where(Message.thread_id == thread.id)
    ).all()
    db.session.add_all(MessagePerson(message_id=i, person_id=person.id) for i in ids)
    db.session.flush()
    return len(ids)


@dataclass
class PastOffer:
    """The open offer to link `count` past conversations mentioning `address` to `person`."""

    person: Person
    address: str
    count: int


def remember_past_link_offers(user: User, person: Person, addresses: Iterable[str]) -> None:
    """Offer `user` to link past mail for addresses just added to `person`; commits.

    Only where such mail exists; the offer stays until linked or dismissed.
    """
    for address in addresses:
        if count_past_conversations(user, person, address) == 0:
            continue
        exists_already = db.session.scalar(
            select(PastLinkOffer.id).where(
                PastLinkOffer.user_id == user.id,
                PastLinkOffer.person_id == person.id,
                PastLinkOffer.address == address,
            )
        )
        if exists_already is None:
            db.session.add(PastLinkOffer(user_id=user.id, person_id=person.id, address=address))
    db.session.commit()


def past_link_offers(
    user: User, *, person_id: int | None = None, addresses: Iterable[str] | None = None
) -> list[PastOffer]:
    """Return `user`'s open offers (for one person, or for some addresses) with their counts.

    An offer whose person lost the address or the user's access, or with nothing left to
    link (done elsewhere), is left out. Pages call this on GET, so it only reads: such a row
    stays, and shows again only if it comes true again (the address is added back and old
    mail still waits), until the user links or dismisses it.
    """
    query = select(PastLinkOffer).where(PastLinkOffer.user_id == user.id)
    if person_id is not None:
        query = query.where(PastLinkOffer.person_id == person_id)
    if addresses is not None:
        query = query.where(PastLinkOffer.address.in_(list(addresses)))
    offers = []
    for row in db.session.scalars(query.order_by(PastLinkOffer.id)):
        person = db.session.scalar(
            select(Person).where(Person.id == row.person_id, accessible_to(Person, user.id))
        )
        has_address = person is not None and row.address in {e.email for e in person.emails}
        count = count_past_conversations(user, person, row.address) if has_address else 0
        if count:
            offers.append(PastOffer(person=person, address=row.address, count=count))
    return offers


def dismiss_past_link_offer(user: User, person_id: int | None, address: str) -> None:
    """Drop one of `user`'s offers; commits."""
    _forget_offer(user, person_id, address)
    db.session.commit()


def _forget_offer(user: User, person_id: int | None, address: str) -> None:
    db.session.execute(
        delete(PastLinkOffer).where(
            PastLinkOffer.user_id == user.id,
            PastLinkOffer.person_id == person_id,
            PastLinkOffer.address == (address or "").strip().lower(),
        )
    )


# --------------------------------------------------------------------------- deals, leads, projects


def open_link_targets(
    person_ids: Iterable[int], *, visible_to: int | None = None
) -> list[LinkTarget]:
    """Return the open deals, leads and projects of the given persons (with `visible_to`, a
    user id, only those that user can access)."""
    person_ids = list(set(person_ids))
    if not person_ids:
        return []
    targets: list[LinkTarget] = []
    for kind, model, status in (
        ("deal", Deal, "open"),
        ("lead", Lead, "open"),
        ("project", Project, "open"),
    ):
        ids = db.session.scalars(
            select(model.id).where(
                model.person_id.in_(person_ids),
                model.status == status,
                _visible_to(model, visible_to),
            )
        )
        targets.extend(LinkTarget(kind, record_id) for record_id in ids)
    return targets


def thread_person_ids(thread: Thread) -> list[int]:
    return auto_link_candidates([thread.id]).get(thread.id, [])


def auto_link_candidates(thread_ids: Iterable[int]) -> dict[int, list[int]]:
    """Return {thread id: person ids matched in its live messages}."""
    result: dict[int, list[int]] = {}
    ids = sorted(set(thread_ids))
    for start in range(0, len(ids), _CHUNK):
        rows = db.session.execute(
            select(Message.thread_id, MessagePerson.person_id)
            .join(MessagePerson, MessagePerson.message_id == Message.id)
            .where(Message.thread_id.in_(ids[start : start + _CHUNK]))
            .distinct()
        )
        for thread_id, person_id in rows:
            result.setdefault(thread_id, []).append(person_id)
    return result


def auto_link_thread(thread: Thread, owner: User) -> None:
    """Apply the auto-linking rule to one thread (no commit)."""
    if get_preference(owner, "auto_linking") == "automatic":
        auto_link_threads([thread.id], owner.id)


def auto_link_threads(thread_ids: Iterable[int], owner_id: int) -> None:
    """Link unlinked threads to their persons' only open deal, lead or project (no commit).

    The caller has checked the owner's auto-linking preference is Automatic. With several
    open items nothing is linked and the thread asks its owner to choose; already linked
    threads are left alone (a conversation links to at most one item). Only items the
    mailbox's owner (`owner_id`) can access count, as for persons.
    """
    persons_by_thread = auto_link_candidates(thread_ids)
    if not persons_by_thread:
        return
    threads = db.session.scalars(
        select(Thread).where(
            Thread.id.in_(list(persons_by_thread)),
            Thread.deal_id.is_(None),
            Thread.lead_id.is_(None),
            Thread.project_id.is_(None),
        )
    )
    for thread in threads:
        targets = open_link_targets(persons_by_thread[thread.id], visible_to=owner_id)
        decision = decide_auto_link(targets)
        thread.needs_link_choice = decision.needs_choice
        if decision.target is not None:
            setattr(thread, LINK_COLUMNS[decision.target.kind], decision.target.id)
    db.session.flush()


def link_thread(thread: Thread, kind: str, record_id: int | None) -> None:
    """Link the thread to one deal, lead or project (replacing any other), or unlink; commits."""
    set_thread_link(thread, kind, record_id)
    db.session.commit()


def set_thread_link(thread: Thread, kind: str, record_id: int | None) -> None:
    """link_thread without the commit, for callers inside a larger transaction."""
    if kind not in LINK_COLUMNS:
        raise ValidationError({"kind": "Choose a deal, lead or project."})
    for column in LINK_COLUMNS.values():
        setattr(thread, column, None)
    if record_id is not None:
        setattr(thread, LINK_COLUMNS[kind], record_id)
    thread.needs_link_choice = False


def move_lead_conversations(lead_id: int, deal_id: int) -> int:
    """Relink every conversation of a converted lead to its new deal; return how many.

    Flushes only: runs inside the conversion's transaction.
    """
    result = db.session.execute(
        update(Thread).where(Thread.lead_id == lead_id).values(lead_id=None, deal_id=deal_id)
    )
    return result.rowcount


def set_thread_shared(thread: Thread, shared: bool) -> None:
    """Share or unshare one conversation; commits."""
    thread.shared = shared
    db.session.commit()


# --------------------------------------------------------------------------- blocking


def blocked_entries(user: User) -> list[BlockedAddress]:
    return list(
        db.session.scalars(
            select(BlockedAddress)
            .where(BlockedAddress.user_id == user.id)
            .order_by(BlockedAddress.entry)
        )
    )


def is_message_hidden(message: Message, own: set[str], entries: list[str]) -> bool:
    """Apply the blocking rule to one message."""
    return message_is_hidden(message_participants(message), own, entries)


def refresh_blocked_flags(user: User) -> None:
    """Recompute which of the user's messages and threads are hidden by blocks (no commit)."""
    entries = [row.entry for row in blocked_entries(user)]
    own = own_addresses(user)
    account_ids = select(MailAccount.id).where(MailAccount.user_id == user.id)
    messages = db.session.execute(
        select(Message).where(Message.account_id.in_(account_ids)).execution_options(yield_per=1000)
    ).scalars()
    for message in messages:
        hidden = is_message_hidden(message, own, entries)
        if message.blocked != hidden:
            message.blocked = hidden
    db.session.flush()
    refresh_thread_blocked(Thread.account_id.in_(account_ids))


def refresh_thread_blocked(which) -> None:
    """Mark the threads selected by the SQL condition `which` blocked exactly when all their
    live messages are blocked, and date them by their newest shown message (as
    mailsync.store.refresh_threads does); no commit."""
    live = and_(Message.thread_id == Thread.id, Message.deleted_at.is_(None))
    visible = select(Message.thread_id).where(live, Message.blocked.is_(False)).exists()
    when = func.max(func.coalesce(Message.date, Message.internaldate))
    newest_shown = select(when).where(live, Message.blocked.is_(False)).scalar_subquery()
    newest = select(when).where(live).scalar_subquery()
    db.session.execute(
        update(Thread)
        .where(which)
        .values(blocked=~visible, last_date=func.coalesce(newest_shown, newest, Thread.last_date))
        .execution_options(synchronize_session=False)
    )


def block(user: User, entry: str) -> BlockedAddress:
    """Block an address or domain; hides matching mail (kept, not deleted); commits."""
    value = normalize_block_entry(entry)
    existing = db.session.scalar(
        select(BlockedAddress).where(
            BlockedAddress.user_id == user.id, BlockedAddress.entry == value
        )
    )
    if existing is not None:
        raise ValidationError({"entry": f"{value} is already blocked."})
    row = BlockedAddress(user_id=user.id, entry=value)
    db.session.add(row)
    db.session.flush()
    refresh_blocked_flags(user)
    db.session.commit()
    return row


def unblock(user: User, entry_id: int) -> bool:
    """Remove one of the user's blocks (hidden mail comes back) and commit; return False
    when the user has no such entry."""
    row = db.session.get(BlockedAddress, entry_id)
    if row is None or row.user_id != user.id:
        return False
    db.session.delete(row)
    db.session.flush()
    refresh_blocked_flags(user)
    db.session.commit()
    return True
