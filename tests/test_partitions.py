"""The time-partitioned history on PostgreSQL (migration 0011, ``cp.background.partitions``):
rows land in their partition through the parent's name, the worker's prune creates partitions
ahead and drops expired ones (moving rows out of the default partition first), reads are
unchanged, and the migration goes up and down keeping every row."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy import text

from cp.background import partitions, sweeps
from cp.extensions import db
from cp.fleet import history
from tests.conftest import Agent

pytestmark = [pytest.mark.postgres_only, pytest.mark.usefixtures("postgres_only")]

T0 = datetime(2031, 3, 1, 12, 0, tzinfo=timezone.utc)  # far from the other tests' dates


def where(app, table: str) -> list[tuple]:
    """``(partition, timestamp column)`` of every row of a history table, oldest first."""
    spec = {s.table: s for s in partitions.PARTITIONED}[table]
    with app.app_context():
        rows = db.session.execute(text(
            f"SELECT tableoid::regclass::text, {spec.column} FROM {table} ORDER BY {spec.column}")).all()
        db.session.remove()
    return [tuple(r) for r in rows]


def names(app, spec: partitions.Partitioned) -> set[str]:
    with app.app_context():
        out = set(partitions.partitions(db.session.connection(), spec))
        db.session.remove()
    return out


def run(app, fn, *args):
    with app.app_context():
        out = fn(*args)
        db.session.remove()
    return out


def test_history_tables_are_partitioned_and_rows_land_in_their_partition(app, clock):
    clock.now = datetime.now(timezone.utc)
    agent = Agent(app.test_client())
    assert agent.heartbeat("p-1", health="ok", slo_p95_ms=120).status_code == 200
    assert agent.heartbeat("p-1", health="degraded", slo_p95_ms=480).status_code == 200
    day, month = clock.now.strftime("%Y%m%d"), clock.now.strftime("%Y%m")
    assert [p for p, _ in where(app, "slo_samples")] == [f"slo_samples_p{day}"]
    assert [p for p, _ in where(app, "installation_events")] == [f"installation_events_p{month}"]
    with app.app_context():
        conn = db.session.connection()
        assert all(partitions.is_partitioned(conn, s.table) for s in partitions.PARTITIONED)
        db.session.remove()


def test_prune_creates_partitions_ahead_and_drops_expired_ones(make_app, clock):
    app = make_app(CONTROL_PLANE_EVENT_RETENTION_DAYS="20")
    agent = Agent(app.test_client())
    clock.now = T0
    assert agent.heartbeat("p-2", health="ok", slo_p95_ms=100).status_code == 200
    assert agent.heartbeat("p-2", health="down", slo_p95_ms=200).status_code == 200
    # no partition for these dates yet: the rows wait in the default partitions
    assert where(app, "slo_samples") == [("slo_samples_default", T0)]
    assert [p for p, _ in where(app, "installation_events")] == ["installation_events_default"]

    pruned = run(app, sweeps.prune_all, T0)
    assert pruned["slo_samples"] == 0 and pruned["installation_events"] == 0
    days = {f"slo_samples_p{(T0 + timedelta(days=d)):%Y%m%d}" for d in range(8)}  # today and 7 ahead
    assert days <= names(app, partitions.SLO_SAMPLES)
    assert {"installation_events_p203103", "installation_events_p203104", "installation_events_p203105"} <= names(
        app, partitions.INSTALLATION_EVENTS)
    assert where(app, "slo_samples") == [("slo_samples_p20310301", T0)]  # moved out of the default
    assert [p for p, _ in where(app, "installation_events")] == ["installation_events_p203103"]

    clock.now = T0 + timedelta(days=1)
    assert agent.heartbeat("p-2", slo_p95_ms=300).status_code == 200
    assert where(app, "slo_samples")[-1] == ("slo_samples_p20310302", clock.now)

    # 30 days of SLO history: the day of T0 is wholly past it 31 days later, the next one is not
    later = T0 + timedelta(days=31, hours=1)
    pruned = run(app, sweeps.prune_all, later)
    assert pruned["slo_samples"] == 1
    assert "slo_samples_p20310301" not in names(app, partitions.SLO_SAMPLES)
    assert f"slo_samples_p{later + timedelta(days=7):%Y%m%d}" in names(app, partitions.SLO_SAMPLES)
    assert where(app, "slo_samples") == [("slo_samples_p20310302", T0 + timedelta(days=1))]
    # 20 days of events: March is wholly past it on 21 April
    assert pruned["installation_events"] == 0
    pruned = run(app, sweeps.prune_all, datetime(2031, 4, 21, 1, 0, tzinfo=timezone.utc))
    assert pruned["installation_events"] == 1
    assert "installation_events_p203103" not in names(app, partitions.INSTALLATION_EVENTS)
    assert where(app, "installation_events") == []
    assert run(app, sweeps.prune_all, datetime(2031, 4, 21, 1, 0, tzinfo=timezone.utc))["slo_samples"] == 0


def test_history_reads_span_partitions_unchanged(app, clock):
    agent = Agent(app.test_client())
    start = T0 + timedelta(days=40)
    run(app, sweeps.prune_all, start)  # the partitions of these days
    points = []
    for k in range(6):
        clock.now = start + timedelta(hours=10, minutes=30 * k)  # 22:00 .. 23:30, then 00:00 and 00:30
        assert agent.heartbeat("p-3", slo_p95_ms=100 + k, health="ok" if k % 2 else "degraded").status_code == 200
        points.append((clock.now, 100.0 + k))
    crossing = {p for p, _ in where(app, "slo_samples")}
    assert len(crossing) == 2  # the points sit in two daily partitions
    with app.app_context():
        installation_id = db.session.execute(text("SELECT id FROM installations WHERE instance_id = 'p-3'")).scalar()
        pictures = history.installation_pictures(installation_id, "24h", now=clock.now)
        db.session.remove()
    p95 = next(s for s in pictures["slo"] if s.figure == "slo_p95_ms")
    assert [(at, v) for at, v in p95.points if v is not None] == points
    heartbeat_lane = [e for e in pictures["events"] if e.lane == "heartbeat"]
    assert len(heartbeat_lane) == 5  # every health change, read across the partitions
    resp = app.test_client().get("/installations/p-3?window=24h")
    assert resp.status_code in (200, 302)


def _rows(conn, table: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]


def test_0011_moves_the_rows_up_and_down(make_app, fresh_database_url):
    from flask_migrate import downgrade, upgrade

    app = make_app(CONTROL_PLANE_DATABASE_URL=fresh_database_url)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with app.app_context():
        upgrade(revision="0010")
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO installations (id, instance_id, first_seen_at, last_seen_at, "
                              "heartbeats_total) VALUES (1, 'm-1', :now, :now, 1)"), {"now": now})
            for days in (45, 2, 0):
                at = now - timedelta(days=days)
                conn.execute(text("INSERT INTO slo_samples (installation_id, bucket, slo_p95_ms) VALUES (1, :at, :v)"),
                             {"at": at, "v": days})
                conn.execute(text("INSERT INTO installation_events (installation_id, field, old_value, new_value, at) "
                                  "VALUES (1, 'health', 'ok', 'down', :at)"), {"at": at})
            before = {t: _rows(conn, t) for t in ("slo_samples", "installation_events")}

        upgrade()
        with db.engine.begin() as conn:
            assert all(partitions.is_partitioned(conn, s.table) for s in partitions.PARTITIONED)
            assert {t: _rows(conn, t) for t in before} == before
            located = conn.execute(text("SELECT tableoid::regclass::text FROM slo_samples ORDER BY id")).scalars().all()
            assert located == [f"slo_samples_p{(now - timedelta(days=d)):%Y%m%d}" for d in (45, 2, 0)]
            new_id = conn.execute(text("INSERT INTO slo_samples (installation_id, bucket) VALUES (1, :at) "
                                       "RETURNING id"), {"at": now + timedelta(minutes=5)}).scalar()
            assert new_id > max(r[0] for r in before["slo_samples"])  # the sequence goes on
            after = {t: _rows(conn, t) for t in before}
        inspector = sa.inspect(db.engine)
        assert {c["name"] for c in inspector.get_columns("slo_samples")} >= {"id", "bucket"}

        downgrade(revision="0010")
        with db.engine.begin() as conn:
            assert not any(partitions.is_partitioned(conn, s.table) for s in partitions.PARTITIONED)
            assert {t: _rows(conn, t) for t in before} == after
            assert not conn.execute(text("SELECT count(*) FROM pg_class WHERE relname LIKE 'slo_samples_p%'")).scalar()
        upgrade()
        with db.engine.begin() as conn:
            assert {t: _rows(conn, t) for t in before} == after
        db.engine.dispose()
