"""The rollout engine under real concurrency: many threads against gunicorn (several worker
processes) on PostgreSQL. Each test asserts its invariants in the database afterwards: a job
is handed out once, no report is lost, one click advances once, one rollout per channel."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from cp.models import Alert, Installation, InstallationEvent, Job, Rollout
from tests.conftest import bearer
from tests.rollout_helpers import (  # noqa: F401  (env and server are fixtures)
    THREADS,
    admin_post,
    agent_for,
    beat,
    env,
    parallel,
    publish,
    query,
    release_body,
    server,
)

pytestmark = [pytest.mark.postgres_only, pytest.mark.live]


def install_fleet(agent, client, n: int, channel: str = "conc", version: str = "1.3.0") -> list[str]:
    ids = [f"c-{i:04d}" for i in range(n)]
    for iid in ids:
        beat(agent, iid, "1.2.0", channel)
    publish(client, version, channel)
    return ids


def test_each_job_is_handed_out_once_and_no_report_is_lost(app, client, agent, server):
    ids = install_fleet(agent, client, 60)
    resp = client.post("/api/rollouts", json={"release": "1.3.0", "channel": "conc", "batch_size": 60},
                       headers=bearer("admin"))
    assert resp.status_code == 201

    # every installation asks three times at once
    def ask(iid):
        return iid, agent_for(server, iid).next_update()["job"]

    answers = parallel(ask, [iid for iid in ids for _ in range(3)])
    by_inst: dict[str, set[int]] = {}
    for iid, job in answers:
        assert job is not None and job["status"] == "in_progress"
        by_inst.setdefault(iid, set()).add(job["id"])
    assert all(len(jobs) == 1 for jobs in by_inst.values())  # the same job each time
    owners = Counter(next(iter(j)) for j in by_inst.values())
    assert len(owners) == 60 and max(owners.values()) == 1  # no job handed to two installations
    rows = query(app, select(Job.status, Job.attempts, Job.fetched_at))
    assert {(s, a) for s, a, _f in rows} == {("in_progress", 1)}  # fetched once, counted once
    assert all(f is not None for _s, _a, f in rows)

    # every installation reports success twice at once: all land, none twice
    job_of = {iid: next(iter(j)) for iid, j in by_inst.items()}

    def succeed(iid):
        status, body = agent_for(server, iid).post(
            "/api/updates/report", {"job_id": job_of[iid], "status": "succeeded", "message": "ok"},
            raise_for_status=False)
        return status

    assert Counter(parallel(succeed, [iid for iid in ids for _ in range(2)])) == {200: 120}
    assert query(app, select(Job.status, func.count()).group_by(Job.status)) == [("succeeded", 60)]
    assert query(app, select(func.count()).select_from(Installation).where(Installation.version == "1.3.0")) == [(60,)]
    events = query(app, select(func.count()).select_from(InstallationEvent).where(
        InstallationEvent.field == "version", InstallationEvent.new_value == "1.3.0"))
    assert events == [(60,)]


def test_conflicting_reports_one_wins(app, client, agent, server):
    ids = install_fleet(agent, client, 30)
    client.post("/api/rollouts", json={"release": "1.3.0", "channel": "conc", "batch_size": 30},
                headers=bearer("admin"))
    jobs = {iid: agent_for(server, iid).next_update()["job"]["id"] for iid in ids}

    def send(arg):
        iid, status = arg
        code, body = agent_for(server, iid).post("/api/updates/report", {"job_id": jobs[iid], "status": status},
                                                 raise_for_status=False)
        return iid, status, code

    results = parallel(send, [(iid, s) for iid in ids for s in ("succeeded", "failed")])
    winners = {}
    for iid, status, code in results:
        assert code in (200, 409)
        if code == 200:
            assert iid not in winners  # exactly one of the two conflicting reports is accepted
            winners[iid] = status
    assert len(winners) == 30
    stored = dict(query(app, select(Installation.instance_id, Job.status).join(Job.installation)))
    assert stored == winners
    versions = dict(query(app, select(Installation.instance_id, Installation.version)))
    assert all((versions[i] == "1.3.0") == (winners[i] == "succeeded") for i in ids)


def test_one_advance_per_double_click(app, client, agent, server):
    install_fleet(agent, client, 20)
    rid = client.post("/api/rollouts", json={"release": "1.3.0", "channel": "conc", "batch_size": 1},
                      headers=bearer("admin")).get_json()["id"]

    # ten clicks on the same "advance from batch 1" button at once: batch 2 opens, once
    codes = parallel(lambda _: admin_post(server, f"/api/rollouts/{rid}/advance", {"from_batch": 1}).status_code,
                     range(10))
    assert codes == [200] * 10
    assert query(app, select(Rollout.current_batch)) == [(2,)]

    # ten plain advances at once: each is applied exactly once (no lost update)
    bodies = parallel(lambda _: admin_post(server, f"/api/rollouts/{rid}/advance").json(), range(10))
    assert sorted(b["current_batch"] for b in bodies) == list(range(3, 13))
    assert query(app, select(Rollout.current_batch, Rollout.status)) == [(12, "active")]


def test_one_rollout_per_channel_under_concurrent_creation(app, client, agent, server):
    install_fleet(agent, client, 25)
    codes = parallel(lambda _: admin_post(server, "/api/rollouts", {"release": "1.3.0", "channel": "conc",
                                                                     "batch_size": 5}).status_code, range(8))
    assert sorted(codes) == [201] + [409] * 7
    assert query(app, select(func.count()).select_from(Rollout)) == [(1,)]
    assert query(app, select(func.count()).select_from(Job)) == [(25,)]


def test_failure_gate_under_concurrent_reports(app, client, agent, server):
    ids = install_fleet(agent, client, 40)
    rid = client.post("/api/rollouts", json={"release": "1.3.0", "channel": "conc", "batch_size": 40,
                                             "max_failures": 3}, headers=bearer("admin")).get_json()["id"]
    jobs = {iid: agent_for(server, iid).next_update()["job"]["id"] for iid in ids}

    def fail(iid):
        code, _ = agent_for(server, iid).post("/api/updates/report",
                                              {"job_id": jobs[iid], "status": "failed", "message": "boom"},
                                              raise_for_status=False)
        return code

    # reports keep landing while the gate pauses the rollout (in-progress jobs always report)
    assert Counter(parallel(fail, ids)) == {200: 40}
    assert query(app, select(Job.status, func.count()).group_by(Job.status)) == [("failed", 40)]
    assert query(app, select(Rollout.status)) == [("paused",)]
    open_alerts = query(app, select(func.count()).select_from(Alert).where(
        Alert.source == "rollout", Alert.resolved_at.is_(None)))
    assert open_alerts == [(1,)]  # the gate tripped once
    assert rid


def test_pending_jobs_are_not_handed_out_after_cancel(app, client, agent, server):
    ids = install_fleet(agent, client, 40)
    rid = client.post("/api/rollouts", json={"release": "1.3.0", "channel": "conc", "batch_size": 40},
                      headers=bearer("admin")).get_json()["id"]

    def ask(iid):
        return iid, agent_for(server, iid).next_update()["job"]

    def cancel(_):
        return admin_post(server, f"/api/rollouts/{rid}/cancel").status_code

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        asks = [pool.submit(ask, iid) for iid in ids]
        cancels = [pool.submit(cancel, None) for _ in range(3)]
        got = [f.result() for f in asks]
        assert [f.result() for f in cancels] == [200, 200, 200]
    handed = {iid for iid, job in got if job is not None}
    rows = dict(query(app, select(Installation.instance_id, Job.status).join(Job.installation)))
    # every job handed out is in progress; every other one was cancelled; nothing else
    assert {iid for iid, s in rows.items() if s == "in_progress"} == handed
    assert {iid for iid, s in rows.items() if s == "cancelled"} == set(ids) - handed
