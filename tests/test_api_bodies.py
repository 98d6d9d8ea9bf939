"""The JSON API's body rule and its cross-site check, for every unsafe route.

- Any body sent to an unsafe ``/api`` route is ``Content-Type: application/json`` or a 415,
  also on the actions that take no body (one rule, ``cp.api._only_json_bodies``).
- A cookie-authenticated unsafe request from another origin, ``Origin: null`` included, is 403.
"""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from cp.extensions import db
from cp.models import Alert
from tests.conftest import bearer, login

# every unsafe human route that reads no body (checked against the OpenAPI document below)
BODYLESS_ACTIONS = [
    "/api/alerts/{alert_id}/acknowledge",
    "/api/alerts/{alert_id}/resolve",
    "/api/job-failures/{failure_id}/resolve",
    "/api/rollouts/{rollout_id}/cancel",
    "/api/rollouts/{rollout_id}/resume",
    "/api/rollouts/{rollout_id}/retry",
    "/api/plugins/rollouts/{rollout_id}/cancel",
    "/api/plugins/rollouts/{rollout_id}/resume",
    "/api/plugins/rollouts/{rollout_id}/retry",
]
FOREIGN_BODIES = [
    ("application/x-www-form-urlencoded", b"force=1"),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n"),
    ("text/plain", b'{"force": true}'),
]


def _unsafe_human_operations(client) -> list[tuple[str, str, dict]]:
    spec = client.get("/api/openapi.json").get_json()
    return [(method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items()
            if method in ("post", "put", "patch", "delete") and "x-required-role" in op]


def test_every_bodyless_route_of_the_spec_refuses_a_form_body(client, agent):
    """Also the body-less actions added after ``BODYLESS_ACTIONS`` was written (any method)."""
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    bodyless = [(method, path) for method, path, op in _unsafe_human_operations(client) if "requestBody" not in op]
    assert set(BODYLESS_ACTIONS) <= {path for _, path in bodyless}
    for method, path in bodyless:
        resp = client.open(re.sub(r"\{[^}]+\}", "1", path), method=method.upper(), data={"x": "1"},
                           headers=bearer("admin"))
        assert resp.status_code == 415, (method, path, resp.status_code)


def _alert_state(app) -> tuple[int, int]:
    with app.app_context():
        return (db.session.scalar(select(func.count()).select_from(Alert).where(Alert.acknowledged_at.is_not(None))),
                db.session.scalar(select(func.count()).select_from(Alert).where(Alert.resolved_at.is_not(None))))


@pytest.mark.parametrize("path", BODYLESS_ACTIONS)
@pytest.mark.parametrize("content_type,body", FOREIGN_BODIES, ids=["form", "multipart", "text"])
def test_a_bodyless_action_refuses_a_body_that_is_not_json(app, client, agent, path, content_type, body):
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    url = re.sub(r"\{[^}]+\}", "1", path)
    resp = client.post(url, data=body, headers={**bearer("admin"), "Content-Type": content_type})
    assert resp.status_code == 415, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == "unsupported_media_type"
    assert _alert_state(app) == (0, 0)
    # the same action without a body, or with a JSON one, is not refused for its type
    for kwargs in ({}, {"json": {}}):
        assert client.post(url, headers=bearer("admin"), **kwargs).status_code != 415


def test_every_unsafe_route_documents_415(client):
    for method, path, op in _unsafe_human_operations(client):
        assert "415" in op["responses"], (method, path)


def test_alert_acknowledge_with_a_form_body_changes_nothing_and_with_none_works(app, client, agent):
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    resp = client.post("/api/alerts/1/acknowledge", data={"x": "1"}, headers=bearer("ops"))
    assert resp.status_code == 415
    assert _alert_state(app) == (0, 0)
    assert client.post("/api/alerts/1/acknowledge", headers=bearer("ops")).status_code == 200
    assert _alert_state(app) == (1, 0)


@pytest.mark.parametrize("origin", ["null", "https://evil.example", "", "file://"])
def test_cookie_requests_with_a_foreign_or_null_origin_are_refused(app, client, agent, origin):
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    login(client, "ops")
    resp = client.post("/api/alerts/1/acknowledge", headers={"Origin": origin})
    assert resp.status_code == 403 and resp.get_json()["error"] == "cross_site_request"
    assert _alert_state(app) == (0, 0)
    # same origin, or no Origin header at all (not a browser's cross-site request): allowed
    assert client.post("/api/alerts/1/acknowledge", headers={"Origin": "http://localhost"}).status_code == 200
    assert client.post("/api/alerts/1/resolve").status_code == 200
