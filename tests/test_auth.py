"""Roles, login/logout, bearer tokens, safe redirects, and the role matrix of the JSON API."""
import pytest

from tests.conftest import TOKENS, bearer, csrf_token_from, login


def test_login_form_has_token_and_csrf_fields(client):
    html = client.get("/login").get_data(as_text=True)
    assert 'name="token"' in html
    assert csrf_token_from(html)


@pytest.mark.parametrize("role", ["support", "ops", "admin"])
def test_login_sets_session_cookie_and_redirects(client, role):
    resp = login(client, role)
    assert resp.status_code in (302, 303)
    assert resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/api/installations").status_code == 200


def test_secure_cookie_flag(make_app):
    app = make_app(CONTROL_PLANE_COOKIE_SECURE="1")
    resp = login(app.test_client(), "support")
    assert "Secure" in resp.headers["Set-Cookie"]


def test_wrong_token_shows_form_again_with_401_and_no_cookie(client):
    page = client.get("/login")
    token = csrf_token_from(page.get_data(as_text=True))
    resp = client.post("/login", data={"token": "nope", "csrf_token": token})
    assert resp.status_code == 401
    assert "not valid" in resp.get_data(as_text=True)
    assert 'name="token"' in resp.get_data(as_text=True)
    assert client.get("/api/installations").status_code == 401


def test_login_without_csrf_token_is_refused(client):
    resp = client.post("/login", data={"token": TOKENS["admin"]})
    assert resp.status_code == 400
    assert client.get("/api/installations").status_code == 401


@pytest.mark.parametrize("next_url,expected", [
    ("/installations/acme-001", "/installations/acme-001"),
    ("/admin/?x=1", "/admin/?x=1"),
    ("//evil.example.com/", "/"),
    ("https://evil.example.com/", "/"),
    ("/\\evil.example.com", "/"),
    ("javascript:alert(1)", "/"),
])
def test_next_redirect_only_to_local_paths(client, next_url, expected):
    from urllib.parse import quote

    resp = login(client, "support", quote(next_url, safe=""))
    assert resp.headers["Location"] == expected


def test_logout_clears_session(client):
    login(client, "admin")
    assert client.get("/api/installations").status_code == 200
    resp = client.post("/logout")
    assert resp.status_code in (302, 303)
    assert client.get("/api/installations").status_code == 401


def test_unset_or_empty_token_grants_nothing(make_app):
    app = make_app(CONTROL_PLANE_ADMIN_TOKEN="", CONTROL_PLANE_OPS_TOKEN="")
    client = app.test_client()
    assert client.get("/api/installations", headers={"Authorization": "Bearer "}).status_code == 401
    assert client.get("/api/installations", headers={"Authorization": "Bearer x"}).status_code == 401
    page = client.get("/login")
    resp = client.post("/login", data={"token": "", "csrf_token": csrf_token_from(page.get_data(as_text=True))})
    assert resp.status_code in (400, 401)
    assert client.get("/api/installations").status_code == 401


def test_changing_a_token_ends_its_sessions(make_app, env):
    app = make_app()
    client = app.test_client()
    login(client, "admin")
    assert client.get("/api/installations").status_code == 200
    rotated = make_app(CONTROL_PLANE_ADMIN_TOKEN="a-new-admin-token-0123456789")
    other = rotated.test_client()
    other.set_cookie("cp_session", client.get_cookie("cp_session").value)
    assert other.get("/api/installations").status_code == 401


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic abc", "Bearer", "token " + TOKENS["admin"]])
def test_bad_bearer_is_401_json(client, header):
    resp = client.get("/api/installations", headers={"Authorization": header})
    assert resp.status_code == 401
    assert set(resp.get_json()) == {"error", "message", "details"}


def test_bad_bearer_with_valid_session_is_still_401(client):
    login(client, "admin")
    assert client.get("/api/installations", headers={"Authorization": "Bearer wrong"}).status_code == 401


# --- the role matrix of the JSON API ---------------------------------------------------------
ROLE_ORDER = ["support", "ops", "admin"]


def api_routes(app):
    """(method, rule, required_role) for every human JSON endpoint."""
    out = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        needed = getattr(view, "cp_required_role", None)
        if needed is None or not rule.rule.startswith("/api/"):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule, needed))
    return out


def test_every_human_api_route_declares_its_role(app):
    routes = api_routes(app)
    assert ("GET", "/api/installations", "support") in routes
    assert ("POST", "/api/alerts/<int:alert_id>/acknowledge", "ops") in routes
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") and rule.endpoint.startswith("api."):
            view = app.view_functions[rule.endpoint]
            assert getattr(view, "cp_required_role", None) or rule.rule in (
                "/api/openapi.json", "/api/docs"), f"{rule.rule} has no role check"


PERSON_ONLY = {("POST", "/api/tokens")}


def test_role_matrix(app):
    client = app.test_client()
    checked = 0
    for method, rule, needed in api_routes(app):
        path = rule
        for part in rule.split("/"):
            if part.startswith("<"):
                path = path.replace(part, "999999" if "int:" in part else "unknown-id")
        anon = client.open(path, method=method, headers={"Content-Type": "application/json"}, data=b"{}")
        assert anon.status_code == 401, (method, path, anon.status_code)
        for role in ROLE_ORDER:
            resp = client.open(path, method=method, headers={**bearer(role), "Content-Type": "application/json"},
                               data=b"{}" if method != "GET" else None)
            allowed = ROLE_ORDER.index(role) >= ROLE_ORDER.index(needed)
            if (method, rule) in PERSON_ONLY:  # a person's own tokens: a role token has none
                assert resp.status_code == 403 and resp.get_json()["error"] == "not_a_person", (method, path, role)
            elif allowed:
                assert resp.status_code not in (401, 403), (method, path, role, resp.status_code)
            else:
                assert resp.status_code == 403, (method, path, role, resp.status_code)
                assert resp.get_json()["error"] == "forbidden"
            checked += 1
    assert checked >= 3 * 7


def test_cross_site_cookie_post_is_refused(client):
    login(client, "ops")
    resp = client.post("/api/alerts/1/acknowledge", headers={"Origin": "https://evil.example.com"})
    assert resp.status_code == 403
    assert resp.get_json()["error"] == "cross_site_request"


def test_html_pages_redirect_anonymous_to_login(client):
    for path in ("/", "/installations/acme-001"):
        resp = client.get(path)
        assert resp.status_code == 302
        assert resp.headers["Location"].startswith("/login?next=")
