"""A heartbeat costs a fixed number of SQL statements whatever it carries.

Counted with a ``before_cursor_execute`` listener on the app's engine, around one whole signed
request through the test client (the agent gate, the rate limit, the heartbeat, ``pending``):
everything the request sends to the database. Counts are deterministic; times are not (speed
lives in ``bench/``). The numbers below are the budget: a change that adds a statement to the
hot path has to update them on purpose (and ``docs/performance.md`` says why each one is there).
"""
from __future__ import annotations

import pytest
from sqlalchemy import Column, FromClause, Select, event, exists, func, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import visitors

from cp.extensions import db
from cp.models import Alert, JobFailure

SIZES = (0, 1, 50, 200)

# Statements per heartbeat request, by backend (docs/performance.md, "Heartbeats"). The same
# statements on both, one per step: the rate-limit count (on PostgreSQL it also sets the
# transaction's timeouts, ``cp.dbutil.transaction_settings_guard``), the installation updated
# when none of its followed fields changes (it returns what waits for the agent as flags), the
# alert sweep, the job-failure upsert, the SLO point. A first heartbeat finds no row to update,
# looks for one to lock and registers it, looks for rollouts of its channel instead of sweeping,
# and reads what waits for it; new alerts add one INSERT.
BUDGET = {
    "postgresql": {"first": 9, "steady": 5, "churn": 6},
    "sqlite": {"first": 9, "steady": 5, "churn": 6},
}

SLO_ENV = {"SLO_P95_MS_MAX": "1000", "SLO_ERROR_RATE_MAX": "0.05", "SLO_WEBHOOK_RETRY_RATE_MAX": "0.2"}


class StatementCounter:
    def __init__(self, engine):
        self.engine = engine
        self.statements: list[str] = []

    def _record(self, conn, cursor, statement, parameters, context, executemany):
        self.statements.append(statement)

    def __enter__(self) -> "StatementCounter":
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)

    @property
    def count(self) -> int:
        return len(self.statements)


def body(n: int, tag: str = "a", **extra) -> dict:
    return {
        "domain": "acme.com", "client": "Acme SA", "version": "1.2.3", "release_channel": "stable",
        "health": "ok", "backup_status": "ok", "last_backup_at": "2026-11-27T06:00:00Z",
        "alerts": [{"level": ("info", "warning", "critical")[i % 3], "message": f"alert {tag} #{i}"}
                   for i in range(n)],
        "job_failures": [{"queue": f"q{i % 7}", "message": f"failure {tag} #{i}"} for i in range(n)],
        "slo_p95_ms": 420, "slo_error_rate": 0.002, "slo_webhook_retry_rate": 0.01,
        **extra,
    }


@pytest.fixture
def slo_app(make_app):
    return make_app(**SLO_ENV)


@pytest.fixture
def send(slo_app, clock):
    from tests.conftest import Agent

    agent = Agent(slo_app.test_client())
    with slo_app.app_context():
        engine = db.engine

    def do(instance_id: str, payload: dict) -> StatementCounter:
        with StatementCounter(engine) as counter:
            resp = agent.heartbeat(instance_id, **payload)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        clock.advance(seconds=61)  # a minute later, as an agent sends them
        return counter

    return do


def dialect(app) -> str:
    with app.app_context():
        return db.engine.dialect.name


def open_counts(app, instance_id: str) -> tuple[int, int]:
    with app.app_context():
        alerts = db.session.scalar(select(func.count(Alert.id)).where(
            Alert.installation.has(instance_id=instance_id), Alert.resolved_at.is_(None), Alert.source == "agent"))
        failures = db.session.scalar(select(func.count(JobFailure.id)).where(
            JobFailure.installation.has(instance_id=instance_id), JobFailure.resolved_at.is_(None)))
        return alerts, failures


def test_statement_count_does_not_grow_with_alerts_and_failures(slo_app, send):
    first, steady, churn = {}, {}, {}
    for n in SIZES:
        iid = f"stmt-{n:03d}"
        first[n] = send(iid, body(n)).count
        steady[n] = send(iid, body(n)).count
        assert open_counts(slo_app, iid) == (n, n)
        churn[n] = send(iid, body(n, tag="b")).count  # every alert resolved, as many new ones opened
        assert open_counts(slo_app, iid) == (n, 2 * n)
    print(f"\nstatements per heartbeat: first {first}, steady {steady}, churn {churn}")
    # a heartbeat carrying items costs the same whether it carries 1 or 200 of them ...
    assert first[1] == first[50] == first[200]
    assert steady[1] == steady[50] == steady[200]
    assert churn[1] == churn[50] == churn[200]
    # ... and one carrying none costs no more
    assert first[0] <= first[1] and steady[0] <= steady[1] and churn[0] <= churn[1]
    budget = BUDGET[dialect(slo_app)]
    assert (first[200], steady[200], churn[200]) == (budget["first"], budget["steady"], budget["churn"]), (
        first, steady, churn)


def test_rejected_heartbeat_costs_no_more_than_an_accepted_one(slo_app, send):
    """A heartbeat that fails validation rolls back and is counted again on its own (a short
    transaction): still a fixed, small number of statements."""
    from tests.conftest import Agent

    send("stmt-bad", body(1))
    agent = Agent(slo_app.test_client())
    with slo_app.app_context():
        engine = db.engine
    with StatementCounter(engine) as counter:
        resp = agent.heartbeat("stmt-bad", health="sideways", alerts=[{"level": "info", "message": "x"}] * 3)
    assert resp.status_code == 422
    assert counter.count <= BUDGET[dialect(slo_app)]["steady"] + 1, counter.statements


def test_a_timestamped_heartbeat_adds_only_its_nonce(slo_app, send, clock):
    """``x-agent-timestamp`` (replay protection) costs one more statement: the nonce insert."""
    from cp.agent_client import build_request
    from tests.conftest import AGENT_TOKEN

    send("stmt-ts", body(3))
    client = slo_app.test_client()
    with slo_app.app_context():
        engine = db.engine
    req = build_request("/api/heartbeats", {"instance_id": "stmt-ts", **body(3)}, AGENT_TOKEN, timestamp=True,
                        now=clock.now.timestamp())
    with StatementCounter(engine) as counter:
        resp = client.post(req.path, data=req.body, headers=req.headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    nonces = [s for s in counter.statements if "agent_nonces" in s]
    assert len(nonces) == 1
    assert counter.count == BUDGET[dialect(slo_app)]["steady"] + 1, counter.statements


def _shadowed_outer_references(expression, enclosing: tuple = ()) -> list[str]:
    """Columns a subquery takes from an enclosing query although a table of the subquery's own
    FROM (or of a query between the two) has a column of the same name: written without its
    table's name, such a column would resolve to the inner table instead. ``enclosing``: the
    FROM lists of the enclosing queries, outermost first (a table in one of them is correlated
    away from the subqueries, as SQLAlchemy does)."""
    problems: list[str] = []

    def walk(el, scopes: tuple) -> None:
        if isinstance(el, Select):
            outer = {f for scope in scopes for f in scope}
            scopes = scopes + (tuple(f for f in el.get_final_froms() if f not in outer),)
        elif isinstance(el, Column) and isinstance(el.table, FromClause):
            owner = next((i for i, scope in enumerate(scopes) if el.table in scope), None)
            if owner is not None:
                between = [f for scope in scopes[owner + 1:] for f in scope]
                if any(el.name in f.columns for f in between):
                    problems.append(f"{el.table.name}.{el.name}")
            return
        elif isinstance(el, FromClause):
            return  # a table: its columns are not references
        for child in el.get_children():
            walk(child, scopes)

    walk(expression, tuple(tuple(scope) for scope in enclosing))
    return problems


def test_the_steady_update_reads_the_same_on_sqlite():
    """SQLAlchemy's SQLite compiler writes a ``RETURNING`` clause without table names, in its
    subqueries too, so there each column resolves to the innermost table that has one of that
    name. The steady update returns what waits for the agent through such subqueries
    (``cp.fleet.heartbeats._statements``): they stay right as long as no subquery takes a column
    from an enclosing query that one of its own tables also has."""
    from cp.fleet.heartbeats import PENDING_FLAGS, _statements

    touch = _statements("sqlite").touch_unchanged
    returned = [d["expr"] for d in touch.returning_column_descriptions if d["name"] in PENDING_FLAGS]
    assert [c.name for c in returned] == list(PENDING_FLAGS)
    assert "rollouts" in str(returned[0].compile(dialect=sqlite.dialect()))  # the batch rule is in it
    updated = (touch.table,)
    for flag in returned:
        assert _shadowed_outer_references(flag, (updated,)) == [], flag.name
    # the check finds such a column: a job's status compared inside a subquery over rollouts
    from cp.models import Job, Rollout

    jobs, rollouts = Job.__table__, Rollout.__table__
    inner = exists().where(rollouts.c.id == jobs.c.rollout_id, rollouts.c.status == jobs.c.status)
    assert _shadowed_outer_references(exists().where(jobs.c.id == 1, inner)) == ["jobs.status"]
