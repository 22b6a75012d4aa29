"""Helpers every view uses: page-or-fragment rendering and form error responses."""

from __future__ import annotations

import math

from flask import current_app, make_response, render_template, url_for
from htmx_flask import request
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter, ValidationError

from models import StoredFile
from services.inputs import MAX_ID


def is_fragment_request(*targets: str) -> bool:
    """Tell whether htmx asked to swap one of `targets` (not a boosted full navigation).

    A bare HX-Request is not enough: boosted links send it too but want the whole page.
    """
    if not request.htmx or request.htmx.boosted:
        return False
    target = request.htmx.target
    return target in targets if targets else target is not None


def render_page_or_fragment(page: str, fragment: str, *, targets: tuple[str, ...], **context):
    """Render `fragment` when htmx targets one of `targets`, else the full `page`."""
    template = fragment if is_fragment_request(*targets) else page
    response = make_response(render_template(template, **context))
    response.vary.add("HX-Request")
    response.vary.add("HX-Target")
    return response


def render_invalid(template: str, status: int = 422, **context):
    """Re-render a form with its errors; 422 so htmx swaps it (configured in app.js)."""
    return make_response(render_template(template, **context), status)


def form_value(name: str, default: str = "") -> str:
    """Return a stripped form field."""
    return (request.form.get(name) or default).strip()


def parse_float(value: str | None) -> float | None:
    """Return a finite float from a query/form string, or None for anything else."""
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def parse_int(value: str | None) -> int | None:
    """Return an int from a query/form string, or None for anything else."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class DatabaseIdConverter(IntegerConverter):
    """`<id:name>` in a route: a database id, 1..2**63-1; anything else is a 404.

    Bounding ids here keeps every route from passing SQLite an integer it cannot hold.
    """

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=MAX_ID)

    def to_python(self, value: str) -> int:
        try:
            return super().to_python(value)
        except ValidationError:
            # Not "no match": when a GET and a POST rule share the path, werkzeug would
            # answer 405 for the method it did not try to convert.
            raise NotFound() from None


# Record pages a chip links to; the records area defines these endpoints.
RECORD_ENDPOINTS = {
    "person": ("persons.show", "person_id"),
    "organization": ("organizations.show", "organization_id"),
    "deal": ("deals.show", "deal_id"),
    "lead": ("leads.show", "lead_id"),
    "project": ("projects.show", "project_id"),
}


def record_url(kind: str, record_id: int) -> str | None:
    """Return the URL of a record's page, or None while its endpoint does not exist."""
    endpoint, argument = RECORD_ENDPOINTS[kind]
    if endpoint not in current_app.view_functions:
        return None
    return url_for(endpoint, **{argument: record_id})


def file_json(attachment: StoredFile, *, url: str, delete_url: str) -> dict:
    """What the editors' scripts get for an uploaded file (a draft's or a template's)."""
    return {
        "id": attachment.id,
        "filename": attachment.filename,
        "size": attachment.size,
        "content_type": attachment.content_type,
        "content_id": attachment.content_id,
        "url": url,
        "delete_url": delete_url,
    }


def oauth_redirect_uri() -> str:
    """Return the OAuth2 redirect URL to register with providers: PUBLIC_URL's when set
    (behind a proxy the request's own address may not be the one browsers use), else the
    request's. The provider accepts only a registered URL, so a forged Host gains nothing."""
    public = (current_app.config.get("PUBLIC_URL") or "").rstrip("/")
    if public:
        return public + url_for("accounts.oauth_callback")
    return url_for("accounts.oauth_callback", _external=True)


def content_security_policy(*, img_src: str = "", form_action: str = "") -> str:
    """Return the app's Content-Security-Policy, with sources added to img-src or form-action
    for the few responses that need more (remote images the user chose to show, the
    redirect of a sign-in form to its provider). One policy, so none drifts from the others."""
    return (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data:{' ' + img_src if img_src else ''}; font-src 'self'; "
        "connect-src 'self'; media-src 'none'; object-src 'none'; base-uri 'none'; "
        f"form-action 'self'{' ' + form_action if form_action else ''}; frame-ancestors 'none'"
    )
