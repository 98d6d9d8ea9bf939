"""The plugin marketplace: plugin releases, requests (create, list, approve, reject), the
agent's plugin job pair, plugin rollouts on the shared engine, what each installation has
(page, API, fleet filter), the admin screens, the CLI, and the whole flow against gunicorn."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from cp.extensions import db
from cp.models import AuditLog, InstallationPlugin, Job, PluginRequest, Release, Rollout
from tests.conftest import AGENT_SECRETS, AGENT_TOKEN, TOKENS, bearer, csrf_token_from
from tests.rollout_helpers import (  # noqa: F401  (env is a fixture)
    KEY,
    OTHER_KEY,
    assert_error,
    beat,
    env,
    publish,
    release_body,
)
from tests.plugin_helpers import ask, ask_ok, plugin_body, publish_plugin

XSS = "<script>alert(1)</script>"
CONTRACT_ROLLOUT_KEYS = {"id", "release", "channel", "batch_size", "status", "current_batch", "batches", "targets"}


# --- helpers ----------------------------------------------------------------------------------
def approve(client, request_id: int, role: str = "admin", body: dict | None = None):
    return client.post(f"/api/plugins/requests/{request_id}/approve", json=body or {}, headers=bearer(role))


def reject(client, request_id: int, reason: str | None = "Not licensed", role: str = "admin"):
    body = {} if reason is None else {"reason": reason}
    return client.post(f"/api/plugins/requests/{request_id}/reject", json=body, headers=bearer(role))


def pnext(agent, instance_id: str):
    resp = agent.post("/api/plugins/next", {"instance_id": instance_id})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["job"]


def preport(agent, instance_id: str, job_id, status: str, message: str | None = None):
    return agent.post("/api/plugins/report",
                      {"instance_id": instance_id, "job_id": job_id, "status": status, "message": message})


def mine(agent, instance_id: str, **kw) -> dict:
    resp = agent.post("/api/plugins/requests/mine", {"instance_id": instance_id, **kw})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def prollout(client, plugin: str = "payments", version: str = "2.1.0", batch_size: int = 2, role: str = "admin",
             **kw):
    return client.post("/api/plugins/rollouts", json={"plugin": plugin, "version": version,
                                                      "batch_size": batch_size, **kw}, headers=bearer(role))


def paction(client, rollout_id: int, name: str, body: dict | None = None, role: str = "admin"):
    return client.post(f"/api/plugins/rollouts/{rollout_id}/{name}", json=body or {}, headers=bearer(role))


def install(agent, instance_id: str, expect_version: str | None = None) -> dict:
    """Fetch the installation's plugin job and report it succeeded."""
    job = pnext(agent, instance_id)
    assert job is not None, f"no plugin job for {instance_id}"
    if expect_version:
        assert job["version"] == expect_version
    resp = preport(agent, instance_id, job["id"], "succeeded", "installed")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return job


def pending_plugin(agent, instance_id: str) -> bool:
    resp = agent.heartbeat(instance_id)
    assert resp.status_code == 200
    return resp.get_json()["pending"]["plugin"]


def state(app) -> dict:
    """Everything a rejected request must leave unchanged."""
    with app.app_context():
        out = {
            "releases": [tuple(r) for r in db.session.execute(
                select(Release.id, Release.plugin, Release.version).order_by(Release.id))],
            "requests": [tuple(r) for r in db.session.execute(
                select(PluginRequest.id, PluginRequest.status, PluginRequest.decision_reason, PluginRequest.job_id)
                .order_by(PluginRequest.id))],
            "jobs": [tuple(r) for r in db.session.execute(
                select(Job.id, Job.kind, Job.status, Job.message, Job.attempts).order_by(Job.id))],
            "installed": [tuple(r) for r in db.session.execute(
                select(InstallationPlugin.installation_id, InstallationPlugin.plugin, InstallationPlugin.version)
                .order_by(InstallationPlugin.installation_id, InstallationPlugin.plugin))],
            "rollouts": [tuple(r) for r in db.session.execute(
                select(Rollout.id, Rollout.status, Rollout.current_batch).order_by(Rollout.id))],
        }
        db.session.remove()
    return out


def installed(app, instance_id: str) -> dict[str, str | None]:
    from cp.models import Installation

    with app.app_context():
        rows = db.session.execute(select(InstallationPlugin.plugin, InstallationPlugin.version)
                                  .join(Installation, Installation.id == InstallationPlugin.installation_id)
                                  .where(Installation.instance_id == instance_id)).all()
        db.session.remove()
    return dict(rows)


@pytest.fixture
def market(app, client, agent):
    """Installations shop-001..shop-004 (and mapped-001), payments 2.0.0 published."""
    for iid in ("shop-001", "shop-002", "shop-003", "shop-004", "mapped-001"):
        beat(agent, iid, "1.2.0", "stable")
    publish_plugin(client, "payments", "2.0.0")


def give(agent, client, instance_id: str, plugin: str = "payments", version: str | None = None) -> dict:
    """Request, approve and install a plugin on an installation; returns the job."""
    rid = ask_ok(agent, instance_id, plugin, version)["id"]
    assert approve(client, rid).status_code == 200
    return install(agent, instance_id)


# --- plugin releases --------------------------------------------------------------------------
def test_publish_and_list_plugin_releases(app, client, market):
    body = publish_plugin(client, "payments", "2.1.0")
    assert set(body) == {"id", "plugin", "version", "key_id", "created_at"}
    assert (body["plugin"], body["version"], body["key_id"]) == ("payments", "2.1.0", "k1")
    assert body["created_at"].endswith("Z")
    publish_plugin(client, "shipping", "1.0.0")
    publish(client, "2.1.0")  # a core release of the same version is another thing
    publish_plugin(client, "shipping", "2.1.0")  # same version, other plugin: fine

    listing = client.get("/api/plugins/releases?plugin=payments", headers=bearer("admin")).get_json()
    assert [(i["plugin"], i["version"]) for i in listing["items"]] == [("payments", "2.1.0"), ("payments", "2.0.0")]
    assert listing["total"] == 2
    item = listing["items"][0]
    assert item["manifest"]["plugin"] == "payments" and item["signature"] and "channel" not in item
    everything = client.get("/api/plugins/releases?limit=2", headers=bearer("admin")).get_json()
    assert everything["total"] == 4 and len(everything["items"]) == 2
    assert everything["items"][0]["plugin"] == "shipping"  # newest first
    core = client.get("/api/releases", headers=bearer("support")).get_json()
    assert [i["version"] for i in core["items"]] == ["2.1.0"]  # plugin releases stay out of the core list


def test_plugin_releases_are_admin_only(app, client, market):
    for role in ("support", "ops"):
        assert_error(client.get("/api/plugins/releases", headers=bearer(role)), 403)
        assert_error(client.post("/api/plugins/releases", json=plugin_body("payments", "2.2.0"),
                                 headers=bearer(role)), 403)
    assert_error(client.get("/api/plugins/releases"), 401)


def test_plugin_release_with_a_bad_signature(app, client, market):
    before = state(app)
    body = plugin_body("payments", "2.1.0", key=OTHER_KEY)
    data = assert_error(client.post("/api/plugins/releases", json=body, headers=bearer("admin")), 422,
                        "invalid_signature")
    assert "signature" in data["details"]
    tampered = plugin_body("payments", "2.1.0")
    tampered["manifest"]["artifact"] = "https://evil.example.com/x.zip"
    assert_error(client.post("/api/plugins/releases", json=tampered, headers=bearer("admin")), 422,
                 "invalid_signature")
    # the signature covers the manifest only: re-labelling a signed manifest as another plugin is refused
    other = plugin_body("payments", "2.1.0")
    other["plugin"] = "shipping"
    data = assert_error(client.post("/api/plugins/releases", json=other, headers=bearer("admin")), 422,
                        "validation_error")
    assert "manifest" in data["details"]
    assert state(app) == before


def test_plugin_release_with_an_unknown_key(app, client, market):
    before = state(app)
    data = assert_error(client.post("/api/plugins/releases", json=plugin_body("payments", "2.1.0", key_id="k9"),
                                    headers=bearer("admin")), 422, "invalid_signature")
    assert "key_id" in data["details"]
    assert state(app) == before


def test_plugin_release_already_published(app, client, market):
    before = state(app)
    assert_error(client.post("/api/plugins/releases", json=plugin_body("payments", "2.0.0"),
                             headers=bearer("admin")), 409, "release_exists")
    assert state(app) == before


@pytest.mark.parametrize("change, field", [
    ({"plugin": "Payments"}, "plugin"), ({"plugin": "-pay"}, "plugin"), ({"plugin": "a" * 129}, "plugin"),
    ({"plugin": "pay ments"}, "plugin"), ({"plugin": None}, "plugin"), ({"channel": "stable"}, "channel"),
    ({"version": "2.1"}, "version"), ({"manifest": "x"}, "manifest"), ({"bogus": 1}, "bogus"),
])
def test_plugin_release_bad_input(app, client, market, change, field):
    before = state(app)
    body = {**plugin_body("payments", "2.1.0"), **change}
    data = assert_error(client.post("/api/plugins/releases", json=body, headers=bearer("admin")), 422,
                        "validation_error")
    assert field in data["details"]
    assert state(app) == before


def test_plugin_release_manifest_version_mismatch(app, client, market):
    body = plugin_body("payments", "2.1.0", manifest={"plugin": "payments", "version": "2.2.0"})
    body["version"] = "2.1.0"
    assert "manifest" in assert_error(client.post("/api/plugins/releases", json=body, headers=bearer("admin")),
                                      422)["details"]


def test_plugin_release_manifest_without_plugin_name_is_accepted(app, client, market):
    body = publish_plugin(client, "shipping", "1.0.0", manifest={"version": "1.0.0"})
    assert body["plugin"] == "shipping"


# --- requests ---------------------------------------------------------------------------------
def test_request_is_created_pending(app, client, agent, market):
    body = ask_ok(agent, "shop-001", "payments", None, "Customers want card payments")
    assert body["status"] == "pending" and isinstance(body["id"], int)
    assert (body["plugin"], body["version"], body["reason"]) == ("payments", None, "Customers want card payments")
    assert body["decision_reason"] is None and body["job_id"] is None
    # the heartbeat has nothing for the agent yet
    assert pending_plugin(agent, "shop-001") is False


def test_request_unknown_plugin(app, client, agent, market):
    before = state(app)
    data = assert_error(ask(agent, "shop-001", "nosuchplugin"), 404, "unknown_plugin")
    assert data["details"] == {"plugin": "nosuchplugin"}
    assert state(app) == before


def test_request_unknown_version(app, client, agent, market):
    before = state(app)
    assert_error(ask(agent, "shop-001", "payments", "9.9.9"), 404, "unknown_release")
    assert state(app) == before


def test_request_from_an_unknown_installation(app, client, agent, market):
    before = state(app)
    assert_error(ask(agent, "never-seen", "payments"), 404, "unknown_installation")
    assert state(app) == before


def test_request_while_one_is_pending(app, client, agent, market):
    first = ask_ok(agent, "shop-001", "payments")
    before = state(app)
    data = assert_error(ask(agent, "shop-001", "payments", "2.0.0"), 409, "request_pending")
    assert data["details"] == {"request_id": first["id"]}
    assert state(app) == before
    # another installation, or another plugin, is independent
    ask_ok(agent, "shop-002", "payments")
    publish_plugin(client, "shipping", "1.0.0")
    ask_ok(agent, "shop-001", "shipping")


def test_request_for_a_plugin_already_installed_at_that_version(app, client, agent, market):
    give(agent, client, "shop-001")
    before = state(app)
    data = assert_error(ask(agent, "shop-001", "payments", "2.0.0"), 409, "plugin_already_installed")
    assert data["details"] == {"plugin": "payments", "version": "2.0.0"}
    # without a version the request means the newest, which is installed too
    assert_error(ask(agent, "shop-001", "payments"), 409, "plugin_already_installed")
    assert state(app) == before
    # a newer release can be asked for
    publish_plugin(client, "payments", "2.1.0")
    assert ask_ok(agent, "shop-001", "payments")["status"] == "pending"


@pytest.mark.parametrize("payload, field", [
    ({"plugin": None}, "plugin"), ({}, "plugin"), ({"plugin": "PAYMENTS"}, "plugin"),
    ({"plugin": "payments", "version": ""}, "version"), ({"plugin": "payments", "version": 2}, "version"),
    ({"plugin": "payments", "reason": "x" * 2001}, "reason"), ({"plugin": "payments", "instance_id": "a b"},
                                                               "instance_id"),
])
def test_request_bad_input(app, client, agent, market, payload, field):
    before = state(app)
    body = {"instance_id": "shop-001", **payload}
    resp = agent.post("/api/plugins/requests", body, secret=AGENT_TOKEN)
    data = assert_error(resp, 422, "validation_error")
    assert field in data["details"]
    assert state(app) == before


def test_request_with_a_bad_signature(app, client, agent, market):
    before = state(app)
    resp = agent.post("/api/plugins/requests", {"instance_id": "shop-001", "plugin": "payments"}, secret="wrong")
    assert_error(resp, 401, "invalid_signature")
    # a mapped installation may not sign with the shared token
    resp = agent.post("/api/plugins/requests", {"instance_id": "mapped-001", "plugin": "payments"},
                      secret=AGENT_TOKEN)
    assert_error(resp, 401, "invalid_signature")
    assert state(app) == before


def test_list_requests_filters_and_roles(app, client, agent, market, clock):
    a = ask_ok(agent, "shop-001", "payments")
    clock.advance(seconds=1)
    b = ask_ok(agent, "shop-002", "payments", "2.0.0", XSS)
    clock.advance(seconds=1)
    c = ask_ok(agent, "shop-003", "payments")
    assert approve(client, a["id"]).status_code == 200
    assert reject(client, c["id"]).status_code == 200
    listing = client.get("/api/plugins/requests/list", headers=bearer("admin")).get_json()
    assert [i["id"] for i in listing["items"]] == [c["id"], b["id"], a["id"]] and listing["total"] == 3
    assert listing["items"][1]["instance_id"] == "shop-002" and listing["items"][1]["reason"] == XSS
    pending = client.get("/api/plugins/requests/list?status=pending", headers=bearer("admin")).get_json()
    assert [i["id"] for i in pending["items"]] == [b["id"]] and pending["total"] == 1
    approved = client.get("/api/plugins/requests/list?status=approved", headers=bearer("admin")).get_json()
    assert approved["items"][0]["job"]["version"] == "2.0.0" and approved["items"][0]["decided_by"] == "admin"
    paged = client.get("/api/plugins/requests/list?limit=1&offset=1", headers=bearer("admin")).get_json()
    assert [i["id"] for i in paged["items"]] == [b["id"]] and paged["total"] == 3
    by_inst = client.get("/api/plugins/requests/list?instance_id=shop-003", headers=bearer("admin")).get_json()
    assert [i["id"] for i in by_inst["items"]] == [c["id"]]
    assert_error(client.get("/api/plugins/requests/list?status=bogus", headers=bearer("admin")), 422)
    assert_error(client.get("/api/plugins/requests/list", headers=bearer("ops")), 403)
    assert_error(client.get("/api/plugins/requests/list", headers=bearer("support")), 403)


# --- approve / reject -------------------------------------------------------------------------
def test_approve_creates_an_install_job(app, client, agent, market):
    publish_plugin(client, "payments", "2.1.0")
    publish_plugin(client, "payments", "3.0.0-rc.1")  # a pre-release is not "the newest" by default
    rid = ask_ok(agent, "shop-001", "payments")["id"]
    resp = approve(client, rid, body={"reason": "ok for Q3"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["status"] == "approved" and body["decision_reason"] == "ok for Q3" and body["decided_at"]
    assert body["job"] == {"id": body["job_id"], "status": "pending", "version": "2.1.0"}
    with app.app_context():
        job = db.session.get(Job, body["job_id"])
        assert (job.kind, job.rollout_id, job.batch, job.status) == ("plugin", None, None, "pending")
        db.session.remove()
    assert installed(app, "shop-001") == {"payments": None}  # approved, not installed yet
    assert pending_plugin(agent, "shop-001") is True
    assert pending_plugin(agent, "shop-002") is False


def test_approve_the_requested_version(app, client, agent, market):
    publish_plugin(client, "payments", "2.1.0")
    rid = ask_ok(agent, "shop-001", "payments", "2.0.0")["id"]
    assert approve(client, rid).get_json()["job"]["version"] == "2.0.0"
    assert install(agent, "shop-001")["version"] == "2.0.0"


def test_approve_twice(app, client, agent, market):
    rid = ask_ok(agent, "shop-001", "payments")["id"]
    assert approve(client, rid).status_code == 200
    before = state(app)
    data = assert_error(approve(client, rid), 409, "request_not_pending")
    assert data["details"] == {"status": "approved"}
    assert_error(reject(client, rid), 409, "request_not_pending")
    assert state(app) == before


def test_reject_twice(app, client, agent, market):
    rid = ask_ok(agent, "shop-001", "payments")["id"]
    assert reject(client, rid, "Not in your plan").status_code == 200
    before = state(app)
    assert_error(reject(client, rid, "again"), 409, "request_not_pending")
    assert_error(approve(client, rid), 409, "request_not_pending")
    assert state(app) == before
    assert pending_plugin(agent, "shop-001") is False


def test_decide_unknown_request(app, client, market):
    before = state(app)
    assert_error(approve(client, 999), 404, "unknown_request")
    assert_error(reject(client, 999), 404, "unknown_request")
    assert state(app) == before


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "x" * 2001}, {"reason": 5}, {"bogus": "x"}])
def test_reject_needs_a_reason(app, client, agent, market, body):
    rid = ask_ok(agent, "shop-001", "payments")["id"]
    before = state(app)
    resp = client.post(f"/api/plugins/requests/{rid}/reject", json=body, headers=bearer("admin"))
    assert_error(resp, 422, "validation_error")
    assert state(app) == before


def test_decisions_are_admin_only(app, client, agent, market):
    rid = ask_ok(agent, "shop-001", "payments")["id"]
    before = state(app)
    for role in ("support", "ops"):
        assert_error(approve(client, rid, role=role), 403)
        assert_error(reject(client, rid, role=role), 403)
    assert_error(client.post(f"/api/plugins/requests/{rid}/approve", json={}), 401)
    assert state(app) == before


def test_rejection_reason_reaches_the_agent(app, client, agent, market):
    rid = ask_ok(agent, "shop-001", "payments", None, "please")["id"]
    other = ask_ok(agent, "shop-002", "payments")["id"]
    assert reject(client, rid, f"Not licensed {XSS}").status_code == 200
    seen = mine(agent, "shop-001")
    assert seen["total"] == 1
    item = seen["items"][0]
    assert (item["id"], item["status"], item["decision_reason"], item["reason"]) == (
        rid, "rejected", f"Not licensed {XSS}", "please")
    assert item["decided_at"] and "decided_by" not in item and "instance_id" not in item
    # isolation: another installation sees only its own requests
    assert [i["id"] for i in mine(agent, "shop-002")["items"]] == [other]
    assert mine(agent, "shop-003") == {"items": [], "total": 0}
    assert mine(agent, "never-seen") == {"items": [], "total": 0}
    assert mine(agent, "shop-001", status="pending")["total"] == 0
    assert_error(agent.post("/api/plugins/requests/mine", {"instance_id": "shop-001", "status": "bogus"}), 422)
    assert_error(agent.post("/api/plugins/requests/mine", {"instance_id": "shop-001", "limit": 501}), 422)
    # after a rejection the agent may ask again
    assert ask_ok(agent, "shop-001", "payments")["status"] == "pending"


def test_a_new_approval_supersedes_an_unfetched_install_job(app, client, agent, market):
    publish_plugin(client, "payments", "2.1.0")
    first = approve(client, ask_ok(agent, "shop-001", "payments", "2.0.0")["id"]).get_json()
    second = approve(client, ask_ok(agent, "shop-001", "payments", "2.1.0")["id"]).get_json()
    with app.app_context():
        statuses = dict(db.session.execute(select(Job.id, Job.status)).all())
        db.session.remove()
    assert statuses == {first["job_id"]: "cancelled", second["job_id"]: "pending"}
    assert install(agent, "shop-001")["version"] == "2.1.0"
    assert pnext(agent, "shop-001") is None


# --- the agent's job pair -----------------------------------------------------------------------
def test_install_next_and_report(app, client, agent, market):
    rid = ask_ok(agent, "shop-001", "payments")["id"]
    approve(client, rid)
    assert pending_plugin(agent, "shop-001") is True
    job = pnext(agent, "shop-001")
    assert set(job) >= {"id", "rollout_id", "status", "version", "manifest", "signature", "key_id", "plugin"}
    assert (job["plugin"], job["version"], job["status"], job["rollout_id"]) == ("payments", "2.0.0", "in_progress",
                                                                                 None)
    assert job["manifest"]["plugin"] == "payments"
    from cp.delivery.releases import trusted_keys, verify_manifest_signature

    with app.app_context():
        verify_manifest_signature(job["manifest"], job["signature"], job["key_id"], keys=trusted_keys())
    assert pnext(agent, "shop-001")["id"] == job["id"]  # asking again: the same job
    assert pending_plugin(agent, "shop-001") is True  # in progress: still handed out
    assert pnext(agent, "shop-002") is None
    assert agent.post("/api/updates/next", {"instance_id": "shop-001"}).get_json()["job"] is None  # not an update
    assert preport(agent, "shop-001", job["id"], "in_progress", "downloading").status_code == 200
    resp = preport(agent, "shop-001", job["id"], "succeeded", "done")
    assert resp.status_code == 200 and resp.get_json()["status"] == "succeeded"
    assert resp.get_json()["plugin"] == "payments"
    assert resp.get_json()["job"] == {k: v for k, v in resp.get_json().items() if k != "job"}  # as updates
    assert installed(app, "shop-001") == {"payments": "2.0.0"}
    assert preport(agent, "shop-001", job["id"], "succeeded", "done").status_code == 200  # same report: no change
    assert pending_plugin(agent, "shop-001") is False
    assert pnext(agent, "shop-001") is None
    before = state(app)
    assert_error(preport(agent, "shop-001", job["id"], "failed"), 409, "job_finished")
    assert state(app) == before


def test_failed_install_keeps_the_installed_version(app, client, agent, market):
    give(agent, client, "shop-001")
    publish_plugin(client, "payments", "2.1.0")
    approve(client, ask_ok(agent, "shop-001", "payments")["id"])
    job = pnext(agent, "shop-001")
    assert preport(agent, "shop-001", job["id"], "failed", "disk full").status_code == 200
    assert installed(app, "shop-001") == {"payments": "2.0.0"}


def test_agent_cannot_fetch_or_report_another_installations_plugin_job(app, client, agent, market):
    approve(client, ask_ok(agent, "shop-001", "payments")["id"])
    job = pnext(agent, "shop-001")
    assert pnext(agent, "shop-002") is None  # never another installation's job
    before = state(app)
    data = assert_error(preport(agent, "shop-002", job["id"], "succeeded"), 403, "forbidden")
    assert "manifest" not in json.dumps(data)
    assert_error(preport(agent, "mapped-001", job["id"], "failed"), 403, "forbidden")
    # the right body signed with another installation's secret is refused before anything
    resp = agent.post("/api/plugins/report", {"instance_id": "shop-001", "job_id": job["id"], "status": "succeeded"},
                      secret=AGENT_SECRETS["mapped-001"])
    assert_error(resp, 401, "invalid_signature")
    assert state(app) == before
    assert installed(app, "shop-002") == {}


def test_report_unknown_or_core_job(app, client, agent, market):
    beat(agent, "shop-001", "1.2.0", "stable")
    publish(client, "1.3.0")
    assert client.post("/api/rollouts", json={"release": "1.3.0", "channel": "stable", "batch_size": 10},
                       headers=bearer("admin")).status_code == 201
    update_job = agent.post("/api/updates/next", {"instance_id": "shop-001"}).get_json()["job"]
    before = state(app)
    assert_error(preport(agent, "shop-001", 999_999, "succeeded"), 404, "unknown_job")
    assert_error(preport(agent, "shop-001", update_job["id"], "succeeded"), 404, "unknown_job")  # not a plugin job
    assert_error(preport(agent, "shop-001", "1", "succeeded"), 422, "validation_error")
    assert_error(preport(agent, "shop-001", 1, "done"), 422, "validation_error")
    assert state(app) == before


# --- plugin rollouts --------------------------------------------------------------------------
@pytest.fixture
def upgraded_market(app, client, agent, market):
    """shop-001..004 run payments 2.0.0; 2.1.0 is published."""
    for iid in ("shop-001", "shop-002", "shop-003", "shop-004"):
        give(agent, client, iid)
    publish_plugin(client, "payments", "2.1.0")


def test_plugin_rollout_batches(app, client, agent, upgraded_market):
    resp = prollout(client, batch_size=3)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    r = resp.get_json()
    assert CONTRACT_ROLLOUT_KEYS <= set(r)
    assert {k: r[k] for k in CONTRACT_ROLLOUT_KEYS} == {
        "id": r["id"], "release": "2.1.0", "channel": None, "batch_size": 3, "status": "active", "current_batch": 1,
        "batches": 2, "targets": 4}
    assert (r["kind"], r["plugin"], r["version"]) == ("plugin", "payments", "2.1.0")
    with app.app_context():
        jobs = db.session.execute(select(Job.installation_id, Job.batch, Job.kind).where(Job.rollout_id == r["id"])
                                  .order_by(Job.position)).all()
        db.session.remove()
    assert [(b, k) for _i, b, k in jobs] == [(1, "plugin"), (1, "plugin"), (1, "plugin"), (2, "plugin")]

    for iid in ("shop-001", "shop-002", "shop-003"):
        assert pending_plugin(agent, iid) is True
        install(agent, iid, "2.1.0")
    assert pending_plugin(agent, "shop-004") is False and pnext(agent, "shop-004") is None
    assert paction(client, r["id"], "advance").get_json()["current_batch"] == 2
    install(agent, "shop-004", "2.1.0")
    done = paction(client, r["id"], "advance").get_json()
    assert done["status"] == "completed" and done["jobs"]["succeeded"] == 4
    assert {installed(app, i)["payments"] for i in ("shop-001", "shop-002", "shop-003", "shop-004")} == {"2.1.0"}
    detail = client.get(f"/api/plugins/rollouts/{r['id']}", headers=bearer("support")).get_json()
    assert [b["jobs"]["succeeded"] for b in detail["per_batch"]] == [3, 1]
    # the core endpoints read plugin rollouts too, and list them under kind=plugin
    assert client.get(f"/api/rollouts/{r['id']}", headers=bearer("support")).get_json()["plugin"] == "payments"
    listed = client.get("/api/plugins/rollouts", headers=bearer("support")).get_json()
    assert [i["id"] for i in listed["items"]] == [r["id"]] and listed["items"][0]["version"] == "2.1.0"


def test_plugin_rollout_targets_only_approved_installations_on_another_version(app, client, agent, market):
    give(agent, client, "shop-003")
    give(agent, client, "shop-001")
    approve(client, ask_ok(agent, "shop-002", "payments")["id"])  # approved, not installed yet
    publish_plugin(client, "payments", "2.1.0")
    give(agent, client, "shop-004", version="2.1.0")  # already on the release
    r = prollout(client, batch_size=1).get_json()
    assert (r["targets"], r["batches"]) == (3, 3)
    with app.app_context():
        from cp.models import Installation

        order = db.session.scalars(select(Installation.instance_id).join(Job, Job.installation_id == Installation.id)
                                   .where(Job.rollout_id == r["id"]).order_by(Job.position)).all()
        db.session.remove()
    assert order == ["shop-001", "shop-002", "shop-003"]  # stable order by instance id


def test_plugin_rollout_skips_newer_unless_downgrade_allowed(app, client, agent, market):
    publish_plugin(client, "payments", "2.1.0")
    give(agent, client, "shop-001", version="2.1.0")
    give(agent, client, "shop-002", version="2.0.0")
    r = prollout(client, version="2.0.0").get_json()
    assert (r["targets"], r["skipped"]) == (0, 1)
    assert paction(client, r["id"], "cancel").status_code == 200
    r = prollout(client, version="2.0.0", allow_downgrade=True).get_json()
    assert (r["targets"], r["skipped"]) == (1, 0)
    install(agent, "shop-001", "2.0.0")
    assert installed(app, "shop-001") == {"payments": "2.0.0"}


def test_plugin_rollout_unknown_plugin_or_version(app, client, agent, upgraded_market):
    before = state(app)
    assert_error(prollout(client, plugin="nosuch"), 404, "unknown_plugin")
    assert_error(prollout(client, version="9.9.9"), 404, "unknown_release")
    assert state(app) == before


@pytest.mark.parametrize("change, field", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": "2"}, "batch_size"), ({"plugin": "BAD"}, "plugin"),
    ({"version": ""}, "version"), ({"release": "2.1.0"}, "release"), ({"channel": "stable"}, "channel"),
    ({"max_failure_ratio": 2}, "max_failure_ratio"),
])
def test_plugin_rollout_bad_input(app, client, agent, upgraded_market, change, field):
    before = state(app)
    body = {"plugin": "payments", "version": "2.1.0", "batch_size": 2, **change}
    data = assert_error(client.post("/api/plugins/rollouts", json=body, headers=bearer("admin")), 422)
    assert field in data["details"]
    assert state(app) == before


def test_one_open_rollout_per_plugin(app, client, agent, upgraded_market):
    first = prollout(client).get_json()
    before = state(app)
    data = assert_error(prollout(client), 409, "rollout_in_progress")
    assert data["details"]["rollout_id"] == first["id"]
    assert state(app) == before
    # a core rollout is independent
    publish(client, "1.3.0")
    assert client.post("/api/rollouts", json={"release": "1.3.0", "channel": "stable", "batch_size": 5},
                       headers=bearer("admin")).status_code == 201


def test_pause_resume_cancel_retry_and_roles(app, client, agent, upgraded_market):
    rid = prollout(client, batch_size=2).get_json()["id"]
    assert_error(paction(client, rid, "advance", role="ops"), 403)
    assert_error(paction(client, rid, "cancel", role="ops"), 403)
    assert_error(prollout(client, role="ops"), 403)
    assert_error(paction(client, rid, "pause", role="support"), 403)
    assert paction(client, rid, "pause", {"reason": "watching"}, role="ops").get_json()["status"] == "paused"
    assert pending_plugin(agent, "shop-001") is False and pnext(agent, "shop-001") is None
    assert_error(paction(client, rid, "advance"), 409, "invalid_rollout_state")
    assert paction(client, rid, "resume", role="ops").get_json()["status"] == "active"
    job = pnext(agent, "shop-001")
    assert preport(agent, "shop-001", job["id"], "failed", "boom").status_code == 200
    assert_error(paction(client, rid, "advance"), 409, "batch_has_failures")
    retried = paction(client, rid, "retry").get_json()
    assert retried["requeued"] == 1
    assert pnext(agent, "shop-001")["id"] == job["id"]
    cancelled = paction(client, rid, "cancel").get_json()
    assert cancelled["status"] == "cancelled"
    assert pnext(agent, "shop-003") is None  # its batch-2 job was cancelled
    assert client.get(f"/api/plugins/rollouts/{rid}", headers=bearer("support")).status_code == 200


def test_max_failures_pauses_a_plugin_rollout(app, client, agent, upgraded_market):
    rid = prollout(client, batch_size=4, max_failures=0).get_json()["id"]
    job = pnext(agent, "shop-002")
    assert preport(agent, "shop-002", job["id"], "failed", "crash").status_code == 200
    body = client.get(f"/api/plugins/rollouts/{rid}", headers=bearer("support")).get_json()
    assert body["status"] == "paused" and "max_failures" in body["paused_reason"]
    alerts = client.get("/api/alerts?source=rollout", headers=bearer("support")).get_json()["items"]
    assert len(alerts) == 1 and "plugin 'payments'" in alerts[0]["message"]


def test_core_and_plugin_rollout_ids_stay_apart(app, client, agent, upgraded_market):
    publish(client, "1.3.0")
    core = client.post("/api/rollouts", json={"release": "1.3.0", "channel": "stable", "batch_size": 5},
                       headers=bearer("admin")).get_json()
    before = state(app)
    assert_error(client.get(f"/api/plugins/rollouts/{core['id']}", headers=bearer("support")), 404, "unknown_rollout")
    for op in ("advance", "pause", "resume", "cancel", "retry"):
        assert_error(paction(client, core["id"], op), 404, "unknown_rollout")
    assert_error(paction(client, 999, "advance"), 404, "unknown_rollout")
    assert state(app) == before


# --- what each installation has ---------------------------------------------------------------
def test_installation_api_and_fleet_filter(app, client, agent, upgraded_market):
    rid = prollout(client, batch_size=2).get_json()["id"]
    install(agent, "shop-001", "2.1.0")
    publish_plugin(client, "shipping", "1.0.0")
    give(agent, client, "shop-001", plugin="shipping")
    detail = client.get("/api/installations/shop-001", headers=bearer("support")).get_json()
    assert detail["plugins"] == [{"plugin": "payments", "version": "2.1.0"}, {"plugin": "shipping", "version": "1.0.0"}]
    approve(client, ask_ok(agent, "mapped-001", "payments")["id"])  # approved, not installed: not listed
    assert client.get("/api/installations/mapped-001", headers=bearer("support")).get_json()["plugins"] == []

    def ids(query):
        body = client.get("/api/installations?" + query, headers=bearer("support")).get_json()
        return sorted(i["instance_id"] for i in body["items"])

    assert ids("plugin=payments&plugin_version=2.1.0") == ["shop-001"]
    assert ids("plugin=payments&plugin_version=2.0.0") == ["shop-002", "shop-003", "shop-004"]
    assert ids("plugin=payments") == ["shop-001", "shop-002", "shop-003", "shop-004"]
    assert ids("plugin=shipping") == ["shop-001"]
    assert ids("plugin=nosuch") == []
    assert rid


def test_installation_page_and_fleet_page(app, client, agent, market, login_as):
    ask_ok(agent, "shop-002", "payments", None, XSS)
    rid = ask_ok(agent, "shop-001", "payments", None, "for checkout")["id"]
    approve(client, rid)
    install(agent, "shop-001")
    publish_plugin(client, "payments", "2.1.0")
    reject(client, ask_ok(agent, "shop-001", "payments")["id"], f"later {XSS}")
    login_as("support")
    html = client.get("/installations/shop-001").get_data(as_text=True)
    section = html.split("<h2>Plugins</h2>", 1)[1].split("<h2>History</h2>", 1)[0]
    assert "payments" in section and "2.0.0" in section and "for checkout" in section
    assert "succeeded" in section and "rejected" in section
    assert XSS not in html and "later &lt;script&gt;" in section
    assert "plugin=payments&amp;plugin_version=2.0.0" in section  # links to the fleet filter
    page = client.get("/?plugin=payments&plugin_version=2.0.0").get_data(as_text=True)
    assert 'name="plugin"' in page and 'name="plugin_version"' in page and 'value="2.0.0"' in page
    assert "shop-001" in page and "shop-002" not in page and "1 installation" in page
    page = client.get("/?plugin=payments&plugin_version=9.9.9").get_data(as_text=True)
    assert "No installation matches." in page
    assert "shop-002" in client.get("/installations/shop-002").get_data(as_text=True)
    assert XSS not in client.get("/installations/shop-002").get_data(as_text=True)


# --- admin panel ------------------------------------------------------------------------------
def _admin_post(client, path: str, data: dict):
    token = csrf_token_from(client.get("/admin/plugin_rollouts/").get_data(as_text=True))
    return client.post(path, data={"csrf_token": token, **data})


@pytest.mark.parametrize("role, releases, requests_, rollouts_", [
    ("support", 403, 403, 200), ("ops", 403, 403, 200), ("admin", 200, 200, 200)])
def test_admin_screens_by_role(app, client, agent, market, login_as, role, releases, requests_, rollouts_):
    login_as(role)
    assert client.get("/admin/plugin_releases/").status_code == releases
    assert client.get("/admin/plugin_requests/").status_code == requests_
    assert client.get("/admin/plugin_rollouts/").status_code == rollouts_
    menu = client.get("/admin/").get_data(as_text=True)
    assert ("/admin/plugin_requests/" in menu) == (role == "admin")


def test_admin_plugin_releases_screen(app, client, agent, market, login_as):
    publish(client, "1.3.0")
    publish_plugin(client, "payments", "2.1.0", manifest={"plugin": "payments", "version": "2.1.0", "notes": XSS})
    login_as("admin")
    html = client.get("/admin/plugin_releases/").get_data(as_text=True)
    assert "2.1.0" in html and "2.0.0" in html and "1.3.0" not in html  # plugin releases only
    with app.app_context():
        ids = dict(db.session.execute(select(Release.version, Release.id)).all())
        db.session.remove()
    details = client.get(f"/admin/plugin_releases/details/?id={ids['2.1.0']}").get_data(as_text=True)
    assert "cp-manifest" in details and XSS not in details and "&lt;script&gt;" in details
    assert "&#34;plugin&#34;: &#34;payments&#34;" in details or "&quot;plugin&quot;: &quot;payments&quot;" in details
    core = client.get(f"/admin/plugin_releases/details/?id={ids['1.3.0']}")
    assert core.status_code == 302  # not a plugin release: back to the list
    assert client.get("/admin/plugin_releases/new/").status_code == 403


def test_admin_bulk_approve(app, client, agent, market, login_as):
    a = ask_ok(agent, "shop-001", "payments")["id"]
    b = ask_ok(agent, "shop-002", "payments", None, XSS)["id"]
    c = ask_ok(agent, "shop-003", "payments")["id"]
    reject(client, c)
    login_as("admin")
    html = client.get("/admin/plugin_requests/").get_data(as_text=True)
    assert XSS not in html and 'data-cp-action="approve"' in html
    resp = _admin_post(client, "/admin/plugin_requests/action/", {"action": "approve",
                                                                  "rowid": [str(a), str(b), str(c)]})
    assert resp.status_code == 302
    st = {r[0]: r[1] for r in state(app)["requests"]}
    assert st == {a: "approved", b: "approved", c: "rejected"}
    flashed = client.get("/admin/plugin_requests/").get_data(as_text=True)
    assert "2 request(s) approved" in flashed and "1 skipped" in flashed
    assert pnext(agent, "shop-001")["version"] == "2.0.0"
    with app.app_context():
        entry = db.session.scalars(select(AuditLog).where(AuditLog.action == "admin.plugin_request.approve")).one()
        assert entry.outcome == "ok" and entry.role == "admin"
        db.session.remove()


def test_admin_bulk_reject_asks_for_a_reason(app, client, agent, market, login_as):
    a = ask_ok(agent, "shop-001", "payments", None, XSS)["id"]
    b = ask_ok(agent, "shop-002", "payments")["id"]
    login_as("admin")
    resp = _admin_post(client, "/admin/plugin_requests/action/", {"action": "reject", "rowid": [str(a), str(b)]})
    assert resp.status_code == 302 and "/admin/plugin_requests/reject/" in resp.headers["Location"]
    form = client.get(resp.headers["Location"])
    html = form.get_data(as_text=True)
    assert form.status_code == 200 and 'name="reason"' in html and XSS not in html
    before = state(app)
    token = csrf_token_from(html)
    empty = client.post("/admin/plugin_requests/reject/", data={"csrf_token": token, "ids": f"{a},{b}", "reason": " "})
    assert empty.status_code == 422 and state(app) == before
    assert client.post("/admin/plugin_requests/reject/", data={"ids": f"{a},{b}", "reason": "x"}).status_code == 400
    assert state(app) == before  # no CSRF token: refused
    done = client.post("/admin/plugin_requests/reject/",
                       data={"csrf_token": token, "ids": f"{a},{b}", "reason": "Not in your plan"})
    assert done.status_code == 302
    assert {r[1:3] for r in state(app)["requests"]} == {("rejected", "Not in your plan")}
    assert mine(agent, "shop-001")["items"][0]["decision_reason"] == "Not in your plan"


def test_admin_request_actions_refused_below_admin(app, client, agent, market, login_as):
    rid = ask_ok(agent, "shop-001", "payments")["id"]
    login_as("ops")
    token = csrf_token_from(client.get("/admin/plugin_rollouts/").get_data(as_text=True))
    assert client.post("/admin/plugin_requests/action/", data={"csrf_token": token, "action": "approve",
                                                               "rowid": [str(rid)]}).status_code == 403
    assert client.post("/admin/plugin_requests/reject/", data={"csrf_token": token, "ids": str(rid),
                                                               "reason": "no"}).status_code == 403
    assert state(app)["requests"][0][1] == "pending"


def test_admin_plugin_rollouts_screen(app, client, agent, upgraded_market, login_as):
    publish(client, "1.3.0")
    client.post("/api/rollouts", json={"release": "1.3.0", "channel": "stable", "batch_size": 5},
                headers=bearer("admin"))
    rid = prollout(client, batch_size=2).get_json()["id"]
    login_as("ops")
    html = client.get("/admin/plugin_rollouts/").get_data(as_text=True)
    assert "batch 1 / 2" in html and "payments" in html and "1.3.0" not in html
    assert ">Pause<" in html and ">Advance<" not in html
    resp = client.post(f"/admin/plugin_rollouts/row/{rid}/pause", data={"csrf_token": csrf_token_from(html),
                                                                       "from_batch": "1"})
    assert resp.status_code == 302
    assert next(r for r in state(app)["rollouts"] if r[0] == rid)[1] == "paused"
    login_as("admin")
    html = client.get("/admin/plugin_rollouts/").get_data(as_text=True)
    token = csrf_token_from(html)
    assert client.post("/admin/plugin_rollouts/action/", data={"csrf_token": token, "action": "resume",
                                                               "rowid": [str(rid)]}).status_code == 302
    assert client.post(f"/admin/plugin_rollouts/row/{rid}/advance", data={"csrf_token": token,
                                                                         "from_batch": "1"}).status_code == 302
    assert next(r for r in state(app)["rollouts"] if r[0] == rid)[1:] == ("active", 2)
    assert client.get(f"/admin/plugin_rollouts/details/?id={rid}").status_code == 200


# --- CLI --------------------------------------------------------------------------------------
def _key_file(tmp_path):
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "k1.key"
    path.write_bytes(KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def test_cli_signs_plugin_manifests_that_the_server_accepts(app, client, runner, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"version": "2.0.1", "artifact": "https://dl.example.com/p.zip"}))
    result = runner.invoke(args=["releases", "sign", str(manifest), "--key", str(_key_file(tmp_path)),
                                 "--plugin", "payments"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["plugin"] == "payments" and body["manifest"]["plugin"] == "payments" and "channel" not in body
    resp = client.post("/api/plugins/releases", json=body, headers=bearer("admin"))
    assert resp.status_code == 201, resp.get_data(as_text=True)


@pytest.mark.parametrize("manifest, plugin, error", [
    ({"version": "2.0.1", "plugin": "shipping"}, "payments", "names plugin 'shipping'"),
    ({"version": "2.0.1"}, "Payments", "--plugin"),
])
def test_cli_refuses_bad_plugin_names(runner, tmp_path, manifest, plugin, error):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    result = runner.invoke(args=["releases", "sign", str(path), "--key", str(_key_file(tmp_path)),
                                 "--plugin", plugin])
    assert result.exit_code != 0 and error in result.output


# --- the whole flow against gunicorn with the reference agent ---------------------------------
@pytest.mark.live
def test_marketplace_flow_end_to_end(app, live_server, runner, tmp_path):
    import requests

    from cp.agent_client import AgentClient, AgentError

    base = live_server.url
    admin = requests.Session()
    admin.headers.update(bearer("admin"))
    ids = ("demo-001", "demo-002", "demo-003", "mapped-001")
    agents = {iid: AgentClient(base, iid, AGENT_SECRETS.get(iid, AGENT_TOKEN)) for iid in ids}
    for a in agents.values():
        assert a.heartbeat(version="1.2.0", release_channel="stable")["pending"]["plugin"] is False

    def signed(version: str) -> dict:
        manifest = tmp_path / f"payments-{version}.json"
        manifest.write_text(json.dumps({"version": version, "artifact": f"https://dl.example.com/pay-{version}.zip"}))
        result = runner.invoke(args=["releases", "sign", str(manifest), "--key", str(_key_file(tmp_path)),
                                     "--plugin", "payments"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    # 1. publish payments 2.0.0 (signed by the CLI)
    resp = admin.post(base + "/api/plugins/releases", json=signed("2.0.0"))
    assert resp.status_code == 201, resp.text

    # 2. every installation asks for it; the admin approves; each agent installs
    requests_ = {iid: a.request_plugin("payments", None, "checkout")["id"] for iid, a in agents.items()}
    with pytest.raises(AgentError) as exc:
        agents["demo-001"].request_plugin("payments")
    assert exc.value.status == 409 and exc.value.body["error"] == "request_pending"
    listing = admin.get(base + "/api/plugins/requests/list?status=pending").json()
    assert listing["total"] == 4
    for iid, rid in requests_.items():
        if iid == "mapped-001":
            assert admin.post(base + f"/api/plugins/requests/{rid}/reject", json={"reason": "Trial plan"}).ok
        else:
            assert admin.post(base + f"/api/plugins/requests/{rid}/approve", json={}).json()["status"] == "approved"
    mapped = agents["mapped-001"]
    assert mapped.heartbeat()["pending"]["plugin"] is False
    assert mapped.plugin_requests()["items"][0]["decision_reason"] == "Trial plan"

    from cryptography.hazmat.primitives import serialization

    from cp.delivery.releases import verify_manifest_signature

    raw_key = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def run(iid: str, version: str) -> None:
        a = agents[iid]
        assert a.heartbeat()["pending"]["plugin"] is True
        job = a.next_plugin()["job"]
        assert (job["plugin"], job["version"]) == ("payments", version)
        verify_manifest_signature(job["manifest"], job["signature"], job["key_id"], keys={"k1": raw_key})
        a.report_plugin(job["id"], "in_progress", "installing")
        assert a.report_plugin(job["id"], "succeeded", "ok")["status"] == "succeeded"
        assert a.heartbeat()["pending"]["plugin"] is False

    for iid in ("demo-001", "demo-002", "demo-003"):
        run(iid, "2.0.0")

    # 3. a new version rolls out batch by batch over the installations that have the plugin
    assert admin.post(base + "/api/plugins/releases", json=signed("2.1.0")).status_code == 201
    resp = admin.post(base + "/api/plugins/rollouts", json={"plugin": "payments", "version": "2.1.0",
                                                            "batch_size": 2})
    assert resp.status_code == 201, resp.text
    r = resp.json()
    assert (r["targets"], r["batches"], r["current_batch"]) == (3, 2, 1)
    run("demo-001", "2.1.0")
    run("demo-002", "2.1.0")
    assert agents["demo-003"].next_plugin()["job"] is None  # batch 2 not open yet
    assert admin.post(base + f"/api/plugins/rollouts/{r['id']}/advance", json={}).json()["current_batch"] == 2
    run("demo-003", "2.1.0")
    done = admin.post(base + f"/api/plugins/rollouts/{r['id']}/advance", json={}).json()
    assert done["status"] == "completed" and done["jobs"]["succeeded"] == 3

    # 4. what each installation has: the API, the fleet filter and the page
    detail = admin.get(base + "/api/installations/demo-002").json()
    assert detail["plugins"] == [{"plugin": "payments", "version": "2.1.0"}]
    found = admin.get(base + "/api/installations?plugin=payments&plugin_version=2.1.0").json()
    assert sorted(i["instance_id"] for i in found["items"]) == ["demo-001", "demo-002", "demo-003"]
    assert admin.get(base + "/api/installations?plugin=payments&plugin_version=2.0.0").json()["total"] == 0
    browser = requests.Session()  # a person: the HTML pages take the session cookie of /login
    token = csrf_token_from(browser.get(base + "/login").text)
    assert browser.post(base + "/login", data={"token": TOKENS["support"], "csrf_token": token},
                        allow_redirects=False).status_code in (302, 303)
    page = browser.get(base + "/?plugin=payments&plugin_version=2.1.0")
    assert page.status_code == 200 and "demo-003" in page.text and "mapped-001" not in page.text
    page = browser.get(base + "/installations/demo-003")
    assert page.status_code == 200 and "2.1.0" in page.text.split("<h2>Plugins</h2>", 1)[1]
