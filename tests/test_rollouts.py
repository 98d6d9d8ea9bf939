"""Rollouts: creation, batches, advance/pause/resume/cancel/retry, gates, the agent pair,
joining channels, the pages, the admin panel, and the full flow against gunicorn."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from cp.extensions import db
from cp.models import Alert, Installation, InstallationEvent, Job, Rollout
from tests.conftest import AGENT_TOKEN, bearer, csrf_token_from
from tests.rollout_helpers import (  # noqa: F401  (env is a fixture)
    action,
    assert_error,
    beat,
    env,
    fleet,
    next_job,
    publish,
    report,
    rollout,
    snapshot,
)

CONTRACT_ROLLOUT_KEYS = {"id", "release", "channel", "batch_size", "status", "current_batch", "batches", "targets"}


def jobs_of(app, rollout_id=None) -> list[Job]:
    with app.app_context():
        stmt = select(Job).order_by(Job.id)
        if rollout_id is not None:
            stmt = stmt.where(Job.rollout_id == rollout_id)
        rows = db.session.scalars(stmt).all()
        out = [(j.id, j.installation.instance_id, j.batch, j.status, j.attempts) for j in rows]
        db.session.remove()
    return out


def version_of(app, instance_id):
    with app.app_context():
        v = db.session.scalar(select(Installation.version).where(Installation.instance_id == instance_id))
        db.session.remove()
    return v


@pytest.fixture
def setup(app, client, agent):
    """Five installations on stable at 1.2.0, one on beta, release 1.3.0 published."""
    ids = fleet(agent, 5)
    beat(agent, "beta-001", "1.2.0", "beta")
    publish(client, "1.3.0")
    return ids


# --- creation --------------------------------------------------------------------------------
def test_create_batches_in_a_stable_order(app, client, agent, setup):
    beat(agent, "inst-005", "1.3.0")  # already on the release: not a target
    resp = rollout(client, batch_size=2)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    assert CONTRACT_ROLLOUT_KEYS <= set(body)
    assert {k: body[k] for k in CONTRACT_ROLLOUT_KEYS} == {
        "id": body["id"], "release": "1.3.0", "channel": "stable", "batch_size": 2, "status": "active",
        "current_batch": 1, "batches": 3, "targets": 5}
    jobs = jobs_of(app, body["id"])
    assert [(iid, batch, status) for _id, iid, batch, status, _a in jobs] == [
        ("inst-000", 1, "pending"), ("inst-001", 1, "pending"), ("inst-002", 2, "pending"),
        ("inst-003", 2, "pending"), ("inst-004", 3, "pending")]
    with app.app_context():  # every field a new job gets (PostgreSQL writes them in one INSERT ... SELECT)
        rows = db.session.scalars(select(Job).where(Job.rollout_id == body["id"]).order_by(Job.position)).all()
        assert [(j.installation.instance_id, j.batch, j.position) for j in rows] == [
            ("inst-000", 1, 0), ("inst-001", 1, 1), ("inst-002", 2, 2), ("inst-003", 2, 3), ("inst-004", 3, 4)]
        assert {(j.kind, j.release.version, j.status, j.attempts, j.message, j.fetched_at, j.finished_at)
                for j in rows} == {("update", "1.3.0", "pending", 0, None, None, None)}
        created = db.session.get(Rollout, body["id"]).created_at
        assert {j.created_at for j in rows} == {j.updated_at for j in rows} == {created}
        db.session.remove()


def test_channel_defaults_to_the_releases(app, client, setup):
    resp = rollout(client, channel=None, batch_size=10)
    assert resp.status_code == 201 and resp.get_json()["channel"] == "stable"


def test_rollout_without_targets_has_one_empty_batch(app, client, agent):
    publish(client, "1.3.0")
    body = rollout(client, batch_size=5).get_json()
    assert (body["targets"], body["batches"], body["current_batch"]) == (0, 1, 1)
    beat(agent, "late-001", "1.2.0", "stable")  # joins: lands in the (only) batch, open at once
    assert next_job(agent, "late-001")["version"] == "1.3.0"
    assert action(client, body["id"], "advance").get_json()["status"] == "completed"


def test_unknown_release(app, client, setup):
    before = snapshot(app)
    assert_error(rollout(client, release="9.9.9"), 404, "unknown_release")
    assert snapshot(app) == before


def test_channel_with_an_open_rollout(app, client, setup):
    first = rollout(client).get_json()
    before = snapshot(app)
    data = assert_error(rollout(client), 409, "rollout_in_progress")
    assert data["details"]["rollout_id"] == first["id"]
    assert action(client, first["id"], "pause", role="ops").status_code == 200
    assert_error(rollout(client), 409, "rollout_in_progress")  # paused counts as open
    assert snapshot(app)["rollouts"] == [(first["id"], "paused", 1, 5)]
    assert snapshot(app)["jobs"] == before["jobs"]
    # another channel is independent
    assert rollout(client, channel="beta").status_code == 201


@pytest.mark.parametrize("batch_size", [0, -1, 10_001, 10**12, "5", 2.5, True, None])
def test_bad_batch_size(app, client, setup, batch_size):
    before = snapshot(app)
    data = assert_error(rollout(client, batch_size=batch_size), 422, "validation_error")
    assert "batch_size" in data["details"]
    assert snapshot(app) == before


def test_largest_batch_size_is_accepted(app, client, setup):
    assert rollout(client, batch_size=10_000).get_json()["batches"] == 1


@pytest.mark.parametrize("extra, field", [
    ({"max_failures": -1}, "max_failures"), ({"max_failure_ratio": 1.5}, "max_failure_ratio"),
    ({"auto_advance": {"success_ratio": 0}}, "auto_advance"), ({"auto_advance": {"soak_minutes": 5}}, "auto_advance"),
    ({"auto_advance": {"success_ratio": 0.9, "soak_minutes": -1}}, "auto_advance"),
    ({"allow_downgrade": "yes"}, "allow_downgrade"), ({"bogus": 1}, "bogus"), ({"release": ""}, "release"),
])
def test_bad_gates(app, client, setup, extra, field):
    before = snapshot(app)
    data = assert_error(rollout(client, **extra), 422, "validation_error")
    assert field in data["details"]
    assert snapshot(app) == before


def test_roles(app, client, setup):
    assert_error(rollout(client, role="ops"), 403)
    assert_error(client.post("/api/rollouts", json={"release": "1.3.0", "batch_size": 1}), 401)
    rid = rollout(client).get_json()["id"]
    for name in ("advance", "cancel", "retry"):
        assert_error(action(client, rid, name, role="ops"), 403)
    for name in ("pause", "resume"):
        assert_error(action(client, rid, name, role="support"), 403)
        assert action(client, rid, name, role="ops").status_code == 200
    assert client.get(f"/api/rollouts/{rid}", headers=bearer("support")).status_code == 200
    assert snapshot(app)["rollouts"][0][1:3] == ("active", 1)


def test_no_downgrade_unless_allowed(app, client, agent, setup):
    beat(agent, "inst-000", "2.0.0")  # newer than the release
    beat(agent, "inst-001", "weird-version")  # not semver: cannot be newer, stays a target
    body = rollout(client, batch_size=10).get_json()
    assert body["targets"] == 4 and body["skipped"] == 1
    assert "inst-000" not in [iid for _i, iid, *_ in jobs_of(app, body["id"])]
    action(client, body["id"], "cancel")
    body = rollout(client, batch_size=10, allow_downgrade=True).get_json()
    assert body["targets"] == 5 and body["skipped"] == 0


# --- the agent side ------------------------------------------------------------------------
def test_next_and_report(app, client, agent, setup):
    rid = rollout(client, batch_size=2).get_json()["id"]
    assert next_job(agent, "inst-002") is None  # batch 2 is not open
    assert beat(agent, "inst-002")["pending"]["update"] is False
    assert beat(agent, "inst-000")["pending"]["update"] is True

    job = next_job(agent, "inst-000")
    assert set(job) >= {"id", "rollout_id", "status", "version", "manifest", "signature", "key_id"}
    assert (job["rollout_id"], job["status"], job["version"], job["key_id"]) == (rid, "in_progress", "1.3.0", "k1")
    assert job["manifest"]["version"] == "1.3.0"
    again = next_job(agent, "inst-000")
    assert again["id"] == job["id"] and again["status"] == "in_progress"
    assert [a for _i, iid, _b, _s, a in jobs_of(app, rid) if iid == "inst-000"] == [1]  # fetched once
    assert beat(agent, "inst-000")["pending"]["update"] is True  # still its job until reported

    resp = report(agent, "inst-000", job["id"], "in_progress", "downloading")
    assert resp.status_code == 200 and resp.get_json()["status"] == "in_progress"
    resp = report(agent, "inst-000", job["id"], "succeeded", "done")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["status"] == "succeeded" and resp.get_json()["id"] == job["id"]
    assert version_of(app, "inst-000") == "1.3.0"
    with app.app_context():
        ev = db.session.scalars(select(InstallationEvent).where(InstallationEvent.field == "version")).all()
        assert [(e.old_value, e.new_value) for e in ev] == [("1.2.0", "1.3.0")]
        db.session.remove()
    assert next_job(agent, "inst-000") is None
    assert beat(agent, "inst-000", "1.3.0")["pending"]["update"] is False

    # the same report again: 200, nothing changes
    before = snapshot(app)
    resp = report(agent, "inst-000", job["id"], "succeeded", "done again")
    assert resp.status_code == 200 and resp.get_json()["message"] == "done"
    assert snapshot(app) == before


def test_report_errors(app, client, agent, setup):
    rollout(client, batch_size=2)
    job = next_job(agent, "inst-000")
    other = next_job(agent, "inst-001")
    report(agent, "inst-001", other["id"], "failed", "disk full")
    later = jobs_of(app)[2]  # inst-002, batch 2: not handed out
    before = snapshot(app)

    assert_error(report(agent, "inst-000", 999999, "succeeded"), 404, "unknown_job")
    assert_error(report(agent, "inst-001", job["id"], "succeeded"), 403)  # inst-000's job
    assert_error(report(agent, "nobody-001", job["id"], "succeeded"), 403)
    assert_error(report(agent, "inst-001", other["id"], "succeeded"), 409, "job_finished")
    assert_error(report(agent, "inst-001", other["id"], "in_progress"), 409, "job_finished")
    assert_error(report(agent, "inst-002", later[0], "succeeded"), 409, "job_not_available")
    for status in ("done", "pending", "cancelled", "", None, 3):
        data = assert_error(report(agent, "inst-000", job["id"], status), 422, "validation_error")
        assert "status" in data["details"]
    for job_id in ("1", 1.5, None, 0, -3, True):
        assert_error(report(agent, "inst-000", job_id, "succeeded"), 422, "validation_error")
    resp = agent.post("/api/updates/report", {"instance_id": "inst-000", "job_id": job["id"], "status": "succeeded",
                                              "message": "x" * 2001})
    assert_error(resp, 422, "validation_error")
    # a wrong signature is refused before anything else, even for a valid report
    resp = agent.post("/api/updates/report", {"instance_id": "inst-000", "job_id": job["id"], "status": "succeeded"},
                      secret="wrong-secret")
    assert_error(resp, 401, "invalid_signature")
    assert snapshot(app) == before
    assert version_of(app, "inst-000") == "1.2.0"


def test_mapped_secret_agent_cannot_use_shared_token(app, client, agent):
    beat(agent, "mapped-001", "1.2.0", "stable")
    publish(client, "1.3.0")
    rollout(client, batch_size=5)
    resp = agent.post("/api/updates/next", {"instance_id": "mapped-001"}, secret=AGENT_TOKEN)
    assert_error(resp, 401, "invalid_signature")
    assert next_job(agent, "mapped-001")["version"] == "1.3.0"


def test_next_for_unknown_installation(app, agent, setup):
    assert next_job(agent, "never-seen-001") is None
    assert_error(agent.post("/api/updates/next", {"instance_id": "bad id!"}), 422, "validation_error")


# --- advance -------------------------------------------------------------------------------
def test_advance_through_to_completed(app, client, agent, setup):
    rid = rollout(client, batch_size=2).get_json()["id"]
    body = action(client, rid, "advance").get_json()
    assert (body["current_batch"], body["status"]) == (2, "active")
    assert next_job(agent, "inst-002") is not None
    assert action(client, rid, "advance").get_json()["current_batch"] == 3
    body = action(client, rid, "advance").get_json()
    assert (body["current_batch"], body["status"]) == (3, "completed")
    before = snapshot(app)
    data = assert_error(action(client, rid, "advance"), 409, "invalid_rollout_state")
    assert data["details"]["status"] == "completed"
    assert_error(action(client, rid, "cancel"), 409, "invalid_rollout_state")
    assert_error(action(client, rid, "pause", role="ops"), 409, "invalid_rollout_state")
    assert snapshot(app) == before
    # a completed rollout still serves its stragglers
    assert next_job(agent, "inst-004")["rollout_id"] == rid
    # and frees the channel
    publish(client, "1.3.1")
    assert rollout(client, release="1.3.1").status_code == 201
    assert next_job(agent, "inst-000")["version"] == "1.3.1"  # 1.3.0's pending job was superseded
    assert [s for _i, iid, _b, s, _a in jobs_of(app, rid) if iid in ("inst-000", "inst-004")] == [
        "cancelled", "in_progress"]


def test_advance_refused_after_a_failure_unless_forced(app, client, agent, setup):
    rid = rollout(client, batch_size=2).get_json()["id"]
    job = next_job(agent, "inst-000")
    report(agent, "inst-000", job["id"], "failed", "migration error")
    before = snapshot(app)
    data = assert_error(action(client, rid, "advance"), 409, "batch_has_failures")
    assert data["details"] == {"batch": 1, "failed": 1}
    assert_error(action(client, rid, "advance", {"force": "yes"}), 422, "validation_error")
    assert snapshot(app) == before
    assert action(client, rid, "advance", {"force": True}).get_json()["current_batch"] == 2


def test_advance_with_from_batch_is_idempotent(app, client, setup):
    rid = rollout(client, batch_size=2).get_json()["id"]
    assert action(client, rid, "advance", {"from_batch": 1}).get_json()["current_batch"] == 2
    assert action(client, rid, "advance", {"from_batch": 1}).get_json()["current_batch"] == 2  # the double click
    assert_error(action(client, rid, "advance", {"from_batch": 5}), 409, "batch_mismatch")
    assert action(client, rid, "advance", {"from_batch": 2}).get_json()["current_batch"] == 3
    assert action(client, rid, "advance", {"from_batch": 3}).get_json()["status"] == "completed"
    assert action(client, rid, "advance", {"from_batch": 3}).get_json()["status"] == "completed"


def test_unknown_rollout(app, client):
    for name in ("advance", "pause", "resume", "cancel", "retry"):
        assert_error(action(client, 4242, name), 404, "unknown_rollout")
    assert_error(client.get("/api/rollouts/4242", headers=bearer("support")), 404)


# --- pause, resume, cancel, retry -----------------------------------------------------------
def test_pause_and_resume(app, client, agent, setup):
    rid = rollout(client, batch_size=2).get_json()["id"]
    job = next_job(agent, "inst-000")
    body = action(client, rid, "pause", {"reason": "customer freeze"}, role="ops").get_json()
    assert (body["status"], body["paused_reason"]) == ("paused", "customer freeze")
    assert next_job(agent, "inst-001") is None  # no new jobs
    assert beat(agent, "inst-001")["pending"]["update"] is False
    assert next_job(agent, "inst-000")["id"] == job["id"]  # the one in progress stays its job
    assert report(agent, "inst-000", job["id"], "succeeded").status_code == 200  # reports still land
    assert_error(action(client, rid, "advance"), 409, "invalid_rollout_state")
    assert action(client, rid, "pause", role="ops").get_json()["status"] == "paused"  # no-op
    assert action(client, rid, "resume", role="ops").get_json()["status"] == "active"
    assert action(client, rid, "resume", role="ops").get_json()["status"] == "active"  # no-op
    assert next_job(agent, "inst-001") is not None


@pytest.mark.parametrize("name", ["resume", "cancel", "retry"])
def test_transitions_without_a_body_refuse_one(app, client, agent, setup, name):
    """resume/cancel/retry take no body: a field is a 422 (not read as a pause reason), another
    content type a 415, and nothing changes; no body at all, or {}, is fine."""
    rid = rollout(client, batch_size=2).get_json()["id"]
    url = f"/api/rollouts/{rid}/{name}"
    resp = client.post(url, json={"reason": "a pause reason"}, headers=bearer("admin"))
    assert_error(resp, 422, "validation_error")
    assert "reason" in resp.get_json()["details"]
    assert client.post(url, data="x", headers={**bearer("admin"), "Content-Type": "text/plain"}).status_code == 415
    assert client.get(f"/api/rollouts/{rid}", headers=bearer("support")).get_json()["status"] == "active"
    assert client.post(url, headers=bearer("admin")).status_code in (200, 409)
    assert client.post(url, json={}, headers=bearer("admin")).status_code in (200, 409)


def test_cancel(app, client, agent, setup):
    rid = rollout(client, batch_size=2).get_json()["id"]
    running = next_job(agent, "inst-000")
    done = next_job(agent, "inst-001")
    report(agent, "inst-001", done["id"], "succeeded")
    body = action(client, rid, "cancel").get_json()
    assert body["status"] == "cancelled"
    assert body["jobs"] == {"pending": 0, "in_progress": 1, "succeeded": 1, "failed": 0, "cancelled": 3}
    assert next_job(agent, "inst-002") is None
    assert beat(agent, "inst-002")["pending"]["update"] is False
    assert report(agent, "inst-000", running["id"], "succeeded").status_code == 200
    assert action(client, rid, "cancel").status_code == 200  # twice: no-op
    before = snapshot(app)
    for name in ("advance", "resume", "retry"):
        assert_error(action(client, rid, name), 409, "invalid_rollout_state")
    assert snapshot(app) == before


def test_retry(app, client, agent, setup):
    rid = rollout(client, batch_size=2).get_json()["id"]
    job = next_job(agent, "inst-000")
    report(agent, "inst-000", job["id"], "failed", "boom")
    body = action(client, rid, "retry").get_json()
    assert body["requeued"] == 1 and body["jobs"]["failed"] == 0
    again = next_job(agent, "inst-000")
    assert again["id"] == job["id"] and again["status"] == "in_progress"
    assert [a for _i, iid, _b, _s, a in jobs_of(app, rid) if iid == "inst-000"] == [2]
    assert report(agent, "inst-000", job["id"], "succeeded").status_code == 200
    assert action(client, rid, "retry").get_json()["requeued"] == 0


def test_get_and_list(app, client, agent, setup):
    rid = rollout(client, batch_size=2).get_json()["id"]
    job = next_job(agent, "inst-000")
    report(agent, "inst-000", job["id"], "succeeded")
    next_job(agent, "inst-001")
    body = client.get(f"/api/rollouts/{rid}", headers=bearer("support")).get_json()
    assert body["jobs"] == {"pending": 3, "in_progress": 1, "succeeded": 1, "failed": 0, "cancelled": 0}
    assert [b["batch"] for b in body["per_batch"]] == [1, 2, 3]
    assert body["per_batch"][0] == {"batch": 1, "opened": True, "jobs": {
        "pending": 0, "in_progress": 1, "succeeded": 1, "failed": 0, "cancelled": 0}}
    assert body["per_batch"][1]["opened"] is False and body["per_batch"][1]["jobs"]["pending"] == 2
    action(client, rid, "cancel")
    second = rollout(client, channel="beta").get_json()["id"]
    listing = client.get("/api/rollouts", headers=bearer("support")).get_json()
    assert listing["total"] == 2 and [r["id"] for r in listing["items"]] == [second, rid]
    listing = client.get("/api/rollouts?status=cancelled&limit=1", headers=bearer("support")).get_json()
    assert [r["id"] for r in listing["items"]] == [rid] and listing["items"][0]["jobs"]["cancelled"] == 3
    assert_error(client.get("/api/rollouts?status=bogus", headers=bearer("support")), 422)


# --- gates ---------------------------------------------------------------------------------
def test_max_failures_pauses_and_alerts(app, client, agent, setup):
    rid = rollout(client, batch_size=3, max_failures=1).get_json()["id"]
    for iid in ("inst-000", "inst-001"):
        job = next_job(agent, iid)
        report(agent, iid, job["id"], "failed", "boom")
    body = client.get(f"/api/rollouts/{rid}", headers=bearer("support")).get_json()
    assert body["status"] == "paused" and "max_failures" in body["paused_reason"]
    assert next_job(agent, "inst-002") is None
    with app.app_context():
        alerts = db.session.scalars(select(Alert).where(Alert.source == "rollout")).all()
        assert [(a.level, a.resolved_at) for a in alerts] == [("critical", None)]
        assert f"Rollout {rid}" in alerts[0].message
        db.session.remove()
    resp = client.get("/api/alerts?source=rollout&status=open", headers=bearer("support"))
    assert resp.get_json()["total"] == 1
    action(client, rid, "resume", role="ops")  # ops heard of it and resumes: the alert resolves
    resp = client.get("/api/alerts?source=rollout&status=open", headers=bearer("support"))
    assert resp.get_json()["total"] == 0


def test_one_failure_within_max_failures_keeps_going(app, client, agent, setup):
    rid = rollout(client, batch_size=3, max_failures=1).get_json()["id"]
    job = next_job(agent, "inst-000")
    report(agent, "inst-000", job["id"], "failed", "boom")
    assert client.get(f"/api/rollouts/{rid}", headers=bearer("support")).get_json()["status"] == "active"
    assert next_job(agent, "inst-001") is not None


def test_max_failure_ratio(app, client, agent, setup):
    rid = rollout(client, batch_size=4, max_failure_ratio=0.25).get_json()["id"]
    job = next_job(agent, "inst-000")
    report(agent, "inst-000", job["id"], "failed")  # 1/4 = 0.25: not above
    assert client.get(f"/api/rollouts/{rid}", headers=bearer("support")).get_json()["status"] == "active"
    job = next_job(agent, "inst-001")
    report(agent, "inst-001", job["id"], "failed")  # 2/4
    assert client.get(f"/api/rollouts/{rid}", headers=bearer("support")).get_json()["status"] == "paused"


def test_auto_advance_after_soak(app, client, agent, setup, clock):
    from cp.delivery import rollouts

    rid = rollout(client, batch_size=2, auto_advance={"success_ratio": 0.5, "soak_minutes": 30}).get_json()["id"]
    with app.app_context():
        assert rollouts.tick() == 0  # nothing succeeded yet
    clock.advance(minutes=5)
    job = next_job(agent, "inst-000")
    report(agent, "inst-000", job["id"], "succeeded")  # 1/2 reached at +5 min
    with app.app_context():
        clock.advance(minutes=29)
        assert rollouts.tick() == 0  # soaking
        clock.advance(minutes=1, seconds=1)
        assert rollouts.tick() == 1
        assert rollouts.tick() == 0  # once
        db.session.remove()
    body = client.get(f"/api/rollouts/{rid}", headers=bearer("support")).get_json()
    assert body["current_batch"] == 2 and body["auto_advance"] == {"success_ratio": 0.5, "soak_minutes": 30}


def test_auto_advance_waits_on_failures(app, client, agent, setup, clock):
    from cp.delivery import rollouts

    rid = rollout(client, batch_size=2, auto_advance={"success_ratio": 0.5}).get_json()["id"]
    ok, bad = next_job(agent, "inst-000"), next_job(agent, "inst-001")
    report(agent, "inst-000", ok["id"], "succeeded")
    report(agent, "inst-001", bad["id"], "failed")
    clock.advance(hours=1)
    with app.app_context():
        assert rollouts.tick() == 0
        db.session.remove()
    assert client.get(f"/api/rollouts/{rid}", headers=bearer("support")).get_json()["current_batch"] == 1


# --- installations joining and leaving -------------------------------------------------------
def test_joining_the_channel_adds_to_the_last_batch(app, client, agent, setup):
    rid = rollout(client, batch_size=2).get_json()["id"]
    beat(agent, "beta-001", "1.2.0", "stable")  # moves beta -> stable
    beat(agent, "new-001", "1.1.0", "stable")  # registers on stable
    beat(agent, "newer-001", "2.0.0", "stable")  # newer: skipped
    body = client.get(f"/api/rollouts/{rid}", headers=bearer("support")).get_json()
    assert (body["targets"], body["batches"], body["skipped"]) == (7, 3, 1)
    jobs = {iid: batch for _i, iid, batch, _s, _a in jobs_of(app, rid)}
    assert jobs["beta-001"] == 3 and jobs["new-001"] == 3 and "newer-001" not in jobs
    # leaving the channel cancels its pending job
    beat(agent, "inst-001", "1.2.0", "beta")
    assert next_job(agent, "inst-001") is None
    assert [s for _i, iid, _b, s, _a in jobs_of(app, rid) if iid == "inst-001"] == ["cancelled"]
    # and coming back reinstates it, in the last batch
    beat(agent, "inst-001", "1.2.0", "stable")
    assert [(b, s) for _i, iid, b, s, _a in jobs_of(app, rid) if iid == "inst-001"] == [(3, "pending")]


def test_the_heartbeat_that_joins_a_channel_says_its_update_waits(app, client, agent, setup):
    """The job a channel change makes is in that same heartbeat's ``pending``, as
    ``/api/updates/next`` would hand it out (one batch: the last batch is the current one)."""
    rollout(client, batch_size=10)
    assert beat(agent, "beta-001", "1.2.0", "stable")["pending"]["update"] is True  # moves beta -> stable
    assert beat(agent, "new-001", "1.1.0", "stable")["pending"]["update"] is True  # registers on stable
    assert next_job(agent, "beta-001")["version"] == "1.3.0"
    assert beat(agent, "new-001", "1.1.0", "beta")["pending"]["update"] is False  # leaves: cancelled


# --- pages ---------------------------------------------------------------------------------
def test_releases_behind(app, client, agent, setup, login_as):
    publish(client, "1.2.5")
    publish(client, "1.4.0-rc.1")
    publish(client, "9.0.0", "beta")
    beat(agent, "inst-001", "1.3.0")
    beat(agent, "inst-002", "not-semver")
    items = {i["instance_id"]: i for i in client.get("/api/installations?limit=500", headers=bearer("support"))
             .get_json()["items"]}
    assert items["inst-000"]["releases_behind"] == 3  # 1.2.5, 1.3.0, 1.4.0-rc.1
    assert items["inst-001"]["releases_behind"] == 1
    assert items["inst-002"]["releases_behind"] is None
    assert items["beta-001"]["releases_behind"] == 1
    one = client.get("/api/installations/inst-000", headers=bearer("support")).get_json()
    assert one["releases_behind"] == 3
    login_as("support")
    html = client.get("/").get_data(as_text=True)
    assert "3 behind" in html and "Behind" in html


def test_installation_page_shows_update_history(app, client, agent, setup, login_as):
    rollout(client, batch_size=2)
    job = next_job(agent, "inst-000")
    report(agent, "inst-000", job["id"], "failed", "<script>alert(1)</script>")
    login_as("support")
    html = client.get("/installations/inst-000").get_data(as_text=True)
    assert "Updates" in html and "1.3.0" in html and "failed" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


# --- admin panel ---------------------------------------------------------------------------
def _admin_post(client, url, data):
    page = client.get("/admin/rollout/")
    token = csrf_token_from(page.get_data(as_text=True))
    return client.post(url, data={**data, "csrf_token": token})


def test_admin_screens(app, client, agent, setup, login_as):
    rid = rollout(client, batch_size=2).get_json()["id"]
    login_as("support")
    html = client.get("/admin/rollouts/").get_data(as_text=True)
    assert "batch 1 / 3" in html and "5 pending" in html
    assert "Advance" not in html and ">Pause<" not in html  # support: no buttons
    with app.app_context():
        release_id = db.session.scalar(select(Rollout.release_id))
        db.session.remove()
    html = client.get(f"/admin/releases/details/?id={release_id}").get_data(as_text=True)
    assert "&#34;version&#34;: &#34;1.3.0&#34;" in html or "&quot;version&quot;: &quot;1.3.0&quot;" in html
    assert "<b>bold</b>" not in html  # manifest text is escaped
    assert client.get("/admin/jobs/?flt0_0=pending").status_code == 200
    assert client.get("/admin/jobs/").status_code == 200
    assert client.get("/admin/releases/").status_code == 200
    assert rid


def _row_action(client, rid, op, from_batch=1):
    page = client.get("/admin/rollouts/")
    token = csrf_token_from(page.get_data(as_text=True))
    return client.post(f"/admin/rollouts/row/{rid}/{op}", data={"csrf_token": token, "from_batch": str(from_batch)})


def _bulk(client, name, ids):
    page = client.get("/admin/rollouts/")
    token = csrf_token_from(page.get_data(as_text=True))
    return client.post("/admin/rollouts/action/", data={"csrf_token": token, "action": name,
                                                        "rowid": [str(i) for i in ids]})


def test_admin_actions_by_role(app, client, agent, setup, login_as):
    rid = rollout(client, batch_size=2).get_json()["id"]
    login_as("ops")
    html = client.get("/admin/rollouts/").get_data(as_text=True)
    assert ">Pause<" in html and ">Advance<" not in html
    assert _row_action(client, rid, "advance").status_code == 403
    assert _bulk(client, "advance", [rid]).status_code == 403
    assert _row_action(client, rid, "pause").status_code == 302
    assert snapshot(app)["rollouts"][0][1:3] == ("paused", 1)
    assert _bulk(client, "resume", [rid]).status_code == 302
    assert snapshot(app)["rollouts"][0][1:3] == ("active", 1)
    # no CSRF token: refused
    assert client.post(f"/admin/rollouts/row/{rid}/pause", data={}).status_code == 400

    login_as("admin")
    assert _row_action(client, rid, "advance", from_batch=1).status_code == 302
    assert _row_action(client, rid, "advance", from_batch=1).status_code == 302  # double click: once
    assert snapshot(app)["rollouts"][0][1:3] == ("active", 2)
    assert _bulk(client, "advance", [rid]).status_code == 302
    assert snapshot(app)["rollouts"][0][1:3] == ("active", 3)
    assert _bulk(client, "cancel", [rid]).status_code == 302
    assert snapshot(app)["rollouts"][0][1] == "cancelled"
    resp = _bulk(client, "advance", [rid])  # refused by the domain: flashed, nothing changes
    assert resp.status_code == 302
    assert snapshot(app)["rollouts"][0][1:3] == ("cancelled", 3)
    assert "cannot be advanced" in client.get("/admin/rollouts/").get_data(as_text=True)
    assert _row_action(client, rid, "bogus").status_code == 404


# --- the full flow against a real server -----------------------------------------------------
@pytest.mark.live
def test_full_flow_with_the_reference_agent(app, live_server, tmp_path):
    import requests

    from cp.agent_client import AgentClient

    from tests.conftest import AGENT_SECRETS
    from tests.rollout_helpers import release_body

    agents = {iid: AgentClient(live_server.url, iid, AGENT_SECRETS.get(iid, AGENT_TOKEN))
              for iid in ("demo-001", "demo-002", "demo-003", "mapped-001")}
    for a in agents.values():
        assert a.heartbeat(version="1.2.0", release_channel="demo")["pending"]["update"] is False
    admin = requests.Session()
    admin.headers.update(bearer("admin"))
    assert admin.post(live_server.url + "/api/releases", json=release_body("1.3.0", "demo")).status_code == 201
    resp = admin.post(live_server.url + "/api/rollouts", json={"release": "1.3.0", "channel": "demo", "batch_size": 2})
    assert resp.status_code == 201, resp.text
    r = resp.json()
    assert (r["targets"], r["batches"]) == (4, 2)

    def run(iid):
        a = agents[iid]
        assert a.heartbeat()["pending"]["update"] is True
        job = a.next_update()["job"]
        from cp.delivery.releases import verify_manifest_signature
        from tests.rollout_helpers import KEY
        from cryptography.hazmat.primitives import serialization

        raw = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        verify_manifest_signature(job["manifest"], job["signature"], job["key_id"], keys={"k1": raw})
        a.report_update(job["id"], "in_progress", "installing")
        assert a.report_update(job["id"], "succeeded", "ok")["status"] == "succeeded"
        assert a.heartbeat(version="1.3.0")["pending"]["update"] is False

    batch1 = sorted(agents)[:2]
    for iid in batch1:
        run(iid)
    for iid in sorted(agents)[2:]:
        assert agents[iid].next_update()["job"] is None
    assert admin.post(live_server.url + f"/api/rollouts/{r['id']}/advance", json={}).json()["current_batch"] == 2
    for iid in sorted(agents)[2:]:
        run(iid)
    done = admin.post(live_server.url + f"/api/rollouts/{r['id']}/advance", json={}).json()
    assert done["status"] == "completed" and done["jobs"]["succeeded"] == 4
    listing = admin.get(live_server.url + "/api/installations?release_channel=demo").json()
    assert {i["version"] for i in listing["items"]} == {"1.3.0"}
    assert {i["releases_behind"] for i in listing["items"]} == {0}


def test_normal_heartbeat_pays_nothing_for_rollouts(app, client, agent, setup):
    """Only a heartbeat that registers an installation or changes its channel runs the rollout
    hook; a steady one sends the same statements whether or not a rollout is active."""
    from sqlalchemy import event

    def count_statements():
        seen: list[str] = []

        def record(conn, cursor, statement, *args):
            seen.append(statement)

        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            beat(agent, "inst-000", "1.2.0", "stable")
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return seen

    without = count_statements()
    rollout(client, batch_size=2)
    with_rollout = count_statements()
    assert len(with_rollout) == len(without)
    assert not any("FROM rollouts" in s and "FOR UPDATE" in s for s in with_rollout)
