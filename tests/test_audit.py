"""The audit log: every mutating endpoint is audited, ``GET /api/audit`` (admin) lists and
filters it, and refused or failed attempts are kept too."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from cp.extensions import db
from cp.models import AuditLog
from tests.conftest import bearer, login

HUMAN_EXEMPT = {"auth.login", "auth.logout"}  # logging in/out changes no fleet state


def test_every_mutating_human_endpoint_is_audited(app):
    """Every POST/PUT/PATCH/DELETE route of the human API carries ``@audited``; agent
    endpoints (signed) and the panel (audited by its base view) are out of scope here."""
    missing, checked, agent = [], 0, 0
    for rule in app.url_map.iter_rules():
        if not (rule.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}:
            continue
        view = app.view_functions[rule.endpoint]
        if getattr(view, "cp_agent", False):  # the agent gate (cp.agent_api.signed.agent_endpoint)
            agent += 1
            continue
        if rule.endpoint in HUMAN_EXEMPT:
            continue
        if not rule.rule.startswith("/api/") or getattr(view, "cp_required_role", None) is None:
            continue  # the panel audits itself
        checked += 1
        if not getattr(view, "cp_audited", None):
            missing.append(f"{sorted(rule.methods & {'POST', 'PUT', 'PATCH', 'DELETE'})} {rule.rule}")
    assert not missing, "mutating endpoints without @audited: " + ", ".join(missing)
    # the walk saw the human API and recognised the agent routes (a renamed marker would skip nothing)
    assert checked >= 20 and agent >= 6, (checked, agent)


def _entries(app):
    with app.app_context():
        return list(db.session.scalars(select(AuditLog).order_by(AuditLog.id)))


def test_api_triage_is_audited_with_role_outcome_and_source(app, client, agent):
    assert agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}]).status_code == 200
    alert_id = client.get("/api/alerts", headers=bearer("ops")).get_json()["items"][0]["id"]
    assert client.post(f"/api/alerts/{alert_id}/acknowledge", headers=bearer("ops")).status_code == 200
    assert client.post("/api/alerts/999999/resolve", headers=bearer("ops")).status_code == 404
    assert client.post(f"/api/alerts/{alert_id}/resolve", headers=bearer("support")).status_code == 403
    entries = _entries(app)
    ack = [e for e in entries if e.action == "alert.acknowledge"]
    assert len(ack) == 1 and ack[0].role == "ops" and ack[0].outcome == "ok"
    assert ack[0].target_type == "alert" and ack[0].target_id == str(alert_id) and ack[0].source_ip == "127.0.0.1"
    missing = [e for e in entries if e.action == "alert.resolve"]
    assert [(e.outcome, e.target_id) for e in missing] == [("not_found", "999999")]


def test_api_audit_lists_newest_first_with_filters(app, client):
    from cp import audit

    admin, ann = audit.Actor.for_role("admin"), audit.Actor(role="ops", via="token", person_id=1, email="ann@example.com")
    with app.app_context():
        audit.record_apart("rollout.advance", target_type="rollout", target_id="1", outcome="ok", actor=admin)
        audit.record_apart("alert.resolve", target_type="alert", target_id="7", outcome="ok", actor=ann)
        audit.record_apart("rollout.advance", target_type="rollout", target_id="1", outcome="conflict", actor=admin)
    resp = client.get("/api/audit", headers=bearer("admin"))
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["total"] == 3
    assert [i["outcome"] for i in body["items"]] == ["conflict", "ok", "ok"]
    item = body["items"][0]
    assert set(item) == {"id", "at", "role", "actor", "action", "target_type", "target_id", "outcome", "source_ip",
                         "details"}
    assert item["at"].endswith("Z")

    def q(**args):
        return client.get("/api/audit", query_string=args, headers=bearer("admin")).get_json()

    assert q(action="rollout.advance")["total"] == 2
    assert q(role="ops")["items"][0]["action"] == "alert.resolve"
    assert [i["action"] for i in q(actor="Ann@Example.com")["items"]] == ["alert.resolve"]
    assert q(actor="admin")["total"] == 2
    assert q(outcome="conflict")["total"] == 1
    assert q(action="rollout.advance", outcome="ok")["total"] == 1
    assert q(target_type="alert", target_id="7")["total"] == 1
    page = q(limit=1, offset=1)
    assert page["total"] == 3 and len(page["items"]) == 1 and page["items"][0]["action"] == "alert.resolve"
    assert q(since="2999-01-01T00:00:00Z")["total"] == 0


@pytest.mark.parametrize("role,status", [(None, 401), ("support", 403), ("ops", 403), ("admin", 200)])
def test_api_audit_is_admin_only(client, role, status):
    resp = client.get("/api/audit", headers=bearer(role) if role else {})
    assert resp.status_code == status
    if status != 200:
        assert set(resp.get_json()) == {"error", "message", "details"}


def test_api_audit_with_a_session_cookie(client):
    login(client, "admin")
    assert client.get("/api/audit").status_code == 200


@pytest.mark.parametrize("args", [{"role": "root"}, {"limit": "0"}, {"offset": "-1"}, {"since": "yesterday"},
                                  {"action": "x" * 65}])
def test_api_audit_bad_arguments(client, args):
    resp = client.get("/api/audit", query_string=args, headers=bearer("admin"))
    assert resp.status_code == 422
    assert resp.get_json()["error"] == "validation_error"


def test_api_audit_in_openapi_spec(client):
    resp = client.get("/api/openapi.json")
    if resp.status_code == 404:
        pytest.skip("the OpenAPI document is not served yet")
    spec = resp.get_json()
    op = spec["paths"]["/api/audit"]["get"]
    assert "AuditList" in str(op["responses"]["200"])
    assert {p["name"] for p in op["parameters"]} >= {"action", "role", "outcome", "limit", "offset"}
