"""Records through the HTTP client: CRUD, validation, search, pagination, board, conversion."""

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from extensions import db
from models import Deal, Lead, Organization, Person, PersonEmail, Project
from services import preferences

HTMX_SUMMARY = {"HX-Request": "true", "HX-Target": "record-summary"}


def body(response) -> str:
    return response.get_data(as_text=True)


# --------------------------------------------------------------------------- persons


def test_create_person_with_two_emails_and_organization(admin_client, admin, make_organization):
    org = make_organization(admin, name="Acme")
    response = admin_client.post(
        "/persons/",
        data={
            "name": "Ana Lopez",
            "emails": ["ana@acme.com", "Ana.Lopez@Gmail.com", ""],
            "primary_email": "1",
            "phone": "+1 555",
            "organization_id": str(org.id),
        },
    )
    assert response.status_code == 303
    person = db.session.scalar(select(Person).where(Person.name == "Ana Lopez"))
    assert response.headers["Location"].endswith(f"/persons/{person.id}")
    assert [e.email for e in person.emails] == ["ana.lopez@gmail.com", "ana@acme.com"]
    assert person.primary_email == "ana.lopez@gmail.com"
    assert person.organization_id == org.id and person.owner_id == admin.id
    assert person.visibility == "everyone"
    page = body(admin_client.get(f"/persons/{person.id}"))
    assert "ana@acme.com" in page and 'id="email-conversations"' in page
    assert "No email conversations yet" in page


def test_person_validation_errors_return_422(admin_client):
    response = admin_client.post("/persons/", data={"name": "", "emails": ["not-an-address"]})
    assert response.status_code == 422
    text = body(response)
    assert "Name is required." in text and "is not a valid email address" in text
    assert db.session.scalar(select(func.count(Person.id))) == 0


def test_duplicate_email_names_the_person_case_insensitively(admin_client, admin, make_person):
    make_person(admin, name="Ana Lopez", emails=("ana@acme.com",))
    response = admin_client.post("/persons/", data={"name": "Copy", "emails": ["ANA@Acme.COM"]})
    assert response.status_code == 422
    assert "ana@acme.com already belongs to Ana Lopez." in body(response)


def test_duplicate_email_of_invisible_person_is_not_named(admin_client, make_user, make_person):
    other = make_user()
    make_person(other, name="Secret Sam", emails=("sam@x.com",), visibility="owner")
    response = admin_client.post("/persons/", data={"name": "Sam", "emails": ["sam@x.com"]})
    assert response.status_code == 422
    assert "already belongs to a private contact" in body(response)
    assert "Secret Sam" not in body(response)


def test_same_email_twice_in_one_form(admin_client):
    response = admin_client.post("/persons/", data={"name": "A", "emails": ["a@x.com", "A@x.com"]})
    assert response.status_code == 422 and "listed twice" in body(response)


def test_inline_edit_person_returns_summary_fragment(admin_client, admin, make_person):
    person = make_person(admin, name="Ana", emails=("ana@acme.com", "old@acme.com"))
    form = admin_client.get(f"/persons/{person.id}/edit", headers=HTMX_SUMMARY)
    assert form.status_code == 200 and "<html" not in body(form)
    assert 'value="old@acme.com"' in body(form)
    response = admin_client.post(
        f"/persons/{person.id}",
        data={
            "name": "Ana María",
            "emails": ["ana@acme.com", "new@acme.com"],
            "primary_email": "1",
        },
        headers=HTMX_SUMMARY,
    )
    assert response.status_code == 200 and "<html" not in body(response)
    assert "Ana María" in body(response)
    db.session.expire_all()
    assert [e.email for e in person.emails] == ["new@acme.com", "ana@acme.com"]
    assert db.session.scalar(select(func.count(PersonEmail.id))) == 2


def test_inline_edit_invalid_returns_form_fragment_422(admin_client, admin, make_person):
    person = make_person(admin, name="Ana")
    response = admin_client.post(f"/persons/{person.id}", data={"name": ""}, headers=HTMX_SUMMARY)
    assert response.status_code == 422
    assert "<html" not in body(response) and "Name is required." in body(response)


def test_delete_person_with_confirmation(admin_client, admin, make_person):
    person = make_person(admin, name="Ana", emails=("ana@acme.com",))
    confirm = admin_client.get(f"/persons/{person.id}/delete", headers=HTMX_SUMMARY)
    assert confirm.status_code == 200 and "Delete “Ana”?" in body(confirm)
    response = admin_client.post(f"/persons/{person.id}/delete")
    assert response.status_code == 303 and response.headers["Location"].endswith("/persons/")
    assert db.session.scalar(select(func.count(Person.id))) == 0
    assert db.session.scalar(select(func.count(PersonEmail.id))) == 0


def test_search_persons_by_name_and_email(admin_client, admin, make_person):
    make_person(admin, name="Ana Lopez", emails=("ana@acme.com",))
    make_person(admin, name="Bob Stone", emails=("bob@bluefin.io",))
    by_name = body(admin_client.get("/persons/?q=lopez"))
    assert "Ana Lopez" in by_name and "Bob Stone" not in by_name
    by_email = admin_client.get(
        "/persons/?q=bluefin", headers={"HX-Request": "true", "HX-Target": "results"}
    )
    assert "Bob Stone" in body(by_email) and "Ana Lopez" not in body(by_email)
    assert "<html" not in body(by_email)
    assert "HX-Target" in by_email.headers["Vary"]
    assert "No one matches" in body(admin_client.get("/persons/?q=zzz%25_"))


def test_pagination_and_sort(admin_client, admin, make_person):
    preferences.update_preferences(admin, {"records_page_size": "25"})
    for index in range(30):
        make_person(admin, name=f"Person {index:02d}")
    first = body(admin_client.get("/persons/?sort=name"))
    assert "Person 00" in first and "Person 24" in first and "Person 25" not in first
    assert "page 1 of 2" in first
    second = body(admin_client.get("/persons/?sort=name&page=2"))
    assert "Person 29" in second and "Person 00" not in second
    desc = body(admin_client.get("/persons/?sort=-name"))
    assert desc.index("Person 29") < desc.index("Person 20")
    # bogus page and sort fall back instead of failing
    assert admin_client.get("/persons/?page=abc&sort=evil").status_code == 200
    assert admin_client.get("/persons/?page=99999999999999999999999").status_code == 200


def test_empty_states_say_what_to_do(admin_client):
    for path, text in [
        ("/persons/", "Add your first person"),
        ("/organizations/", "Add your first organization"),
        ("/deals/", "Create your first deal"),
        ("/leads/", "Create your first lead"),
        ("/projects/", "Create your first project"),
    ]:
        assert text in body(admin_client.get(path)), path


# --------------------------------------------------------------------------- organizations


def test_organization_crud_and_detail_lists_linked_records(
    admin_client, admin, make_person, make_deal, make_lead, make_project
):
    response = admin_client.post(
        "/organizations/",
        data={"name": "Acme", "domain": "https://www.Acme.com/about", "address": "1 Road"},
    )
    assert response.status_code == 303
    org = db.session.scalar(select(Organization))
    assert org.domain == "acme.com"
    make_person(admin, name="Ana", organization_id=org.id)
    make_deal(admin, title="Big deal", organization_id=org.id)
    make_lead(admin, title="Warm lead", organization_id=org.id)
    make_project(admin, title="Rollout", organization_id=org.id)
    page = body(admin_client.get(f"/organizations/{org.id}"))
    for text in ("Ana", "Big deal", "Warm lead", "Rollout", 'id="email-conversations"'):
        assert text in page
    bad = admin_client.post(f"/organizations/{org.id}", data={"name": "Acme", "domain": "no dots"})
    assert bad.status_code == 422 and "Enter a domain like example.com." in body(bad)
    assert admin_client.post(f"/organizations/{org.id}/delete").status_code == 303
    assert db.session.scalar(select(func.count(Organization.id))) == 0


# --------------------------------------------------------------------------- deals


def test_create_deal_and_validation(admin_client, admin, make_person):
    person = make_person(admin, name="Ana")
    response = admin_client.post(
        "/deals/",
        data={
            "title": "Fleet rollout",
            "value": "12,500.50",
            "currency": "EUR",
            "stage": "proposal",
            "status": "open",
            "expected_close_date": "2026-12-31",
            "person_id": str(person.id),
        },
    )
    assert response.status_code == 303
    deal = db.session.scalar(select(Deal))
    assert deal.value == Decimal("12500.50") and deal.currency == "EUR"
    assert deal.stage == "proposal" and str(deal.expected_close_date) == "2026-12-31"
    bad = admin_client.post(
        "/deals/",
        data={"title": "", "value": "lots", "stage": "nope", "expected_close_date": "31/12"},
    )
    assert bad.status_code == 422
    text = body(bad)
    assert "Title is required." in text and "Enter an amount" in text
    assert "Enter a date like" in text and "Choose one of the listed options." in text


def test_create_deal_from_person_page_prefills_person_and_organization(
    admin_client, admin, make_person, make_organization
):
    org = make_organization(admin, name="Acme")
    person = make_person(admin, name="Ana", organization_id=org.id)
    page = body(admin_client.get(f"/persons/{person.id}"))
    assert f"/deals/new?person_id={person.id}" in page
    form = body(admin_client.get(f"/deals/new?person_id={person.id}"))
    assert f'<option value="{person.id}" selected>Ana</option>' in form
    assert f'<option value="{org.id}" selected>Acme</option>' in form


def test_deal_inline_edit_and_delete(admin_client, admin, make_deal):
    deal = make_deal(admin, title="Old")
    response = admin_client.post(
        f"/deals/{deal.id}",
        data={"title": "New", "value": "10", "stage": "negotiation", "status": "won"},
        headers=HTMX_SUMMARY,
    )
    assert response.status_code == 200 and "New" in body(response)
    db.session.expire_all()
    assert deal.status == "won" and deal.stage == "negotiation"
    no_js = admin_client.post(f"/deals/{deal.id}", data={"title": "Plain", "value": "1"})
    assert no_js.status_code == 303
    assert admin_client.post(f"/deals/{deal.id}/delete").status_code == 303
    assert db.session.scalar(select(func.count(Deal.id))) == 0


def test_board_shows_open_deals_by_stage_and_moves(admin_client, admin, make_deal):
    deal = make_deal(admin, title="Movable", stage="lead_in")
    make_deal(admin, title="Already won", status="won")
    board = body(admin_client.get("/deals/board"))
    assert "Movable" in board and "Already won" not in board
    assert 'data-stage-drop="contract_sent"' in board
    fragment = admin_client.post(
        f"/deals/{deal.id}/stage",
        data={"stage": "proposal"},
        headers={"HX-Request": "true", "HX-Target": "board"},
    )
    assert fragment.status_code == 200 and 'id="board"' in body(fragment)
    assert "<html" not in body(fragment)
    db.session.expire_all()
    assert deal.stage == "proposal"
    menu = admin_client.post(f"/deals/{deal.id}/stage", data={"stage": "negotiation"})
    assert menu.status_code == 303 and menu.headers["Location"].endswith("/deals/board")
    db.session.expire_all()
    assert deal.stage == "negotiation"
    bad = admin_client.post(f"/deals/{deal.id}/stage", data={"stage": "bogus"})
    assert bad.status_code == 422 and "Choose one of the pipeline stages." in body(bad)


def test_stage_move_requires_csrf(admin_client, admin, make_deal):
    deal = make_deal(admin, stage="lead_in")
    response = admin_client.post(f"/deals/{deal.id}/stage", data={"stage": "qualified"}, csrf=False)
    assert response.status_code == 400
    db.session.expire_all()
    assert deal.stage == "lead_in"


# --------------------------------------------------------------------------- leads, projects


def test_lead_crud_and_conversion_creates_deal(admin_client, admin, make_person):
    person = make_person(admin, name="Ana")
    response = admin_client.post(
        "/leads/", data={"title": "Inbound", "value": "5000", "person_id": str(person.id)}
    )
    assert response.status_code == 303
    lead = db.session.scalar(select(Lead))
    manual = admin_client.post(f"/leads/{lead.id}", data={"title": "x", "status": "converted"})
    assert manual.status_code == 422 and "Convert to deal" in body(manual)
    converted = admin_client.post(f"/leads/{lead.id}/convert")
    assert converted.status_code == 303
    db.session.expire_all()
    deal = db.session.scalar(select(Deal))
    assert converted.headers["Location"].endswith(f"/deals/{deal.id}")
    assert deal.title == "Inbound" and deal.value == Decimal("5000") and deal.person_id == person.id
    assert lead.status == "converted" and lead.deal_id == deal.id
    again = admin_client.post(f"/leads/{lead.id}/convert")
    assert again.status_code == 422 and "already converted" in body(again)
    assert db.session.scalar(select(func.count(Deal.id))) == 1
    assert admin_client.post(f"/leads/{lead.id}/delete").status_code == 303


def test_converting_a_lead_moves_its_conversations_to_the_deal(
    admin_client, admin, make_stored_account, make_stored_folder, make_mailbox_message
):
    inbox = make_stored_folder(make_stored_account(admin))
    message = make_mailbox_message(inbox, subject="Pricing for the inbound lead")
    lead = Lead(title="Inbound", owner_id=admin.id, visibility="everyone")
    db.session.add(lead)
    db.session.flush()
    message.thread.lead_id = lead.id
    db.session.commit()

    def panel(kind: str, record_id: int) -> str:  # the record page's conversations panel
        return body(admin_client.get(f"/mail/records/{kind}/{record_id}/conversations"))

    assert "Pricing for the inbound lead" in panel("lead", lead.id)

    assert admin_client.post(f"/leads/{lead.id}/convert").status_code == 303
    deal = db.session.scalar(select(Deal))
    assert "Pricing for the inbound lead" in panel("deal", deal.id)
    assert "Pricing for the inbound lead" not in panel("lead", lead.id)


def test_project_crud(admin_client, admin):
    assert admin_client.post("/projects/", data={"title": "Rollout"}).status_code == 303
    project = db.session.scalar(select(Project))
    response = admin_client.post(
        f"/projects/{project.id}",
        data={"title": "Rollout 2", "status": "closed"},
        headers=HTMX_SUMMARY,
    )
    assert response.status_code == 200
    db.session.expire_all()
    assert project.status == "closed"
    assert admin_client.post(f"/projects/{project.id}", data={"title": ""}).status_code == 422
    assert admin_client.post(f"/projects/{project.id}/delete").status_code == 303


# --------------------------------------------------------------------------- owner, bogus input


def test_owner_reassignment_and_visibility(admin_client, admin, make_user):
    teammate = make_user(name="Teammate")
    response = admin_client.post(
        "/deals/", data={"title": "Shared", "owner_id": str(teammate.id), "visibility": "owner"}
    )
    assert response.status_code == 303
    deal = db.session.scalar(select(Deal))
    assert deal.owner_id == teammate.id and deal.visibility == "owner"


@pytest.mark.parametrize(
    "path",
    ["/persons/", "/organizations/", "/deals/", "/leads/", "/projects/"],
)
@pytest.mark.parametrize(
    "data",
    [
        {"title": "x", "name": "x", "value": "1e999999", "owner_id": "999999999999999999999"},
        {"title": "x", "name": "x", "person_id": "-1", "organization_id": "abc"},
        {"title": "x", "name": "x", "person_id": "99999999999999999999999", "visibility": "all"},
        {"title": "x", "name": "x", "value": "NaN", "expected_close_date": "2026-02-30"},
        {"title": "x" * 500, "name": "x" * 500, "emails": ["@"], "status": "??", "currency": "XXX"},
    ],
    ids=["overflow", "bad-ids", "huge-id", "nan-date", "too-long"],
)
def test_bogus_input_never_500(admin_client, path, data):
    # Fields a record type does not have are ignored; every other one gets a field error.
    response = admin_client.post(path, data=data)
    assert response.status_code in (303, 422), body(response)


def test_unknown_ids_are_404(admin_client):
    for path in ("/persons/999", "/deals/999/edit", "/leads/99999999999999999999999"):
        assert admin_client.get(path).status_code == 404
    assert admin_client.post("/deals/999/stage", data={"stage": "proposal"}).status_code == 404
