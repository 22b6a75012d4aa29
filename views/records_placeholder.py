"""Temporary home of the deals index until the records area lands."""

from flask import Blueprint, render_template

bp = Blueprint("deals", __name__, url_prefix="/deals")


@bp.get("/")
def index():
    return render_template("deals/page.html")
