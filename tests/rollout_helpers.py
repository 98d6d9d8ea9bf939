"""Helpers shared by the release and rollout tests (a fixed signing key, signed bodies,
publishing, rolling out, counting rows), and by the concurrency tests against a live gunicorn
(the ``server`` fixture, agents, a thread pool)."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from cp.agent_client import AgentClient
from cp.extensions import db
from cp.models import Alert, Installation, InstallationEvent, Job, Release, Rollout
from cp.delivery.releases import public_key_b64, sign_manifest
from tests.conftest import AGENT_TOKEN, LiveServer, base_env, bearer

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
RELEASE_KEYS = json.dumps({"k1": public_key_b64(KEY)})


@pytest.fixture
def env(migrated, instance_path):
    """The base environment plus a trusted release key ``k1`` (also for ``live_server``)."""
    return {**base_env(migrated, instance_path), "CONTROL_PLANE_RELEASE_KEYS": RELEASE_KEYS}


def release_body(version: str, channel: str = "stable", manifest: dict | None = None, key=KEY,
                 key_id: str = "k1") -> dict:
    manifest = manifest if manifest is not None else {
        "version": version, "artifact": f"https://dl.example.com/erp-{version}.tar.gz",
        "sha256": "ab" * 32, "notes": "Ünïcode notes <b>bold</b>"}
    return {"version": version, "channel": channel, "manifest": manifest,
            "signature": sign_manifest(key, manifest), "key_id": key_id}


def publish(client, version: str, channel: str = "stable", **kw):
    resp = client.post("/api/releases", json=release_body(version, channel, **kw), headers=bearer("admin"))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def beat(agent, instance_id: str, version: str | None = "1.2.0", channel: str | None = "stable", **fields):
    resp = agent.heartbeat(instance_id, version=version, release_channel=channel, **fields)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def fleet(agent, n: int, version: str = "1.2.0", channel: str = "stable", prefix: str = "inst") -> list[str]:
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    for iid in ids:
        beat(agent, iid, version, channel)
    return ids


def rollout(client, release: str = "1.3.0", channel: str | None = "stable", batch_size: int = 2, role="admin", **kw):
    body = {"release": release, "batch_size": batch_size, **kw}
    if channel is not None:
        body["channel"] = channel
    return client.post("/api/rollouts", json=body, headers=bearer(role))


def action(client, rollout_id: int, name: str, body: dict | None = None, role: str = "admin"):
    return client.post(f"/api/rollouts/{rollout_id}/{name}", json=body or {}, headers=bearer(role))


def next_job(agent, instance_id: str):
    resp = agent.post("/api/updates/next", {"instance_id": instance_id})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["job"]


def report(agent, instance_id: str, job_id, status: str, message: str | None = None):
    return agent.post("/api/updates/report",
                      {"instance_id": instance_id, "job_id": job_id, "status": status, "message": message})


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    data = resp.get_json()
    assert set(data) == {"error", "message", "details"}, data
    assert isinstance(data["message"], str) and data["message"]
    if code:
        assert data["error"] == code, data
    return data


def snapshot(app) -> dict:
    """Everything a rejected request must leave unchanged."""
    with app.app_context():
        counts = {m.__tablename__: db.session.scalar(select(func.count()).select_from(m))
                  for m in (Release, Rollout, Job, Alert, InstallationEvent)}
        counts["rollouts"] = [tuple(r) for r in db.session.execute(
            select(Rollout.id, Rollout.status, Rollout.current_batch, Rollout.targets).order_by(Rollout.id))]
        counts["jobs"] = [tuple(r) for r in db.session.execute(
            select(Job.id, Job.status, Job.message, Job.attempts).order_by(Job.id))]
        counts["versions"] = [tuple(r) for r in db.session.execute(
            select(Installation.instance_id, Installation.version).order_by(Installation.id))]
        db.session.remove()
    return counts


# --- concurrency against a live gunicorn (PostgreSQL) ---------------------------------------------
THREADS = 32


@pytest.fixture
def server(postgres_only, env, app):
    """Four gunicorn workers; warnings only (hundreds of requests would otherwise fill its log)."""
    s = LiveServer({**env, "CONTROL_PLANE_LOG_LEVEL": "WARNING"}, workers=4).start()
    yield s
    s.stop()


def agent_for(server, iid: str) -> AgentClient:
    # identical concurrent bodies are not replays: each carries its own timestamp; a 503 (a row
    # lock waited past the lock timeout on a busy machine: nothing was kept) is sent again, as
    # agents do
    return AgentClient(server.url, iid, AGENT_TOKEN, timeout=60, retries=3)


def parallel(fn, args, threads: int = THREADS) -> list:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, args))


def admin_post(server, path: str, body: dict | None = None) -> requests.Response:
    return requests.post(server.url + path, json=body or {}, headers=bearer("admin"), timeout=60)


def query(app, stmt):
    with app.app_context():
        rows = db.session.execute(stmt).all()
        db.session.remove()
    return rows
