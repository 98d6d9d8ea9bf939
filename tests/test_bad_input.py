"""Bad agent input: a clear error in the contract's shape, and nothing stored."""
import json

import pytest
from sqlalchemy import func, select

from cp.extensions import db
from cp.models import Alert, Installation, JobFailure
from tests.conftest import AGENT_TOKEN


def stored(app):
    with app.app_context():
        return tuple(db.session.scalar(select(func.count()).select_from(m)) for m in (Installation, Alert, JobFailure))


def assert_error(resp, status, code=None):
    assert resp.status_code == status, resp.get_data(as_text=True)
    data = resp.get_json()
    assert set(data) == {"error", "message", "details"}
    assert isinstance(data["message"], str) and data["message"]
    if code:
        assert data["error"] == code
    return data


def test_not_json(app, agent):
    assert_error(agent.raw("/api/heartbeats", b"{not json"), 400, "invalid_json")
    assert stored(app) == (0, 0, 0)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"acme"', b"42", b"null", b""])
def test_not_an_object(app, agent, raw):
    assert_error(agent.raw("/api/heartbeats", raw), 400, "invalid_json")
    assert stored(app) == (0, 0, 0)


def test_invalid_utf8(app, agent):
    assert_error(agent.raw("/api/heartbeats", b'{"instance_id": "\xff\xfe"}'), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_wrong_content_type(app, agent, content_type):
    assert_error(agent.raw("/api/heartbeats", b'{"instance_id": "acme-001"}', content_type=content_type), 415,
                 "unsupported_media_type")
    assert stored(app) == (0, 0, 0)


def test_missing_content_type(app, client):
    from cp.signing import sign

    raw = b'{"instance_id": "acme-001"}'
    resp = client.post("/api/heartbeats", data=raw, headers={"x-agent-signature": sign(AGENT_TOKEN, raw)})
    assert_error(resp, 415)


def test_content_type_with_charset_is_fine(app, agent):
    resp = agent.raw("/api/heartbeats", b'{"instance_id": "acme-001"}', content_type="application/json; charset=utf-8")
    assert resp.status_code == 200


MANY = [{"level": "info", "message": f"m{i}"} for i in range(201)]


@pytest.mark.parametrize("payload,field", [
    ({}, "instance_id"),
    ({"instance_id": ""}, "instance_id"),
    ({"instance_id": "a" * 129}, "instance_id"),
    ({"instance_id": "acme 001"}, "instance_id"),
    ({"instance_id": "acme/001"}, "instance_id"),
    ({"instance_id": 42}, "instance_id"),
    ({"instance_id": "acme-001", "health": "sideways"}, "health"),
    ({"instance_id": "acme-001", "backup_status": "great"}, "backup_status"),
    ({"instance_id": "acme-001", "alerts": [{"level": "fatal", "message": "x"}]}, "alerts"),
    ({"instance_id": "acme-001", "alerts": [{"level": "info"}]}, "alerts"),
    ({"instance_id": "acme-001", "alerts": [{"level": "info", "message": "x" * 2001}]}, "alerts"),
    ({"instance_id": "acme-001", "alerts": MANY}, "alerts"),
    ({"instance_id": "acme-001", "alerts": "Low disk"}, "alerts"),
    ({"instance_id": "acme-001", "job_failures": [{"queue": "q", "message": "x" * 2001}]}, "job_failures"),
    ({"instance_id": "acme-001", "job_failures": [{"queue": "q", "message": "m"}] * 201}, "job_failures"),
    ({"instance_id": "acme-001", "job_failures": [{"message": "m"}]}, "job_failures"),
    ({"instance_id": "acme-001", "slo_p95_ms": -1}, "slo_p95_ms"),
    ({"instance_id": "acme-001", "slo_p95_ms": "fast"}, "slo_p95_ms"),
    ({"instance_id": "acme-001", "slo_p95_ms": True}, "slo_p95_ms"),
    ({"instance_id": "acme-001", "slo_error_rate": 1.5}, "slo_error_rate"),
    ({"instance_id": "acme-001", "slo_error_rate": -0.1}, "slo_error_rate"),
    ({"instance_id": "acme-001", "slo_webhook_retry_rate": 2}, "slo_webhook_retry_rate"),
    ({"instance_id": "acme-001", "last_backup_at": "yesterday"}, "last_backup_at"),
    ({"instance_id": "acme-001", "last_backup_at": "2026-02-11T02:00:00"}, "last_backup_at"),
    ({"instance_id": "acme-001", "version": ""}, "version"),
    ({"instance_id": "acme-001", "client": "x" * 256}, "client"),
    ({"instance_id": "acme-001", "version": 123}, "version"),
])
def test_schema_violations_are_422_with_field_details(app, agent, payload, field):
    raw = json.dumps(payload).encode()
    data = assert_error(agent.raw("/api/heartbeats", raw), 422, "validation_error")
    assert field in data["details"], data
    assert stored(app) == (0, 0, 0)


def test_nan_and_infinity_are_refused(app, agent):
    for raw in (b'{"instance_id": "acme-001", "slo_p95_ms": NaN}', b'{"instance_id": "acme-001", "slo_p95_ms": Infinity}'):
        resp = agent.raw("/api/heartbeats", raw)
        assert resp.status_code in (400, 422)
        assert_error(resp, resp.status_code)
    assert stored(app) == (0, 0, 0)


def test_exact_limits_are_accepted(app, agent):
    payload = {"instance_id": "a" * 128, "alerts": [{"level": "info", "message": f"{i}" + "x" * 1990} for i in range(200)],
               "job_failures": [{"queue": "q", "message": "y" * 2000}] * 200, "slo_error_rate": 1, "slo_p95_ms": 0}
    raw = json.dumps(payload).encode()
    assert len(raw) < 1_000_000
    resp = agent.raw("/api/heartbeats", raw)
    # The default body limit is 262144 bytes: this body is over it, which is the right answer too.
    if len(raw) > 262144:
        assert_error(resp, 413, "payload_too_large")
    else:
        assert resp.status_code == 200


def test_oversize_body_is_413(app, agent):
    raw = json.dumps({"instance_id": "acme-001", "client": "x" * 300_000}).encode()
    assert_error(agent.raw("/api/heartbeats", raw), 413, "payload_too_large")
    assert stored(app) == (0, 0, 0)


def test_body_limit_is_configurable(make_app):
    from tests.conftest import Agent

    app = make_app(CONTROL_PLANE_MAX_BODY_BYTES="2048")
    agent = Agent(app.test_client())
    assert_error(agent.heartbeat("acme-001", client="x" * 3000), 413)
    assert agent.heartbeat("acme-001", client="x" * 200).status_code == 200


def test_unknown_fields_are_ignored(app, agent):
    assert agent.heartbeat("acme-001", future_field={"x": 1}).status_code == 200


def test_deeply_nested_json_is_not_a_500(app, agent):
    raw = b'{"instance_id": "acme-001", "alerts": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    resp = agent.raw("/api/heartbeats", raw)
    assert resp.status_code in (400, 422)


def test_get_on_agent_endpoint_is_405_json(client):
    resp = client.get("/api/heartbeats")
    assert_error(resp, 405, "method_not_allowed")


def test_unknown_api_path_is_json_404(client):
    assert_error(client.get("/api/nope"), 404, "not_found")


def test_nul_characters_are_refused_with_the_field_named(app, agent):
    raw = b'{"instance_id": "acme-001", "client": "Acme\\u0000SA", "alerts": [{"level": "info", "message": "a\\u0000"}]}'
    data = assert_error(agent.raw("/api/heartbeats", raw), 422, "validation_error")
    assert set(data["details"]) == {"client", "alerts"}
    assert stored(app) == (0, 0, 0)
