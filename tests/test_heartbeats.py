"""Heartbeat rules: upsert, alert lifecycle, job failures, response shape."""
import pytest
from sqlalchemy import func, select

from cp.extensions import db
from cp.models import Alert, Installation, InstallationEvent, JobFailure, SloSample

FULL = {
    "domain": "acme.com", "client": "Acme SA", "version": "1.2.3", "release_channel": "stable",
    "health": "ok", "backup_status": "ok", "last_backup_at": "2026-11-27T02:00:00Z",
    "alerts": [{"level": "warning", "message": "Low disk"}],
    "job_failures": [{"queue": "billing", "message": "Timeout"}],
    "slo_p95_ms": 420, "slo_error_rate": 0.002, "slo_webhook_retry_rate": 0.01,
}


def alerts(app, **where):
    with app.app_context():
        stmt = select(Alert).order_by(Alert.id)
        for k, v in where.items():
            stmt = stmt.where(getattr(Alert, k) == v)
        return db.session.scalars(stmt).all()


def test_unknown_installation_registers_itself(app, agent, clock):
    resp = agent.heartbeat("acme-001", **FULL)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body == {"installation": "acme-001", "received_at": "2026-11-27T12:00:00Z",
                    "pending": {"update": False, "plugin": False, "restore_verifications": []}}
    with app.app_context():
        inst = db.session.scalars(select(Installation)).one()
        assert (inst.instance_id, inst.domain, inst.client, inst.version, inst.release_channel) == (
            "acme-001", "acme.com", "Acme SA", "1.2.3", "stable")
        assert (inst.health, inst.backup_status, inst.slo_p95_ms) == ("ok", "ok", 420)
        assert inst.first_seen_at == inst.last_seen_at == clock.now
        assert inst.last_backup_at.isoformat() == "2026-11-27T02:00:00+00:00"


def test_only_instance_id_is_required_and_absent_fields_are_kept(app, agent, clock):
    agent.heartbeat("acme-001", version="1.2.3", client="Acme SA")
    clock.advance(minutes=1)
    assert agent.heartbeat("acme-001").status_code == 200
    with app.app_context():
        inst = db.session.scalars(select(Installation)).one()
        assert inst.version == "1.2.3" and inst.client == "Acme SA"
        assert inst.last_seen_at == clock.now
        assert inst.first_seen_at < inst.last_seen_at
        assert inst.heartbeats_total == 2


def test_open_alert_stays_one_row_and_counts(app, agent, clock):
    for _ in range(3):
        agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
        clock.advance(minutes=1)
    rows = alerts(app)
    assert len(rows) == 1
    assert rows[0].occurrences == 3
    assert rows[0].source == "agent"
    assert rows[0].resolved_at is None
    assert rows[0].last_seen_at > rows[0].opened_at


def test_alert_identity_is_level_and_message(app, agent):
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"},
                                        {"level": "critical", "message": "Low disk"},
                                        {"level": "warning", "message": "Low disk"}])
    rows = alerts(app)
    assert sorted((a.level, a.message) for a in rows) == [("critical", "Low disk"), ("warning", "Low disk")]


def test_alert_not_reported_is_resolved_and_reopens_as_new_row(app, agent, clock):
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"},
                                        {"level": "info", "message": "Cert renews soon"}])
    clock.advance(minutes=1)
    agent.heartbeat("acme-001", alerts=[{"level": "info", "message": "Cert renews soon"}])
    low = alerts(app, message="Low disk")
    assert len(low) == 1 and low[0].resolved_at == clock.now
    assert alerts(app, message="Cert renews soon")[0].resolved_at is None
    clock.advance(minutes=1)
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    low = alerts(app, message="Low disk")
    assert len(low) == 2
    assert low[0].resolved_at is not None and low[1].resolved_at is None
    assert low[1].occurrences == 1


def test_heartbeat_without_alerts_reports_none(app, agent):
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    agent.heartbeat("acme-001")
    assert alerts(app)[0].resolved_at is not None


def test_alerts_of_one_installation_do_not_touch_another(app, agent):
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    agent.heartbeat("acme-002", alerts=[])
    assert alerts(app)[0].resolved_at is None


def test_job_failures_are_events_deduplicated_while_unresolved(app, agent, client):
    from tests.conftest import bearer

    jf = [{"queue": "billing", "message": "Timeout"}, {"queue": "billing", "message": "Timeout"},
          {"queue": "mail", "message": "SMTP down"}]
    agent.heartbeat("acme-001", job_failures=jf)
    agent.heartbeat("acme-001", job_failures=[{"queue": "billing", "message": "Timeout"}])
    agent.heartbeat("acme-001")  # not reported: failures are events, they stay open
    with app.app_context():
        rows = db.session.scalars(select(JobFailure).order_by(JobFailure.queue)).all()
        assert [(r.queue, r.occurrences, r.resolved_at) for r in rows] == [("billing", 3, None), ("mail", 1, None)]
        billing_id = rows[0].id
    assert client.post(f"/api/job-failures/{billing_id}/resolve", headers=bearer("ops")).status_code == 200
    agent.heartbeat("acme-001", job_failures=[{"queue": "billing", "message": "Timeout"}])
    with app.app_context():
        rows = db.session.scalars(select(JobFailure).where(JobFailure.queue == "billing").order_by(JobFailure.id)).all()
        assert [(r.occurrences, r.resolved_at is None) for r in rows] == [(3, False), (1, True)]


def test_history_records_changes_of_followed_fields(app, agent):
    agent.heartbeat("acme-001", version="1.2.3", health="ok", release_channel="stable", backup_status="ok")
    agent.heartbeat("acme-001", version="1.2.4", health="ok", release_channel="beta", backup_status="failed")
    with app.app_context():
        rows = db.session.scalars(select(InstallationEvent).order_by(InstallationEvent.field)).all()
        assert [(e.field, e.old_value, e.new_value) for e in rows] == [
            ("backup_status", "ok", "failed"), ("release_channel", "stable", "beta"), ("version", "1.2.3", "1.2.4")]


def test_slo_history_keeps_one_point_per_five_minutes(app, agent, clock):
    agent.heartbeat("acme-001", slo_p95_ms=100)
    clock.advance(minutes=1)
    agent.heartbeat("acme-001", slo_p95_ms=200)
    clock.advance(minutes=5)
    agent.heartbeat("acme-001", slo_p95_ms=300)
    with app.app_context():
        points = db.session.scalars(select(SloSample).order_by(SloSample.bucket)).all()
        assert [p.slo_p95_ms for p in points] == [200, 300]


@pytest.mark.parametrize("limits,figure,bad,good", [
    ({"SLO_P95_MS_MAX": "500"}, "slo_p95_ms", 812, 300),
    ({"SLO_ERROR_RATE_MAX": "0.01"}, "slo_error_rate", 0.05, 0.001),
    ({"SLO_WEBHOOK_RETRY_RATE_MAX": "0.1"}, "slo_webhook_retry_rate", 0.5, 0.0),
])
def test_slo_breach_opens_critical_alert_until_back_under(make_app, limits, figure, bad, good):
    from tests.conftest import Agent

    app = make_app(**limits)
    agent = Agent(app.test_client())
    agent.heartbeat("acme-001", **{figure: bad})
    agent.heartbeat("acme-001", **{figure: bad})
    rows = alerts(app, source="slo")
    assert len(rows) == 1 and rows[0].level == "critical" and rows[0].occurrences == 2
    assert figure in rows[0].message and str(bad) in rows[0].message
    assert limits[next(iter(limits))] in rows[0].message
    agent.heartbeat("acme-001")  # figure not reported: unknown, the alert stays open
    assert alerts(app, source="slo")[0].resolved_at is None
    agent.heartbeat("acme-001", **{figure: good})
    assert alerts(app, source="slo")[0].resolved_at is not None


def test_unset_slo_limits_are_not_checked(app, agent):
    agent.heartbeat("acme-001", slo_p95_ms=99999, slo_error_rate=1, slo_webhook_retry_rate=1)
    assert alerts(app) == []


def test_backup_failed_or_stale_opens_alerts_resolved_by_fresh_ok_backup(app, agent, clock):
    agent.heartbeat("acme-001", backup_status="failed", last_backup_at="2026-11-25T12:00:00Z")
    rows = {a.message.split(" ")[0]: a for a in alerts(app, source="backup")}
    assert sorted((a.level for a in rows.values())) == ["critical", "warning"]
    agent.heartbeat("acme-001", backup_status="ok", last_backup_at="2026-11-27T11:00:00Z")
    assert all(a.resolved_at is not None for a in alerts(app, source="backup"))


def test_stale_alert_is_resolved_by_the_next_heartbeat(app, agent, clock):
    from cp.fleet.alerts import open_alert

    agent.heartbeat("acme-001")
    with app.app_context():
        inst = db.session.scalars(select(Installation)).one()
        open_alert(inst, level="critical", source="heartbeat", fingerprint="heartbeat:stale",
                   message="No heartbeat for 15 minutes.")
        db.session.commit()
    agent.heartbeat("acme-001")
    assert alerts(app, source="heartbeat")[0].resolved_at is not None


def test_concurrent_first_heartbeats_register_once(app, agent):
    for _ in range(2):
        agent.heartbeat("acme-001")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Installation)) == 1
