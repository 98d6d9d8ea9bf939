"""The plugin marketplace under real concurrency: threads against gunicorn (several worker
processes) on PostgreSQL, as for core rollouts. Each test checks its invariants in the database
afterwards: a plugin job is handed out once, no report is lost, one open request per plugin,
one decision per request, one open rollout per plugin."""
from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from cp.models import Installation, InstallationPlugin, Job, PluginRequest, Rollout
from tests.conftest import bearer
from tests.rollout_helpers import admin_post, agent_for, beat, env, parallel, query, server  # noqa: F401  (fixtures)
from tests.plugin_helpers import ask_ok, publish_plugin

pytestmark = [pytest.mark.postgres_only, pytest.mark.live]


def shops(agent, n: int) -> list[str]:
    ids = [f"p-{i:04d}" for i in range(n)]
    for iid in ids:
        beat(agent, iid, "1.2.0", "stable")
    return ids


def approved(client, agent, ids: list[str], plugin: str = "payments") -> None:
    for iid in ids:
        rid = ask_ok(agent, iid, plugin)["id"]
        assert client.post(f"/api/plugins/requests/{rid}/approve", json={}, headers=bearer("admin")).status_code == 200


def test_each_install_job_is_handed_out_once_and_no_report_is_lost(app, client, agent, server):
    ids = shops(agent, 40)
    publish_plugin(client, "payments", "2.0.0")
    approved(client, agent, ids)

    def ask(iid):
        return iid, agent_for(server, iid).next_plugin()["job"]

    by_inst: dict[str, set[int]] = {}
    for iid, job in parallel(ask, [iid for iid in ids for _ in range(3)]):
        assert job is not None and job["status"] == "in_progress" and job["plugin"] == "payments"
        by_inst.setdefault(iid, set()).add(job["id"])
    assert all(len(jobs) == 1 for jobs in by_inst.values())  # the same job each time
    owners = Counter(next(iter(j)) for j in by_inst.values())
    assert len(owners) == 40 and max(owners.values()) == 1  # no job handed to two installations
    assert query(app, select(Job.status, Job.attempts, func.count()).group_by(Job.status, Job.attempts)) == [
        ("in_progress", 1, 40)]  # fetched once, counted once

    job_of = {iid: next(iter(j)) for iid, j in by_inst.items()}

    def succeed(iid):
        code, _body = agent_for(server, iid).post("/api/plugins/report", {"job_id": job_of[iid],
                                                                          "status": "succeeded"},
                                                  raise_for_status=False)
        return code

    assert Counter(parallel(succeed, [iid for iid in ids for _ in range(2)])) == {200: 80}
    assert query(app, select(Job.status, func.count()).group_by(Job.status)) == [("succeeded", 40)]
    assert query(app, select(InstallationPlugin.version, func.count()).group_by(InstallationPlugin.version)) == [
        ("2.0.0", 40)]


def test_plugin_rollout_jobs_once_and_conflicting_reports_one_wins(app, client, agent, server):
    ids = shops(agent, 30)
    publish_plugin(client, "payments", "2.0.0")
    approved(client, agent, ids)
    for iid in ids:  # install 2.0.0 everywhere
        job = agent.post("/api/plugins/next", {"instance_id": iid}).get_json()["job"]
        assert agent.post("/api/plugins/report", {"instance_id": iid, "job_id": job["id"],
                                                  "status": "succeeded"}).status_code == 200
    publish_plugin(client, "payments", "2.1.0")
    resp = client.post("/api/plugins/rollouts", json={"plugin": "payments", "version": "2.1.0", "batch_size": 30},
                       headers=bearer("admin"))
    assert resp.status_code == 201 and resp.get_json()["targets"] == 30
    rid = resp.get_json()["id"]

    answers = parallel(lambda iid: (iid, agent_for(server, iid).next_plugin()["job"]), [i for i in ids for _ in range(2)])
    jobs: dict[str, set[int]] = {}
    for iid, job in answers:
        assert job["rollout_id"] == rid and job["version"] == "2.1.0"
        jobs.setdefault(iid, set()).add(job["id"])
    assert all(len(j) == 1 for j in jobs.values()) and len({next(iter(j)) for j in jobs.values()}) == 30

    def send(arg):
        iid, status = arg
        code, _ = agent_for(server, iid).post("/api/plugins/report", {"job_id": next(iter(jobs[iid])),
                                                                      "status": status}, raise_for_status=False)
        return iid, status, code

    winners: dict[str, str] = {}
    for iid, status, code in parallel(send, [(i, s) for i in ids for s in ("succeeded", "failed")]):
        assert code in (200, 409)
        if code == 200:
            assert iid not in winners  # exactly one of two conflicting reports is accepted
            winners[iid] = status
    assert len(winners) == 30
    stored = dict(query(app, select(Installation.instance_id, Job.status).join(Job.installation)
                        .where(Job.rollout_id == rid)))
    assert stored == winners
    versions = dict(query(app, select(Installation.instance_id, InstallationPlugin.version)
                          .join(InstallationPlugin, InstallationPlugin.installation_id == Installation.id)))
    assert all((versions[i] == "2.1.0") == (winners[i] == "succeeded") for i in ids)
    assert all(versions[i] == "2.0.0" for i in ids if winners[i] == "failed")


def test_one_open_request_per_plugin_under_concurrent_requests(app, client, agent, server):
    shops(agent, 1)
    publish_plugin(client, "payments", "2.0.0")
    a = agent_for(server, "p-0000")

    def ask(i):
        return a.post("/api/plugins/requests", {"plugin": "payments", "reason": f"try {i}"},
                      raise_for_status=False)

    results = parallel(ask, range(12))
    codes = Counter(code for code, _ in results)
    assert codes == {201: 1, 409: 11}
    assert {body["error"] for code, body in results if code == 409} == {"request_pending"}
    assert query(app, select(func.count()).select_from(PluginRequest)) == [(1,)]


def test_one_decision_per_request_under_concurrent_clicks(app, client, agent, server):
    ids = shops(agent, 2)
    publish_plugin(client, "payments", "2.0.0")
    rid = ask_ok(agent, ids[0], "payments")["id"]
    codes = parallel(lambda _: admin_post(server, f"/api/plugins/requests/{rid}/approve").status_code, range(10))
    assert sorted(codes) == [200] + [409] * 9
    assert query(app, select(func.count()).select_from(Job)) == [(1,)]

    other = ask_ok(agent, ids[1], "payments")["id"]

    def decide(i):
        if i % 2:
            return "approved", admin_post(server, f"/api/plugins/requests/{other}/approve").status_code
        return "rejected", admin_post(server, f"/api/plugins/requests/{other}/reject", {"reason": "no"}).status_code

    results = parallel(decide, range(10))
    won = [what for what, code in results if code == 200]
    assert len(won) == 1 and sum(1 for _w, code in results if code == 409) == 9
    status = query(app, select(PluginRequest.status).where(PluginRequest.id == other))[0][0]
    assert status == won[0]
    jobs = query(app, select(func.count()).select_from(Job))[0][0]
    assert jobs == (2 if won[0] == "approved" else 1)


def test_one_rollout_per_plugin_under_concurrent_creation(app, client, agent, server):
    ids = shops(agent, 12)
    publish_plugin(client, "payments", "2.0.0")
    approved(client, agent, ids)
    publish_plugin(client, "payments", "2.1.0")
    codes = parallel(lambda _: admin_post(server, "/api/plugins/rollouts", {"plugin": "payments", "version": "2.1.0",
                                                                             "batch_size": 5}).status_code, range(8))
    assert sorted(codes) == [201] + [409] * 7
    assert query(app, select(func.count()).select_from(Rollout)) == [(1,)]
    assert query(app, select(func.count()).select_from(Job).where(Job.rollout_id.is_not(None))) == [(12,)]
