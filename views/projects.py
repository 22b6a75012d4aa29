"""Projects: list with search, detail, create, inline edit, delete."""

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import current_user

from models import Project
from services import records
from services.access import record_for
from services.errors import ValidationError
from views.helpers import is_fragment_request, render_invalid, render_page_or_fragment
from views.record_helpers import SUMMARY_TARGET, picker_context, render_list, submitted, values_of

bp = Blueprint("projects", __name__, url_prefix="/projects")

FIELDS = ("title", "status", "person_id", "organization_id", "owner_id", "visibility")
FORM = "projects/partials/form.html"


def _form(project=None, form=None, errors=None):
    if form is None:
        form = values_of(project, FIELDS) if project else dict(request.args.items())
    return {"project": project, "form": form, "errors": errors or {}, **picker_context(project)}


@bp.get("/")
def index():
    return render_list("projects", Project)


@bp.get("/new")
def new():
    return render_template(
        "records/form_page.html", form_template=FORM, heading="New project", **_form()
    )


@bp.post("/")
def create():
    try:
        project = records.create_project(current_user, **submitted(FIELDS))
    except ValidationError as exc:
        return render_invalid(
            "records/form_page.html",
            form_template=FORM,
            heading="New project",
            **_form(form=request.form, errors=exc.errors),
        )
    return redirect(url_for("projects.show", project_id=project.id), code=303)


@bp.get("/<id:project_id>")
def show(project_id: int):
    project = record_for(current_user, Project, project_id)
    return render_template("projects/show.html", project=project)


@bp.get("/<id:project_id>/summary")
def summary(project_id: int):
    project = record_for(current_user, Project, project_id)
    return render_template("projects/partials/summary.html", project=project)


@bp.get("/<id:project_id>/edit")
def edit(project_id: int):
    project = record_for(current_user, Project, project_id)
    return render_page_or_fragment(
        "records/form_page.html",
        FORM,
        targets=(SUMMARY_TARGET,),
        form_template=FORM,
        heading="Edit project",
        **_form(project),
    )


@bp.post("/<id:project_id>")
def update(project_id: int):
    project = record_for(current_user, Project, project_id)
    try:
        records.update_project(current_user, project, **submitted(FIELDS))
    except ValidationError as exc:
        template = FORM if is_fragment_request(SUMMARY_TARGET) else "records/form_page.html"
        return render_invalid(
            template,
            form_template=FORM,
            heading="Edit project",
            **_form(project, request.form, exc.errors),
        )
    if is_fragment_request(SUMMARY_TARGET):
        return render_template("projects/partials/summary.html", project=project)
    return redirect(url_for("projects.show", project_id=project.id), code=303)


@bp.get("/<id:project_id>/delete")
def confirm_delete(project_id: int):
    project = record_for(current_user, Project, project_id, manage="delete")
    return render_page_or_fragment(
        "records/confirm_delete.html",
        "records/partials/confirm_delete.html",
        targets=(SUMMARY_TARGET,),
        label=project.title,
        delete_url=url_for("projects.delete", project_id=project.id),
        cancel_url=url_for("projects.show", project_id=project.id),
        summary_url=url_for("projects.summary", project_id=project.id),
    )


@bp.post("/<id:project_id>/delete")
def delete(project_id: int):
    project = record_for(current_user, Project, project_id, manage="delete")
    records.delete_project(current_user, project)
    return redirect(url_for("projects.index"), code=303)
