"""Fleet read API: lists, filters, pagination, detail; alert and job-failure triage."""
import pytest
from sqlalchemy import text

from cp.fleet import queries as fleet_module
from cp.dbutil import without_index_only_scans
from cp.extensions import db
from tests.conftest import bearer

S = bearer("support")


@pytest.fixture
def fleet(agent, clock):
    agent.heartbeat("acme-001", client="Acme SA", domain="acme.com", health="ok", version="1.2.3",
                    release_channel="stable", alerts=[{"level": "warning", "message": "Low disk"}])
    clock.advance(minutes=1)
    agent.heartbeat("globex-001", client="Globex", domain="globex.io", health="down", version="1.2.2",
                    release_channel="beta", alerts=[{"level": "critical", "message": "DB down"},
                                                    {"level": "info", "message": "FYI"}],
                    job_failures=[{"queue": "mail", "message": "SMTP"}])
    clock.advance(minutes=1)
    agent.heartbeat("initech-001", client="Initech 100%_off", domain="initech.net", health="degraded",
                    version="1.2.3", release_channel="stable")
    clock.advance(minutes=20)  # acme and globex stale now? stale after 900 s: all three are older than 15 min
    agent.heartbeat("initech-001")
    return clock


def ids(resp):
    assert resp.status_code == 200, resp.get_json()
    return [i["instance_id"] for i in resp.get_json()["items"]]


def test_list_newest_first_with_fields(client, fleet):
    resp = client.get("/api/installations", headers=S)
    body = resp.get_json()
    assert body["total"] == 3
    assert ids(resp) == ["initech-001", "globex-001", "acme-001"]
    item = body["items"][1]
    for key in ("instance_id", "domain", "client", "version", "release_channel", "health", "backup_status",
                "last_backup_at", "slo_p95_ms", "slo_error_rate", "slo_webhook_retry_rate", "first_seen_at",
                "last_seen_at", "stale", "open_alerts"):
        assert key in item
    assert item["open_alerts"] == 2 and item["stale"] is True
    assert body["items"][0]["stale"] is False
    assert item["last_seen_at"].endswith("Z")


@pytest.mark.parametrize("query,expected", [
    ("health=down", ["globex-001"]),
    ("release_channel=stable", ["initech-001", "acme-001"]),
    ("version=1.2.3", ["initech-001", "acme-001"]),
    ("version=1.2.3&health=ok", ["acme-001"]),
    ("stale=true", ["globex-001", "acme-001"]),
    ("stale=false", ["initech-001"]),
    ("q=GLOBEX", ["globex-001"]),
    ("q=acme.com", ["acme-001"]),
    ("q=100%25_", ["initech-001"]),
    ("q=%25", ["initech-001"]),
    ("q=nothing-matches", []),
])
def test_filters_combine_with_and(client, fleet, query, expected):
    assert ids(client.get(f"/api/installations?{query}", headers=S)) == expected


def test_pagination(client, fleet):
    page1 = client.get("/api/installations?limit=2", headers=S).get_json()
    page2 = client.get("/api/installations?limit=2&offset=2", headers=S).get_json()
    assert page1["total"] == page2["total"] == 3
    assert [i["instance_id"] for i in page1["items"] + page2["items"]] == ["initech-001", "globex-001", "acme-001"]
    assert len(client.get("/api/installations?limit=100000", headers=S).get_json()["items"]) == 3


@pytest.mark.parametrize("query,field", [
    ("limit=0", "limit"), ("limit=-1", "limit"), ("limit=abc", "limit"), ("offset=-1", "offset"),
    ("health=sideways", "health"), ("stale=perhaps", "stale"),
])
def test_bad_list_arguments_are_422(client, fleet, query, field):
    resp = client.get(f"/api/installations?{query}", headers=S)
    assert resp.status_code == 422
    assert field in resp.get_json()["details"]


def test_detail(client, fleet):
    body = client.get("/api/installations/globex-001", headers=S).get_json()
    assert body["instance_id"] == "globex-001" and body["open_alerts"] == 2
    assert {a["message"] for a in body["alerts"]} == {"DB down", "FYI"}
    assert body["job_failures"][0]["queue"] == "mail"
    assert body["job_failures"][0]["instance_id"] == "globex-001"


def test_detail_lists_open_alerts_then_resolved(client, agent, fleet):
    agent.heartbeat("globex-001", alerts=[{"level": "info", "message": "FYI"}])
    fleet.advance(minutes=1)
    agent.heartbeat("globex-001", alerts=[{"level": "info", "message": "FYI"}, {"level": "warning", "message": "new"}])
    body = client.get("/api/installations/globex-001", headers=S).get_json()
    assert [(a["message"], a["resolved_at"] is None) for a in body["alerts"]] == [
        ("new", True), ("FYI", True), ("DB down", False)]


def test_detail_unknown_is_404(client, fleet):
    resp = client.get("/api/installations/nope-001", headers=S)
    assert resp.status_code == 404 and resp.get_json()["error"] == "not_found"


def test_alerts_list_and_filters(client, fleet):
    body = client.get("/api/alerts", headers=S).get_json()
    assert body["total"] == 3
    assert [a["message"] for a in body["items"]] == ["FYI", "DB down", "Low disk"]  # ties by id, newest first
    first = body["items"][0]
    assert set(first) >= {"id", "instance_id", "level", "source", "message", "opened_at", "last_seen_at",
                          "occurrences", "acknowledged_at", "resolved_at"}
    assert client.get("/api/alerts?level=critical", headers=S).get_json()["total"] == 1
    assert client.get("/api/alerts?instance_id=globex-001&level=info", headers=S).get_json()["total"] == 1
    assert client.get("/api/alerts?status=resolved", headers=S).get_json()["total"] == 0
    assert client.get("/api/alerts?source=agent&status=open", headers=S).get_json()["total"] == 3
    assert client.get("/api/alerts?status=closed", headers=S).status_code == 422


def test_acknowledge_and_resolve_are_idempotent(client, fleet):
    alert_id = client.get("/api/alerts?level=critical", headers=S).get_json()["items"][0]["id"]
    ops = bearer("ops")
    first = client.post(f"/api/alerts/{alert_id}/acknowledge", headers=ops)
    assert first.status_code == 200 and first.get_json()["acknowledged_at"]
    again = client.post(f"/api/alerts/{alert_id}/acknowledge", headers=ops)
    assert again.get_json()["acknowledged_at"] == first.get_json()["acknowledged_at"]
    resolved = client.post(f"/api/alerts/{alert_id}/resolve", headers=ops)
    assert resolved.status_code == 200 and resolved.get_json()["resolved_at"]
    assert client.post(f"/api/alerts/{alert_id}/resolve", headers=ops).get_json() == resolved.get_json()
    assert client.get("/api/alerts?status=resolved", headers=S).get_json()["total"] == 1
    assert client.post("/api/alerts/999999/resolve", headers=ops).status_code == 404
    assert client.post(f"/api/alerts/{alert_id}/resolve", headers=S).status_code == 403


def test_job_failures_list_and_resolve(client, fleet):
    body = client.get("/api/job-failures", headers=S).get_json()
    assert body["total"] == 1
    fid = body["items"][0]["id"]
    assert client.post(f"/api/job-failures/{fid}/resolve", headers=bearer("ops")).get_json()["resolved_at"]
    assert client.get("/api/job-failures?status=open", headers=S).get_json()["total"] == 0
    assert client.get("/api/job-failures?status=resolved&instance_id=globex-001", headers=S).get_json()["total"] == 1
    assert client.post("/api/job-failures/424242/resolve", headers=bearer("ops")).status_code == 404


def test_api_never_answers_html(client):
    for path in ("/api/installations", "/api/alerts", "/api/nope"):
        resp = client.get(path, headers={"Accept": "text/html"})
        assert resp.mimetype == "application/json"


def test_without_index_only_scans_turns_them_off_for_the_call_only(app, postgres_only):
    def show():
        return db.session.execute(text("SHOW enable_indexonlyscan")).scalar_one()

    with app.app_context():
        assert without_index_only_scans(show) == "off"
        assert show() == "on"
        db.session.rollback()


def test_the_fleet_total_is_counted_without_index_only_scans(app, client, fleet, postgres_only, monkeypatch):
    """Every heartbeat rewrites its installation's row, so an index-only scan of the fleet would
    read the heap for every row as well (docs/performance.md, "What the design does for speed")."""
    seen = []
    count = fleet_module._count

    def recording(stmt):
        seen.append(db.session.execute(text("SHOW enable_indexonlyscan")).scalar_one())
        return count(stmt)

    monkeypatch.setattr(fleet_module, "_count", recording)
    body = client.get("/api/installations?limit=1", headers=S).get_json()
    assert body["total"] == 3 and len(body["items"]) == 1
    assert seen == ["off"]
