"""The request class of the app: what a browser sends, before any view reads it."""

from __future__ import annotations

from htmx_flask.requests import HtmxAwareRequest
from werkzeug.datastructures import ImmutableMultiDict, iter_multi_items


def _without_nul(value):
    return value.replace("\x00", "") if isinstance(value, str) else value


class FieldsWithoutNul(ImmutableMultiDict):
    """Form fields and query arguments with NUL characters dropped.

    A NUL never means anything in a name, an address or a search, and PostgreSQL refuses
    text that holds one (every such request was a 500 there; SQLite stored it). Dropped in
    one place, here, instead of in each view and service that reads a field.
    """

    def __init__(self, mapping=None) -> None:
        super().__init__(
            (_without_nul(key), _without_nul(value))
            for key, value in iter_multi_items(mapping or ())
        )


class ThreadlineRequest(HtmxAwareRequest):
    """htmx-flask's request (request.htmx), with fields that never hold a NUL."""

    parameter_storage_class = FieldsWithoutNul
