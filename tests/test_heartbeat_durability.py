"""A 200 to a heartbeat means it is on disk: PostgreSQL commits it synchronously unless the
operator opts out (CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT=0); the opt-out and the lock and
statement timeouts are set for the heartbeat's own transaction only (``SET LOCAL``)."""
from __future__ import annotations

import pytest
from sqlalchemy import event, func, select

from cp.extensions import db
from cp.models import Installation
from tests.conftest import Agent


@pytest.fixture
def commit_modes():
    """``app -> list``: the ``synchronous_commit``, ``lock_timeout`` and ``statement_timeout`` in
    force at each COMMIT of the app's engine,
    read in the committing transaction itself (SQLAlchemy's ``commit`` event runs just before it)."""
    seen: list[str] = []
    engines = []

    def on_commit(conn):
        seen.append(conn.exec_driver_sql(
            "SELECT current_setting('synchronous_commit') || ' ' || current_setting('lock_timeout') || ' '"
            " || current_setting('statement_timeout')").scalar())

    def watch(app):
        with app.app_context():
            engines.append(db.engine)
        event.listen(engines[-1], "commit", on_commit)
        return seen

    yield watch
    for engine in engines:
        event.remove(engine, "commit", on_commit)


@pytest.mark.parametrize("setting, expected", [
    ({}, "on 1s 5s"),
    ({"CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT": "1", "CONTROL_PLANE_DB_LOCK_TIMEOUT_MS": "250"},
     "on 250ms 5s"),
    ({"CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT": "0", "CONTROL_PLANE_DB_STATEMENT_TIMEOUT_MS": "2500"},
     "off 1s 2500ms"),
])
def test_heartbeats_commit_durably_unless_the_operator_opts_out_and_carry_their_timeouts(
        postgres_only, make_app, commit_modes, setting, expected):
    app = make_app(**setting)
    seen = commit_modes(app)
    agent = Agent(app.test_client())
    assert agent.heartbeat("commit-mode-1", health="ok").status_code == 200  # registers it
    assert agent.heartbeat("commit-mode-1", health="down").status_code == 200  # steady state, one change
    heartbeats = list(seen)
    assert heartbeats == [expected] * 2
    with app.app_context():  # any other transaction on the same pooled connections: the server's defaults
        db.session.execute(select(func.count()).select_from(Installation))
        db.session.commit()
    assert seen[len(heartbeats):] == ["on 0 0"]
