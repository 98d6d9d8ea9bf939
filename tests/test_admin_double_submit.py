"""Every bulk action of the panel runs once per form: the list's action form carries a one-time
``submission`` token that ``SecureModelView.run_action`` records in the action's transaction, so
the same form posted twice (a double click, a resent request) changes nothing the second time."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from cp.extensions import db
from cp.models import RestoreVerification, Rollout
from tests.conftest import bearer, csrf_token_from, login
from tests.rollout_helpers import env, fleet, publish, rollout  # noqa: F401  (env: the release key)

UNTRACKED = {"audit_log", "agent_nonces", "login_sessions", "rate_limit_buckets"}
SUBMISSION_RE = re.compile(r'name="submission" type="hidden" value="([^"]+)"|name="submission" value="([^"]+)"')


def db_state(app) -> dict[str, list]:
    """Every row of every table a panel action can change."""
    with app.app_context():
        state = {}
        for table in db.metadata.sorted_tables:
            if table.name not in UNTRACKED:
                rows = db.session.execute(sa.select(table)).all()
                state[table.name] = sorted(tuple(str(v) for v in row) for row in rows)
        db.session.remove()
    return state


def _seed_rollout(client, agent, paused: bool = False) -> list[int]:
    fleet(agent, 4)
    publish(client, "1.3.0")
    rid = rollout(client, batch_size=2).get_json()["id"]
    if paused:
        client.post(f"/api/rollouts/{rid}/pause", json={}, headers=bearer("admin"))
    return [rid]


def _seed_alerts(client, agent) -> list[int]:
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"},
                                        {"level": "critical", "message": "Mail queue stuck"}],
                    job_failures=[{"queue": "billing", "message": "Timeout"}])
    return [1, 2]


def _seed_installations(client, agent) -> list[int]:
    fleet(agent, 3)
    return [1, 2, 3]


CASES = [  # (screen, action, seed)
    ("rollouts", "advance", _seed_rollout),
    ("rollouts", "advance_force", _seed_rollout),
    ("rollouts", "pause", _seed_rollout),
    ("rollouts", "resume", lambda c, a: _seed_rollout(c, a, paused=True)),
    ("rollouts", "retry", _seed_rollout),
    ("rollouts", "cancel", _seed_rollout),
    ("alerts", "acknowledge", _seed_alerts),
    ("alerts", "resolve", _seed_alerts),
    ("job_failures", "resolve", lambda c, a: _seed_alerts(c, a)[:1]),
    ("installations", "schedule_restore", _seed_installations),
    ("plugin_requests", "approve", lambda c, a: [1]),
    ("outbox", "retry", lambda c, a: [1]),
]


def _submit_twice(client, screen: str, action: str, ids: list[int]):
    page = client.get(f"/admin/{screen}/").get_data(as_text=True)
    match = SUBMISSION_RE.search(page)
    assert match, f"no submission token on /admin/{screen}/"
    form = {"action": action, "rowid": [str(i) for i in ids], "csrf_token": csrf_token_from(page),
            "submission": next(g for g in match.groups() if g)}
    first = client.post(f"/admin/{screen}/action/", data=form, follow_redirects=True)
    return first, form


@pytest.mark.parametrize("screen,action,seed", CASES, ids=[f"{s}.{a}" for s, a, _ in CASES])
def test_a_bulk_action_form_submitted_twice_runs_once(app, client, agent, screen, action, seed):
    ids = seed(client, agent)
    login(client, "admin")
    first, form = _submit_twice(client, screen, action, ids)
    assert first.status_code == 200 and "already submitted" not in first.get_data(as_text=True)
    after_first = db_state(app)
    second = client.post(f"/admin/{screen}/action/", data=form, follow_redirects=True)
    assert second.status_code == 200
    assert "already submitted" in second.get_data(as_text=True)
    assert db_state(app) == after_first
    # a fresh form (a new page load) runs again: the token, not the action, is what is refused
    again, _ = _submit_twice(client, screen, action, ids)
    assert "already submitted" not in again.get_data(as_text=True)


def test_a_double_submitted_bulk_advance_opens_one_batch(app, client, agent):
    (rid,) = _seed_rollout(client, agent)
    login(client, "admin")
    _first, form = _submit_twice(client, "rollouts", "advance", [rid])
    client.post("/admin/rollouts/action/", data=form)
    with app.app_context():
        assert db.session.get(Rollout, rid).current_batch == 2
        db.session.remove()


def test_a_double_submitted_restore_schedule_creates_one_verification_each(app, client, agent):
    ids = _seed_installations(client, agent)
    login(client, "admin")
    _first, form = _submit_twice(client, "installations", "schedule_restore", ids)
    client.post("/admin/installations/action/", data=form)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(RestoreVerification)) == 3
        db.session.remove()


def test_a_double_submitted_reject_form_runs_once(app, client, agent):
    login(client, "admin")
    page = client.get("/admin/plugin_requests/reject/?ids=1").get_data(as_text=True)
    match = SUBMISSION_RE.search(page)
    assert match
    form = {"ids": "1", "reason": "not for you", "csrf_token": csrf_token_from(page),
            "submission": next(g for g in match.groups() if g)}
    client.post("/admin/plugin_requests/reject/", data=form)
    second = client.post("/admin/plugin_requests/reject/", data=form, follow_redirects=True)
    assert "already submitted" in second.get_data(as_text=True)
