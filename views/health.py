"""Health check for operators and load balancers."""

from flask import Blueprint, jsonify
from sqlalchemy import text

from extensions import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    try:
        db.session.execute(text("SELECT 1"))
        return jsonify(status="ok", database="ok")
    except Exception as exc:  # report, never 500
        db.session.rollback()
        return jsonify(status="error", database=type(exc).__name__), 503
