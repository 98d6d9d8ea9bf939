"""Restore verifications: scheduling, the heartbeat's pending list, reporting, alerts, lists,
and the admin panel."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from cp.auth import role_allows
from cp.delivery.restores import READ_ROLE
from cp.extensions import db
from cp.models import Alert, AuditLog, OutboxEvent, RestoreVerification
from cp.timeutil import isoformat
from tests.conftest import Agent, bearer, csrf_token_from, login

ADMIN = bearer("admin")


@pytest.fixture
def rapp(make_app):
    return make_app(CONTROL_PLANE_ALERT_WEBHOOK_URL="http://127.0.0.1:9/hook")


@pytest.fixture
def rclient(rapp):
    return rapp.test_client()


@pytest.fixture
def ragent(rclient):
    return Agent(rclient)


@pytest.fixture
def fleet(ragent):
    for iid in ("acme-001", "acme-002", "mapped-001"):
        assert ragent.heartbeat(iid, backup_status="ok").status_code == 200


def schedule(client, instance_ids, headers=ADMIN, **body):
    return client.post("/api/restores/schedule", json={"instance_ids": instance_ids, **body}, headers=headers)


def report(agent, instance_id, verification_id, status="passed", **extra):
    return agent.post("/api/restores/report", {"instance_id": instance_id, "verification_id": verification_id,
                                               "status": status, **extra})


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


# --- scheduling ----------------------------------------------------------------------------
def test_schedule_creates_one_scheduled_verification_per_installation(rapp, rclient, fleet, clock):
    r = schedule(rclient, ["acme-001", "acme-002", "acme-001"], backup_id="b-42", scheduled_for=None)
    assert r.status_code == 201, r.get_json()
    items = r.get_json()["items"]
    assert [i["instance_id"] for i in items] == ["acme-001", "acme-002"]
    first = items[0]
    assert first["status"] == "scheduled" and first["backup_id"] == "b-42"
    assert first["scheduled_for"] == "2026-11-27T12:00:00Z"  # null: now
    assert first["created_by"] == "admin" and first["reported_at"] is None and first["duration_s"] is None
    with rapp.app_context():
        audit = db.session.scalars(select(AuditLog).where(AuditLog.action == "restore.schedule")).all()
        assert [a.outcome for a in audit] == ["ok"]


def test_schedule_without_backup_id_or_time(rclient, fleet):
    r = schedule(rclient, ["acme-001"])
    assert r.status_code == 201
    assert r.get_json()["items"][0]["backup_id"] is None


def test_an_unknown_instance_is_a_404_and_nothing_is_created(rapp, rclient, fleet):
    r = schedule(rclient, ["acme-001", "nope-1", "nope-2"])
    assert r.status_code == 404
    body = r.get_json()
    assert body["error"] == "unknown_installation" and body["details"] == {"instance_ids": ["nope-1", "nope-2"]}
    assert count(rapp, RestoreVerification) == 0


@pytest.mark.parametrize("body", [
    {"instance_ids": []},
    {"instance_ids": "acme-001"},
    {"instance_ids": ["bad id!"]},
    {"instance_ids": ["acme-001"], "scheduled_for": "tomorrow"},
    {"instance_ids": ["acme-001"], "scheduled_for": "2026-11-28T02:00:00"},  # no offset
    {"instance_ids": ["acme-001"], "backup_id": ""},
    {"instance_ids": ["acme-001"], "scheduled_at": "2026-11-28T02:00:00Z"},  # misspelt: refused
    {},
])
def test_bad_schedule_bodies_are_422_and_change_nothing(rapp, rclient, fleet, body):
    r = rclient.post("/api/restores/schedule", json=body, headers=ADMIN)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"] == "validation_error"
    assert count(rapp, RestoreVerification) == 0


def test_only_admin_schedules_and_lists(rclient, fleet):
    assert schedule(rclient, ["acme-001"], headers={}).status_code == 401
    for role in ("support", "ops"):
        assert schedule(rclient, ["acme-001"], headers=bearer(role)).status_code == 403
        assert rclient.get("/api/restores", headers=bearer(role)).status_code == 403
    assert rclient.get("/api/restores").status_code == 401
    r = rclient.post("/api/restores/schedule", data="{}", headers={**ADMIN, "Content-Type": "text/plain"})
    assert r.status_code == 415


# --- the heartbeat's pending list ----------------------------------------------------------
def test_the_agent_sees_due_verifications_in_its_heartbeat(rclient, ragent, fleet, clock):
    later = isoformat(clock.now + timedelta(hours=2))
    now_id = schedule(rclient, ["acme-001"], backup_id="b-1").get_json()["items"][0]["id"]
    later_id = schedule(rclient, ["acme-001"], scheduled_for=later).get_json()["items"][0]["id"]
    schedule(rclient, ["acme-002"])

    pending = ragent.heartbeat("acme-001").get_json()["pending"]["restore_verifications"]
    assert pending == [{"id": now_id, "backup_id": "b-1", "scheduled_for": "2026-11-27T12:00:00Z"}]
    clock.advance(hours=2)
    pending = ragent.heartbeat("acme-001").get_json()["pending"]["restore_verifications"]
    assert [p["id"] for p in pending] == [now_id, later_id]
    assert report(ragent, "acme-001", now_id).status_code == 200
    pending = ragent.heartbeat("acme-001").get_json()["pending"]["restore_verifications"]
    assert [p["id"] for p in pending] == [later_id]


# --- reporting -----------------------------------------------------------------------------
def test_report_passed_then_the_same_again_is_a_no_op_and_another_result_a_409(rapp, rclient, ragent, fleet, clock):
    vid = schedule(rclient, ["acme-001"], backup_id="b-9").get_json()["items"][0]["id"]
    clock.advance(minutes=30)
    r = report(ragent, "acme-001", vid, "passed", duration_s=42.5, message="restored 3 GB")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["status"] == "passed" and body["duration_s"] == 42.5 and body["message"] == "restored 3 GB"
    assert body["reported_at"] == "2026-11-27T12:30:00Z" and body["id"] == vid

    clock.advance(minutes=5)
    again = report(ragent, "acme-001", vid, "passed", duration_s=1, message="other")
    assert again.status_code == 200
    assert again.get_json() == body  # nothing changed
    conflict = report(ragent, "acme-001", vid, "failed")
    assert conflict.status_code == 409
    assert conflict.get_json()["error"] == "already_reported"
    assert conflict.get_json()["details"] == {"status": "passed"}
    assert count(rapp, Alert) == 0


def test_another_installations_verification_is_403_and_unknown_is_404(rapp, rclient, ragent, fleet):
    vid = schedule(rclient, ["acme-001"]).get_json()["items"][0]["id"]
    r = report(ragent, "mapped-001", vid, "failed")  # correctly signed with its own secret
    assert r.status_code == 403
    assert r.get_json()["error"] == "forbidden"
    assert "acme-001" not in r.get_data(as_text=True)
    r = report(ragent, "never-seen", vid, "passed")  # not even registered
    assert r.status_code == 403
    assert report(ragent, "acme-001", vid + 1000).status_code == 404
    with rapp.app_context():
        assert db.session.get(RestoreVerification, vid).status == "scheduled"


def test_report_signature_and_validation(rapp, rclient, ragent, fleet):
    vid = schedule(rclient, ["acme-001"]).get_json()["items"][0]["id"]
    r = ragent.post("/api/restores/report", {"instance_id": "acme-001", "verification_id": vid, "status": "passed"},
                    secret="wrong-secret")
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_signature"
    for extra in ({"status": "ok"}, {"duration_s": -1}, {"duration_s": "12"}, {"verification_id": "1"},
                  {"verification_id": 0}, {"message": "x" * 2001}, {"status": None}):
        payload = {"instance_id": "acme-001", "verification_id": vid, "status": "passed", **extra}
        r = ragent.post("/api/restores/report", payload)
        assert r.status_code == 422, (extra, r.get_json())
    with rapp.app_context():
        assert db.session.get(RestoreVerification, vid).status == "scheduled"
    assert report(ragent, "acme-001", vid, duration_s=0).status_code == 200


def test_a_failed_result_opens_a_critical_restore_alert_resolved_by_a_later_pass(rapp, rclient, ragent, fleet, clock):
    v1 = schedule(rclient, ["acme-001"], backup_id="b-1").get_json()["items"][0]["id"]
    v2 = schedule(rclient, ["acme-001"], backup_id="b-2").get_json()["items"][0]["id"]
    assert report(ragent, "acme-001", v1, "failed", duration_s=3, message="checksum mismatch").status_code == 200
    with rapp.app_context():
        (a,) = db.session.scalars(select(Alert).where(Alert.source == "restore")).all()
        assert a.level == "critical" and a.resolved_at is None
        assert a.message == f"Restore verification #{v1} of backup b-1 failed: checksum mismatch"
        assert db.session.scalars(select(OutboxEvent.event)).all() == ["opened"]
    # the same failure reported again opens nothing more
    assert report(ragent, "acme-001", v1, "failed").status_code == 200
    # a heartbeat does not touch restore alerts
    assert ragent.heartbeat("acme-001", alerts=[]).status_code == 200
    alerts = rclient.get("/api/alerts?source=restore&status=open", headers=bearer("support")).get_json()
    assert alerts["total"] == 1 and alerts["items"][0]["instance_id"] == "acme-001"

    clock.advance(hours=1)
    assert report(ragent, "acme-001", v2, "passed").status_code == 200
    with rapp.app_context():
        (a,) = db.session.scalars(select(Alert).where(Alert.source == "restore")).all()
        assert a.resolved_at == clock.now and a.resolved_by == "restore"
        assert db.session.scalars(select(OutboxEvent.event).order_by(OutboxEvent.id)).all() == ["opened", "resolved"]


def test_an_older_pass_does_not_resolve_a_newer_failure(rapp, rclient, ragent, fleet):
    v1 = schedule(rclient, ["acme-001"]).get_json()["items"][0]["id"]
    v2 = schedule(rclient, ["acme-001"]).get_json()["items"][0]["id"]
    assert report(ragent, "acme-001", v2, "failed").status_code == 200
    assert report(ragent, "acme-001", v1, "passed").status_code == 200
    with rapp.app_context():
        (a,) = db.session.scalars(select(Alert).where(Alert.source == "restore")).all()
        assert a.resolved_at is None


# --- listing -------------------------------------------------------------------------------
def test_list_filters_and_order(rclient, ragent, fleet, clock):
    ids = []
    for iid in ("acme-001", "acme-002", "acme-001"):
        ids.append(schedule(rclient, [iid], backup_id=f"b-{iid}").get_json()["items"][0]["id"])
        clock.advance(minutes=1)
    assert report(ragent, "acme-001", ids[0], "failed").status_code == 200

    def get(query=""):
        r = rclient.get(f"/api/restores{query}", headers=ADMIN)
        assert r.status_code == 200, r.get_json()
        return r.get_json()

    everything = get()
    assert everything["total"] == 3 and [i["id"] for i in everything["items"]] == ids[::-1]
    assert [i["id"] for i in get("?instance_id=acme-001")["items"]] == [ids[2], ids[0]]
    assert [i["id"] for i in get("?status=failed")["items"]] == [ids[0]]
    assert [i["id"] for i in get("?instance_id=acme-001&status=scheduled")["items"]] == [ids[2]]
    assert get("?instance_id=unknown") == {"items": [], "total": 0}
    assert [i["id"] for i in get("?backup_id=b-acme-002")["items"]] == [ids[1]]
    page = get("?limit=1&offset=1")
    assert page["total"] == 3 and [i["id"] for i in page["items"]] == [ids[1]]
    assert rclient.get("/api/restores?status=bogus", headers=ADMIN).status_code == 422
    assert rclient.get("/api/restores?limit=0", headers=ADMIN).status_code == 422


# --- the admin panel and the installation page -----------------------------------------------
def test_admin_bulk_action_schedules_restore_verifications(rapp, fleet):
    with rapp.app_context():
        from cp.models import Installation

        ids = [str(i) for i in db.session.scalars(select(Installation.id).order_by(Installation.id)).all()[:2]]
    c = rapp.test_client()
    login(c, "admin")
    page = c.get("/admin/installations/")
    html = page.get_data(as_text=True)
    assert "Schedule restore verification" in html
    resp = c.post("/admin/installations/action/",
                  data={"action": "schedule_restore", "rowid": ids, "csrf_token": csrf_token_from(html)})
    assert resp.status_code in (302, 303)
    with rapp.app_context():
        rows = db.session.scalars(select(RestoreVerification)).all()
        assert sorted(str(r.installation_id) for r in rows) == sorted(ids)
        assert all(r.status == "scheduled" and r.created_by == "admin" for r in rows)

    ops = rapp.test_client()
    login(ops, "ops")
    html = ops.get("/admin/installations/").get_data(as_text=True)
    assert "Schedule restore verification" not in html
    resp = ops.post("/admin/installations/action/",
                    data={"action": "schedule_restore", "rowid": ids, "csrf_token": csrf_token_from(html)})
    assert resp.status_code == 403
    assert count(rapp, RestoreVerification) == 2


def test_restore_screen_lists_status_duration_backup_and_escaped_message(rapp, rclient, ragent, fleet):
    vid = schedule(rclient, ["acme-001"], backup_id="b-77").get_json()["items"][0]["id"]
    assert report(ragent, "acme-001", vid, "failed", duration_s=12.5,
                  message="<script>alert('x')</script>").status_code == 200
    c = rapp.test_client()
    login(c, "admin")
    page = c.get("/admin/restore_verifications/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "b-77" in html and "12.5 s" in html and "failed" in html
    assert "<script>alert('x')</script>" not in html and "&lt;script&gt;" in html
    filtered = c.get("/admin/restore_verifications/?flt0_0=passed").get_data(as_text=True)
    assert "b-77" not in filtered
    installation_page = c.get("/installations/acme-001").get_data(as_text=True)
    section = installation_page.split("<h2>Restore verifications</h2>", 1)[1].split("</table>", 1)[0]
    assert "b-77" in section and "12.5 s" in section and "failed" in section
    assert "<script>alert(" not in installation_page


# --- one read rule for every place that shows verifications --------------------------------------
@pytest.mark.parametrize("role", ["support", "ops", "admin"])
def test_the_api_the_panel_and_the_installation_page_share_one_read_rule(rapp, fleet, role):
    """``GET /api/restores``, the panel's screen and the installation page's table answer the
    same roles (``cp.delivery.restores.READ_ROLE``: admin)."""
    c = rapp.test_client()
    assert schedule(c, ["acme-001"], backup_id="nightly-xyz").status_code == 201
    login(c, role)
    allowed = role_allows(role, READ_ROLE)
    assert (c.get("/api/restores", headers=bearer(role)).status_code == 200) is allowed
    assert (c.get("/api/restores").status_code == 200) is allowed  # the session, like the panel
    panel = c.get("/admin/restore_verifications/")
    assert panel.status_code == (200 if allowed else 403)
    assert ("nightly-xyz" in panel.get_data(as_text=True)) is allowed
    menu = c.get("/admin/installations/").get_data(as_text=True)
    assert ("/admin/restore_verifications/" in menu) is allowed
    page = c.get("/installations/acme-001").get_data(as_text=True)
    assert ("nightly-xyz" in page and '<table class="restores ' in page) is allowed
    assert READ_ROLE == "admin"
