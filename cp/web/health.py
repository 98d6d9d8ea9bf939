"""Liveness and readiness: ``/healthz`` (always 200) and ``/readyz`` (200 when the DB answers)."""
from flask import Blueprint, jsonify
from sqlalchemy import text

from cp.extensions import db

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except Exception:  # noqa: BLE001 - any failure to reach the database means not ready
        db.session.rollback()
        return jsonify({"status": "unavailable", "database": "unreachable"}), 503
    return jsonify({"status": "ok", "database": "ok"})


def init_app(app) -> None:
    app.register_blueprint(bp)
