"""``POST /api/heartbeats`` has two entrances (``cp.agent_api.heartbeats``): ``FastPath``, a WSGI
middleware that answers a heartbeat that is in order without Flask's request cycle, and the
Flask view, which answers everything ``FastPath`` hands on. These tests watch which of the two
answered, and that a client cannot tell them apart."""
from __future__ import annotations

import io
import json
import logging

import pytest

from cp.agent_api.heartbeats import EXTENSION, FastPath
from cp.signing import sign
from tests.conftest import AGENT_TOKEN

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _fast_path(app) -> FastPath:
    layer = app.wsgi_app
    while not isinstance(layer, FastPath):
        layer = layer.wsgi_app  # ChunkedBodyLimit (and ProxyFix) sit outside it
    return layer


@pytest.fixture
def reached_flask(app):
    """The requests ``FastPath`` handed on to Flask (their paths)."""
    fast = _fast_path(app)
    inner, seen = fast.wsgi_app, []

    def recording(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return inner(environ, start_response)

    fast.wsgi_app = recording
    yield seen
    fast.wsgi_app = inner


@pytest.fixture
def access_lines():
    lines: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record)

    handler = Keep()
    logger = logging.getLogger("cp.access")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def test_a_heartbeat_in_order_is_answered_without_flask(app, agent, reached_flask, access_lines):
    resp = agent.heartbeat("acme-001", version="1.2.3", health="ok")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert reached_flask == []
    body = resp.get_json()
    assert body["installation"] == "acme-001" and body["received_at"].endswith("Z")
    assert body["pending"] == {"update": False, "plugin": False, "restore_verifications": []}
    assert resp.headers["Content-Type"] == "application/json"
    assert int(resp.headers["Content-Length"]) == len(resp.get_data())
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers[name] == value
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in resp.headers
    [line] = [r for r in access_lines if r.path == "/api/heartbeats"]
    assert (line.method, line.status, line.role) == ("POST", 200, None)
    assert line.remote == "127.0.0.1" and line.duration_ms >= 0
    app_get = agent.client.get("/api/installations/acme-001",
                               headers={"Authorization": "Bearer support-token-0123456789"})
    assert app_get.get_json()["version"] == "1.2.3"


def test_both_entrances_answer_the_same_bytes(app, agent, reached_flask, clock):
    """The same heartbeat, once through FastPath and once handed on (a batch that failed
    answers each heartbeat on the single path): same status, same body, same headers."""
    fast = agent.heartbeat("acme-002", version="2.0.0")
    batcher = app.extensions[EXTENSION]
    run = batcher._run

    def fail_once(items):
        for item in items:
            item.alone = True

    batcher._run = fail_once
    try:
        slow = agent.heartbeat("acme-002", version="2.0.0")
    finally:
        batcher._run = run
    assert reached_flask == ["/api/heartbeats"]  # only the second one
    assert (fast.status_code, fast.get_data()) == (slow.status_code, slow.get_data())
    fast_headers = {k: v for k, v in fast.headers.items() if k != "Vary"}
    slow_headers = {k: v for k, v in slow.headers.items() if k != "Vary"}
    assert fast_headers == slow_headers


def _signed(body: bytes) -> dict:
    return {"Content-Type": "application/json", "x-agent-signature": sign(AGENT_TOKEN, body)}


GOOD = json.dumps({"instance_id": "acme-003", "health": "ok"}).encode()


@pytest.mark.parametrize("method, path, body, headers, status, code", [
    ("POST", "/api/heartbeats", GOOD, {"Content-Type": "application/json", "x-agent-signature": "0" * 64},
     401, "invalid_signature"),
    ("POST", "/api/heartbeats", GOOD, {"Content-Type": "application/json"}, 401, "invalid_signature"),
    ("POST", "/api/heartbeats", GOOD, {**_signed(GOOD), "Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ("POST", "/api/heartbeats", b"[1]", _signed(b"[1]"), 400, "invalid_json"),
    ("POST", "/api/heartbeats", b"{nope", _signed(b"{nope"), 400, "invalid_json"),
    ("POST", "/api/heartbeats", b'{"health": "ok"}', _signed(b'{"health": "ok"}'), 422, "validation_error"),
    ("POST", "/api/heartbeats", b'{"instance_id": "acme-003", "health": "bad"}',
     _signed(b'{"instance_id": "acme-003", "health": "bad"}'), 422, "validation_error"),
    ("POST", "/api/heartbeats", b'{"instance_id": "acme-003", "client": "a\\u0000b"}',
     _signed(b'{"instance_id": "acme-003", "client": "a\\u0000b"}'), 422, "validation_error"),
    ("PUT", "/api/heartbeats", GOOD, _signed(GOOD), 405, "method_not_allowed"),
    ("POST", "/api/heartbeats/", GOOD, _signed(GOOD), 404, "not_found"),
])
def test_what_is_not_in_order_is_answered_by_flask_as_before(client, reached_flask, method, path, body, headers,
                                                             status, code):
    resp = client.open(path, method=method, data=body, headers=headers)
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == code
    assert reached_flask == [path]


def test_a_body_over_the_limit_is_refused_by_flask(make_app):
    app = make_app(CONTROL_PLANE_MAX_BODY_BYTES="2048")
    big = json.dumps({"instance_id": "acme-005", "client": "x" * 4000}).encode()
    resp = app.test_client().post("/api/heartbeats", data=big, headers=_signed(big))
    assert resp.status_code == 413 and resp.get_json()["error"] == "payload_too_large"


def test_the_batchs_refusals_come_in_the_contract_shape(make_app):
    app = make_app(CONTROL_PLANE_AGENT_RATE_LIMIT="1")
    fast = _fast_path(app)
    inner, seen = fast.wsgi_app, []
    fast.wsgi_app = lambda environ, start_response: seen.append(1) or inner(environ, start_response)
    from tests.conftest import Agent

    agent = Agent(app.test_client())
    assert agent.heartbeat("acme-006").status_code == 200
    resp = agent.heartbeat("acme-006")
    assert resp.status_code == 429
    assert resp.get_json()["error"] == "rate_limited" and resp.get_json()["details"] == {"limit": 1, "window_seconds": 60}
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert seen == []


def test_a_replay_is_refused_by_the_fast_path(app, agent, reached_flask):
    from cp.agent_client import build_request

    req = build_request("/api/heartbeats", {"instance_id": "acme-007"}, AGENT_TOKEN, timestamp=True)
    first = agent.client.post(req.path, data=req.body, headers=req.headers)
    again = agent.client.post(req.path, data=req.body, headers=req.headers)
    assert first.status_code == 200
    assert again.status_code == 401 and again.get_json()["error"] == "invalid_signature"
    assert "already received" in again.get_json()["message"]
    assert reached_flask == []


def test_an_unexpected_error_is_a_500_in_the_contract_shape(app, agent, reached_flask, monkeypatch):
    def boom(items):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(app.extensions[EXTENSION], "_run", boom)
    resp = agent.heartbeat("acme-008")
    assert resp.status_code == 500
    assert resp.get_json() == {"error": "internal_error", "message": resp.get_json()["message"], "details": {}}
    text = resp.get_data(as_text=True)
    assert "secret detail" not in text and "Traceback" not in text
    assert reached_flask == []


def test_hsts_and_the_client_address_behind_a_trusted_proxy(make_app, access_lines):
    app = make_app(CONTROL_PLANE_COOKIE_SECURE="1", CONTROL_PLANE_TRUSTED_PROXIES="1")
    body = json.dumps({"instance_id": "acme-009"}).encode()
    resp = app.test_client().post("/api/heartbeats", data=body,
                                  headers={**_signed(body), "X-Forwarded-For": "203.0.113.9"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
    [line] = [r for r in access_lines if r.path == "/api/heartbeats"]
    assert line.remote == "203.0.113.9"


def test_a_body_shorter_than_its_content_length_is_handed_on_with_what_came(app):
    """A client that sent less than it announced: nothing is answered here, and Flask gets the
    bytes that did come (Werkzeug then answers 400 for the truncated body)."""
    body = json.dumps({"instance_id": "acme-010"}).encode()
    handed = []

    def inner(environ, start_response):
        handed.append(environ["wsgi.input"].read())
        start_response("400 BAD REQUEST", [])
        return [b""]

    fast = FastPath(app, inner, "/api/heartbeats")
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/heartbeats", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(body) + 10), "wsgi.input": io.BytesIO(body),
               "HTTP_X_AGENT_SIGNATURE": sign(AGENT_TOKEN, body)}
    fast(environ, lambda status, headers: None)
    assert handed == [body]
