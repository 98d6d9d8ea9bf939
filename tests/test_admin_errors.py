"""A failed edit in the panel shows a generic sentence, never the database's error (SQL,
parameters); the details go to the server log (``SecureModelView.handle_view_exception``)."""
from __future__ import annotations

import json

import sqlalchemy as sa

from cp.admin.base import ADMIN_CHANGE_FAILED
from cp.extensions import db
from cp.models import Installation
from tests.conftest import Agent, csrf_token_from, login

RAW_ERROR_MARKERS = ("UPDATE installations", "[SQL", "[parameters", "IntegrityError", "UNIQUE constraint",
                     "duplicate key", "sqlalche.me", "psycopg", "sqlite3")


def test_a_constraint_violation_on_an_edit_shows_no_database_error(make_app, capsys):
    app = make_app(CONTROL_PLANE_LOG_FORMAT="json")
    client = app.test_client()
    agent_body = {"client": "Acme", "domain": "erp.acme.com"}
    assert Agent(client).heartbeat("acme-001", **agent_body).status_code == 200
    assert Agent(client).heartbeat("acme-002").status_code == 200
    # a real constraint of the database: no two installations with one domain (this test's own)
    with app.app_context():
        db.session.execute(sa.text("CREATE UNIQUE INDEX uq_test_installations_domain ON installations (domain)"))
        db.session.commit()
    try:
        login(client, "admin")
        edit_url = "/admin/installations/edit/?id=2"
        token = csrf_token_from(client.get(edit_url).get_data(as_text=True))
        capsys.readouterr()
        resp = client.post(edit_url, data={"client": "Someone", "domain": "erp.acme.com", "release_channel": "stable",
                                           "csrf_token": token}, follow_redirects=True)
        html = resp.get_data(as_text=True)
        assert resp.status_code == 200
        assert ADMIN_CHANGE_FAILED in html
        for marker in RAW_ERROR_MARKERS:
            assert marker not in html, marker
        with app.app_context():
            inst = db.session.get(Installation, 2)
            assert inst.domain is None and inst.client is None  # nothing was changed
            db.session.remove()
        # the details are in the server log
        records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        failed = [r for r in records if r.get("event") == "admin_change_failed"]
        assert len(failed) == 1 and failed[0]["screen"] == "installations"
        assert "IntegrityError" in failed[0]["exc"] and "erp.acme.com" in failed[0]["exc"]
        # the same edit with a free domain goes through (the refusal was the constraint)
        resp = client.post(edit_url, data={"client": "Someone", "domain": "erp.someone.com",
                                           "release_channel": "stable", "csrf_token": token})
        assert resp.status_code == 302
        with app.app_context():
            assert db.session.get(Installation, 2).domain == "erp.someone.com"
            db.session.remove()
    finally:
        with app.app_context():
            db.session.execute(sa.text("DROP INDEX uq_test_installations_domain"))
            db.session.commit()
