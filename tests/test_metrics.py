"""`GET /metrics`: Prometheus text, who may read it, and what it counts."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from cp.extensions import db
from cp.models import Installation, Job, OutboxEvent, Release, Rollout
from tests.conftest import Agent, bearer, login

LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? -?[0-9.e+]+$')


def parse(text: str) -> dict[str, float]:
    """``{'name{labels}': value}``, checking every line is valid exposition format."""
    out: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        assert LINE.match(line), line
        key, value = line.rsplit(" ", 1)
        assert key.split("{")[0] in typed, line
        out[key] = float(value)
    return out


@pytest.fixture
def mapp(make_app):
    return make_app(SLO_P95_MS_MAX="500", CONTROL_PLANE_ALERT_WEBHOOK_URL="http://127.0.0.1:9/hook")


def test_metrics_need_support_or_up(mapp):
    c = mapp.test_client()
    r = c.get("/metrics")
    assert r.status_code == 401 and r.get_json()["error"] == "unauthorized"
    assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    for role in ("support", "ops", "admin"):
        r = c.get("/metrics", headers=bearer(role))
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    session = mapp.test_client()
    login(session, "support")
    assert session.get("/metrics").status_code == 200


def test_metrics_count_the_fleet_alerts_outbox_and_jobs(mapp, clock):
    agent = Agent(mapp.test_client())
    agent.heartbeat("a-1", health="ok", release_channel="stable", slo_p95_ms=900)
    agent.heartbeat("a-2", health="ok", release_channel="stable", alerts=[{"level": "warning", "message": "Disk"}])
    agent.heartbeat("a-3", health="degraded", release_channel='be"ta\\x', backup_status="failed")
    agent.heartbeat("a-4")
    clock.advance(minutes=20)
    agent.heartbeat("a-1", health="ok")
    agent.heartbeat("a-2", health="ok", alerts=[{"level": "warning", "message": "Disk"}])
    with mapp.app_context():
        ids = {i.instance_id: i.id for i in db.session.query(Installation)}
        release = Release(version="1.3.0", channel="stable", manifest={"version": "1.3.0"}, signature="x", key_id="k")
        db.session.add(release)
        db.session.flush()
        rollout = Rollout(kind="core", release_id=release.id, channel="stable", batch_size=1, batches=2, targets=2)
        db.session.add(rollout)
        db.session.flush()
        for iid, status in (("a-1", "succeeded"), ("a-2", "pending")):
            db.session.add(Job(kind="update", rollout_id=rollout.id, release_id=release.id, installation_id=ids[iid],
                               batch=1, status=status))
        first = db.session.query(OutboxEvent).order_by(OutboxEvent.id).first()
        first.status = "dead"
        first.last_error = "HTTP 500"
        second = db.session.query(OutboxEvent).order_by(OutboxEvent.id).offset(1).first()
        second.last_error = "HTTP 502"
        second.attempts = 2
        db.session.commit()
        pending = db.session.query(OutboxEvent).filter_by(status="pending").count()
        oldest = min(e.created_at for e in db.session.query(OutboxEvent).filter_by(status="pending"))

    r = mapp.test_client().get("/metrics", headers=bearer("support"))
    m = parse(r.get_data(as_text=True))
    assert m['cp_installations{health="ok",release_channel="stable"}'] == 2
    assert m['cp_installations{health="degraded",release_channel="be\\"ta\\\\x"}'] == 1
    assert m['cp_installations{health="unknown",release_channel="unknown"}'] == 1
    assert m["cp_installations_total"] == 4
    assert m["cp_installations_stale"] == 2
    assert m["cp_heartbeats_received_total"] == 6
    assert m['cp_alerts_open{level="critical",source="slo"}'] == 1
    assert m['cp_alerts_open{level="critical",source="backup"}'] == 1
    assert m['cp_alerts_open{level="warning",source="agent"}'] == 1
    assert m["cp_outbox_depth"] == pending == m['cp_outbox_events{status="pending"}']
    assert m["cp_outbox_dead_events"] == 1 == m['cp_outbox_events{status="dead"}']
    assert m["cp_outbox_failing_events"] == 1
    assert m["cp_outbox_oldest_pending_age_seconds"] == (clock.now - oldest).total_seconds()
    assert m['cp_rollout_jobs{kind="update",status="succeeded"}'] == 1
    assert m['cp_rollout_jobs{kind="update",status="pending"}'] == 1


def test_metrics_on_an_empty_database(app, client):
    m = parse(client.get("/metrics", headers=bearer("support")).get_data(as_text=True))
    assert m["cp_installations_total"] == 0 and m["cp_installations_stale"] == 0
    assert m["cp_heartbeats_received_total"] == 0 and m["cp_outbox_depth"] == 0
    assert m["cp_outbox_oldest_pending_age_seconds"] == 0


def test_metrics_cost_a_fixed_number_of_queries(mapp, clock):
    import sqlalchemy as sa

    from cp.dbutil import insert

    with mapp.app_context():
        old = clock.now - timedelta(days=1)
        db.session.execute(insert(Installation.__table__), [
            {"instance_id": f"bulk-{i}", "first_seen_at": old, "last_seen_at": old, "heartbeats_total": 3,
             "health": ("ok", "down")[i % 2], "release_channel": "stable"} for i in range(500)])
        db.session.commit()
        engine = db.engine
    statements = []

    def count(*_args):
        statements.append(1)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        r = mapp.test_client().get("/metrics", headers=bearer("support"))
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    m = parse(r.get_data(as_text=True))
    assert m["cp_installations_stale"] == 500 and m["cp_heartbeats_received_total"] == 1500
    assert len(statements) <= 12
