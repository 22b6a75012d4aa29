"""Group email: one template sent to many people as individual mails, paced for the provider.

A group email is a GroupSend (the subject and body as they were when it started) and one
OutgoingMail per recipient (group_send_id), each addressed to that one person and written
from their record (the person, or the deal for a deal-stage send), so the worker fills each
mail's smart fields from its own record and links it like any sent mail. The mails are
queued through services/outbox.py with send_at staggered by the account's provider limits
(mailsync/providers.py), so the worker's send tick sends them at that pace, across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from extensions import db
from mailsync.providers import get_provider
from models import (
    DEAL_STAGE_LABELS,
    DEAL_STAGES,
    GROUP_CANCELLED,
    GROUP_DONE,
    GROUP_SENDING,
    OUTGOING_FAILED,
    OUTGOING_QUEUED,
    OUTGOING_SENDING,
    OUTGOING_SENT,
    OUTGOING_UNCERTAIN,
    Deal,
    GroupSend,
    MailAccount,
    MailTemplate,
    Organization,
    OutgoingMail,
    Person,
    User,
)
from services import outbox, records, smart_fields, templates
from services.access import own_sending_accounts, record_for, record_or_none, visible_records
from services.addresses import is_valid_address
from services.errors import ValidationError
from services.inputs import parse_id, search_text
from services.linking import blocked_entries
from services.linking_rules import address_is_blocked

DEFAULT_MAX_RECIPIENTS = 100  # GROUP_SEND_MAX_RECIPIENTS
# A filter can match many people; the picker lists at most this many (the rest are named).
MAX_LISTED = 1000
SOURCES = ("persons", "organization", "stage")


@dataclass(frozen=True)
class Source:
    """Where the recipients come from: chosen people, a People filter, an organization's
    people, or the people of the deals in one board stage."""

    kind: str
    person_ids: tuple[int, ...] = ()
    q: str = ""
    organization_id: int | None = None
    stage: str = ""


@dataclass(frozen=True)
class Candidate:
    """A person who can receive the group email, and the record their mail is written from."""

    key: str  # "person:<id>" or "deal:<id>": what the picker's checkbox submits
    name: str
    address: str
    record_kind: str
    record_id: int
    deal_title: str = ""


@dataclass(frozen=True)
class Skipped:
    """Someone the source names who gets no mail, and why."""

    name: str
    reason: str


@dataclass
class Recipients:
    """The picker's content: who can receive the mail, who is skipped, and a title."""

    title: str
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    more: int = 0  # matches past MAX_LISTED, not listed


@dataclass(frozen=True)
class Progress:
    """Where a group email stands: counts by state, and every mail still on record."""

    total: int
    sent: int
    failed: int
    uncertain: int
    waiting: int
    cancelled: int
    mails: list[OutgoingMail]

    @property
    def finished(self) -> bool:
        return self.waiting == 0


def max_recipients() -> int:
    """Return the most recipients one group email may have (GROUP_SEND_MAX_RECIPIENTS)."""
    return int(current_app.config.get("GROUP_SEND_MAX_RECIPIENTS", DEFAULT_MAX_RECIPIENTS))


class UnknownSource(ValidationError):
    """A picker request that names no source it knows (the view sends the user back)."""

    def __init__(self) -> None:
        super().__init__(
            {"source": "Start a group email from People, an organization or a deal stage."}
        )

    def __str__(self) -> str:
        return self.errors["source"]


def parse_source(values) -> Source:
    """Return the Source a picker request names (query or form values: a MultiDict).

    Raises UnknownSource for an unknown source or stage.
    """
    kind = (values.get("source") or "").strip()
    if kind == "persons":
        ids = [parse_id(value) for value in values.getlist("person_id")[:MAX_LISTED]]
        return Source(kind, person_ids=tuple(i for i in ids if i), q=search_text(values.get("q")))
    if kind == "organization":
        organization_id = parse_id(values.get("organization_id"))
        if organization_id is not None:
            return Source(kind, organization_id=organization_id)
    if kind == "stage" and values.get("stage") in DEAL_STAGES:
        return Source(kind, stage=values["stage"])
    raise UnknownSource()


def _persons_of(user: User, source: Source) -> tuple[str, list[Person], int]:
    """Return (title, persons, how many more matched) for a People or organization source."""
    if source.kind == "organization":
        organization = record_for(user, Organization, source.organization_id)
        stmt = visible_records(user, Person).where(Person.organization_id == organization.id)
        title = f"People of {organization.name}"
        stmt = stmt.order_by(Person.name, Person.id)
    elif source.person_ids:
        stmt = visible_records(user, Person).where(Person.id.in_(source.person_ids))
        title = "Chosen people"
        stmt = stmt.order_by(Person.name, Person.id)
    else:
        stmt = records.search_records(user, Person, q=source.q, sort="name")
        title = f"People matching \u201c{source.q}\u201d" if source.q else "All people"
    # Each person's addresses in one query, not one each.
    persons = list(
        db.session.scalars(stmt.options(selectinload(Person.emails)).limit(MAX_LISTED + 1))
    )
    more = 0
    if len(persons) > MAX_LISTED:
        matches = select(func.count()).select_from(stmt.order_by(None).subquery())
        more = db.session.scalar(matches) - MAX_LISTED
        persons = persons[:MAX_LISTED]
    return title, persons, more


def _deal_persons(user: User, stage: str) -> list[tuple[Deal, Person | None]]:
    deals = db.session.scalars(
        visible_records(user, Deal)
        .where(Deal.status == "open", Deal.stage == stage)
        .order_by(Deal.title, Deal.id)
        .limit(MAX_LISTED)
    )
    return [(deal, record_or_none(user, Person, deal.person_id)) for deal in deals]


def recipients_for(user: User, source: Source) -> Recipients:
    """Return who the source names: candidates with a usable address, the others skipped.

    Only records the user can see are named; an organization they cannot see is a 404.
    """
    entries = [row.entry for row in blocked_entries(user)]
    if source.kind == "stage":
        result = Recipients(f"Deals in {DEAL_STAGE_LABELS[source.stage]}")
        pairs = _deal_persons(user, source.stage)
    else:
        title, persons, more = _persons_of(user, source)
        result = Recipients(title, more=more)
        pairs = [(None, person) for person in persons]
    seen: dict[int, str] = {}
    for deal, person in pairs:
        if person is None:
            result.skipped.append(Skipped(deal.title, "This deal has no person to write to."))
            continue
        address = person.primary_email or ""
        reason = None
        if not address:
            reason = "No email address."
        elif not is_valid_address(address):
            reason = f"{address} is not a valid address."
        elif address_is_blocked(address, entries):
            reason = f"{address} is blocked (Settings > Blocked addresses)."
        elif person.id in seen:
            reason = f"Already gets the mail for {seen[person.id]}."
        if reason:
            result.skipped.append(Skipped(person.name, reason))
            continue
        if deal is not None:
            seen[person.id] = deal.title
            result.candidates.append(
                Candidate(f"deal:{deal.id}", person.name, address, "deal", deal.id, deal.title)
            )
        else:
            seen[person.id] = person.name
            result.candidates.append(
                Candidate(f"person:{person.id}", person.name, address, "person", person.id)
            )
    return result


def _usable_template(user: User, template_id: int | None) -> MailTemplate | None:
    if template_id is None:
        return None
    return db.session.scalar(templates.usable_select(user).where(MailTemplate.id == template_id))


def _own_account(user: User, account_id: int | None) -> MailAccount | None:
    if account_id is None:
        return None
    return db.session.scalar(own_sending_accounts(user).where(MailAccount.id == account_id))


def start(
    user: User,
    source: Source,
    *,
    chosen: list[str],
    template_id: int | None,
    account_id: int | None,
    now: datetime | None = None,
) -> GroupSend:
    """Queue one mail per chosen recipient, paced by the account's provider; commit once.

    `chosen` holds Candidate keys; any key the source does not offer (someone the user
    cannot see, or skipped) is ignored. Raises ValidationError (nothing is queued) for a
    missing template or account, no or too many recipients, or a group the daily send limit
    cannot take.
    """
    errors: dict[str, str] = {}
    template = _usable_template(user, template_id)
    account = _own_account(user, account_id)
    wanted = set(chosen)
    picked = [c for c in recipients_for(user, source).candidates if c.key in wanted]
    limit = max_recipients()
    if template is None:
        errors["template"] = "Choose a template."
    if account is None:
        errors["account"] = "Choose one of your mail accounts to send from."
    if not picked:
        errors["recipients"] = "Choose at least one recipient."
    elif len(picked) > limit:
        errors["recipients"] = (
            f"You chose {len(picked)} recipients; a group email goes to at most {limit}."
        )
    if errors:
        raise ValidationError(errors)
    interval = get_provider(account.provider).send_interval_seconds()
    group = GroupSend(
        user_id=user.id,
        account_id=account.id,
        template_id=template.id,
        subject=template.subject,
        body_html=template.body_html,
        state=GROUP_SENDING,
        total=len(picked),
        pause_seconds=interval,
    )
    db.session.add(group)
    db.session.flush()
    mails = [_mail_for(user, group, template, candidate) for candidate in picked]
    db.session.add_all(mails)
    _refuse_empty_fields(mails)
    first = _first_slot(account, interval, now or datetime.now(UTC))
    times = [first + timedelta(seconds=i * interval) for i in range(len(mails))]
    outbox.queue_paced(user, mails, times)
    return group


def _first_slot(account: MailAccount, interval: int, now: datetime) -> datetime:
    """Return when a new group email's first mail may go: now, or one interval after the
    last mail another group email of the account still has waiting (the provider's limits
    are per account, so two group emails take turns rather than double the pace)."""
    last = db.session.scalar(
        select(func.max(OutgoingMail.send_at)).where(
            OutgoingMail.account_id == account.id,
            OutgoingMail.group_send_id.is_not(None),
            OutgoingMail.state == OUTGOING_QUEUED,
        )
    )
    if last is None:
        return now
    return max(now, last + timedelta(seconds=interval))


def _mail_for(
    user: User, group: GroupSend, template: MailTemplate, candidate: Candidate
) -> OutgoingMail:
    """One recipient's mail: the template's, addressed to them alone, from their record."""
    mail = OutgoingMail(
        user_id=user.id,
        account_id=group.account_id,
        group_send_id=group.id,
        to=[[candidate.name, candidate.address]],
        cc=[],
        bcc=[],
        references=[],
        record_kind=candidate.record_kind,
        record_id=candidate.record_id,
    )
    templates.copy_into(mail, template)
    return mail


def _refuse_empty_fields(mails: list[OutgoingMail]) -> None:
    """Raise ValidationError naming each recipient whose smart fields have no value (the
    rule is smart_fields'; a group names them all at once, so they can be unticked)."""
    empty = []
    for mail in mails:
        missing = smart_fields.missing_fields(mail)
        if missing:
            empty.append(f"{mail.to[0][0] or mail.to[0][1]} ({', '.join(missing)})")
    if empty:
        db.session.rollback()
        raise ValidationError(
            {
                "recipients": "These recipients have smart fields with no value: "
                + "; ".join(empty)
                + ". Untick them, fill in their records, or give the fields a fallback text "
                "in the template."
            }
        )


def _mails(group: GroupSend) -> list[OutgoingMail]:
    return list(
        db.session.scalars(
            select(OutgoingMail)
            .where(OutgoingMail.group_send_id == group.id, OutgoingMail.user_id == group.user_id)
            .order_by(OutgoingMail.send_at, OutgoingMail.id)
        )
    )


def _progress_of(
    group: GroupSend, states: list[str], mails: list[OutgoingMail] | None = None
) -> Progress:
    return Progress(
        total=group.total,
        sent=states.count(OUTGOING_SENT),
        failed=states.count(OUTGOING_FAILED),
        uncertain=states.count(OUTGOING_UNCERTAIN),
        waiting=states.count(OUTGOING_QUEUED) + states.count(OUTGOING_SENDING),
        cancelled=group.total - len(states),
        mails=mails or [],
    )


def progress(group: GroupSend) -> Progress:
    """Return how far the group email has come (mails cancelled before sending are gone)."""
    mails = _mails(group)
    return _progress_of(group, [mail.state for mail in mails], mails)


def state_of(group: GroupSend, current: Progress) -> str:
    """Return what the group email is doing: sending, done or cancelled."""
    if group.state == GROUP_CANCELLED:
        return GROUP_CANCELLED
    return GROUP_DONE if current.finished else GROUP_SENDING


def cancel(user: User, group: GroupSend) -> int:
    """Take back every mail of the group not sent yet; return how many. Commits.

    A mail the worker has begun sending is past taking back and is left to finish.
    """
    waiting = [mail.id for mail in _mails(group) if mail.state == OUTGOING_QUEUED]
    if group.state == GROUP_SENDING:
        group.state = GROUP_CANCELLED
    return outbox.cancel_waiting(user, waiting)


def group_sends(user: User, *, limit: int = 50) -> list[tuple[GroupSend, Progress, str]]:
    """Return the user's group emails, newest first, each with its progress (no mails) and
    state; the counts come from one query for all of them."""
    groups = list(
        db.session.scalars(
            select(GroupSend)
            .where(GroupSend.user_id == user.id)
            .order_by(GroupSend.created_at.desc(), GroupSend.id.desc())
            .limit(limit)
        )
    )
    states: dict[int, list[str]] = {group.id: [] for group in groups}
    rows = db.session.execute(
        select(OutgoingMail.group_send_id, OutgoingMail.state).where(
            OutgoingMail.user_id == user.id, OutgoingMail.group_send_id.in_(states)
        )
    )
    for group_id, state in rows:
        states[group_id].append(state)
    summaries = []
    for group in groups:
        current = _progress_of(group, states[group.id])
        summaries.append((group, current, state_of(group, current)))
    return summaries


def choices(user: User) -> tuple[list[MailTemplate], list[MailAccount]]:
    """Return the templates and accounts the picker offers."""
    return (
        templates.usable_templates(user),
        list(db.session.scalars(own_sending_accounts(user))),
    )
