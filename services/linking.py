"""Linking rules: which person (and later deal, lead, project) a mail address belongs to."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from extensions import db
from models import PersonEmail

_CHUNK = 500


def persons_for_addresses(addresses: Iterable[str]) -> dict[str, int]:
    """Return {lowercased address: person id} for the addresses that belong to a person.

    An address belongs to at most one person (PersonEmail.email is unique and lowercased),
    so the match is exact on the lowercased address; unknown addresses are left out.
    """
    wanted = sorted(
        {address.strip().lower() for address in addresses if address and "@" in address}
    )
    found: dict[str, int] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        rows = db.session.execute(
            select(PersonEmail.email, PersonEmail.person_id).where(PersonEmail.email.in_(chunk))
        )
        found.update({email: person_id for email, person_id in rows})
    return found
