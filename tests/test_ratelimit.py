"""Abuse limits: login attempts per client address (form and bearer), agent requests per
installation, the body size limit; shared by every worker (checked with two gunicorn workers)."""
from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path

import requests
from sqlalchemy import func, select

from cp.agent_client import AgentClient, build_request
from cp.extensions import db
from cp.models import Installation, RateLimitBucket
from cp.web.limits import WINDOW_SECONDS
from tests.conftest import AGENT_TOKEN, TOKENS, LiveServer, bearer, csrf_token_from, wait_until


def _login_attempt(client, token: str, addr: str = "10.0.0.1"):
    page = client.get("/login", environ_base={"REMOTE_ADDR": addr}).get_data(as_text=True)
    return client.post("/login", data={"token": token, "csrf_token": csrf_token_from(page)},
                       environ_base={"REMOTE_ADDR": addr})


# --- login ----------------------------------------------------------------------------------
def test_wrong_logins_past_the_limit_get_429_but_a_right_token_always_gets_in(make_app, clock):
    app = make_app(CONTROL_PLANE_LOGIN_RATE_LIMIT="3")
    client = app.test_client()
    for _ in range(3):
        assert _login_attempt(client, "wrong").status_code == 401
    resp = _login_attempt(client, "wrong")
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    # the form's page, not JSON: a person sees what happened
    assert resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert "429" in html and re.search(r"Too many failed login attempts; retry in \d+ seconds", html)
    assert "cp_session" not in resp.headers.get("Set-Cookie", "") or "Expires" in resp.headers["Set-Cookie"]
    # a colleague behind the same address with the right token: never refused, never throttled
    for _ in range(5):
        assert _login_attempt(client, TOKENS["admin"]).status_code == 303
    assert client.get("/api/installations", headers=bearer("support"),
                      environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200
    # another address is not affected; the next window forgets the failures
    assert _login_attempt(client, "wrong", addr="10.0.0.2").status_code == 401
    clock.advance(seconds=61)
    assert _login_attempt(client, "wrong").status_code == 401


def test_wrong_bearer_tokens_count_as_failed_logins_and_never_lock_out_valid_ones(make_app, clock):
    app = make_app(CONTROL_PLANE_LOGIN_RATE_LIMIT="3")
    client = app.test_client()
    env = {"REMOTE_ADDR": "10.0.0.9"}
    # right tokens do not count: a script may call the API as often as it likes
    for _ in range(5):
        assert client.get("/api/installations", headers=bearer("support"), environ_base=env).status_code == 200
    for _ in range(3):
        resp = client.get("/api/installations", headers={"Authorization": "Bearer guess"}, environ_base=env)
        assert resp.status_code == 401
    for _ in range(7):  # ten junk headers through the shared proxy
        resp = client.get("/api/installations", headers={"Authorization": "Bearer guess"}, environ_base=env)
        assert resp.status_code == 429
        assert resp.get_json()["error"] == "rate_limited" and "Retry-After" in resp.headers
    # a valid token from the same address is not refused
    assert client.get("/api/installations", headers=bearer("admin"), environ_base=env).status_code == 200
    # the same budget of failures covers the login form of that address; a right token still gets in
    assert _login_attempt(client, "wrong", addr="10.0.0.9").status_code == 429
    assert _login_attempt(client, TOKENS["ops"], addr="10.0.0.9").status_code == 303
    with app.app_context():
        keys = dict(db.session.execute(select(RateLimitBucket.key, RateLimitBucket.count)).all())
    assert keys == {"login:10.0.0.9": 11}  # only the failures were counted


def _wrong_bearer(client, xff: str, peer: str = "192.0.2.10"):
    return client.get("/api/installations", headers={"Authorization": "Bearer guess", "X-Forwarded-For": xff},
                      environ_base={"REMOTE_ADDR": peer}).status_code


def test_behind_one_trusted_proxy_the_client_is_the_rightmost_forwarded_address(make_app):
    """The proxy appends the address it saw; anything left of it was written by the client."""
    client = make_app(CONTROL_PLANE_LOGIN_RATE_LIMIT="3", CONTROL_PLANE_TRUSTED_PROXIES="1").test_client()
    statuses = [_wrong_bearer(client, f"10.9.{i}.1, 203.0.113.5") for i in range(6)]  # rotating leftmost
    assert statuses == [401, 401, 401, 429, 429, 429]
    assert _wrong_bearer(client, "203.0.113.6") == 401  # another client behind the same proxy


def test_too_many_trusted_hops_and_a_rotating_forwarded_for_still_hit_a_limit(make_app):
    """Two hops configured, one proxy in front: the address two hops from the right is the
    client's to choose. The nearest hop's address (the rightmost, written by our proxy) is
    limited too, at ten times the limit, so rotating the header does not bypass the limit."""
    client = make_app(CONTROL_PLANE_LOGIN_RATE_LIMIT="2", CONTROL_PLANE_TRUSTED_PROXIES="2").test_client()
    statuses = [_wrong_bearer(client, f"10.8.{i}.1, 203.0.113.5") for i in range(25)]
    assert statuses.count(401) == 20 and statuses[20:] == [429] * 5
    assert client.get("/api/installations", headers={**bearer("ops"), "X-Forwarded-For": "10.8.99.1, 203.0.113.5"},
                      environ_base={"REMOTE_ADDR": "192.0.2.10"}).status_code == 200


def test_without_trusted_proxies_forwarded_for_is_ignored(make_app):
    client = make_app(CONTROL_PLANE_LOGIN_RATE_LIMIT="2").test_client()
    statuses = [_wrong_bearer(client, f"10.7.{i}.1", peer="198.51.100.7") for i in range(3)]
    assert statuses == [401, 401, 429]


# --- agents -------------------------------------------------------------------------------------
def test_agent_requests_are_limited_per_installation(make_app, clock):
    app = make_app(CONTROL_PLANE_AGENT_RATE_LIMIT="3")
    client = app.test_client()

    def beat(iid, **kw):
        req = build_request("/api/heartbeats", {"instance_id": iid, **kw}, AGENT_TOKEN, timestamp=False)
        return client.post(req.path, data=req.body, headers=req.headers)

    for _ in range(3):
        assert beat("acme-001").status_code == 200
    resp = beat("acme-001", health="down")
    assert resp.status_code == 429
    body = resp.get_json()
    assert set(body) == {"error", "message", "details"} and body["error"] == "rate_limited"
    assert body["details"] == {"limit": 3, "window_seconds": 60}
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert beat("acme-002").status_code == 200  # per installation
    with app.app_context():
        inst = db.session.scalar(select(Installation).where(Installation.instance_id == "acme-001"))
        assert inst.heartbeats_total == 3 and inst.health is None  # the refused one changed nothing
    clock.advance(seconds=61)
    assert beat("acme-001").status_code == 200


def test_unsigned_requests_do_not_spend_an_installations_budget(make_app, agent):
    app = make_app(CONTROL_PLANE_AGENT_RATE_LIMIT="2")
    client = app.test_client()
    for _ in range(5):  # a forger naming acme-001 without its secret
        resp = client.post("/api/heartbeats", data=b'{"instance_id": "acme-001"}',
                           headers={"Content-Type": "application/json", "x-agent-signature": "0" * 64})
        assert resp.status_code == 401
    req = build_request("/api/heartbeats", {"instance_id": "acme-001"}, AGENT_TOKEN, timestamp=False)
    assert client.post(req.path, data=req.body, headers=req.headers).status_code == 200


def test_the_agent_limit_has_a_generous_default():
    from config import load_settings

    assert load_settings({}).agent_rate_limit >= 60  # a heartbeat a second, per installation
    assert load_settings({"CONTROL_PLANE_AGENT_RATE_LIMIT": "5"}).agent_rate_limit == 5


def test_one_counter_row_per_key_whatever_the_windows(make_app, clock):
    app = make_app(CONTROL_PLANE_AGENT_RATE_LIMIT="100")
    client = app.test_client()
    for _ in range(4):
        req = build_request("/api/heartbeats", {"instance_id": "acme-001"}, AGENT_TOKEN, timestamp=False)
        assert client.post(req.path, data=req.body, headers=req.headers).status_code == 200
        clock.advance(seconds=61)
    with app.app_context():
        rows = db.session.execute(select(RateLimitBucket.key, RateLimitBucket.count)).all()
    assert rows == [("agent:acme-001", 1)]


def test_prune_forgets_windows_that_are_over(make_app, clock):
    from cp.web import limits as ratelimit

    app = make_app()
    with app.app_context():
        ratelimit.count_failed_login(ratelimit.ClientAddress("10.1.1.1"), 10)
        clock.advance(seconds=30)
        assert ratelimit.prune() == 0
        clock.advance(seconds=120)
        assert ratelimit.prune() == 1
        assert db.session.scalar(select(func.count()).select_from(RateLimitBucket)) == 0


# --- body size ----------------------------------------------------------------------------------
def test_oversize_bodies_are_413_in_the_contract_shape(make_app, agent):
    app = make_app(CONTROL_PLANE_MAX_BODY_BYTES="2048")
    client = app.test_client()
    req = build_request("/api/heartbeats", {"instance_id": "acme-001", "client": "x" * 3000}, AGENT_TOKEN,
                        timestamp=False)
    resp = client.post(req.path, data=req.body, headers=req.headers)
    assert resp.status_code == 413
    assert set(resp.get_json()) == {"error", "message", "details"}
    assert resp.get_json()["error"] == "payload_too_large" and "2048" in resp.get_json()["message"]
    # human JSON endpoints too
    resp = client.post("/api/alerts/1/acknowledge", data=b"{" + b" " * 4000 + b"}", headers={
        **bearer("ops"), "Content-Type": "application/json"})
    assert resp.status_code in (404, 413)  # an endpoint that never reads its body may answer first
    if ("POST", "/api/releases") in {(m, r.rule) for r in app.url_map.iter_rules() for m in r.methods}:
        resp = client.post("/api/releases", data=b'{"v": "' + b"x" * 4000 + b'"}',
                           headers={**bearer("admin"), "Content-Type": "application/json"})
        assert resp.status_code == 413 and resp.get_json()["error"] == "payload_too_large"
    # and the login form (an HTML page)
    resp = client.post("/login", data={"token": "x" * 4000})
    assert resp.status_code == 413 and resp.mimetype == "text/html"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Installation)) == 0


def test_chunked_bodies_are_held_to_the_same_limit(env, app):
    """Without Content-Length (Transfer-Encoding: chunked) through a real gunicorn: over the
    limit a 413, under it the request goes through whole."""
    from cp.signing import sign

    server = LiveServer({**env, "CONTROL_PLANE_MAX_BODY_BYTES": "2048"}, workers=1).start()
    try:
        def chunks(body: bytes, size: int = 500):
            for i in range(0, len(body), size):
                yield body[i:i + size]

        big = b'{"instance_id": "acme-001", "client": "' + b"x" * 5000 + b'"}'
        resp = requests.post(server.url + "/api/heartbeats", data=chunks(big), timeout=10, headers={
            "Content-Type": "application/json", "x-agent-signature": sign(AGENT_TOKEN, big)})
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"] == "payload_too_large"
        small = b'{"instance_id": "acme-001", "alerts": [{"level": "info", "message": "' + b"x" * 1500 + b'"}]}'
        resp = requests.post(server.url + "/api/heartbeats", data=chunks(small), timeout=10, headers={
            "Content-Type": "application/json", "x-agent-signature": sign(AGENT_TOKEN, small)})
        assert resp.status_code == 200, resp.text
        resp = requests.post(server.url + "/login", data=chunks(b"token=" + b"x" * 5000), timeout=10,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status_code == 413
    finally:
        server.stop()
    with app.app_context():
        inst = db.session.scalar(select(Installation).where(Installation.instance_id == "acme-001"))
        assert inst.heartbeats_total == 1
        assert [len(a.message) for a in inst.alerts] == [1500]


# --- across gunicorn workers ----------------------------------------------------------------------
def _served_by(log: Path) -> dict[str, int]:
    """pid -> requests, from gunicorn's access log (``%(p)s``)."""
    out: dict[str, int] = {}
    for line in log.read_text().splitlines():
        if "/api/heartbeats" in line:
            pid = line.split()[0]
            out[pid] = out.get(pid, 0) + 1
    return out


def _early_in_a_window(needed_seconds: float = 30) -> None:
    """Wait, if need be, for a fresh one-minute window (``cp.web.limits.WINDOW_SECONDS``): counts
    restart when a window begins, so a test that crossed a boundary would see its limit twice."""
    def early() -> bool:
        return WINDOW_SECONDS - time.time() % WINDOW_SECONDS >= needed_seconds

    assert wait_until(early, timeout=WINDOW_SECONDS, interval=0.2)


def test_limits_hold_across_two_gunicorn_workers(env, app, tmp_path):
    """Two workers that are also replaced every few requests (``--max-requests``): the requests
    are served by several processes (gunicorn's access log names them), yet the limit is the
    limit of the deployment. A per-process counter would let far more through. A worker stops
    taking connections after four requests, so it serves at most four plus the eight the clients
    keep open: 14 heartbeats always span two processes at least."""
    access = tmp_path / "access.log"
    _early_in_a_window()  # the server starts, then both bursts, inside one window
    server = LiveServer({
        **env, "CONTROL_PLANE_AGENT_RATE_LIMIT": "5", "CONTROL_PLANE_LOGIN_RATE_LIMIT": "3",
        "GUNICORN_CMD_ARGS": f"--max-requests 4 --access-logfile {access} --access-logformat '%(p)s %(r)s %(s)s'",
    }, workers=2).start()
    try:
        def beat(i):
            # a fresh connection each time; distinct bodies (identical ones signed in the same
            # millisecond would be one request and its replays)
            with requests.Session() as s:
                client = AgentClient(server.url, "acme-001", AGENT_TOKEN, session=s)
                return client.post("/api/heartbeats", {"slo_p95_ms": i}, raise_for_status=False)[0]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(beat, range(14)))

        def wrong_login(_):
            with requests.Session() as s:
                page = s.get(server.url + "/login").text
                return s.post(server.url + "/login", data={"token": "wrong", "csrf_token": csrf_token_from(page)},
                              headers={"Connection": "close"}).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            logins = list(pool.map(wrong_login, range(8)))
    finally:
        server.stop()
    assert len(_served_by(access)) >= 2, _served_by(access)
    assert statuses.count(200) == 5 and statuses.count(429) == 9, statuses
    assert logins.count(401) == 3 and logins.count(429) == 5, logins
