"""Replay protection for agents: the optional ``x-agent-timestamp`` is signed with the body,
must be within 5 minutes of the server's clock, and a signed request takes effect once."""
from __future__ import annotations

import concurrent.futures
import http.server
import threading

import pytest
import requests
from sqlalchemy import func, select

from cp.agent_api.signed import TIMESTAMP_RE
from cp.agent_client import AgentClient, AgentError, build_request, unique_timestamp
from cp.agent_client import main as agent_main
from cp.extensions import db
from cp.models import AgentNonce, Installation
from cp.signing import sign
from tests.conftest import AGENT_SECRETS, AGENT_TOKEN, LiveServer

BODY = {"instance_id": "acme-001", "health": "ok"}


def send(client, req, **headers):
    return client.post(req.path, data=req.body, headers={**req.headers, **headers})


def signed(clock, payload=BODY, *, offset: float = 0, secret: str = AGENT_TOKEN):
    return build_request("/api/heartbeats", payload, secret, now=clock.now.timestamp() + offset)


def heartbeats_total(app, iid="acme-001") -> int:
    with app.app_context():
        return db.session.scalar(select(Installation.heartbeats_total).where(Installation.instance_id == iid)) or 0


def assert_refused(resp, fragment: str = ""):
    assert resp.status_code == 401, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["error"] == "invalid_signature"
    assert fragment in body["message"]


def test_the_reference_client_sends_a_signed_timestamp(clock):
    req = signed(clock)
    ts = req.headers["x-agent-timestamp"]
    assert float(ts) == pytest.approx(clock.now.timestamp(), abs=0.001)
    assert req.headers["x-agent-signature"] == sign(AGENT_TOKEN, req.body, ts)
    assert req.headers["x-agent-signature"] != sign(AGENT_TOKEN, req.body)


def test_a_timestamped_request_is_accepted_once(app, client, clock):
    req = signed(clock)
    assert send(client, req).status_code == 200
    assert_refused(send(client, req), "already received")
    clock.advance(seconds=30)
    assert_refused(send(client, req), "already received")
    assert heartbeats_total(app) == 1
    # the agent's next request (a new timestamp) is fine, even with the same body
    assert send(client, signed(clock)).status_code == 200
    assert heartbeats_total(app) == 2


def test_two_requests_with_the_same_body_in_one_second_are_not_replays(app, client, clock):
    first, second = signed(clock), signed(clock, offset=0.25)
    assert send(client, first).status_code == 200
    assert send(client, second).status_code == 200
    assert heartbeats_total(app) == 2


@pytest.mark.parametrize("offset,accepted", [(-299, True), (-301, False), (299, True), (301, False),
                                             (-86400 * 365, False), (86400 * 365, False)])
def test_old_and_future_timestamps(app, client, clock, offset, accepted):
    resp = send(client, signed(clock, offset=offset))
    if accepted:
        assert resp.status_code == 200
    else:
        assert_refused(resp, "outside the allowed window")
        assert heartbeats_total(app) == 0


@pytest.mark.parametrize("value", ["", "abc", "-5", "+5", "1e9", "12.", ".5", "1.2.3", " 1764244800",
                                   "1764244800 ", "1234567890123", "1.1234567", "nan", "inf", "0x10",
                                   "\u00b2", "\u0661\u0662\u0663", "1764244800,5"])
def test_malformed_timestamps_are_refused_not_a_500(app, client, clock, value):
    body = b'{"instance_id": "acme-001"}'
    try:
        signature = sign(AGENT_TOKEN, body, value)
    except UnicodeEncodeError:
        signature = sign(AGENT_TOKEN, body)
    resp = client.post("/api/heartbeats", data=body, headers={
        "Content-Type": "application/json", "x-agent-signature": signature,
        "x-agent-timestamp": value.encode("utf-8").decode("latin-1")})
    assert_refused(resp)
    assert heartbeats_total(app) == 0


def test_the_timestamp_is_part_of_the_signed_bytes(app, client, clock):
    req = signed(clock)
    # the same signature with another timestamp, or the timestamp dropped: refused
    assert_refused(send(client, req, **{"x-agent-timestamp": f"{clock.now.timestamp() + 1:.3f}"}))
    plain = {k: v for k, v in req.headers.items() if k != "x-agent-timestamp"}
    assert_refused(client.post(req.path, data=req.body, headers=plain))
    # a body-only signature sent with a timestamp: refused
    assert_refused(send(client, req, **{"x-agent-signature": sign(AGENT_TOKEN, req.body)}))
    assert heartbeats_total(app) == 0


def test_mapped_installations_sign_the_timestamp_with_their_own_secret(app, client, clock):
    payload = {"instance_id": "mapped-001"}
    assert_refused(send(client, signed(clock, payload)))  # the shared token
    assert send(client, signed(clock, payload, secret=AGENT_SECRETS["mapped-001"])).status_code == 200


def test_timestamp_optional_by_default_and_required_when_configured(make_app, clock):
    lax = make_app().test_client()
    plain = build_request("/api/heartbeats", BODY, AGENT_TOKEN, timestamp=False)
    assert send(lax, plain).status_code == 200
    strict = make_app(CONTROL_PLANE_REQUIRE_AGENT_TIMESTAMP="1").test_client()
    assert_refused(send(strict, plain), "x-agent-timestamp header is required")
    assert send(strict, signed(clock)).status_code == 200


def test_a_refused_request_does_not_burn_its_nonce(app, client, clock):
    """The nonce is kept exactly when the request's effects are: a request refused for its body
    (422) stored nothing, so the very same bytes are judged again, not called a replay."""
    req = signed(clock, {"instance_id": "acme-001", "health": "on fire"})
    assert send(client, req).status_code == 422
    assert send(client, req).status_code == 422
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AgentNonce)) == 0


def test_read_only_requests_are_not_replayable_either(app, client, clock, agent):
    """A view that only reads does not commit; the gate commits the nonce for it."""
    if "/api/updates/next" not in {r.rule for r in app.url_map.iter_rules()}:
        pytest.skip("no /api/updates/next yet")
    assert send(client, signed(clock)).status_code == 200  # registers acme-001
    req = build_request("/api/updates/next", {"instance_id": "acme-001"}, AGENT_TOKEN,
                        now=clock.now.timestamp() + 1)
    assert send(client, req).status_code == 200
    assert_refused(send(client, req), "already received")


def test_old_nonces_are_pruned(app, client, clock):
    from cp.agent_api.signed import prune_nonces

    assert send(client, signed(clock)).status_code == 200
    with app.app_context():
        assert prune_nonces(clock.now) == 0
        db.session.commit()
        clock.advance(minutes=12)  # past the window either side: the request could not be replayed anyway
        assert prune_nonces() == 1
        db.session.commit()
    assert_refused(send(client, signed(clock, offset=-12 * 60)), "outside the allowed window")


def test_concurrent_replays_on_a_live_server_take_effect_once(live_server, app):
    """The same signed bytes sent at once to two gunicorn workers: one 200, the others refused."""
    req = build_request("/api/heartbeats", BODY, AGENT_TOKEN)

    def post(_):
        with requests.Session() as s:
            return s.post(live_server.url + req.path, data=req.body, headers=req.headers, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(post, range(6)))
    assert sorted(statuses) == [200, 401, 401, 401, 401, 401], statuses
    assert heartbeats_total(app) == 1
    # the reference client keeps working (a fresh timestamp per request)
    client = AgentClient(live_server.url, "acme-001", AGENT_TOKEN)
    client.heartbeat(health="ok")
    client.heartbeat(health="ok")
    assert heartbeats_total(app) == 3


@pytest.fixture
def strict_server(env, app):
    """gunicorn that refuses agent requests without ``x-agent-timestamp``."""
    server = LiveServer({**env, "CONTROL_PLANE_REQUIRE_AGENT_TIMESTAMP": "1"}, workers=2).start()
    yield server
    server.stop()


def test_the_reference_client_always_sends_the_timestamp(strict_server, app):
    """Every call of ``AgentClient`` and of ``cp-agent`` works against a server that requires the
    header; identical bodies sent at once from one process are each taken once, never as replays."""
    client = AgentClient(strict_server.url, "acme-001", AGENT_TOKEN)
    client.heartbeat(health="ok")
    assert client.next_update() == {"job": None}
    assert client.next_plugin() == {"job": None}
    assert client.plugin_requests()["items"] == []
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: client.heartbeat(health="ok"), range(12)))
    assert heartbeats_total(app) == 13
    assert agent_main(["--url", strict_server.url, "--instance", "acme-001", "--secret", AGENT_TOKEN,
                       "heartbeat", "--health", "ok"]) == 0
    assert heartbeats_total(app) == 14
    with pytest.raises(SystemExit):  # there is no way to leave it out
        agent_main(["--url", strict_server.url, "--instance", "acme-001", "--secret", AGENT_TOKEN,
                    "--no-timestamp", "heartbeat"])
    with pytest.raises(TypeError):
        AgentClient(strict_server.url, "acme-001", AGENT_TOKEN, timestamp=False)


def test_timestamps_of_one_process_are_unique_and_increasing():
    stamps = [unique_timestamp() for _ in range(2000)]
    assert len(set(stamps)) == len(stamps)
    assert [float(s) for s in stamps] == sorted(float(s) for s in stamps)
    assert all(TIMESTAMP_RE.fullmatch(s) for s in stamps)


def test_the_reference_client_sends_a_503_again_signed_anew():
    """A 503 kept nothing: the client retries it (``retries``) with a fresh timestamp, so the
    retry is not refused as a replay; without retries it raises."""
    seen: list[tuple[str, str]] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server name
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.headers["x-agent-timestamp"], self.headers["x-agent-signature"]))
            status = 503 if len(seen) % 2 else 200
            body = b'{"error": "database_unavailable"}' if status == 503 else b'{"ok": true}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert AgentClient(url, "acme-001", AGENT_TOKEN, retries=1).heartbeat(health="ok") == {"ok": True}
        assert len(seen) == 2 and seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]
        with pytest.raises(AgentError) as refused:
            AgentClient(url, "acme-001", AGENT_TOKEN).heartbeat(health="ok")
        assert refused.value.status == 503 and len(seen) == 3
    finally:
        server.shutdown()
