"""Visibility over every record route, enumerated from the app's URL map.

An owner-only record of user A must be a 404 for user B on every route that takes its id
(detail, edit, delete, fragments, actions), and never appear in B's lists, searches, board or
pickers. A new record route is picked up automatically; one whose id argument is unknown
here fails until it is added to ID_ARGS.
"""

import shutil
import tempfile

import pytest
from sqlalchemy import func, select

from app import create_app
from extensions import db
from models import Deal, Lead, Organization, Person, PersonEmail, Project
from views import RECORD_BLUEPRINTS

ID_ARGS = {
    "person_id": Person,
    "organization_id": Organization,
    "deal_id": Deal,
    "lead_id": Lead,
    "project_id": Project,
}
PRIVATE_NAMES = {
    Person: "Zed Private Person",
    Organization: "Zed Private Org",
    Deal: "Zed Private Deal",
    Lead: "Zed Private Lead",
    Project: "Zed Private Project",
}
VALID_FORM = {"name": "Renamed", "title": "Renamed", "stage": "qualified", "value": "5"}


def _record_rules():
    """Return (endpoint, rule, method) for every record-blueprint route, from the URL map."""
    instance = tempfile.mkdtemp(prefix="threadline-urlmap-")
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": instance,
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "SECRET_KEY": "url-map",
            "SCHEDULER_ENABLED": False,
        }
    )
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] not in RECORD_BLUEPRINTS:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, rule.rule, method, tuple(sorted(rule.arguments))))
    shutil.rmtree(instance, ignore_errors=True)
    return found


RULES = _record_rules()
ID_RULES = [r for r in RULES if r[3]]
LIST_RULES = [r for r in RULES if not r[3] and r[2] == "GET"]


def test_url_map_has_record_routes():
    endpoints = {endpoint for endpoint, *_ in RULES}
    assert {"deals.index", "deals.board", "deals.move", "leads.convert"} <= endpoints
    for area in RECORD_BLUEPRINTS:
        for action in (
            "index",
            "show",
            "new",
            "create",
            "edit",
            "update",
            "confirm_delete",
            "delete",
            "summary",
        ):
            assert f"{area}.{action}" in endpoints


@pytest.fixture
def owner_a(make_user):
    return make_user(name="Owner A")


@pytest.fixture
def private_records(owner_a, make_organization, make_person, make_deal, make_lead, make_project):
    """Owner-only records of A, plus one public organization linking them."""
    public_org = make_organization(owner_a, name="Public Org")
    org = make_organization(owner_a, name=PRIVATE_NAMES[Organization], visibility="owner")
    person = make_person(
        owner_a,
        name=PRIVATE_NAMES[Person],
        visibility="owner",
        emails=("zed.private@hidden.test",),
        organization_id=public_org.id,
    )
    common = {"visibility": "owner", "person_id": person.id, "organization_id": public_org.id}
    return {
        Organization: org,
        Person: person,
        Deal: make_deal(owner_a, title=PRIVATE_NAMES[Deal], **common),
        Lead: make_lead(owner_a, title=PRIVATE_NAMES[Lead], **common),
        Project: make_project(owner_a, title=PRIVATE_NAMES[Project], **common),
        "public_org": public_org,
    }


def _url(rule: str, arguments: tuple[str, ...], records) -> tuple[str, type]:
    assert len(arguments) == 1, f"{rule}: teach this test about routes with several ids"
    argument = arguments[0]
    assert argument in ID_ARGS, f"{rule}: add {argument!r} to ID_ARGS so visibility is tested"
    model = ID_ARGS[argument]
    return rule.replace(f"<id:{argument}>", str(records[model].id)), model


def _count(model) -> int:
    return db.session.scalar(select(func.count(model.id)))


@pytest.mark.parametrize(
    ("endpoint", "rule", "method", "arguments"), ID_RULES, ids=[f"{r[2]} {r[0]}" for r in ID_RULES]
)
def test_owner_only_record_is_404_for_others_on_every_route(
    endpoint, rule, method, arguments, private_records, owner_a, make_user, login
):
    url, model = _url(rule, arguments, private_records)
    other = login(make_user(name="Other B"))
    before = _count(model)
    response = other.open(url, method=method, data=VALID_FORM)
    assert response.status_code == 404, (url, method)
    assert PRIVATE_NAMES[model] not in response.get_data(as_text=True)
    htmx = other.open(
        url,
        method=method,
        data=VALID_FORM,
        headers={"HX-Request": "true", "HX-Target": "record-summary"},
    )
    assert htmx.status_code == 404
    assert _count(model) == before
    db.session.expire_all()
    record = db.session.get(model, private_records[model].id)
    assert (getattr(record, "name", None) or record.title) == PRIVATE_NAMES[model]

    mine = login(owner_a).open(url, method=method, data=VALID_FORM)
    assert mine.status_code in (200, 303), (url, method, mine.get_data(as_text=True)[:500])


@pytest.mark.parametrize(
    ("endpoint", "rule", "method", "arguments"), LIST_RULES, ids=[r[0] for r in LIST_RULES]
)
def test_lists_and_pickers_never_show_owner_only_records_to_others(
    endpoint, rule, method, arguments, private_records, owner_a, make_user, login
):
    other = login(make_user(name="Other B"))
    queries = [
        "",
        "?q=Zed",
        "?q=zed.private@hidden",
        f"?person_id={private_records[Person].id}",
    ]
    for query in queries:
        text = other.get(rule + query).get_data(as_text=True)
        for name in PRIVATE_NAMES.values():
            assert name not in text, (rule + query, name)
    mine = login(owner_a).get(rule).get_data(as_text=True)
    if endpoint.endswith(".index"):
        area_names = [
            name
            for model, name in PRIVATE_NAMES.items()
            if endpoint.split(".")[0] == model.__tablename__ + "s"
        ]
        assert all(name in mine for name in area_names)


def test_public_record_pages_hide_linked_private_records(private_records, make_user, login):
    other = login(make_user(name="Other B"))
    org_page = other.get(f"/organizations/{private_records['public_org'].id}")
    assert org_page.status_code == 200
    for name in PRIVATE_NAMES.values():
        assert name not in org_page.get_data(as_text=True)


def test_linking_an_inaccessible_record_is_a_field_error(private_records, make_user, login):
    other = login(make_user(name="Other B"))
    person_id = str(private_records[Person].id)
    org_id = str(private_records[Organization].id)
    for path in ("/deals/", "/leads/", "/projects/"):
        response = other.post(
            path, data={"title": "Sneaky", "person_id": person_id, "organization_id": org_id}
        )
        assert response.status_code == 422
        text = response.get_data(as_text=True)
        assert "Choose a person from the list." in text
        assert "Choose an organization from the list." in text
    response = other.post("/persons/", data={"name": "Sneaky", "organization_id": org_id})
    assert response.status_code == 422
    assert _count(Deal) == 1 and _count(Person) == 1


def test_duplicate_email_of_private_person_does_not_leak_name(private_records, make_user, login):
    other = login(make_user(name="Other B"))
    response = other.post("/persons/", data={"name": "Copy", "emails": ["Zed.Private@hidden.test"]})
    assert response.status_code == 422
    assert PRIVATE_NAMES[Person] not in response.get_data(as_text=True)
    assert _count(PersonEmail) == 1
