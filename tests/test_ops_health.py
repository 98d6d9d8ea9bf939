"""Operational health: SLO alerts and history, backup rules, stale and backup-age sweeps,
installation events; with the controllable clock."""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from cp.background import sweeps
from cp.dbutil import insert
from cp.extensions import db
from cp.models import Alert, Installation, InstallationEvent, OutboxEvent, SloSample
from cp.timeutil import isoformat
from tests.conftest import Agent, bearer

LIMITS = {"SLO_P95_MS_MAX": "500", "SLO_ERROR_RATE_MAX": "0.01", "SLO_WEBHOOK_RETRY_RATE_MAX": "0.05"}
HOOK = {"CONTROL_PLANE_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook"}  # only queued here, never sent


@pytest.fixture
def ops_app(make_app):
    return make_app(**LIMITS, **HOOK)


@pytest.fixture
def beat(ops_app):
    agent = Agent(ops_app.test_client())

    def send(instance_id="acme-001", **fields):
        resp = agent.heartbeat(instance_id, **fields)
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    return send


def alerts_of(app, instance_id="acme-001", source=None, open_only=False):
    with app.app_context():
        stmt = (select(Alert).join(Installation).where(Installation.instance_id == instance_id)
                .order_by(Alert.id))
        if source:
            stmt = stmt.where(Alert.source == source)
        if open_only:
            stmt = stmt.where(Alert.resolved_at.is_(None))
        rows = db.session.scalars(stmt).all()
        db.session.expunge_all()
        return list(rows)


def outbox_keys(app):
    with app.app_context():
        return [(r.alert_id, r.event, r.payload["alert"]["source"])
                for r in db.session.scalars(select(OutboxEvent).order_by(OutboxEvent.id))]


def run(app, fn, *args, **kw):
    with app.app_context():
        try:
            return fn(*args, **kw)
        finally:
            db.session.remove()


# --- SLOs ----------------------------------------------------------------------------------
def test_slo_breach_opens_one_critical_alert_per_figure_until_back_under(ops_app, beat, clock):
    beat(slo_p95_ms=900, slo_error_rate=0.001)
    (a,) = alerts_of(ops_app, source="slo")
    assert a.level == "critical" and a.fingerprint == "slo:slo_p95_ms"
    assert "slo_p95_ms" in a.message and "900" in a.message and "500" in a.message
    clock.advance(minutes=1)
    beat(slo_p95_ms=950)  # still over: the same alert, seen again
    beat(slo_error_rate=0.2)  # p95 unknown in this heartbeat: the stored 950 keeps it open
    slo = alerts_of(ops_app, source="slo", open_only=True)
    assert sorted(x.fingerprint for x in slo) == ["slo:slo_error_rate", "slo:slo_p95_ms"]
    assert next(x for x in slo if x.fingerprint == "slo:slo_p95_ms").occurrences == 3
    clock.advance(minutes=1)
    beat(slo_p95_ms=500, slo_error_rate=0.01)  # equal to the limit is not above it
    assert alerts_of(ops_app, source="slo", open_only=True) == []
    assert all(x.resolved_at == clock.now and x.resolved_by == "heartbeat" for x in alerts_of(ops_app, source="slo"))
    events = [(e, s) for _, e, s in outbox_keys(ops_app)]
    assert events.count(("opened", "slo")) == 2 and events.count(("resolved", "slo")) == 2
    clock.advance(minutes=1)
    beat(slo_p95_ms=501)  # a new breach is a new alert
    assert len(alerts_of(ops_app, source="slo")) == 3


def test_unset_slo_limits_are_not_checked(app, agent):
    assert agent.heartbeat("acme-001", slo_p95_ms=99999, slo_error_rate=1.0).status_code == 200
    assert alerts_of(app, source="slo") == []


def test_slo_history_keeps_one_point_per_five_minutes_and_is_pruned(ops_app, beat, clock, make_app):
    clock.now = clock.now.replace(minute=0)
    beat(slo_p95_ms=100, slo_error_rate=0.001)
    clock.advance(minutes=2)
    beat(slo_p95_ms=200)
    clock.advance(minutes=2, seconds=59)
    beat(slo_p95_ms=300)  # 12:04:59, still the first bucket: the last figures win
    clock.advance(seconds=1)
    beat(slo_p95_ms=400)  # 12:05:00, a new bucket
    with ops_app.app_context():
        rows = db.session.execute(select(SloSample.bucket, SloSample.slo_p95_ms, SloSample.slo_error_rate)
                                  .order_by(SloSample.bucket)).all()
    assert [(isoformat(b), p) for b, p, _ in rows] == [("2026-11-27T12:00:00Z", 300.0), ("2026-11-27T12:05:00Z", 400.0)]
    assert rows[0][2] == 0.001  # a figure not sent again keeps the value of its bucket
    beat(health="ok")  # no SLO figure: no point
    with ops_app.app_context():
        assert db.session.scalar(select(sa.func.count()).select_from(SloSample)) == 2

    # retention: 30 days by default; `flask --app cp prune-history` removes older points
    clock.advance(days=30, minutes=-3)  # 30 days after 12:02: the 12:00 point is past the retention
    beat(slo_p95_ms=10)
    result = ops_app.test_cli_runner().invoke(args=["prune-history"])
    assert result.exit_code == 0, result.output
    assert "slo_samples: 1 deleted" in result.output
    with ops_app.app_context():
        left = db.session.scalars(select(SloSample.slo_p95_ms).order_by(SloSample.bucket)).all()
    assert left == [400.0, 10.0]
    result = ops_app.test_cli_runner().invoke(args=["prune-history", "--days", "1"])
    assert "slo_samples: 1 deleted" in result.output
    short = make_app(CONTROL_PLANE_SLO_HISTORY_RETENTION_DAYS="1")
    assert run(short, sweeps.prune_slo_history) == 0


# --- backups -------------------------------------------------------------------------------
def test_failed_or_missing_backup_opens_a_critical_alert_resolved_by_an_ok_backup(ops_app, beat, clock):
    fresh = isoformat(clock.now - timedelta(hours=1))
    beat(backup_status="failed", last_backup_at=fresh)
    (a,) = alerts_of(ops_app, source="backup")
    assert (a.level, a.fingerprint, a.message) == ("critical", "backup:status", "Backup status is failed.")
    beat(backup_status="running")  # in progress: not known to be fixed yet
    assert len(alerts_of(ops_app, source="backup", open_only=True)) == 1
    beat(health="ok")  # nothing about backups: kept
    assert len(alerts_of(ops_app, source="backup", open_only=True)) == 1
    clock.advance(minutes=5)
    beat(backup_status="ok", last_backup_at=isoformat(clock.now))
    assert alerts_of(ops_app, source="backup", open_only=True) == []
    beat(backup_status="missing")
    (m,) = alerts_of(ops_app, source="backup", open_only=True)
    assert m.level == "critical" and "missing" in m.message and m.id != a.id


def test_an_old_backup_opens_a_warning_resolved_by_a_fresh_one(ops_app, beat, clock):
    beat(backup_status="ok", last_backup_at=isoformat(clock.now - timedelta(hours=26)))
    assert alerts_of(ops_app, source="backup") == []  # exactly at the limit: fine
    beat(backup_status="ok", last_backup_at=isoformat(clock.now - timedelta(hours=27)))
    (a,) = alerts_of(ops_app, source="backup", open_only=True)
    assert (a.level, a.fingerprint) == ("warning", "backup:age")
    assert a.message == "Last backup is 27.0 hours old, over the limit of 26 hours."
    clock.advance(hours=2)
    beat(health="ok")  # same old backup: the same alert
    assert alerts_of(ops_app, source="backup", open_only=True)[0].occurrences == 2
    beat(backup_status="ok", last_backup_at=isoformat(clock.now))
    assert alerts_of(ops_app, source="backup", open_only=True) == []


def test_backup_max_age_setting(make_app, clock):
    app = make_app(CONTROL_PLANE_BACKUP_MAX_AGE_HOURS="2")
    agent = Agent(app.test_client())
    agent.heartbeat("acme-001", last_backup_at=isoformat(clock.now - timedelta(hours=3)))
    (a,) = alerts_of(app, source="backup")
    assert "limit of 2 hours" in a.message


# --- stale installations -------------------------------------------------------------------
def test_stale_sweep_opens_one_critical_alert_and_the_next_heartbeat_resolves_it(ops_app, beat, clock):
    client = ops_app.test_client()
    beat("acme-001")
    beat("acme-002")
    clock.advance(seconds=899)
    beat("acme-002")
    clock.advance(seconds=2)  # acme-001: 901 s of silence; acme-002: 2 s
    assert run(ops_app, sweeps.sweep_stale) == 1
    assert run(ops_app, sweeps.sweep_stale) == 0  # deduplicated
    (a,) = alerts_of(ops_app, "acme-001", source="heartbeat")
    assert (a.level, a.fingerprint) == ("critical", "heartbeat:stale")
    assert "2026-11-27T12:00:00Z" in a.message and "900 seconds" in a.message
    assert alerts_of(ops_app, "acme-002", source="heartbeat") == []
    listed = client.get("/api/installations?stale=true", headers=bearer("support")).get_json()
    assert [i["instance_id"] for i in listed["items"]] == ["acme-001"]
    assert listed["items"][0]["open_alerts"] == 1

    clock.advance(minutes=1)
    beat("acme-001")
    (a,) = alerts_of(ops_app, "acme-001", source="heartbeat")
    assert a.resolved_at == clock.now and a.resolved_by == "heartbeat"
    assert [(e, s) for _, e, s in outbox_keys(ops_app)] == [("opened", "heartbeat"), ("resolved", "heartbeat")]


def test_a_stale_alert_resolved_by_hand_stays_resolved_until_the_next_silence(ops_app, beat, clock):
    beat("acme-001")
    clock.advance(minutes=20)
    assert run(ops_app, sweeps.sweep_stale) == 1
    (a,) = alerts_of(ops_app, source="heartbeat")
    r = ops_app.test_client().post(f"/api/alerts/{a.id}/resolve", headers=bearer("ops"))
    assert r.status_code == 200
    clock.advance(minutes=20)
    assert run(ops_app, sweeps.sweep_stale) == 0  # still the same silence
    beat("acme-001")
    clock.advance(minutes=16)
    assert run(ops_app, sweeps.sweep_stale) == 1  # a new silence, a new alert
    assert len(alerts_of(ops_app, source="heartbeat")) == 2


def test_stale_after_setting(make_app, clock):
    app = make_app(CONTROL_PLANE_STALE_AFTER_SECONDS="60")
    Agent(app.test_client()).heartbeat("acme-001")
    clock.advance(seconds=61)
    assert run(app, sweeps.sweep_stale) == 1


# --- backup age without heartbeats ---------------------------------------------------------
def test_backup_age_sweep_covers_installations_that_stopped_reporting(ops_app, beat, clock):
    beat("acme-001", backup_status="ok", last_backup_at=isoformat(clock.now - timedelta(hours=1)))
    beat("acme-002", backup_status="ok")  # no backup time known: nothing to judge
    clock.advance(hours=24)
    assert run(ops_app, sweeps.sweep_backup_age) == 0
    clock.advance(hours=1)  # 26 h old exactly: not over
    assert run(ops_app, sweeps.sweep_backup_age) == 0
    clock.advance(minutes=1)
    assert run(ops_app, sweeps.sweep_backup_age) == 1
    assert run(ops_app, sweeps.sweep_backup_age) == 0
    (a,) = alerts_of(ops_app, source="backup")
    assert (a.level, a.fingerprint) == ("warning", "backup:age")
    assert a.message.startswith("Last backup is 26.0 hours old")
    beat("acme-001")  # a heartbeat with the same old backup keeps it open, not a second one
    assert len(alerts_of(ops_app, source="backup")) == 1
    beat("acme-001", last_backup_at=isoformat(clock.now))
    assert alerts_of(ops_app, source="backup", open_only=True) == []
    assert ("opened", "backup") in [(e, s) for _, e, s in outbox_keys(ops_app)]


def test_sweeps_are_set_based(ops_app, clock):
    """1,200 silent installations: the sweeps run a handful of statements, not one per row."""
    old = clock.now - timedelta(days=2)
    with ops_app.app_context():
        db.session.execute(insert(Installation.__table__), [
            {"instance_id": f"bulk-{i:05d}", "first_seen_at": old, "last_seen_at": old, "heartbeats_total": 1,
             "last_backup_at": old if i % 2 else clock.now}
            for i in range(1200)])
        db.session.commit()
        statements = []

        def count(*_args):
            statements.append(1)

        engine = db.engine
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            assert sweeps.sweep_stale() == 1200
            assert sweeps.sweep_backup_age() == 600
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        assert len(statements) < 40, len(statements)
        assert db.session.scalar(select(sa.func.count()).select_from(OutboxEvent)) == 1800
        assert sweeps.sweep_stale() == 0 and sweeps.sweep_backup_age() == 0
        db.session.remove()


# --- history of the installation -----------------------------------------------------------
def test_changes_of_version_channel_health_and_backup_status_are_recorded(ops_app, beat, clock):
    beat(version="1.2.3", release_channel="stable", health="ok", backup_status="ok")
    clock.advance(minutes=1)
    beat(version="1.2.3", health="ok")  # no change: no event
    clock.advance(minutes=1)
    beat(version="1.3.0", release_channel="beta", health="degraded", backup_status="failed", client="Acme")
    with ops_app.app_context():
        rows = db.session.execute(select(InstallationEvent.field, InstallationEvent.old_value,
                                         InstallationEvent.new_value, InstallationEvent.at)
                                  .order_by(InstallationEvent.id)).all()
    assert [(f, o, n) for f, o, n, _ in rows] == [
        ("version", "1.2.3", "1.3.0"), ("release_channel", "stable", "beta"), ("health", "ok", "degraded"),
        ("backup_status", "ok", "failed")]
    assert all(at == clock.now for *_, at in rows)
    detail = ops_app.test_client().get("/api/installations/acme-001", headers=bearer("support")).get_json()
    assert {e["field"] for e in detail["events"]} == {"version", "release_channel", "health", "backup_status"}


def test_the_worker_round_runs_every_sweep(ops_app, beat, clock):
    beat("acme-001", last_backup_at=isoformat(clock.now))
    clock.advance(days=2)
    result = ops_app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    sources = sorted(a.source for a in alerts_of(ops_app, open_only=True))
    assert sources == ["backup", "heartbeat"]
