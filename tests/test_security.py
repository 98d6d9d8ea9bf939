"""Web security, one test (or more) per promise of docs/security.md: CSRF on every form and
admin action, security headers on every response (a CSP Flask-Admin works under), session
cookie flags, session rotation on login, logout that invalidates a copied cookie, constant-time
compares, and no token or secret in the logs."""
from __future__ import annotations

import hmac
import io
import json
import logging
import re

import pytest
from sqlalchemy import func, select

from cp.extensions import db
from cp.models import Alert, LoginSession
from tests.conftest import AGENT_SECRETS, AGENT_TOKEN, TOKENS, LiveServer, bearer, csrf_token_from, login

SECRETS = [*TOKENS.values(), AGENT_TOKEN, *AGENT_SECRETS.values()]


def _alert_acknowledged(app) -> bool:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Alert).where(
            Alert.acknowledged_at.is_not(None))) > 0


# --- CSRF ------------------------------------------------------------------------------------
def test_login_post_without_csrf_token_is_refused(client):
    resp = client.post("/login", data={"token": TOKENS["admin"]})
    assert resp.status_code == 400
    assert "Set-Cookie" not in resp.headers or "cp_session=;" in resp.headers.get("Set-Cookie", "")
    assert client.get("/api/installations").status_code == 401


def test_every_form_post_outside_the_json_api_needs_the_csrf_token(app, client, agent):
    """Every POST route of the HTML side (login, the admin panel's create/edit/delete/action and
    whatever screens are added later) refuses a logged-in POST without or with a wrong token."""
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    login(client, "admin")
    checked = []
    for rule in app.url_map.iter_rules():
        if "POST" not in rule.methods or rule.rule.startswith("/api/"):
            continue
        if rule.endpoint == "auth.logout":
            continue  # the one exemption (docs/security.md): SameSite=Lax, and it can only end a session
        path = re.sub(r"<[^>]+>", "1", rule.rule)
        for extra in ({}, {"csrf_token": "forged"}):
            resp = client.post(path + "?id=1", data={"action": "acknowledge", "rowid": ["1"], "token": "x", **extra})
            assert resp.status_code == 400, (rule.rule, extra, resp.status_code)
        checked.append(rule.rule)
    assert "/login" in checked and "/admin/alerts/action/" in checked
    assert not _alert_acknowledged(app)
    # the same action with the page's token goes through (so the refusals above were the CSRF check)
    token = csrf_token_from(client.get("/admin/alerts/").get_data(as_text=True))
    client.post("/admin/alerts/action/", data={"action": "acknowledge", "rowid": ["1"], "csrf_token": token})
    assert _alert_acknowledged(app)


def test_cookie_authenticated_json_posts_from_another_site_are_refused(client, agent):
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    login(client, "ops")
    resp = client.post("/api/alerts/1/acknowledge", headers={"Origin": "https://evil.example"})
    assert resp.status_code == 403 and resp.get_json()["error"] == "cross_site_request"
    assert client.post("/api/alerts/1/acknowledge", headers={"Origin": "http://localhost"}).status_code == 200


# --- headers ---------------------------------------------------------------------------------
def _paths(agent):
    agent.heartbeat("acme-001")
    return ["/login", "/", "/installations/acme-001", "/admin/", "/admin/alerts/", "/api/installations",
            "/api/openapi.json", "/api/docs", "/healthz", "/readyz", "/no-such-page", "/api/no-such-thing",
            "/static/cp.css"]


def test_security_headers_on_every_response(client, agent):
    for path in _paths(agent):
        for c in (client,):
            resp = c.get(path)
            h = resp.headers
            assert h["X-Content-Type-Options"] == "nosniff", path
            assert h["X-Frame-Options"] == "DENY", path
            assert h["Referrer-Policy"] == "same-origin", path
            csp = h["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, path
            assert "object-src 'none'" in csp and "base-uri 'self'" in csp, path
            script_src = re.search(r"script-src ([^;]+)", csp).group(1)
            assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src, path
            if not path.startswith("/static/"):
                assert h["Cache-Control"] == "no-store", path
    # also on an agent's error and on a 405
    resp = agent.raw("/api/heartbeats", b"{}", secret=None)
    assert resp.status_code == 401 and resp.headers["X-Frame-Options"] == "DENY"
    assert client.delete("/api/installations").headers["X-Content-Type-Options"] == "nosniff"


def test_hsts_only_when_cookies_are_secure(make_app):
    assert "Strict-Transport-Security" not in make_app().test_client().get("/healthz").headers
    secure = make_app(CONTROL_PLANE_COOKIE_SECURE="1").test_client().get("/healthz")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")


def test_admin_pages_run_under_the_csp(client, agent):
    """Flask-Admin gets the request's nonce; its pages carry no inline handler or script
    without it (cp/templates/admin/* replace its onclick handlers)."""
    agent.heartbeat("acme-001", alerts=[{"level": "warning", "message": "Low disk"}])
    login(client, "admin")
    admin = client.application.extensions["admin"][0]
    screens = sorted({view.url.rstrip("/") + "/" for view in admin.screens.values()})  # every screen, also later ones
    assert "/admin/alerts/" in screens
    for path in [*screens, "/admin/installations/edit/?id=1", "/admin/alerts/details/?id=1"]:
        resp = client.get(path)
        assert resp.status_code == 200, path
        html = resp.get_data(as_text=True)
        nonce = re.search(r"'nonce-([^']+)'", resp.headers["Content-Security-Policy"]).group(1)
        scripts = re.findall(r"<script\b[^>]*>", html)
        assert scripts, path
        for tag in scripts:
            assert f'nonce="{nonce}"' in tag, (path, tag)
        assert not re.search(r"\son[a-z]+\s*=", html), (path, re.search(r"\son[a-z]+\s*=[^>]*", html))
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert url.startswith(("/", "#", "?", "javascript:")), (path, url)  # nothing from a CDN
    assert "data-cp-action=\"acknowledge\"" in client.get("/admin/alerts/").get_data(as_text=True)


def test_no_admin_screen_uses_modal_forms(app):
    """A modal's HTML comes from another request, so its inline script carries that request's
    nonce and the CSP of the page refuses it: the panel's forms are full pages."""
    admin = app.extensions["admin"][0]
    for view in admin.screens.values():
        for flag in ("create_modal", "edit_modal", "details_modal"):
            assert not getattr(view, flag, False), f"{view.endpoint}.{flag} would not work under the CSP"


def test_nonce_changes_per_request(client):
    login(client, "support")
    a = client.get("/admin/").headers["Content-Security-Policy"]
    b = client.get("/admin/").headers["Content-Security-Policy"]
    assert "'nonce-" in a and a != b


# --- cookies and sessions ---------------------------------------------------------------------
def test_session_cookie_flags(client, make_app):
    resp = login(client, "support")
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("cp_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    secure = login(make_app(CONTROL_PLANE_COOKIE_SECURE="1").test_client(), "support")
    assert "Secure" in secure.headers["Set-Cookie"] and "HttpOnly" in secure.headers["Set-Cookie"]


def test_no_session_cookie_for_agents_or_bearer_calls(client, agent):
    assert "Set-Cookie" not in agent.heartbeat("acme-001").headers
    assert "Set-Cookie" not in client.get("/api/installations", headers=bearer("support")).headers


def test_session_rotates_on_login_and_a_pre_login_cookie_is_not_reused(app, client):
    client.get("/login")  # the anonymous session (its CSRF token) is set here
    before = client.get_cookie("cp_session").value
    login(client, "admin")
    after = client.get_cookie("cp_session").value
    assert after != before
    # the pre-login cookie grants nothing, though the person it belonged to has logged in since
    other = app.test_client()
    other.set_cookie("cp_session", before)
    assert other.get("/api/installations").status_code == 401
    # a second login gets a new server-side session (a new id), not the previous one
    with app.app_context():
        first = set(db.session.scalars(select(LoginSession.id_hash)))
    login(client, "admin")
    with app.app_context():
        second = set(db.session.scalars(select(LoginSession.id_hash)))
    assert len(first) == 1 and second - first


def test_logout_invalidates_a_copied_cookie(app, client):
    login(client, "ops")
    stolen = client.get_cookie("cp_session").value
    thief = app.test_client()
    thief.set_cookie("cp_session", stolen)
    assert thief.get("/api/installations").status_code == 200
    assert client.post("/logout").status_code in (302, 303)
    assert thief.get("/api/installations").status_code == 401
    assert thief.get("/").status_code == 302  # HTML pages send it to the login form
    assert thief.get("/admin/alerts/").status_code in (302, 403)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LoginSession)) == 0


def test_sessions_expire_server_side(app, client, clock):
    login(client, "support")
    assert client.get("/api/installations").status_code == 200
    clock.advance(hours=12, seconds=1)  # CONTROL_PLANE_SESSION_HOURS defaults to 12
    assert client.get("/api/installations").status_code == 401


def test_logging_in_twice_keeps_two_independent_sessions(app):
    a, b = app.test_client(), app.test_client()
    login(a, "admin")
    login(b, "admin")
    a.post("/logout")
    assert a.get("/api/installations").status_code == 401
    assert b.get("/api/installations").status_code == 200


# --- constant-time compares ----------------------------------------------------------------------
def test_role_tokens_are_compared_in_constant_time_against_every_role(app, monkeypatch):
    import cp.auth

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(cp.auth.hmac, "compare_digest", spy)
    with app.test_request_context():
        assert cp.auth.role_for_token(TOKENS["support"]) == "support"
    # every configured role was compared, also after the first match
    assert len(calls) == 3
    assert {b for _, b in calls} == {t.encode() for t in TOKENS.values()}


def test_agent_signatures_are_compared_in_constant_time(monkeypatch):
    import cp.signing

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(cp.signing.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    sig = cp.signing.sign("secret", b"{}")
    assert cp.signing.verify("secret", b"{}", sig)
    assert not cp.signing.verify("secret", b"{}", "0" * 64)
    assert len(calls) == 2


def test_no_plain_comparison_of_secrets_in_the_code():
    """Tokens and signatures are compared with hmac.compare_digest only (a grep, as a guard)."""
    from tests.conftest import ROOT

    offenders = []
    for path in (ROOT / "cp").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(token|secret|signature)\w*\s*[!=]=\s*\w*(token|secret|signature|header|expected)",
                         line, re.I) and "compare_digest" not in line:
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, offenders


# --- no secret in the logs -----------------------------------------------------------------------
@pytest.fixture
def captured_logs(make_app):
    """The app at DEBUG with every log line (ours, Flask's, werkzeug's, SQLAlchemy's) captured
    in the JSON format used in production."""
    from cp.web.logs import JsonFormatter

    app = make_app(CONTROL_PLANE_LOG_LEVEL="DEBUG")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("cp"), app.logger, logging.getLogger("werkzeug"),
               logging.getLogger("sqlalchemy")]
    for lg in loggers:
        lg.addHandler(handler)
    old_root = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    yield app, stream
    logging.getLogger().setLevel(old_root)
    for lg in loggers:
        lg.removeHandler(handler)


def test_tokens_and_secrets_are_never_logged(captured_logs):
    from cp.agent_client import build_request

    app, stream = captured_logs
    client = app.test_client()
    # logins: good, wrong (the wrong one is a real token of another deployment, say)
    login(client, "admin")
    page = client.get("/login").get_data(as_text=True)
    client.post("/login", data={"token": TOKENS["ops"] + "x", "csrf_token": csrf_token_from(page)})
    client.post("/logout")
    # bearer requests: good and wrong
    client.get("/api/installations", headers=bearer("support"))
    client.get("/api/installations", headers={"Authorization": "Bearer " + AGENT_TOKEN})
    # signed agent requests: good (plain and timestamped), wrong secret, mapped secret
    for payload, secret, ts in ((({"instance_id": "acme-001"}), AGENT_TOKEN, False),
                                ({"instance_id": "acme-002"}, AGENT_TOKEN, True),
                                ({"instance_id": "acme-003"}, TOKENS["admin"], False),
                                ({"instance_id": "mapped-001"}, AGENT_SECRETS["mapped-001"], False)):
        req = build_request("/api/heartbeats", payload, secret, timestamp=ts)
        client.post(req.path, data=req.body, headers=req.headers)
        sig = req.headers["x-agent-signature"]
    logs = stream.getvalue()
    assert '"path": "/api/heartbeats"' in logs and '"path": "/login"' in logs  # the requests were logged
    for secret in [*SECRETS, TOKENS["ops"] + "x", sig]:
        assert secret not in logs, f"a secret appears in the logs: {secret[:6]}..."


def test_a_live_server_logs_no_secret(env, app):
    """The same with a real gunicorn (its own logging) at DEBUG: stderr carries no secret."""
    import requests

    from cp.agent_client import AgentClient

    server = LiveServer({**env, "CONTROL_PLANE_LOG_LEVEL": "DEBUG"}, workers=1).start()
    try:
        s = requests.Session()
        page = s.get(server.url + "/login").text
        s.post(server.url + "/login", data={"token": TOKENS["admin"], "csrf_token": csrf_token_from(page)})
        s.get(server.url + "/api/installations", headers={"Authorization": "Bearer " + TOKENS["ops"]})
        s.get(server.url + "/api/installations", headers={"Authorization": "Bearer wrong-" + AGENT_TOKEN})
        statuses = [AgentClient(server.url, "acme-001", AGENT_TOKEN).post("/api/heartbeats", {})[0],
                    AgentClient(server.url, "mapped-001", AGENT_SECRETS["mapped-001"]).post("/api/heartbeats", {})[0]]
    finally:
        server.stop()
    err = server.log_path.read_text(errors="replace")
    assert statuses == [200, 200], err[-3000:]
    assert "/api/heartbeats" in err  # the requests were logged
    for secret in SECRETS:
        assert secret not in err, f"a secret appears in gunicorn's output: {secret[:6]}..."
    for line in err.splitlines():
        if line.startswith("{"):
            json.loads(line)  # one JSON object per line
