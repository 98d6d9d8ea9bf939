"""Server-side times of the pages and API calls people and agents use, on the seeded fleet.

Each request goes through the whole Flask app in-process (``app.test_client()``: routing,
login session or bearer token, the queries, template rendering or JSON serialisation), so
the time is what the request costs inside the server, without the network or gunicorn. Each
one is run a few times after a warm-up; the median and the worst are reported.
"""
from __future__ import annotations

import base64
import json
import re
import statistics
import time
from typing import Callable

from bench import fleet as bf

CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


def _timed(fn: Callable[[], object], repeat: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2), "runs": repeat}


def _login(client, token: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    m = CSRF_RE.search(page)
    if not m:
        raise RuntimeError("no CSRF token on /login")
    resp = client.post("/login", data={"token": token, "csrf_token": m.group(1) or m.group(2)})
    if resp.status_code not in (302, 303):
        raise RuntimeError(f"login failed: {resp.status_code}")


def _check(resp, expected: int, what: str):
    if resp.status_code != expected:
        raise RuntimeError(f"{what}: HTTP {resp.status_code}: {resp.get_data(as_text=True)[:300]}")
    return resp


def release_keypair() -> tuple[object, str]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key, base64.b64encode(public).decode()


def measure(env: dict[str, str], fleet_size: int, release_key, repeat: int = 15, *, rollout: bool = True) -> dict:
    """Time the reads, then (``rollout``) publish a release, create a rollout over the stable
    channel and time ``/api/updates/next`` for a target and a non-target. Returns name -> timing."""
    from cp import create_app
    from cp.extensions import db
    from cp.signing import sign

    app = create_app(env)
    client = app.test_client()
    _login(client, env["CONTROL_PLANE_SUPPORT_TOKEN"])
    support = {"Authorization": f"Bearer {env['CONTROL_PLANE_SUPPORT_TOKEN']}"}
    admin = {"Authorization": f"Bearer {env['CONTROL_PLANE_ADMIN_TOKEN']}"}
    middle = bf.instance_id(fleet_size // 2 + 1)
    out: dict[str, dict] = {}
    try:
        _measure(app, client, env, fleet_size, release_key, repeat, rollout, support, admin, middle, out, sign)
    finally:
        with app.app_context():
            db.engine.dispose()
    return out


def _measure(app, client, env, fleet_size, release_key, repeat, rollout, support, admin, middle, out, sign):

    def get(path: str, headers: dict | None = None):
        return lambda: _check(client.get(path, headers=headers or {}), 200, path)

    reads = {
        "fleet_page": get("/"),
        "fleet_filtered_down": get("/?health=down"),
        "fleet_search": get(f"/?q={middle[-5:]}"),
        "installation_page": get(f"/installations/{middle}"),
        "api_installations": get("/api/installations", support),
        "api_installations_down": get("/api/installations?health=down", support),
        "api_installation": get(f"/api/installations/{middle}", support),
        "api_alerts_open": get("/api/alerts?status=open", support),
    }
    for name, fn in reads.items():
        out[name] = _timed(fn, repeat)

    # --- rollouts (when the feature exists) --------------------------------------------------
    if not rollout:
        return
    if "agent_api.next_update" not in app.view_functions or "api.create_rollout" not in app.view_functions:
        out["rollout"] = {"skipped": "no /api/rollouts or /api/updates/next in this build"}
        return
    manifest = {"version": bf.NEW_VERSION, "artifacts": [{"url": "https://downloads.example.com/erp-1.3.0.tar.gz",
                                                          "sha256": "0" * 64}]}
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    signature = base64.b64encode(release_key.sign(canonical)).decode()
    _check(client.post("/api/releases", json={"version": bf.NEW_VERSION, "channel": "stable", "manifest": manifest,
                                              "signature": signature, "key_id": "bench"}, headers=admin),
           201, "publish release")
    t0 = time.perf_counter()
    resp = _check(client.post("/api/rollouts", json={"release": bf.NEW_VERSION, "channel": "stable",
                                                     "batch_size": 1000}, headers=admin), 201, "create rollout")
    created = (time.perf_counter() - t0) * 1000
    body = resp.get_json()
    out["rollout_create"] = {"p50_ms": round(created, 2), "max_ms": round(created, 2), "runs": 1,
                             "targets": body.get("targets"), "batches": body.get("batches")}

    secret = env["CONTROL_PLANE_AGENT_TOKEN"]

    def next_update(iid: str, expect_job: bool):
        raw = json.dumps({"instance_id": iid}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "x-agent-signature": sign(secret, raw)}

        def call():
            r = _check(client.post("/api/updates/next", data=raw, headers=headers), 200, f"updates/next {iid}")
            if (r.get_json().get("job") is not None) != expect_job:
                raise RuntimeError(f"updates/next {iid}: expected job={expect_job}, got {r.get_json()}")
        return call

    out["updates_next_target"] = _timed(next_update(bf.instance_id(1), True), repeat)
    out["updates_next_nontarget"] = _timed(next_update(bf.instance_id(bf.NONTARGET_EVERY), False), repeat)
    out["rollout_get"] = _timed(get(f"/api/rollouts/{body['id']}", support), repeat)
