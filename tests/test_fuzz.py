"""Property-based fuzzing of every /api operation against the app's own OpenAPI document.

schemathesis generates requests from ``/api/openapi.json`` (valid and invalid ones); each is
sent with credentials that get it past the door (agent bodies signed over their exact bytes,
with the shared or the installation's own secret, sometimes timestamped; human requests with
each role's bearer token, or none), and every response must:
- not be a 500 (``not_a_server_error``),
- have a status code, content type, headers and body that the document declares,
and after every request the database must be consistent: every foreign key points at a row,
no open duplicates (alerts, job failures, plugin requests, rollouts), no half-written rows.

Runtime is bounded: ``CP_FUZZ_EXAMPLES`` (default 20) generated cases per operation plus the
coverage phase's boundary cases, about a minute on PostgreSQL for the whole API.
"""
from __future__ import annotations

import base64
import json
import os
import tempfile
import time

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cp.agent_client import build_request
from cp.signing import sign
from tests.conftest import AGENT_SECRETS, AGENT_TOKEN, TOKENS
from tests.consistency import inconsistencies

MAX_EXAMPLES = int(os.environ.get("CP_FUZZ_EXAMPLES", "20"))
SEEDED = ["acme-001", "globex-001", "mapped-001"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def fuzz_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"max-response-time": {"enabled": False}},
    })


RELEASE_KEY = Ed25519PrivateKey.generate()
RELEASE_KEYS = json.dumps({"fuzz": base64.b64encode(RELEASE_KEY.public_key().public_bytes_raw()).decode()})


def signed_release(version: str, **extra) -> dict:
    manifest = {"version": version, **extra}
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return {"version": version, "manifest": manifest, "key_id": "fuzz",
            "signature": base64.b64encode(RELEASE_KEY.sign(blob)).decode()}


def seed(app) -> None:
    """Rows for the generated ids to hit: installations with alerts and job failures, and, where
    those routes exist, a signed release with an active rollout (jobs for the agents), a
    scheduled restore verification, a plugin release."""
    client = app.test_client()
    for i, iid in enumerate(SEEDED):
        payload = {"instance_id": iid, "version": "1.2.3", "release_channel": "stable", "health": "ok",
                   "backup_status": "ok", "alerts": [{"level": "warning", "message": f"Low disk {i}"}],
                   "job_failures": [{"queue": "billing", "message": "Timeout"}], "slo_p95_ms": 100}
        req = build_request("/api/heartbeats", payload, AGENT_SECRETS.get(iid, AGENT_TOKEN), timestamp=False)
        resp = client.post(req.path, data=req.body, headers=req.headers)
        assert resp.status_code == 200, resp.get_json()
    routes = {(m, r.rule) for r in app.url_map.iter_rules() for m in r.methods}
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    steps = [
        ("/api/releases", {**signed_release("1.3.0"), "channel": "stable"}),
        ("/api/rollouts", {"release": "1.3.0", "channel": "stable", "batch_size": 2}),
        ("/api/restores/schedule", {"instance_ids": [SEEDED[0]], "backup_id": None, "scheduled_for": None}),
        ("/api/plugins/releases", {**signed_release("2.0.1", plugin="payments"), "plugin": "payments"}),
    ]
    for path, body in steps:
        if ("POST", path) in routes:
            resp = client.post(path, json=body, headers=admin)
            assert resp.status_code in (200, 201), (path, resp.status_code, resp.get_json())


@pytest.fixture
def fuzz_app(make_app):
    app = make_app(CONTROL_PLANE_RELEASE_KEYS=RELEASE_KEYS)
    seed(app)
    return app


def current_spec() -> dict:
    """The document of the app as it is now (routes do not depend on settings or the database).
    schemathesis' fixture-based loader does not run under pytest 9, so the schema is loaded at
    collection time and each test sends to its own app (``case.call(app=...)``)."""
    from cp import create_app
    from cp.api.spec import build_spec

    app = create_app({"CONTROL_PLANE_INSTANCE_PATH": tempfile.mkdtemp(prefix="cp-fuzz-"),
                      "CONTROL_PLANE_SECRET_KEY": "fuzz-" + "x" * 40, "CONTROL_PLANE_DATABASE_URL": "sqlite://"})
    with app.app_context():
        return build_spec(app)


schema = schemathesis.openapi.from_dict(current_spec(), config=fuzz_config())


# --- credentials ----------------------------------------------------------------------------
def agent_request(case, mode: str) -> tuple[dict, dict]:
    """Sign exactly the bytes that are sent. ``mode``: keep the generated ``instance_id`` or use
    a seeded one; with or without ``x-agent-timestamp``."""
    headers = {"Content-Type": "application/json"}
    body = case.body if not isinstance(case.body, schemathesis.core.NotSet) else {}
    if isinstance(body, dict) and "seeded" in mode:
        body = {**body, "instance_id": SEEDED[len(mode) % len(SEEDED)]}
    try:
        raw = json.dumps(body).encode()
    except (TypeError, ValueError):
        raw = b"{}"
    iid = body.get("instance_id") if isinstance(body, dict) else None
    secret = AGENT_SECRETS.get(iid, AGENT_TOKEN) if isinstance(iid, str) else AGENT_TOKEN
    if "timestamp" in mode:
        ts = f"{time.time():.3f}"  # the reference client's format
        headers["x-agent-timestamp"] = ts
        headers["x-agent-signature"] = sign(secret, raw, ts)
    else:
        headers["x-agent-signature"] = sign(secret, raw)
    return headers, {"data": raw}


@schema.given(who=st.sampled_from(["admin", "admin", "ops", "support", None]),
              agent_mode=st.sampled_from(["plain", "seeded", "seeded-timestamp", "timestamp"]))
@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=MAX_EXAMPLES)
def test_api_fuzz(case, who, agent_mode, fuzz_app, clean_db):
    operation = case.operation.definition.raw
    security = {name for s in operation.get("security", []) for name in s}
    kwargs: dict = {}
    headers: dict = {}
    if case.headers:
        # the signing headers are ours to set: a generated timestamp would only test the 401 path
        for name in ("x-agent-timestamp", "x-agent-signature", "Authorization"):
            case.headers.pop(name, None)
    if "agentSignature" in security:
        headers, kwargs = agent_request(case, agent_mode)
    elif "bearerAuth" in security and who is not None:
        headers = {"Authorization": f"Bearer {TOKENS[who]}"}
    response = case.call(app=fuzz_app, headers=headers, **kwargs)
    case.validate_response(response, checks=CHECKS)
    problems = inconsistencies(clean_db)
    assert not problems, f"{case.method} {case.path} left the database inconsistent: {problems}"
