"""Who may change a record's owner and visibility, or delete it: its owner or an admin.

Teammates who can open a public record may edit its other fields; a posted owner or
visibility change from them is a 422 field error, a delete a 403, and the form and summary
do not offer those controls. A non-admin cannot create a record in someone else's name.
"""

import pytest
from sqlalchemy import func, select

from extensions import db
from models import Deal, Lead, Organization, Person, Project

HTMX_SUMMARY = {"HX-Request": "true", "HX-Target": "record-summary"}
# path, model, factory fixture, the field the record is named by
RECORD_TYPES = [
    ("persons", Person, "make_person", "name"),
    ("organizations", Organization, "make_organization", "name"),
    ("deals", Deal, "make_deal", "title"),
    ("leads", Lead, "make_lead", "title"),
    ("projects", Project, "make_project", "title"),
]


@pytest.fixture(params=RECORD_TYPES, ids=[t[0] for t in RECORD_TYPES])
def record_type(request):
    area, model, factory, label = request.param
    return {
        "area": area,
        "model": model,
        "make": request.getfixturevalue(factory),
        "label": label,
    }


@pytest.fixture
def owner(make_user):
    return make_user(name="Owner A")


@pytest.fixture
def teammate(make_user):
    return make_user(name="Teammate B")


def _form(record_type, **extra) -> dict:
    return {record_type["label"]: "Renamed", "value": "5", **extra}


def _reload(record_type, record_id):
    db.session.expire_all()
    return db.session.get(record_type["model"], record_id)


def test_teammate_edits_other_fields_and_keeps_the_owner(record_type, owner, teammate, login):
    record = record_type["make"](owner)
    client = login(teammate)
    response = client.post(f"/{record_type['area']}/{record.id}", data=_form(record_type))
    assert response.status_code == 303
    record = _reload(record_type, record.id)
    assert getattr(record, record_type["label"]) == "Renamed"
    assert (record.owner_id, record.visibility) == (owner.id, "everyone")


@pytest.mark.parametrize(
    "takeover",
    [{"owner_id": "me"}, {"visibility": "owner"}, {"owner_id": "me", "visibility": "owner"}],
    ids=["owner", "visibility", "both"],
)
def test_teammate_cannot_take_over_a_public_record(record_type, owner, teammate, login, takeover):
    record = record_type["make"](owner)
    client = login(teammate)
    data = {k: str(teammate.id) if v == "me" else v for k, v in takeover.items()}
    for headers in ({}, HTMX_SUMMARY):
        response = client.post(
            f"/{record_type['area']}/{record.id}", data=_form(record_type, **data), headers=headers
        )
        assert response.status_code == 422
        assert "Only the owner or an admin can change" in response.get_data(as_text=True)
    record = _reload(record_type, record.id)
    assert (record.owner_id, record.visibility) == (owner.id, "everyone")
    assert getattr(record, record_type["label"]) != "Renamed"


def test_teammate_cannot_delete_a_public_record(record_type, owner, teammate, login):
    record = record_type["make"](owner)
    client = login(teammate)
    base = f"/{record_type['area']}/{record.id}"
    confirm = client.get(f"{base}/delete")
    assert confirm.status_code == 403
    assert "Only the owner or an admin can delete" in confirm.get_data(as_text=True)
    assert client.post(f"{base}/delete").status_code == 403
    assert client.post(f"{base}/delete", headers=HTMX_SUMMARY).status_code == 403
    assert _reload(record_type, record.id) is not None


def test_non_admin_cannot_create_a_record_owned_by_someone_else(
    record_type, owner, teammate, login
):
    client = login(teammate)
    model = record_type["model"]
    response = client.post(f"/{record_type['area']}/", data=_form(record_type, owner_id=owner.id))
    assert response.status_code == 422
    assert "Only an admin can create" in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count(model.id))) == 0
    mine = client.post(f"/{record_type['area']}/", data=_form(record_type, owner_id=teammate.id))
    assert mine.status_code == 303


def test_owner_and_admin_manage_owner_visibility_and_delete(
    record_type, owner, teammate, make_user, login
):
    record = record_type["make"](owner)
    base = f"/{record_type['area']}/{record.id}"
    by_owner = login(owner).post(base, data=_form(record_type, visibility="owner"))
    assert by_owner.status_code == 303
    assert _reload(record_type, record.id).visibility == "owner"

    other = record_type["make"](teammate)
    admin = login(make_user(is_admin=True))
    base = f"/{record_type['area']}/{other.id}"
    assert admin.post(base, data=_form(record_type, owner_id=owner.id)).status_code == 303
    assert _reload(record_type, other.id).owner_id == owner.id
    assert admin.post(f"{base}/delete").status_code == 303
    assert _reload(record_type, other.id) is None
    created = admin.post(f"/{record_type['area']}/", data=_form(record_type, owner_id=owner.id))
    assert created.status_code == 303


def test_controls_are_shown_only_to_who_can_use_them(record_type, owner, teammate, login):
    record = record_type["make"](owner)
    base = f"/{record_type['area']}/{record.id}"
    delete_link = f'href="{base}/delete"'
    for client, allowed in ((login(owner), True), (login(teammate), False)):
        form = client.get(f"{base}/edit", headers=HTMX_SUMMARY).get_data(as_text=True)
        assert ('name="owner_id"' in form) is allowed
        assert ('name="visibility"' in form) is allowed
        summary = client.get(f"{base}/summary").get_data(as_text=True)
        assert (delete_link in summary) is allowed
    new_form = login(teammate).get(f"/{record_type['area']}/new").get_data(as_text=True)
    assert 'name="owner_id"' not in new_form and 'name="visibility"' in new_form


def test_lead_conversion_is_for_the_owner_or_an_admin(owner, teammate, make_lead, login):
    lead = make_lead(owner, title="Inbound")
    client = login(teammate)
    assert "Convert to deal" not in client.get(f"/leads/{lead.id}").get_data(as_text=True)
    refused = client.post(f"/leads/{lead.id}/convert")
    assert refused.status_code == 403
    assert "Only the owner or an admin can convert" in refused.get_data(as_text=True)
    assert db.session.scalar(select(func.count(Deal.id))) == 0

    assert login(owner).post(f"/leads/{lead.id}/convert").status_code == 303
    deal = db.session.scalar(select(Deal))
    assert (deal.owner_id, deal.visibility) == (owner.id, "everyone")
