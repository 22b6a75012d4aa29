"""Leads: list with search, detail, create, inline edit, convert to a deal, delete."""

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import current_user

from models import Lead
from services import records
from services.access import record_for
from services.errors import ValidationError
from views.helpers import is_fragment_request, render_invalid, render_page_or_fragment
from views.record_helpers import SUMMARY_TARGET, picker_context, render_list, submitted, values_of

bp = Blueprint("leads", __name__, url_prefix="/leads")

FIELDS = (
    "title",
    "value",
    "currency",
    "status",
    "person_id",
    "organization_id",
    "owner_id",
    "visibility",
)
FORM = "leads/partials/form.html"


def _form(lead=None, form=None, errors=None):
    if form is None:
        form = values_of(lead, FIELDS) if lead else dict(request.args.items())
    return {"lead": lead, "form": form, "errors": errors or {}, **picker_context(lead)}


@bp.get("/")
def index():
    return render_list("leads", Lead)


@bp.get("/new")
def new():
    return render_template(
        "records/form_page.html", form_template=FORM, heading="New lead", **_form()
    )


@bp.post("/")
def create():
    try:
        lead = records.create_lead(current_user, **submitted(FIELDS))
    except ValidationError as exc:
        return render_invalid(
            "records/form_page.html",
            form_template=FORM,
            heading="New lead",
            **_form(form=request.form, errors=exc.errors),
        )
    return redirect(url_for("leads.show", lead_id=lead.id), code=303)


@bp.get("/<id:lead_id>")
def show(lead_id: int):
    lead = record_for(current_user, Lead, lead_id)
    return render_template("leads/show.html", lead=lead, errors={})


@bp.get("/<id:lead_id>/summary")
def summary(lead_id: int):
    lead = record_for(current_user, Lead, lead_id)
    return render_template("leads/partials/summary.html", lead=lead)


@bp.get("/<id:lead_id>/edit")
def edit(lead_id: int):
    lead = record_for(current_user, Lead, lead_id)
    return render_page_or_fragment(
        "records/form_page.html",
        FORM,
        targets=(SUMMARY_TARGET,),
        form_template=FORM,
        heading="Edit lead",
        **_form(lead),
    )


@bp.post("/<id:lead_id>")
def update(lead_id: int):
    lead = record_for(current_user, Lead, lead_id)
    try:
        records.update_lead(current_user, lead, **submitted(FIELDS))
    except ValidationError as exc:
        template = FORM if is_fragment_request(SUMMARY_TARGET) else "records/form_page.html"
        return render_invalid(
            template,
            form_template=FORM,
            heading="Edit lead",
            **_form(lead, request.form, exc.errors),
        )
    if is_fragment_request(SUMMARY_TARGET):
        return render_template("leads/partials/summary.html", lead=lead)
    return redirect(url_for("leads.show", lead_id=lead.id), code=303)


@bp.get("/<id:lead_id>/delete")
def confirm_delete(lead_id: int):
    lead = record_for(current_user, Lead, lead_id, manage="delete")
    return render_page_or_fragment(
        "records/confirm_delete.html",
        "records/partials/confirm_delete.html",
        targets=(SUMMARY_TARGET,),
        label=lead.title,
        delete_url=url_for("leads.delete", lead_id=lead.id),
        cancel_url=url_for("leads.show", lead_id=lead.id),
        summary_url=url_for("leads.summary", lead_id=lead.id),
    )


@bp.post("/<id:lead_id>/delete")
def delete(lead_id: int):
    lead = record_for(current_user, Lead, lead_id, manage="delete")
    records.delete_lead(current_user, lead)
    return redirect(url_for("leads.index"), code=303)


@bp.post("/<id:lead_id>/convert")
def convert(lead_id: int):
    lead = record_for(current_user, Lead, lead_id, manage="convert")
    try:
        deal = records.convert_lead(current_user, lead)
    except ValidationError as exc:
        return render_invalid("leads/show.html", lead=lead, errors=exc.errors)
    return redirect(url_for("deals.show", deal_id=deal.id), code=303)
