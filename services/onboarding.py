"""The first-run checklist: what a new team does in its first hour, until done or dismissed."""

from __future__ import annotations

from dataclasses import dataclass

from flask import url_for
from sqlalchemy import func, select

from extensions import db
from models import MailAccount, Person, Preference, User
from services.access import accessible_to
from services.preferences import PreferenceSpec, get_preference, register, update_preferences

register(
    PreferenceSpec(
        "show_checklist",
        "Getting-started checklist",
        True,
        ((True, "Show it on the Deals page until every step is done"), (False, "Hide it")),
    )
)

# The personal settings a user is asked to look at once.
DEFAULTS_KEYS = ("default_email_sharing", "auto_linking")


@dataclass(frozen=True)
class Step:
    label: str
    done: bool
    url: str
    action: str


def checklist(user: User) -> list[Step]:
    """Return the steps for `user`; inviting teammates is an admin's step."""
    has_mailbox = db.session.scalar(select(MailAccount.id).where(MailAccount.user_id == user.id))
    others = db.session.scalar(select(func.count(User.id)).where(User.id != user.id))
    has_people = db.session.scalar(select(Person.id).where(accessible_to(Person, user.id)))
    chose_defaults = db.session.scalar(
        select(Preference.id).where(
            Preference.user_id == user.id, Preference.key.in_(DEFAULTS_KEYS)
        )
    )
    steps = [
        Step(
            "Connect your mailbox",
            has_mailbox is not None,
            url_for("accounts.new"),
            "Connect",
        )
    ]
    if user.is_admin:
        steps.append(
            Step("Invite your teammates", bool(others), url_for("admin.users_index"), "Invite")
        )
    steps += [
        Step("Add the people you sell to", has_people is not None, url_for("persons.new"), "Add"),
        Step(
            "Choose what teammates see and how mail links to deals",
            chose_defaults is not None,
            url_for("settings.index"),
            "Choose",
        ),
    ]
    return steps


def checklist_to_show(user: User) -> list[Step]:
    """Return the checklist while it is wanted: not dismissed and not all done."""
    if not get_preference(user, "show_checklist"):
        return []
    steps = checklist(user)
    return [] if all(step.done for step in steps) else steps


def dismiss_checklist(user: User) -> None:
    update_preferences(user, {"show_checklist": "False"})
