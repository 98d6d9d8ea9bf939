"""An acknowledged heartbeat survives a crash of the database server.

A PostgreSQL server of the test's own serves gunicorn; heartbeats with alerts and job failures
are answered 200; the server is then stopped as a crash does (``pg_ctl stop -m immediate``),
restarted, and everything acknowledged is read back. With the documented opt-out
(CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT=0) and a WAL writer that waits long, the same crash
loses them: the proof that the test can tell the two apart.
"""
from __future__ import annotations

import pytest
import requests
import sqlalchemy as sa

from cp import create_app
from cp.agent_client import build_request
from cp.extensions import db
from tests import pg_cluster
from tests.conftest import AGENT_TOKEN, LiveServer, base_env, free_port

pytestmark = pytest.mark.live
NAMES = ("crash-1", "crash-2", "crash-3")


@pytest.fixture
def cluster():
    why = pg_cluster.available()
    if why:
        pytest.skip(why)
    # a WAL writer that waits 10 s: a commit that does not flush its WAL itself stays in memory
    server = pg_cluster.Cluster(free_port(), {"wal_writer_delay": "10000ms"}).start()
    yield server
    server.remove()


def migrate(url: str, instance_path: str) -> None:
    from flask_migrate import upgrade

    app = create_app(base_env(url, instance_path))
    with app.app_context():
        upgrade()
        db.engine.dispose()


def stored(url: str) -> dict:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                "installations": sorted(conn.scalars(sa.text("SELECT instance_id FROM installations"))),
                "alerts": sorted(conn.execute(sa.text(
                    "SELECT i.instance_id, a.message FROM alerts a JOIN installations i ON i.id = a.installation_id "
                    "WHERE a.source = 'agent'")).all()),
                "failures": sorted(conn.execute(sa.text(
                    "SELECT i.instance_id, f.queue, f.message FROM job_failures f "
                    "JOIN installations i ON i.id = f.installation_id")).all()),
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("synchronous_commit, kept", [("1", True), ("0", False)], ids=["default", "opt-out"])
def test_acknowledged_heartbeats_survive_an_immediate_stop(cluster, tmp_path, synchronous_commit, kept):
    migrate(cluster.url, str(tmp_path))
    env = {**base_env(cluster.url, str(tmp_path)), "CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT": synchronous_commit}
    server = LiveServer(env, workers=1).start()
    try:
        for iid in NAMES:
            req = build_request("/api/heartbeats", {
                "instance_id": iid, "health": "degraded",
                "alerts": [{"level": "critical", "message": f"{iid} disk full"}],
                "job_failures": [{"queue": "billing", "message": f"{iid} timeout"}]}, AGENT_TOKEN)
            resp = requests.post(server.url + req.path, data=req.body, headers=req.headers, timeout=30)
            assert resp.status_code == 200, resp.text
        cluster.stop("immediate")  # right after the answers: a crash of the database server
    finally:
        server.stop()
    cluster.start()  # recovery replays the WAL
    expected = {
        "installations": list(NAMES),
        "alerts": [(iid, f"{iid} disk full") for iid in NAMES],
        "failures": [(iid, "billing", f"{iid} timeout") for iid in NAMES],
    }
    got = stored(cluster.url)
    if kept:
        assert got == expected
    else:
        assert got != expected  # the opt-out acknowledged what the crash then lost
