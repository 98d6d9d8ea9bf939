"""People over HTTP and the CLI: /api/users, /api/tokens, /api/me, the login form with a personal
token, who did what, deactivation and role changes at the next request."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from cp.extensions import db
from cp.models import Alert, ApiToken, AuditLog
from tests.conftest import bearer, csrf_token_from

JSON = {"Content-Type": "application/json"}


def as_token(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **JSON}


def admin() -> dict[str, str]:
    return {**bearer("admin"), **JSON}


def create(client, email: str, role: str, name: str | None = "Someone"):
    return client.post("/api/users", json={"email": email, "name": name, "role": role}, headers=admin())


def person_with_token(client, email: str, role: str) -> tuple[int, str]:
    resp = create(client, email, role)
    assert resp.status_code == 201, resp.get_json()
    uid = resp.get_json()["id"]
    tok = client.post(f"/api/users/{uid}/tokens", json={"name": "laptop"}, headers=admin())
    assert tok.status_code == 201, tok.get_json()
    return uid, tok.get_json()["token"]


def form_login(client, token: str):
    page = client.get("/login").get_data(as_text=True)
    return client.post("/login", data={"token": token, "csrf_token": csrf_token_from(page)})


def test_admins_manage_people_with_the_contract_codes(client):
    resp = create(client, "Ann@Example.com", "ops", "Ann")
    assert resp.status_code == 201
    body = resp.get_json()
    assert set(body) == {"id", "email", "name", "role", "active", "created_at", "last_seen_at"}
    assert body["email"] == "ann@example.com" and body["active"] is True and body["created_at"].endswith("Z")
    dup = create(client, "ANN@example.COM", "support")
    assert dup.status_code == 409 and dup.get_json()["error"] == "duplicate_email"
    bad_role = create(client, "bob@example.com", "root")
    assert bad_role.status_code == 422 and "role" in bad_role.get_json()["details"]
    bad_email = create(client, "not-an-email", "ops")
    assert bad_email.status_code == 422 and "email" in bad_email.get_json()["details"]
    extra = client.post("/api/users", json={"email": "c@example.com", "role": "ops", "admin": True}, headers=admin())
    assert extra.status_code == 422
    for role in ("support", "ops"):
        assert create(client, "x@example.com", "ops").status_code == 201 if role == "never" else True
        resp = client.post("/api/users", json={"email": "eve@example.com", "role": "admin"},
                           headers={**bearer(role), **JSON})
        assert resp.status_code == 403
    listed = client.get("/api/users", headers=bearer("admin")).get_json()
    assert listed["total"] == 1 and listed["items"][0]["email"] == "ann@example.com"
    patched = client.patch(f"/api/users/{body['id']}", json={"name": "Ann B."}, headers=admin())
    assert patched.status_code == 200 and patched.get_json()["name"] == "Ann B."
    assert client.patch("/api/users/999999", json={"name": "x"}, headers=admin()).status_code == 404
    assert client.patch(f"/api/users/{body['id']}", json={}, headers=admin()).status_code == 422
    assert client.patch(f"/api/users/{body['id']}", json={"active": "no"}, headers=admin()).status_code == 422
    assert client.delete(f"/api/users/{body['id']}", headers=admin()).status_code == 405  # no delete


def test_personal_tokens_are_shown_once_listed_without_secrets_and_revocable(client, app):
    uid, secret = person_with_token(client, "ann@example.com", "ops")
    me = client.get("/api/me", headers=as_token(secret)).get_json()
    assert me == {"name": "Someone", "email": "ann@example.com", "role": "ops", "via": "token"}
    assert client.get("/api/me", headers=bearer("admin")).get_json() == \
        {"name": "admin", "email": None, "role": "admin", "via": "role_token"}

    own = client.post("/api/tokens", json={"name": "script", "expires_in_days": 30}, headers=as_token(secret))
    assert own.status_code == 201
    created = own.get_json()
    assert set(created) == {"id", "name", "token", "created_at", "expires_at", "last_used_at"}
    assert created["expires_at"] and created["token"].startswith("cpt_")
    listed = client.get("/api/tokens", headers=as_token(secret)).get_json()
    assert listed["total"] == 2 and all("token" not in t for t in listed["items"])
    with app.app_context():
        stored = [tuple(r) for r in db.session.execute(sa.select(ApiToken.__table__))]
    assert secret not in repr(stored) and created["token"] not in repr(stored)

    # a role token has no personal tokens
    resp = client.post("/api/tokens", json={"name": "x"}, headers=admin())
    assert resp.status_code == 403 and resp.get_json()["error"] == "not_a_person"
    # somebody else's token: 404
    _other, other_secret = person_with_token(client, "bob@example.com", "support")
    assert client.delete(f"/api/tokens/{created['id']}", headers=as_token(other_secret)).status_code == 404
    # and a support person cannot issue tokens for another
    assert client.post(f"/api/users/{uid}/tokens", json={"name": "x"}, headers=as_token(other_secret)).status_code == 403

    assert client.delete(f"/api/tokens/{created['id']}", headers=as_token(secret)).status_code == 204
    gone = client.get("/api/me", headers=as_token(created["token"]))
    assert gone.status_code == 401 and set(gone.get_json()) == {"error", "message", "details"}
    assert client.delete(f"/api/tokens/{created['id']}", headers=as_token(secret)).status_code == 404
    bad = client.post("/api/tokens", json={"name": "x", "expires_in_days": 0}, headers=as_token(secret))
    assert bad.status_code == 422 and "expires_in_days" in bad.get_json()["details"]


def test_a_person_is_named_in_every_by_field_and_the_audit_log(client, app, agent):
    assert agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}]).status_code == 200
    with app.app_context():
        alert_id = db.session.scalar(sa.select(Alert.id))
    _uid, secret = person_with_token(client, "ann@example.com", "ops")
    resp = client.post(f"/api/alerts/{alert_id}/acknowledge", headers={"Authorization": f"Bearer {secret}"})
    assert resp.status_code == 200 and resp.get_json()["acknowledged_by"] == "ann@example.com"
    resp = client.post(f"/api/alerts/{alert_id}/resolve", headers=bearer("ops"))
    assert resp.get_json()["resolved_by"] == "ops"  # a role token: the role name
    entries = client.get("/api/audit", query_string={"actor": "ann@example.com"}, headers=bearer("admin")).get_json()
    assert [(e["action"], e["role"], e["actor"]) for e in entries["items"]] == \
        [("alert.acknowledge", "ops", "ann@example.com")]
    by_role = client.get("/api/audit", query_string={"action": "alert.resolve"}, headers=bearer("admin")).get_json()
    assert by_role["items"][0]["actor"] == "ops"


def test_role_changes_apply_at_the_next_request_and_deactivation_stops_everything(client, app, agent):
    assert agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}]).status_code == 200
    with app.app_context():
        alert_id = db.session.scalar(sa.select(Alert.id))
    uid, secret = person_with_token(client, "ann@example.com", "ops")
    browser = app.test_client()
    assert form_login(browser, secret).status_code == 303
    assert browser.get("/api/me").get_json()["via"] == "token"
    assert browser.get("/").status_code == 200

    assert client.patch(f"/api/users/{uid}", json={"role": "support"}, headers=admin()).status_code == 200
    resp = client.post(f"/api/alerts/{alert_id}/acknowledge", headers={"Authorization": f"Bearer {secret}"})
    assert resp.status_code == 403
    assert browser.get("/api/me").get_json()["role"] == "support"  # the open session too

    assert client.patch(f"/api/users/{uid}", json={"active": False}, headers=admin()).get_json()["active"] is False
    resp = client.get("/api/installations", headers={"Authorization": f"Bearer {secret}"})
    assert resp.status_code == 401 and resp.get_json()["error"] == "invalid_token"
    assert browser.get("/api/me").status_code == 401
    assert browser.get("/").status_code == 302 and "/login" in browser.get("/").headers["Location"]
    assert form_login(app.test_client(), secret).status_code == 401
    # reactivated: the old session stays over, the token works again
    assert client.patch(f"/api/users/{uid}", json={"active": True}, headers=admin()).status_code == 200
    assert browser.get("/api/me").status_code == 401
    assert client.get("/api/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_nobody_raises_their_own_role_and_the_last_admin_stays(client):
    boss_id, boss = person_with_token(client, "boss@example.com", "admin")
    ops_id, ops = person_with_token(client, "ann@example.com", "ops")
    resp = client.patch(f"/api/users/{boss_id}", json={"active": False}, headers=as_token(boss))
    assert resp.status_code == 409 and resp.get_json()["error"] == "last_admin"
    assert client.patch(f"/api/users/{boss_id}", json={"role": "ops"}, headers=admin()).status_code == 409
    assert client.patch(f"/api/users/{ops_id}", json={"role": "admin"}, headers=as_token(ops)).status_code == 403
    assert client.patch(f"/api/users/{ops_id}", json={"role": "admin"}, headers=as_token(boss)).status_code == 200
    resp = client.patch(f"/api/users/{boss_id}", json={"active": False}, headers=as_token(ops))
    assert resp.status_code == 200
    assert client.get("/api/me", headers=as_token(boss)).status_code == 401


def test_an_action_whose_audit_entry_cannot_be_written_changes_nothing(client, app, agent):
    """The entry and the action commit together: make the audit insert fail in the database."""
    assert agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}]).status_code == 200
    with app.app_context():
        alert_id = db.session.scalar(sa.select(Alert.id))
        with db.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
                                     "$$ BEGIN RAISE EXCEPTION 'audit refused'; END $$"))
                conn.execute(sa.text("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
                                     "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"))
            else:
                conn.execute(sa.text("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
                                     "BEGIN SELECT RAISE(ABORT, 'audit refused'); END"))
    try:
        resp = client.post(f"/api/alerts/{alert_id}/acknowledge", headers=bearer("ops"))
        assert resp.status_code >= 500
        assert set(resp.get_json()) == {"error", "message", "details"}
        with app.app_context():
            alert = db.session.get(Alert, alert_id)
            assert alert.acknowledged_at is None and alert.acknowledged_by is None
        created = create(client, "ann@example.com", "ops")
        assert created.status_code >= 500
    finally:
        with app.app_context(), db.engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER refuse_audit" + (" ON audit_log" if conn.dialect.name == "postgresql"
                                                               else "")))
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("DROP FUNCTION refuse_audit()"))
    assert client.get("/api/users", headers=bearer("admin")).get_json()["total"] == 0
    assert create(client, "ann@example.com", "ops").status_code == 201
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditLog)
                                 .where(AuditLog.action == "user.create")) == 1


# --- the CLI ------------------------------------------------------------------------------------
def test_cli_creates_the_first_admin_issues_a_token_and_deactivates(app, runner, client):
    result = runner.invoke(args=["users", "create", "Boss@Example.com", "--role", "admin", "--name", "Boss"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["users", "create", "boss@example.com", "--role", "ops"])
    assert result.exit_code != 0 and "exists" in result.output
    result = runner.invoke(args=["users", "create", "x@example.com", "--role", "root"])
    assert result.exit_code != 0
    result = runner.invoke(args=["users", "token", "boss@example.com", "--name", "ci"])
    assert result.exit_code == 0, result.output
    secret = result.output.strip().splitlines()[-1]
    assert secret.startswith("cpt_") and " " not in secret
    me = client.get("/api/me", headers={"Authorization": f"Bearer {secret}"}).get_json()
    assert me["email"] == "boss@example.com" and me["role"] == "admin"
    # the only admin stays
    result = runner.invoke(args=["users", "deactivate", "boss@example.com"])
    assert result.exit_code != 0 and "last active admin" in result.output
    assert runner.invoke(args=["users", "create", "ann@example.com", "--role", "ops"]).exit_code == 0
    result = runner.invoke(args=["users", "deactivate", "ANN@example.com"])
    assert result.exit_code == 0 and "deactivated ann@example.com" in result.output
    assert runner.invoke(args=["users", "token", "nobody@example.com", "--name", "x"]).exit_code != 0
    listed = runner.invoke(args=["users", "list"]).output
    assert "ann@example.com\tops\tinactive" in listed
    entries = client.get("/api/audit", query_string={"actor": "cli"}, headers=bearer("admin")).get_json()
    assert {e["action"] for e in entries["items"]} == {"user.create", "token.issue", "user.update"}


@pytest.mark.parametrize("path", ["/api/users", "/api/tokens", "/api/me"])
def test_people_endpoints_need_credentials(client, path):
    resp = client.get(path)
    assert resp.status_code == 401 and set(resp.get_json()) == {"error", "message", "details"}


def test_personal_tokens_are_never_logged(app, client, runner, capsys, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    result = runner.invoke(args=["users", "create", "ann@example.com", "--role", "ops"])
    assert result.exit_code == 0
    secret = runner.invoke(args=["users", "token", "ann@example.com", "--name", "ci"]).output.strip().splitlines()[-1]
    own = client.post("/api/tokens", json={"name": "second"}, headers=as_token(secret)).get_json()["token"]
    client.get("/api/me", headers=as_token(own))
    client.get("/api/me", headers=as_token(own + "x"))  # a wrong one is logged as a failure, without itself
    form_login(app.test_client(), secret)
    form_login(app.test_client(), own + "y")
    logged = caplog.text + capsys.readouterr().err
    assert "login_failed" in logged or "login refused" in logged
    for value in (secret, own, own[4:20]):
        assert value not in logged
