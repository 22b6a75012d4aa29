"""Odd input never becomes a server error: ids outside 1..2**63-1 in any URL are a 404, and
a search text of any length is cut down before it reaches a LIKE or FTS pattern.

Both walk app.url_map, so a new route is covered without touching this file.
"""

from __future__ import annotations

import pytest
from werkzeug.routing import IntegerConverter

from services.inputs import MAX_ID

HUGE_Q = "a%_" * 33_334  # 100,002 characters, LIKE wildcards included
# Values for route arguments that are not database ids.
OTHER_ARGUMENTS = {"kind": "deal", "step": "older", "part_id": "1", "token": "x"}


def _id_rules(app):
    """Return (rule, method, id arguments) for every route taking a numeric id."""
    found = []
    for rule in app.url_map.iter_rules():
        ids = [
            name
            for name, converter in rule._converters.items()
            if isinstance(converter, IntegerConverter)
        ]
        if not ids:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule, method, ids))
    return found


def _path(rule, id_value: int) -> str:
    values = {
        name: id_value if isinstance(converter, IntegerConverter) else OTHER_ARGUMENTS[name]
        for name, converter in rule._converters.items()
    }
    return rule.build(values)[1]


@pytest.mark.parametrize("id_value", [MAX_ID + 1, 0, 10**30])
def test_out_of_range_ids_are_404_on_every_route(app, make_user, login, id_value):
    client = login(make_user(is_admin=True))  # admin, so admin routes get past their guard
    rules = _id_rules(app)
    assert len(rules) > 40  # the walk found the id routes
    for rule, method, _ids in rules:
        response = client.open(_path(rule, id_value), method=method, data={"name": "x"})
        assert response.status_code == 404, (rule.rule, method, response.status_code)


def test_routes_take_ids_through_the_id_converter(app):
    for rule, _method, ids in _id_rules(app):
        for name in ids:
            assert type(rule._converters[name]).__name__ == "DatabaseIdConverter", rule.rule


@pytest.mark.slow(seconds=15)
def test_huge_search_text_on_every_list_is_not_a_server_error(
    app,
    make_user,
    login,
    make_stored_account,
    make_stored_message,
    make_person,
    make_organization,
    make_deal,
    make_lead,
    make_project,
):
    user = make_user(is_admin=True)
    # SQLite only compiles a LIKE pattern when a row is there to match it against.
    make_person(user, emails=("ana@acme.test",))
    for factory in (make_organization, make_deal, make_lead, make_project):
        factory(user)
    thread = make_stored_message(make_stored_account(user)).thread
    client = login(user)
    urls = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if "GET" in (rule.methods or ()) and not rule.arguments and rule.endpoint != "static"
    ]
    urls += [f"/mail/threads/{thread.id}", f"/mail/threads/{thread.id}/link-search"]
    for url in urls:
        for headers in ({}, {"HX-Request": "true", "HX-Target": "results"}):
            response = client.get(
                url, query_string={"q": HUGE_Q, "link_q": HUGE_Q}, headers=headers
            )
            assert response.status_code in (200, 302, 303, 422), (url, response.status_code)


def test_search_text_is_cut_to_a_sane_length():
    from services.inputs import MAX_SEARCH_LENGTH, search_text

    assert search_text(None) == ""
    assert search_text("  ana\x00 ") == "ana"
    assert len(search_text("x" * 100_000)) == MAX_SEARCH_LENGTH
