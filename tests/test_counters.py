"""The exact counters (``cp.counters``, migration 0010): after every kind of change to alerts and
rollout jobs, the counters equal a fresh ``COUNT(*)`` of the rows, the API answers with those
figures, compaction keeps them, and (PostgreSQL) concurrent writers on a live server and a
concurrent compaction lose nothing."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
import sqlalchemy as sa
from sqlalchemy import case, func, select

from cp import counters
from cp.background import sweeps
from cp.extensions import db
from cp.fleet import alerts as alert_domain, dashboard
from cp.models import Alert, CounterDelta, Installation, Job
from tests.conftest import bearer
from tests.rollout_helpers import (  # noqa: F401  (env and server are fixtures)
    action,
    agent_for,
    beat,
    env,
    fleet,
    next_job,
    parallel,
    publish,
    report,
    rollout,
    server,
)

KEYS = ("counter", "scope_id", "batch", "status", "level", "source", "acknowledged", "channel")


def true_counts() -> dict[tuple, int]:
    """Every counter key -> COUNT(*) of the rows it counts, straight from the counted tables."""
    empty, no = sa.literal(""), sa.literal(False)
    alert_key = (sa.literal("alerts"), sa.literal(0), sa.literal(0),
                 case((Alert.resolved_at.is_(None), "open"), else_="resolved"), Alert.level, Alert.source,
                 Alert.acknowledged_at.is_not(None), empty)
    job_key = (sa.literal("jobs"), Job.rollout_id, func.coalesce(Job.batch, 0), Job.status, empty, empty, no, empty)
    inst_key = (sa.literal("installations"), sa.literal(0), sa.literal(0), func.coalesce(Installation.health, ""),
                empty, empty, no, func.coalesce(Installation.release_channel, ""))
    out = {}
    for key, where in ((alert_key, sa.true()), (job_key, Job.rollout_id.is_not(None)), (inst_key, sa.true())):
        for row in db.session.execute(select(*key, func.count()).where(where).group_by(*key)):
            out[tuple(row[:-1])] = row[-1]
    return {normal(k): n for k, n in out.items()}


def normal(key) -> tuple:
    return tuple(key[:6]) + (bool(key[6]), key[7])


def counter_counts() -> dict[tuple, int]:
    cols = [CounterDelta.__table__.c[k] for k in KEYS]
    rows = db.session.execute(select(*cols, func.sum(CounterDelta.delta)).group_by(*cols)).all()
    return {normal(r[:-1]): int(r[-1]) for r in rows if r[-1]}


def assert_exact(app) -> dict[tuple, int]:
    with app.app_context():
        truth, kept = true_counts(), counter_counts()
        db.session.remove()
    assert kept == truth
    return truth


def alerts_total(client, **params) -> int:
    resp = client.get("/api/alerts", query_string={"limit": 1, **params}, headers=bearer("support"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["total"]


def alert_ids(client, **params) -> list[int]:
    resp = client.get("/api/alerts", query_string={"limit": 200, **params}, headers=bearer("support"))
    return [a["id"] for a in resp.get_json()["items"]]


def test_alert_counts_stay_exact_through_every_change(app, client, agent):
    disk = {"level": "warning", "message": "Low disk"}
    queue = {"level": "critical", "message": "Queue stuck"}
    beat(agent, "a-1", alerts=[disk, queue], backup_status="failed")  # two agent alerts and a backup one
    beat(agent, "a-2", alerts=[disk])
    assert_exact(app)
    assert alerts_total(client, status="open") == 4
    assert alerts_total(client, status="open", level="critical") == 2
    assert alerts_total(client, status="open", source="agent") == 3
    assert alerts_total(client, status="resolved") == 0

    beat(agent, "a-1", alerts=[disk, queue], backup_status="failed")  # seen again: nothing changes
    assert alerts_total(client, status="open") == 4

    first = alert_ids(client, instance_id="a-2")[0]
    assert client.post(f"/api/alerts/{first}/acknowledge", headers=bearer("ops")).status_code == 200
    assert client.post(f"/api/alerts/{first}/acknowledge", headers=bearer("ops")).status_code == 200  # no-op
    assert_exact(app)
    with app.app_context():  # the pages' filter on acknowledgement
        assert counters.alert_count(status="open", acknowledged=True) == 1
        assert counters.alert_count(status="open", acknowledged=False) == 3
        db.session.remove()

    assert client.post(f"/api/alerts/{first}/resolve", headers=bearer("ops")).status_code == 200
    assert_exact(app)
    assert (alerts_total(client, status="open"), alerts_total(client, status="resolved")) == (3, 1)

    beat(agent, "a-2", alerts=[disk])  # still reported: opens again as a new alert
    beat(agent, "a-1", alerts=[disk], backup_status="ok", health="down")  # queue and backup alerts resolve
    assert_exact(app)
    assert (alerts_total(client, status="open"), alerts_total(client, status="resolved")) == (2, 3)
    assert alerts_total(client) == 5
    assert alerts_total(client, instance_id="a-1", status="open") == 1  # counted on its rows

    with app.app_context():  # the control plane's own alerts, and an installation deleted
        a1 = db.session.scalars(select(Installation).where(Installation.instance_id == "a-1")).one()
        alert_domain.open_alert(a1, level="critical", source="restore", fingerprint="restore:x", message="Restore")
        db.session.commit()
        alert_domain.bulk_acknowledge([a.id for a in db.session.scalars(select(Alert))], by="ops")
        db.session.commit()
        alert_domain.bulk_resolve(alert_ids(client, instance_id="a-1", status="open"), by="ops")
        db.session.commit()
        db.session.remove()
    assert_exact(app)
    with app.app_context():
        db.session.execute(sa.delete(Installation).where(Installation.instance_id == "a-2"))
        db.session.commit()
        db.session.remove()
    truth = assert_exact(app)
    assert alerts_total(client) == sum(n for k, n in truth.items() if k[0] == "alerts") == 4
    with app.app_context():  # the dashboard's fleet figures: one installation left, down
        board = dashboard.build()
        assert (board.total, dict(board.by_health), board.by_channel) == (
            1, {"ok": 0, "degraded": 0, "down": 1}, [("stable", 1)])
        assert board.open_by_level == {} and alerts_total(client, status="open") == 0  # all resolved above
        db.session.remove()


def rollout_jobs(client, rollout_id: int) -> dict:
    resp = client.get(f"/api/rollouts/{rollout_id}", headers=bearer("support"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def test_job_counts_stay_exact_through_every_transition(app, client, agent):
    ids = fleet(agent, 7)
    publish(client, "1.3.0")
    resp = rollout(client, batch_size=3, max_failures=5)
    assert resp.status_code == 201
    rid = resp.get_json()["id"]
    assert_exact(app)
    body = rollout_jobs(client, rid)
    assert body["jobs"] == {"pending": 7, "in_progress": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert [b["jobs"]["pending"] for b in body["per_batch"]] == [3, 3, 1]

    jobs = {iid: next_job(agent, iid) for iid in ids[:3]}  # batch 1: pending -> in_progress
    assert_exact(app)
    assert report(agent, ids[0], jobs[ids[0]]["id"], "succeeded").status_code == 200
    assert report(agent, ids[1], jobs[ids[1]]["id"], "failed", "disk full").status_code == 200
    assert report(agent, ids[1], jobs[ids[1]]["id"], "failed", "disk full").status_code == 200  # repeated
    assert_exact(app)
    assert rollout_jobs(client, rid)["jobs"] == {"pending": 4, "in_progress": 1, "succeeded": 1, "failed": 1,
                                                 "cancelled": 0}

    assert action(client, rid, "retry").status_code == 200  # failed -> pending
    assert_exact(app)
    assert action(client, rid, "advance", {"force": True}).status_code == 200
    beat(agent, ids[4], channel="beta")  # leaves the channel: its pending job is cancelled
    beat(agent, "late-1")  # joins the channel: a new job in the last batch
    beat(agent, ids[4], channel="stable")  # back: its job is pending again, in the last batch
    assert_exact(app)
    body = rollout_jobs(client, rid)
    assert body["jobs"]["pending"] == 6 and sum(body["jobs"].values()) == 8
    assert [sum(b["jobs"].values()) for b in body["per_batch"]] == [3, 2, 3]  # it came back in the last batch

    assert action(client, rid, "cancel").status_code == 200
    truth = assert_exact(app)
    body = rollout_jobs(client, rid)
    assert body["jobs"] == {"pending": 0, "in_progress": 1, "succeeded": 1, "failed": 0, "cancelled": 6}
    by_status: Counter = Counter()
    for (counter, _rollout, _batch, status, *_rest), n in truth.items():
        by_status[status] += n if counter == "jobs" else 0
    assert {s: n for s, n in body["jobs"].items() if n} == +by_status

    with app.app_context():  # the dashboard and the panel's rollout screens read the same counters
        assert dashboard.rollout_batches([rid])[rid] == {1: {"in_progress": 1, "succeeded": 1, "cancelled": 1},
                                                         2: {"cancelled": 2}, 3: {"cancelled": 3}}
        db.session.remove()


def test_compaction_folds_rows_and_keeps_counts(app, client, agent):
    ids = fleet(agent, 4)
    publish(client, "1.3.0")
    rid = rollout(client, batch_size=4).get_json()["id"]
    for iid in ids:
        job = next_job(agent, iid)
        assert report(agent, iid, job["id"], "succeeded").status_code == 200
        beat(agent, iid, alerts=[{"level": "warning", "message": "Low disk"}])
        beat(agent, iid, alerts=[])
    truth = assert_exact(app)
    with app.app_context():
        before = db.session.scalar(select(func.count()).select_from(CounterDelta))
        folded = sweeps.compact_counters()
        after = db.session.scalar(select(func.count()).select_from(CounterDelta))
        assert folded == before > after == len(truth)  # one row per key left, none for a zero
        assert sweeps.compact_counters() == 0  # nothing left to fold
        assert counters.job_counts([rid])[rid]["succeeded"] == 4
        db.session.remove()
    assert assert_exact(app) == truth
    assert alerts_total(client, status="resolved") == 4
    beat(agent, ids[0], alerts=[{"level": "warning", "message": "Low disk"}])  # and counting goes on
    assert alerts_total(client, status="open") == 1
    assert_exact(app)


def test_worker_sweep_compacts(app, client, agent):
    beat(agent, "w-1", alerts=[{"level": "warning", "message": "Low disk"}])
    beat(agent, "w-1", alerts=[])
    with app.app_context():
        assert sweeps.run_sweeps()["counters"] > 0
        # one row per key: the resolved alert, the installation
        assert db.session.scalar(select(func.count()).select_from(CounterDelta)) == 2
        db.session.remove()
    assert alerts_total(client, status="resolved") == 1


@pytest.mark.postgres_only
@pytest.mark.live
def test_concurrent_writers_and_compaction_stay_exact(app, client, agent, server):
    """Agents on a live server open and resolve alerts and run their jobs while the same rows are
    acknowledged by hand and a compaction loops: no request fails, and the counters are exact."""
    ids = fleet(agent, 24)
    publish(client, "1.3.0")
    rid = rollout(client, batch_size=24).get_json()["id"]
    stop = threading.Event()
    compactions = []

    def compact_loop():
        with app.app_context():
            while not stop.is_set():
                compactions.append(sweeps.compact_counters())
            db.session.remove()

    def work(iid):
        a = agent_for(server, iid)
        for i in range(4):
            a.heartbeat(version="1.2.0", release_channel="stable",
                        alerts=[{"level": "warning", "message": f"m{i % 2}"}])
        job = a.next_update()["job"]
        status, _ = a.post("/api/updates/report", {"job_id": job["id"], "status": "succeeded"},
                           raise_for_status=False)
        a.heartbeat(version="1.3.0", release_channel="stable", alerts=[])
        return status

    def acknowledge(_):
        with app.app_context():
            open_ids = db.session.scalars(select(Alert.id).where(Alert.resolved_at.is_(None))).all()
            n = alert_domain.bulk_acknowledge(list(open_ids), by="ops")
            db.session.commit()
            db.session.remove()
        return n

    compactor = threading.Thread(target=compact_loop)
    compactor.start()
    try:
        results = parallel(lambda x: work(x) if isinstance(x, str) else acknowledge(x), ids + list(range(8)),
                           threads=16)
    finally:
        stop.set()
        compactor.join()
    assert results[:len(ids)] == [200] * len(ids)
    assert any(compactions)
    truth = assert_exact(app)
    assert sum(n for k, n in truth.items() if k[0] == "alerts" and k[3] == "resolved") == 24 * 4
    assert rollout_jobs(client, rid)["jobs"]["succeeded"] == 24


def test_0010_backfills_the_counters_and_downgrades(make_app, fresh_database_url):
    from flask_migrate import downgrade, upgrade

    app = make_app(CONTROL_PLANE_DATABASE_URL=fresh_database_url)
    now = sa.literal_column("CURRENT_TIMESTAMP")
    with app.app_context():
        upgrade(revision="0009")
        with db.engine.begin() as conn:  # rows written before the counters existed
            for i, health in ((1, "ok"), (2, "down"), (3, None)):
                conn.execute(sa.insert(Installation.__table__).values(
                    id=i, instance_id=f"m-{i}", health=health, release_channel="stable", first_seen_at=now,
                    last_seen_at=now, heartbeats_total=1))
            conn.execute(sa.text(
                "INSERT INTO alerts (installation_id, level, source, fingerprint, message, opened_at, last_seen_at, "
                "occurrences, resolved_at) VALUES (1, 'warning', 'agent', 'f1', 'm', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP, 1, NULL), (2, 'critical', 'slo', 'f2', 'm', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP, 1, CURRENT_TIMESTAMP)"))
            conn.execute(sa.text(
                "INSERT INTO releases (id, version, manifest, signature, key_id, created_at) "
                "VALUES (1, '1.3.0', '{}', 's', 'k1', CURRENT_TIMESTAMP)"))
            conn.execute(sa.text(
                "INSERT INTO rollouts (id, kind, release_id, channel, batch_size, status, current_batch, batches, "
                "targets, skipped, allow_downgrade, created_at) "
                "VALUES (1, 'core', 1, 'stable', 2, 'active', 1, 2, 3, 0, false, CURRENT_TIMESTAMP)"))
            conn.execute(sa.text(
                "INSERT INTO jobs (kind, rollout_id, release_id, installation_id, batch, position, status, attempts, "
                "created_at, updated_at) VALUES ('update', 1, 1, 1, 1, 0, 'succeeded', 1, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP), ('update', 1, 1, 2, 1, 1, 'pending', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), "
                "('update', 1, 1, 3, 2, 2, 'pending', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))

        upgrade(revision="0010")
        truth = true_counts()
        assert counter_counts() == truth and len(truth) == 8  # 2 alert, 3 job, 3 installation keys
        assert counters.job_counts([1])[1]["pending"] == 2 and counters.alert_count(status="open") == 1
        db.session.execute(sa.delete(Installation).where(Installation.id == 3))  # counted from here on
        db.session.commit()
        assert counter_counts() == true_counts()
        db.session.remove()

        downgrade(revision="0009")
        assert "counter_deltas" not in sa.inspect(db.engine).get_table_names()
        with db.engine.begin() as conn:  # no trigger left behind: writes still work
            conn.execute(sa.text("UPDATE jobs SET status = 'cancelled'"))
            conn.execute(sa.text("DELETE FROM alerts"))
        upgrade(revision="0010")
        assert counter_counts() == true_counts()
        db.session.remove()
        db.engine.dispose()
