"""Helpers the record blueprints share: list parameters, submitted fields, edit values."""

from __future__ import annotations

from typing import Any

from flask import request
from flask_login import current_user

from models import Organization, Person
from services import preferences, records
from services.inputs import search_text
from views.helpers import parse_int, render_page_or_fragment

SUMMARY_TARGET = "record-summary"


def render_list(area: str, model: type, **context: Any):
    """Render an area's list page, or only its results when the search form asks (htmx)."""
    q = search_text(request.args.get("q"))
    sort = request.args.get("sort", records.DEFAULT_SORT)
    if sort not in records.SORTS:
        sort = records.DEFAULT_SORT
    per_page = preferences.get_preference(current_user, "records_page_size")
    page = records.paginate(
        records.search_records(current_user, model, q=q, sort=sort),
        page=parse_int(request.args.get("page")),
        per_page=per_page,
    )
    return render_page_or_fragment(
        f"{area}/page.html",
        f"{area}/partials/results.html",
        targets=("results",),
        results=page,
        q=q,
        sort=sort,
        **context,
    )


def submitted(names: tuple[str, ...], *, lists: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return the named form fields as strings (and `lists` as lists of strings)."""
    values: dict[str, Any] = {name: request.form.get(name, "") for name in names}
    values.update({name: request.form.getlist(name) for name in lists})
    return values


def values_of(record: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """Return a record's fields as form values, for pre-filling an edit form."""
    values = {}
    for name in names:
        value = getattr(record, name, None)
        values[name] = "" if value is None else str(value)
    return values


def picker_context(record: Any = None) -> dict[str, Any]:
    """Return the choices a record form offers: accessible persons/organizations, owners."""
    return {
        "persons": records.picker_options(current_user, Person),
        "organizations": records.picker_options(current_user, Organization),
        "owners": records.owner_choices(current_user, record),
    }
