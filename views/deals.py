"""Deals: list with search, pipeline board (drag and drop or menu), detail, CRUD."""

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import current_user

from models import CURRENCIES, DEAL_STAGE_LABELS, DEAL_STAGES, Deal, Person
from services import onboarding, records
from services.access import record_for, record_or_none
from services.errors import ValidationError
from services.inputs import parse_id
from views.helpers import (
    is_fragment_request,
    render_invalid,
    render_page_or_fragment,
)
from views.record_helpers import SUMMARY_TARGET, picker_context, render_list, submitted, values_of

bp = Blueprint("deals", __name__, url_prefix="/deals")

FIELDS = (
    "title",
    "value",
    "currency",
    "stage",
    "status",
    "expected_close_date",
    "person_id",
    "organization_id",
    "owner_id",
    "visibility",
)
FORM = "deals/partials/form.html"
BOARD_TARGET = "board"


@bp.app_context_processor
def deal_choices():
    return {
        "deal_stages": DEAL_STAGES,
        "deal_stage_labels": DEAL_STAGE_LABELS,
        "currency_options": [(code, code) for code in CURRENCIES],
    }


def _prefill() -> dict[str, str]:
    """Return new-deal defaults; ?person_id= (from a person's page) also brings their org."""
    person = record_or_none(current_user, Person, parse_id(request.args.get("person_id")))
    if person is None:
        return {}
    return {"person_id": str(person.id), "organization_id": str(person.organization_id or "")}


def _form(deal=None, form=None, errors=None):
    if form is None:
        form = values_of(deal, FIELDS) if deal else _prefill()
    return {"deal": deal, "form": form, "errors": errors or {}, **picker_context(deal)}


def _board(**context):
    return render_page_or_fragment(
        "deals/board.html",
        "deals/partials/board.html",
        targets=(BOARD_TARGET,),
        columns=records.board_columns(current_user),
        stage_labels=DEAL_STAGE_LABELS,
        **context,
    )


@bp.get("/")
def index():
    return render_list("deals", Deal, checklist=onboarding.checklist_to_show(current_user))


@bp.post("/checklist/dismiss")
def dismiss_checklist():
    onboarding.dismiss_checklist(current_user)
    return redirect(url_for("deals.index"), code=303)


@bp.get("/board")
def board():
    return _board(errors={})


@bp.get("/new")
def new():
    return render_template(
        "records/form_page.html", form_template=FORM, heading="New deal", **_form()
    )


@bp.post("/")
def create():
    try:
        deal = records.create_deal(current_user, **submitted(FIELDS))
    except ValidationError as exc:
        return render_invalid(
            "records/form_page.html",
            form_template=FORM,
            heading="New deal",
            **_form(form=request.form, errors=exc.errors),
        )
    return redirect(url_for("deals.show", deal_id=deal.id), code=303)


@bp.get("/<id:deal_id>")
def show(deal_id: int):
    deal = record_for(current_user, Deal, deal_id)
    return render_template("deals/show.html", deal=deal)


@bp.get("/<id:deal_id>/summary")
def summary(deal_id: int):
    deal = record_for(current_user, Deal, deal_id)
    return render_template("deals/partials/summary.html", deal=deal)


@bp.get("/<id:deal_id>/edit")
def edit(deal_id: int):
    deal = record_for(current_user, Deal, deal_id)
    return render_page_or_fragment(
        "records/form_page.html",
        FORM,
        targets=(SUMMARY_TARGET,),
        form_template=FORM,
        heading="Edit deal",
        **_form(deal),
    )


@bp.post("/<id:deal_id>")
def update(deal_id: int):
    deal = record_for(current_user, Deal, deal_id)
    try:
        records.update_deal(current_user, deal, **submitted(FIELDS))
    except ValidationError as exc:
        template = FORM if is_fragment_request(SUMMARY_TARGET) else "records/form_page.html"
        return render_invalid(
            template,
            form_template=FORM,
            heading="Edit deal",
            **_form(deal, request.form, exc.errors),
        )
    if is_fragment_request(SUMMARY_TARGET):
        return render_template("deals/partials/summary.html", deal=deal)
    return redirect(url_for("deals.show", deal_id=deal.id), code=303)


@bp.post("/<id:deal_id>/stage")
def move(deal_id: int):
    deal = record_for(current_user, Deal, deal_id)
    try:
        records.move_deal_stage(current_user, deal, request.form.get("stage", ""))
    except ValidationError as exc:
        return _board(errors=exc.errors), 422
    if is_fragment_request(BOARD_TARGET):
        return _board(errors={})
    return redirect(url_for("deals.board"), code=303)


@bp.get("/<id:deal_id>/delete")
def confirm_delete(deal_id: int):
    deal = record_for(current_user, Deal, deal_id, manage="delete")
    return render_page_or_fragment(
        "records/confirm_delete.html",
        "records/partials/confirm_delete.html",
        targets=(SUMMARY_TARGET,),
        label=deal.title,
        delete_url=url_for("deals.delete", deal_id=deal.id),
        cancel_url=url_for("deals.show", deal_id=deal.id),
        summary_url=url_for("deals.summary", deal_id=deal.id),
    )


@bp.post("/<id:deal_id>/delete")
def delete(deal_id: int):
    deal = record_for(current_user, Deal, deal_id, manage="delete")
    records.delete_deal(current_user, deal)
    return redirect(url_for("deals.index"), code=303)
