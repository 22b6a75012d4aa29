"""Organizations: list with search, detail with linked records, create, inline edit, delete."""

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import current_user

from models import Deal, Lead, Organization, Person, Project
from services import records
from services.access import record_for
from services.errors import ValidationError
from views.helpers import is_fragment_request, render_invalid, render_page_or_fragment
from views.record_helpers import SUMMARY_TARGET, picker_context, render_list, submitted, values_of

bp = Blueprint("organizations", __name__, url_prefix="/organizations")

FIELDS = ("name", "domain", "address", "owner_id", "visibility")
FORM = "organizations/partials/form.html"


def _form(organization=None, form=None, errors=None):
    if form is None and organization is not None:
        form = values_of(organization, FIELDS)
    return {
        "organization": organization,
        "form": form or {},
        "errors": errors or {},
        **picker_context(organization),
    }


@bp.get("/")
def index():
    return render_list("organizations", Organization)


@bp.get("/new")
def new():
    return render_template(
        "records/form_page.html", form_template=FORM, heading="New organization", **_form()
    )


@bp.post("/")
def create():
    try:
        organization = records.create_organization(current_user, **submitted(FIELDS))
    except ValidationError as exc:
        return render_invalid(
            "records/form_page.html",
            form_template=FORM,
            heading="New organization",
            **_form(form=request.form, errors=exc.errors),
        )
    return redirect(url_for("organizations.show", organization_id=organization.id), code=303)


@bp.get("/<id:organization_id>")
def show(organization_id: int):
    organization = record_for(current_user, Organization, organization_id)
    linked = {"organization_id": organization.id}
    return render_template(
        "organizations/show.html",
        organization=organization,
        persons=records.related_records(current_user, Person, **linked),
        deals=records.related_records(current_user, Deal, **linked),
        leads=records.related_records(current_user, Lead, **linked),
        projects=records.related_records(current_user, Project, **linked),
    )


@bp.get("/<id:organization_id>/summary")
def summary(organization_id: int):
    organization = record_for(current_user, Organization, organization_id)
    return render_template("organizations/partials/summary.html", organization=organization)


@bp.get("/<id:organization_id>/edit")
def edit(organization_id: int):
    organization = record_for(current_user, Organization, organization_id)
    return render_page_or_fragment(
        "records/form_page.html",
        FORM,
        targets=(SUMMARY_TARGET,),
        form_template=FORM,
        heading="Edit organization",
        **_form(organization),
    )


@bp.post("/<id:organization_id>")
def update(organization_id: int):
    organization = record_for(current_user, Organization, organization_id)
    try:
        records.update_organization(current_user, organization, **submitted(FIELDS))
    except ValidationError as exc:
        template = FORM if is_fragment_request(SUMMARY_TARGET) else "records/form_page.html"
        return render_invalid(
            template,
            form_template=FORM,
            heading="Edit organization",
            **_form(organization, request.form, exc.errors),
        )
    if is_fragment_request(SUMMARY_TARGET):
        return render_template("organizations/partials/summary.html", organization=organization)
    return redirect(url_for("organizations.show", organization_id=organization.id), code=303)


@bp.get("/<id:organization_id>/delete")
def confirm_delete(organization_id: int):
    organization = record_for(current_user, Organization, organization_id, manage="delete")
    return render_page_or_fragment(
        "records/confirm_delete.html",
        "records/partials/confirm_delete.html",
        targets=(SUMMARY_TARGET,),
        label=organization.name,
        delete_url=url_for("organizations.delete", organization_id=organization.id),
        cancel_url=url_for("organizations.show", organization_id=organization.id),
        summary_url=url_for("organizations.summary", organization_id=organization.id),
    )


@bp.post("/<id:organization_id>/delete")
def delete(organization_id: int):
    organization = record_for(current_user, Organization, organization_id, manage="delete")
    records.delete_organization(current_user, organization)
    return redirect(url_for("organizations.index"), code=303)
