"""One heartbeat's failure stays its own, on PostgreSQL with real threads against gunicorn.

- A row another transaction holds: that installation's heartbeat answers 503 once
  CONTROL_PLANE_DB_LOCK_TIMEOUT_MS has passed (not when the holder lets go), while another
  installation's heartbeat, sent during the wait, is answered 200 meanwhile.
- A heartbeat the database refuses fails alone: its neighbours, sent at the same time, are all
  answered 200 and recorded, and nothing of the refused one is kept.
- Many installations at once, each sending its rounds in order: every one ends with exactly
  what its heartbeats say.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import func, select, text

from cp.agent_client import build_request
from cp.extensions import db
from cp.models import Alert, Installation, InstallationEvent, JobFailure
from tests.conftest import AGENT_TOKEN, LiveServer

LOCK_TIMEOUT_MS = 1500


def post_heartbeat(url: str, instance_id: str, session: requests.Session | None = None, **fields):
    req = build_request("/api/heartbeats", {"instance_id": instance_id, **fields}, AGENT_TOKEN, timestamp=True)
    return (session or requests).post(url + req.path, data=req.body, headers=req.headers, timeout=60)


@pytest.fixture
def server(postgres_only, env, app):
    live = LiveServer({**env, "CONTROL_PLANE_DB_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS)}).start()
    yield live
    live.stop()


def test_a_locked_installation_times_out_alone(server, db_engine):
    for iid in ("iso-a", "iso-b"):
        assert post_heartbeat(server.url, iid, health="ok").status_code == 200
    with db_engine.connect() as holder, ThreadPoolExecutor(2) as pool:
        holder.execute(select(Installation.id).where(Installation.instance_id == "iso-a").with_for_update())
        started = time.monotonic()
        a = pool.submit(post_heartbeat, server.url, "iso-a", health="down")
        # B, sent while A waits for the row, is answered while A is still waiting
        b = post_heartbeat(server.url, "iso-b", health="down")
        assert b.status_code == 200, b.text
        assert not a.done()
        resp = a.result(timeout=30)
        waited = time.monotonic() - started
        # A was answered by its own lock timeout, while the holder still held the row
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"] == "database_unavailable"
        assert waited >= LOCK_TIMEOUT_MS / 1000
        holder.rollback()
    with db_engine.connect() as conn:
        health = dict(conn.execute(select(Installation.instance_id, Installation.health)).all())
    assert health == {"iso-a": "ok", "iso-b": "down"}
    # once the row is free again, A's next heartbeat goes through
    assert post_heartbeat(server.url, "iso-a", health="down").status_code == 200


@pytest.fixture
def refusing_database(db_engine):
    """A trigger that makes the database itself refuse a heartbeat whose domain is
    ``refused.example`` (as it refuses a time it cannot hold: SQLSTATE 22008)."""
    with db_engine.begin() as conn:
        conn.execute(text("""
            CREATE FUNCTION test_refuse_domain() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.domain = 'refused.example' THEN
                RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22008';
              END IF;
              RETURN NEW;
            END $$"""))
        conn.execute(text("CREATE TRIGGER test_refuse_domain BEFORE INSERT OR UPDATE ON installations "
                          "FOR EACH ROW EXECUTE FUNCTION test_refuse_domain()"))
    yield
    with db_engine.begin() as conn:
        conn.execute(text("DROP TRIGGER test_refuse_domain ON installations"))
        conn.execute(text("DROP FUNCTION test_refuse_domain()"))


def test_a_heartbeat_the_database_refuses_fails_alone(server, refusing_database, db_engine):
    names = [f"iso-n{n:02d}" for n in range(12)]
    item = {"alerts": [{"level": "warning", "message": "Low disk"}],
            "job_failures": [{"queue": "billing", "message": "Timeout"}]}

    def send(iid: str):
        domain = "refused.example" if iid == "iso-bad" else f"{iid}.example"
        return iid, post_heartbeat(server.url, iid, domain=domain, **item)

    with ThreadPoolExecutor(8) as pool:
        answers = dict(pool.map(send, [*names[:6], "iso-bad", *names[6:]]))
    bad = answers.pop("iso-bad")
    assert 400 <= bad.status_code < 500 and set(bad.json()) == {"error", "message", "details"}, bad.text
    assert {iid: r.status_code for iid, r in answers.items()} == {iid: 200 for iid in names}
    with db_engine.connect() as conn:
        stored = set(conn.scalars(select(Installation.instance_id)))
        alerts = conn.scalar(select(func.count(Alert.id)).where(Alert.source == "agent"))
        failures = conn.scalar(select(func.count(JobFailure.id)))
    assert stored == set(names)
    assert alerts == failures == len(names)


def test_concurrent_heartbeats_are_all_recorded_once(server, app):
    """24 installations at once, 4 rounds each in order, against two gunicorn workers of four
    threads: every installation ends with exactly what its heartbeats say."""
    names = [f"live-{n:02d}" for n in range(24)]
    rounds = 4
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=16))

    def send(iid: str) -> list[int]:
        return [post_heartbeat(server.url, iid, session, health=("ok", "degraded")[rnd % 2],
                               alerts=[{"level": "warning", "message": f"disk round {rnd}"},
                                       {"level": "info", "message": "steady"}],
                               job_failures=[{"queue": "billing", "message": "Timeout"}]).status_code
                for rnd in range(rounds)]

    with ThreadPoolExecutor(16) as pool:
        codes = [c for cs in pool.map(send, names) for c in cs]
    assert codes == [200] * (len(names) * rounds)
    with app.app_context():
        totals = dict(db.session.execute(select(Installation.instance_id, Installation.heartbeats_total)).all())
        assert totals == {n: rounds for n in names}
        open_agent = db.session.execute(select(Alert.message).where(
            Alert.source == "agent", Alert.resolved_at.is_(None))).scalars().all()
        assert sorted(open_agent) == sorted([f"disk round {rounds - 1}", "steady"] * len(names))
        occurrences = db.session.scalars(select(JobFailure.occurrences)).all()
        assert occurrences == [rounds] * len(names)
        # health flips every round after the first
        assert db.session.scalar(select(func.count(InstallationEvent.id))) == len(names) * (rounds - 1)
