"""Persons (contacts): list with search, detail, create, inline edit, delete."""

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from models import Deal, Lead, Person, Project
from services import conversations, linking, records
from services.access import record_for
from services.errors import ValidationError
from views.helpers import is_fragment_request, render_invalid, render_page_or_fragment
from views.record_helpers import SUMMARY_TARGET, picker_context, render_list, submitted, values_of

bp = Blueprint("persons", __name__, url_prefix="/persons")

FIELDS = ("name", "phone", "organization_id", "owner_id", "visibility", "primary_email")
FORM = "persons/partials/form.html"


def _form(person=None, form=None, errors=None):
    if form is None and person is not None:
        form = values_of(person, FIELDS) | {
            "emails": [e.email for e in person.emails],
            "primary_email": "0",
        }
    return {"person": person, "form": form or {}, "errors": errors or {}, **picker_context(person)}


@bp.get("/")
def index():
    return render_list("persons", Person)


@bp.get("/new")
def new():
    return render_template(
        "records/form_page.html", form_template=FORM, heading="New person", **_form()
    )


@bp.post("/")
def create():
    try:
        person = records.create_person(current_user, **submitted(FIELDS, lists=("emails",)))
    except ValidationError as exc:
        return render_invalid(
            "records/form_page.html",
            form_template=FORM,
            heading="New person",
            **_form(form=request.form, errors=exc.errors),
        )
    return redirect(url_for("persons.show", person_id=person.id), code=303)


@bp.get("/<id:person_id>")
def show(person_id: int):
    person = record_for(current_user, Person, person_id)
    return render_template(
        "persons/show.html",
        person=person,
        deals=records.related_records(current_user, Deal, person_id=person.id),
        leads=records.related_records(current_user, Lead, person_id=person.id),
        projects=records.related_records(current_user, Project, person_id=person.id),
        offers=linking.past_link_offers(current_user, person_id=person.id),
    )


@bp.post("/<id:person_id>/past-links")
def link_past(person_id: int):
    person = record_for(current_user, Person, person_id)
    try:
        count = conversations.link_past(
            current_user, person_id=person.id, address=request.form.get("address", "")
        )
    except ValidationError as exc:
        flash(exc.errors.get("address", "That could not be linked."), "error")
    else:
        flash(f"Linked {count} past message{'s' if count != 1 else ''}.")
    return redirect(url_for("persons.show", person_id=person.id), code=303)


@bp.post("/<id:person_id>/past-links/dismiss")
def dismiss_past_links(person_id: int):
    person = record_for(current_user, Person, person_id)
    conversations.dismiss_offer(
        current_user, person_id=person.id, address=request.form.get("address", "")
    )
    return redirect(url_for("persons.show", person_id=person.id), code=303)


@bp.get("/<id:person_id>/summary")
def summary(person_id: int):
    person = record_for(current_user, Person, person_id)
    return render_template("persons/partials/summary.html", person=person)


@bp.get("/<id:person_id>/edit")
def edit(person_id: int):
    person = record_for(current_user, Person, person_id)
    return render_page_or_fragment(
        "records/form_page.html",
        FORM,
        targets=(SUMMARY_TARGET,),
        form_template=FORM,
        heading="Edit person",
        **_form(person),
    )


@bp.post("/<id:person_id>")
def update(person_id: int):
    person = record_for(current_user, Person, person_id)
    try:
        records.update_person(current_user, person, **submitted(FIELDS, lists=("emails",)))
    except ValidationError as exc:
        template = FORM if is_fragment_request(SUMMARY_TARGET) else "records/form_page.html"
        return render_invalid(
            template,
            form_template=FORM,
            heading="Edit person",
            **_form(person, request.form, exc.errors),
        )
    if is_fragment_request(SUMMARY_TARGET):
        return render_template("persons/partials/summary.html", person=person)
    return redirect(url_for("persons.show", person_id=person.id), code=303)


@bp.get("/<id:person_id>/delete")
def confirm_delete(person_id: int):
    person = record_for(current_user, Person, person_id, manage="delete")
    return render_page_or_fragment(
        "records/confirm_delete.html",
        "records/partials/confirm_delete.html",
        targets=(SUMMARY_TARGET,),
        label=person.name,
        delete_url=url_for("persons.delete", person_id=person.id),
        cancel_url=url_for("persons.show", person_id=person.id),
        summary_url=url_for("persons.summary", person_id=person.id),
    )


@bp.post("/<id:person_id>/delete")
def delete(person_id: int):
    person = record_for(current_user, Person, person_id, manage="delete")
    records.delete_person(current_user, person)
    return redirect(url_for("persons.index"), code=303)
