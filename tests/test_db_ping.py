"""The pool's liveness test (``cp.dbutil.ping_idle_connections``,
``CONTROL_PLANE_DB_PING_IDLE_SECONDS``): a pooled connection that sat idle longer than the
setting is tested before a request uses it, so a connection the server dropped in between
costs no failed request; a connection reused sooner is not tested (no round trip), and if it
turns out dead the request gets a clean 503 and the process reconnects for the next one."""
from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from cp.extensions import db
from tests.conftest import Agent, behind_pgbouncer

# Behind PgBouncer the app's connections go to the pooler, which replaces a dead server
# connection itself (the cluster tests restart the pooler under load instead).
pytestmark = [pytest.mark.postgres_only,
              pytest.mark.skipif(behind_pgbouncer(), reason="a pooler's server connections are its own")]


def _kill_pooled_connection(app, server_url: str) -> int:
    """Check a connection out of the app's pool and back in, then terminate its server process."""
    with app.app_context():
        db.engine.dispose()  # a pool of exactly one connection: the next checkout gets it
        with db.engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        admin.execute("SELECT pg_sleep(0.2)")
    return pid


def _server_url(app) -> str:
    with app.app_context():
        return db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_an_idle_dead_connection_is_replaced_before_the_request(postgres_only, make_app):
    app = make_app(CONTROL_PLANE_DB_PING_IDLE_SECONDS="0")  # every checkout is tested
    agent = Agent(app.test_client())
    assert agent.heartbeat("ping-001", health="ok").status_code == 200
    _kill_pooled_connection(app, _server_url(app))
    resp = agent.heartbeat("ping-001", health="degraded")
    assert resp.status_code == 200, resp.get_json()
    with app.app_context():
        assert db.session.execute(text("SELECT health FROM installations WHERE instance_id = 'ping-001'")
                                  ).scalar_one() == "degraded"


def test_a_recently_used_dead_connection_costs_one_503_then_the_process_reconnects(postgres_only, make_app):
    app = make_app(CONTROL_PLANE_DB_PING_IDLE_SECONDS="3600")  # never tested in this test
    agent = Agent(app.test_client())
    assert agent.heartbeat("ping-002", health="ok").status_code == 200
    _kill_pooled_connection(app, _server_url(app))
    failed = agent.post("/api/updates/next", {"instance_id": "ping-002"})
    assert failed.status_code == 503
    assert failed.get_json()["error"] == "database_unavailable"
    assert "Traceback" not in failed.get_data(as_text=True)
    retried = agent.post("/api/updates/next", {"instance_id": "ping-002"})
    assert retried.status_code == 200, retried.get_json()
    assert retried.get_json() == {"job": None}


def test_a_heartbeat_on_a_dead_connection_is_a_503_that_kept_nothing_then_goes_through(postgres_only, make_app):
    """As any agent request: one 503 (the agent sends it again), nothing of it kept, and the
    next heartbeat on a fresh connection is recorded once."""
    app = make_app(CONTROL_PLANE_DB_PING_IDLE_SECONDS="3600")
    agent = Agent(app.test_client())
    assert agent.heartbeat("ping-003", health="ok").status_code == 200
    _kill_pooled_connection(app, _server_url(app))
    failed = agent.heartbeat("ping-003", health="degraded")
    assert failed.status_code == 503 and failed.get_json()["error"] == "database_unavailable"
    resp = agent.heartbeat("ping-003", health="degraded")
    assert resp.status_code == 200, resp.get_json()
    with app.app_context():
        row = db.session.execute(text("SELECT health, heartbeats_total FROM installations "
                                      "WHERE instance_id = 'ping-003'")).one()
        assert tuple(row) == ("degraded", 2)


@pytest.mark.parametrize("value", ["-1", "soon", "inf"])
def test_the_setting_is_validated(value):
    from config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="CONTROL_PLANE_DB_PING_IDLE_SECONDS"):
        load_settings({"CONTROL_PLANE_DB_PING_IDLE_SECONDS": value})
