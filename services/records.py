"""CRM records: persons, organizations, deals, leads, projects.

Create/update/delete operations validate form-shaped input (strings), raise ValidationError
with field errors, and commit once at their end. List builders return a Select composed on
top of `access.visible_records`, so callers can paginate, count or refine it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.exc import IntegrityError

from extensions import db
from models import (
    CURRENCIES,
    DEAL_STAGES,
    DEAL_STATUSES,
    LEAD_STATUSES,
    PROJECT_STATUSES,
    VISIBILITIES,
    VISIBILITY_EVERYONE,
    Deal,
    Lead,
    Organization,
    Person,
    PersonEmail,
    Project,
    User,
)
from services.access import (
    can_access_record,
    can_manage_record,
    can_manage_records_of,
    record_or_none,
    visible_records,
)
from services.addresses import is_valid_address
from services.errors import ValidationError
from services.inputs import parse_id, search_text
from services.linking import move_lead_conversations, remember_past_link_offers
from services.users import normalize_email

T = TypeVar("T")

SORTS = ("name", "-name", "updated", "-updated")
DEFAULT_SORT = "-updated"
MAX_VALUE = Decimal("999999999999.99")
DOMAIN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")


# --------------------------------------------------------------------------- lists


def format_money(value: Decimal | None, currency: str) -> str | None:
    """Return "EUR 12,500" (cents only when there are some): how Threadline writes a value,
    on record pages and in smart fields."""
    if value is None:
        return None
    amount = f"{value:,.0f}" if value == value.to_integral_value() else f"{value:,.2f}"
    return f"{currency} {amount}"


@dataclass(frozen=True)
class Page:
    """One page of a list: its items and where it sits among all matches."""

    items: list[Any]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def label_column(model: type) -> Any:
    """Return the column a record is named by (name or title)."""
    return model.name if model in (Person, Organization) else model.title  # type: ignore[attr-defined]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_records(user: User, model: type[T], *, q: str = "", sort: str = DEFAULT_SORT) -> Select:
    """Return visible records of `model` matching `q` (name/title; persons also by email).

    `sort` is one of SORTS ("-" means descending); anything else falls back to newest first.
    """
    stmt = visible_records(user, model)
    q = search_text(q)
    if q:
        pattern = f"%{_escape_like(q)}%"
        condition = label_column(model).ilike(pattern, escape="\\")
        if model is Person:
            by_email = select(PersonEmail.person_id).where(
                PersonEmail.email.ilike(pattern, escape="\\")
            )
            condition = or_(condition, Person.id.in_(by_email))
        elif model is Organization:
            condition = or_(condition, Organization.domain.ilike(pattern, escape="\\"))
        stmt = stmt.where(condition)
    if sort not in SORTS:
        sort = DEFAULT_SORT
    key = sort.lstrip("-")
    column = func.lower(label_column(model)) if key == "name" else model.updated_at  # type: ignore[attr-defined]
    order = column.desc() if sort.startswith("-") else column.asc()
    return stmt.order_by(order, model.id.desc())  # type: ignore[attr-defined]


def paginate(stmt: Select, *, page: int | None, per_page: int) -> Page:
    """Run `stmt` for one page (clamped to the available range)."""
    total = db.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    total = total or 0
    pages = max(1, -(-total // per_page))
    page = min(max(page or 1, 1), pages)
    items = list(db.session.scalars(stmt.limit(per_page).offset((page - 1) * per_page)))
    return Page(items=items, page=page, per_page=per_page, total=total)


def related_records(user: User, model: type[T], **filters: int) -> list[T]:
    """Return visible records of `model` linked to a person/organization (e.g. person_id=3)."""
    stmt = visible_records(user, model)
    for column, value in filters.items():
        stmt = stmt.where(getattr(model, column) == value)
    return list(db.session.scalars(stmt.order_by(model.updated_at.desc())))  # type: ignore[attr-defined]


def picker_options(user: User, model: type[T]) -> list[T]:
    """Return the records `user` may link to from a form, by name."""
    stmt = visible_records(user, model).order_by(func.lower(label_column(model)))
    return list(db.session.scalars(stmt))


def owner_choices(actor: User, record: Any = None) -> list[User]:
    """Return the active users `actor` may make owner of `record` (None: a new record).

    Empty when `actor` may not change the owner at all.
    """
    if record is not None and not can_manage_record(actor, record):
        return []
    stmt = select(User).where(User.is_deactivated.is_(False)).order_by(func.lower(User.name))
    users = list(db.session.scalars(stmt))
    if record is None:
        users = [user for user in users if can_manage_records_of(actor, user.id)]
    return users


def board_columns(user: User) -> list[tuple[str, list[Deal]]]:
    """Return open visible deals grouped by stage, in pipeline order."""
    stmt = visible_records(user, Deal).where(Deal.status == "open").order_by(Deal.updated_at.desc())
    columns: dict[str, list[Deal]] = {stage: [] for stage in DEAL_STAGES}
    for deal in db.session.scalars(stmt):
        columns.setdefault(deal.stage, []).append(deal)
    return list(columns.items())


# --------------------------------------------------------------------------- field cleaning


class _Fields:
    """Collects cleaned values and field errors for one submitted form."""

    def __init__(self, actor: User):
        self.actor = actor
        self.errors: dict[str, str] = {}

    def text(
        self, name: str, value: Any, *, label: str, required: bool = False, max_length: int = 200
    ) -> str | None:
        text = str(value or "").strip()
        if required and not text:
            self.errors[name] = f"{label} is required."
        elif len(text) > max_length:
            self.errors[name] = f"{label} is too long (at most {max_length} characters)."
        return text or None

    def choice(self, name: str, value: Any, choices: tuple[str, ...], default: str) -> str:
        text = str(value or "").strip() or default
        if text not in choices:
            self.errors[name] = "Choose one of the listed options."
            return default
        return text

    def money(self, name: str, value: Any, *, required: bool) -> Decimal | None:
        text = str(value if value is not None else "").strip().replace(",", "")
        if not text:
            if required:
                return Decimal("0")
            return None
        try:
            amount = Decimal(text)
        except InvalidOperation:
            self.errors[name] = "Enter an amount like 12500 or 12500.50."
            return None
        if not amount.is_finite() or amount < 0 or amount > MAX_VALUE:
            self.errors[name] = "Enter an amount between 0 and 999,999,999,999."
            return None
        return amount.quantize(Decimal("0.01"))

    def date(self, name: str, value: Any) -> date | None:
        if isinstance(value, date):
            return value
        text = str(value or "").strip()
        if not text:
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            self.errors[name] = "Enter a date like 2026-12-31."
            return None

    def person(self, values: dict[str, Any], record: Any) -> Person | None:
        """The person a record links to (`record`: the one edited, None for a new one)."""
        current = record.person if record else None
        return self.linked(
            "person_id", Person, values.get("person_id"), label="a person", current=current
        )

    def organization(self, values: dict[str, Any], record: Any) -> Organization | None:
        """The organization a record links to (`record`: the one edited, None for a new one)."""
        current = record.organization if record else None
        return self.linked(
            "organization_id",
            Organization,
            values.get("organization_id"),
            label="an organization",
            current=current,
        )

    def linked(
        self, name: str, model: type[T], value: Any, *, label: str, current: T | None = None
    ) -> T | None:
        """Return the linked record, or record a field error when `actor` cannot access it.

        `current` is the record linked now. When `actor` cannot access it, their form had no
        choice for it, so a blank field (or its id sent back) keeps it: a teammate's edit of
        a public deal must not drop the owner's private person without anyone knowing.
        """
        text = str(value if value is not None else "").strip()
        if current is not None and not can_access_record(self.actor, current):
            if not text or parse_id(text) == current.id:
                return current
        if not text:
            return None
        record = record_or_none(self.actor, model, parse_id(text))
        if record is None:
            self.errors[name] = f"Choose {label} from the list."
        return record

    def owner_and_visibility(self, values: dict[str, Any], record: Any) -> dict[str, Any]:
        """Return owner_id and visibility for a new record (None) or `record`.

        Left out of the form, both keep their value (a new record: the actor, everyone), so
        a form without these controls changes neither. Only who can manage the record may
        change them, and a non-admin creates records for themselves only (access.py).
        """
        owner_id = record.owner_id if record is not None else self.actor.id
        visibility = record.visibility if record is not None else VISIBILITY_EVERYONE
        posted_owner = str(values.get("owner_id") or "").strip()
        if posted_owner:
            user_id = parse_id(posted_owner)
            user = db.session.get(User, user_id) if user_id else None
            if user is None or user.is_deactivated:
                self.errors["owner_id"] = "Choose an active teammate as owner."
            else:
                owner_id = user.id
        if str(values.get("visibility") or "").strip():
            visibility = self.choice(
                "visibility", values.get("visibility"), VISIBILITIES, visibility
            )
        # Refusals go to "__all__": the form does not show these fields to this user.
        if record is None:
            if not can_manage_records_of(self.actor, owner_id):
                self.errors["__all__"] = "Only an admin can create a record for someone else."
        elif not can_manage_record(self.actor, record):
            if (owner_id, visibility) != (record.owner_id, record.visibility):
                self.errors["__all__"] = (
                    "Only the owner or an admin can change this record's owner or visibility."
                )
        return {"owner_id": owner_id, "visibility": visibility}

    def raise_if_invalid(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


def _save(record: Any) -> Any:
    db.session.add(record)
    db.session.commit()
    return record


def _delete(actor: User, record: Any) -> None:
    # Views refuse with a 403 first (access.record_for); this guards other callers.
    if not can_manage_record(actor, record):
        raise PermissionError("only the owner or an admin can delete this record")
    db.session.delete(record)
    db.session.commit()


# --------------------------------------------------------------------------- persons


def _clean_emails(fields: _Fields, emails: list[str], primary: Any) -> list[str]:
    """Return distinct normalized addresses, primary first; record field errors."""
    primary_index = int(primary) if str(primary or "").strip().isdigit() else 0
    cleaned: list[tuple[bool, str]] = []
    for index, raw in enumerate(emails):
        address = normalize_email(raw)
        if not address:
            continue
        if not is_valid_address(address):
            fields.errors["emails"] = f"“{raw.strip()}” is not a valid email address."
            continue
        if any(address == seen for _, seen in cleaned):
            fields.errors["emails"] = f"{address} is listed twice."
            continue
        cleaned.append((index == primary_index, address))
    cleaned.sort(key=lambda pair: not pair[0])  # stable: the chosen primary first
    return [address for _, address in cleaned]


def _check_email_owners(fields: _Fields, addresses: list[str], person_id: int | None) -> None:
    """Record an error naming the person who already has one of `addresses`."""
    if not addresses:
        return
    taken = db.session.scalars(
        select(PersonEmail).where(
            func.lower(PersonEmail.email).in_(addresses),
            PersonEmail.person_id != (person_id or 0),
        )
    ).first()
    if taken is None:
        return
    holder = taken.person
    # Naming a private contact would leak it (PRODUCT.md, Sharing and visibility).
    who = holder.name if can_access_record(fields.actor, holder) else "a private contact"
    fields.errors["emails"] = f"{taken.email} already belongs to {who}."


def _apply_emails(person: Person, addresses: list[str]) -> None:
    existing = {row.email: row for row in person.emails}
    rows = []
    for index, address in enumerate(addresses):
        row = existing.pop(address, None) or PersonEmail(email=address)
        row.is_primary = index == 0
        rows.append(row)
    person.emails = rows


def _person_fields(actor: User, values: dict[str, Any], record: Person | None) -> dict[str, Any]:
    fields = _Fields(actor)
    cleaned = {
        "name": fields.text("name", values.get("name"), label="Name", required=True),
        "phone": fields.text("phone", values.get("phone"), label="Phone", max_length=50),
        "organization": fields.organization(values, record),
        **fields.owner_and_visibility(values, record),
    }
    emails = _clean_emails(fields, list(values.get("emails") or []), values.get("primary_email"))
    if "emails" not in fields.errors:
        _check_email_owners(fields, emails, record.id if record else None)
    fields.raise_if_invalid()
    cleaned["emails"] = emails
    return cleaned


def _commit_person(person: Person) -> Person:
    try:
        return _save(person)
    except IntegrityError as exc:
        # Two people saved the same address at once; the unique index kept the data right.
        db.session.rollback()
        raise ValidationError(
            {"emails": "One of these addresses was just added to another person."}
        ) from exc


def create_person(actor: User, **values: Any) -> Person:
    """Create a person; `emails` is a list of addresses, `primary_email` the primary's index."""
    cleaned = _person_fields(actor, values, None)
    emails = cleaned.pop("emails")
    person = Person(**cleaned)
    _apply_emails(person, emails)
    _commit_person(person)
    remember_past_link_offers(actor, person, emails)
    return person


def update_person(actor: User, person: Person, **values: Any) -> Person:
    """Change a person's fields and replace their addresses; commits.

    Addresses new to the person become offers to link the actor's past mail with them.
    """
    cleaned = _person_fields(actor, values, person)
    before = {row.email for row in person.emails}
    emails = cleaned.pop("emails")
    _apply_emails(person, emails)
    for key, value in cleaned.items():
        setattr(person, key, value)
    _commit_person(person)
    remember_past_link_offers(actor, person, [e for e in emails if e not in before])
    return person


def delete_person(actor: User, person: Person) -> None:
    """Delete a person and their addresses; linked deals, leads and projects keep existing."""
    _delete(actor, person)


# --------------------------------------------------------------------------- organizations


def _clean_domain(fields: _Fields, value: Any) -> str | None:
    text = str(value or "").strip().lower()
    text = re.sub(r"^[a-z]+://", "", text).split("/")[0].removeprefix("www.")
    if text.startswith("@"):
        text = text[1:]
    if text and (len(text) > 255 or not DOMAIN_RE.match(text)):
        fields.errors["domain"] = "Enter a domain like example.com."
    return text or None


def _organization_fields(
    actor: User, values: dict[str, Any], record: Organization | None
) -> dict[str, Any]:
    fields = _Fields(actor)
    cleaned = {
        "name": fields.text("name", values.get("name"), label="Name", required=True),
        "domain": _clean_domain(fields, values.get("domain")),
        "address": fields.text("address", values.get("address"), label="Address", max_length=1000),
        **fields.owner_and_visibility(values, record),
    }
    fields.raise_if_invalid()
    return cleaned


def create_organization(actor: User, **values: Any) -> Organization:
    """Create an organization; commits."""
    return _save(Organization(**_organization_fields(actor, values, None)))


def update_organization(actor: User, organization: Organization, **values: Any) -> Organization:
    """Change an organization; commits."""
    for key, value in _organization_fields(actor, values, organization).items():
        setattr(organization, key, value)
    return _save(organization)


def delete_organization(actor: User, organization: Organization) -> None:
    """Delete an organization; its persons and deals stay, unlinked."""
    _delete(actor, organization)


# --------------------------------------------------------------------------- deals


def _deal_fields(actor: User, values: dict[str, Any], record: Deal | None) -> dict[str, Any]:
    fields = _Fields(actor)
    cleaned = {
        "title": fields.text("title", values.get("title"), label="Title", required=True),
        "value": fields.money("value", values.get("value"), required=True),
        "currency": fields.choice("currency", values.get("currency"), CURRENCIES, "USD"),
        "stage": fields.choice("stage", values.get("stage"), DEAL_STAGES, DEAL_STAGES[0]),
        "status": fields.choice("status", values.get("status"), DEAL_STATUSES, "open"),
        "expected_close_date": fields.date(
            "expected_close_date", values.get("expected_close_date")
        ),
        "person": fields.person(values, record),
        "organization": fields.organization(values, record),
        **fields.owner_and_visibility(values, record),
    }
    fields.raise_if_invalid()
    return cleaned


def create_deal(actor: User, **values: Any) -> Deal:
    """Create a deal; commits."""
    return _save(Deal(**_deal_fields(actor, values, None)))


def update_deal(actor: User, deal: Deal, **values: Any) -> Deal:
    """Change a deal; commits."""
    for key, value in _deal_fields(actor, values, deal).items():
        setattr(deal, key, value)
    return _save(deal)


def move_deal_stage(actor: User, deal: Deal, stage: str) -> Deal:
    """Move a deal to another pipeline stage (board drag and drop or menu); commits."""
    if stage not in DEAL_STAGES:
        raise ValidationError({"stage": "Choose one of the pipeline stages."})
    deal.stage = stage
    return _save(deal)


def delete_deal(actor: User, deal: Deal) -> None:
    """Delete a deal; a lead converted into it keeps its converted status."""
    _delete(actor, deal)


# --------------------------------------------------------------------------- leads


def _lead_fields(actor: User, values: dict[str, Any], record: Lead | None) -> dict[str, Any]:
    fields = _Fields(actor)
    cleaned = {
        "title": fields.text("title", values.get("title"), label="Title", required=True),
        "value": fields.money("value", values.get("value"), required=False),
        "currency": fields.choice("currency", values.get("currency"), CURRENCIES, "USD"),
        "status": fields.choice("status", values.get("status"), LEAD_STATUSES, "open"),
        "person": fields.person(values, record),
        "organization": fields.organization(values, record),
        **fields.owner_and_visibility(values, record),
    }
    already_converted = record is not None and record.status == "converted"
    if cleaned["status"] == "converted" and not already_converted:
        fields.errors["status"] = "Use “Convert to deal” to convert a lead."
    fields.raise_if_invalid()
    return cleaned


def create_lead(actor: User, **values: Any) -> Lead:
    """Create a lead; commits."""
    return _save(Lead(**_lead_fields(actor, values, None)))


def update_lead(actor: User, lead: Lead, **values: Any) -> Lead:
    """Change a lead; commits."""
    for key, value in _lead_fields(actor, values, lead).items():
        setattr(lead, key, value)
    return _save(lead)


def convert_lead(actor: User, lead: Lead) -> Deal:
    """Create an open deal from `lead`, mark the lead converted and link it; commits.

    The deal keeps the lead's owner and visibility, so whoever could see the lead sees the
    deal. Raises ValidationError when the lead was already converted.
    """
    if not can_manage_record(actor, lead):
        # Views refuse with a 403 first; the deal would be created in the owner's name.
        raise PermissionError("only the owner or an admin can convert this lead")
    if lead.status == "converted":
        raise ValidationError({"__all__": "This lead was already converted to a deal."})
    deal = Deal(
        title=lead.title,
        value=lead.value or Decimal("0"),
        currency=lead.currency,
        stage=DEAL_STAGES[0],
        status="open",
        person_id=lead.person_id,
        organization_id=lead.organization_id,
        owner_id=lead.owner_id,
        visibility=lead.visibility,
    )
    db.session.add(deal)
    db.session.flush()
    lead.deal_id = deal.id
    lead.status = "converted"
    move_lead_conversations(lead.id, deal.id)
    db.session.commit()
    return deal


def delete_lead(actor: User, lead: Lead) -> None:
    """Delete a lead; a deal converted from it stays."""
    _delete(actor, lead)


# --------------------------------------------------------------------------- projects


def _project_fields(actor: User, values: dict[str, Any], record: Project | None) -> dict[str, Any]:
    fields = _Fields(actor)
    cleaned = {
        "title": fields.text("title", values.get("title"), label="Title", required=True),
        "status": fields.choice("status", values.get("status"), PROJECT_STATUSES, "open"),
        "person": fields.person(values, record),
        "organization": fields.organization(values, record),
        **fields.owner_and_visibility(values, record),
    }
    fields.raise_if_invalid()
    return cleaned


def create_project(actor: User, **values: Any) -> Project:
    """Create a project; commits."""
    return _save(Project(**_project_fields(actor, values, None)))


def update_project(actor: User, project: Project, **values: Any) -> Project:
    """Change a project; commits."""
    for key, value in _project_fields(actor, values, project).items():
        setattr(project, key, value)
    return _save(project)


def delete_project(actor: User, project: Project) -> None:
    """Delete a project."""
    _delete(actor, project)
