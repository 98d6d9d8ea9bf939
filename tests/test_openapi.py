"""The OpenAPI document matches the routes: every /api route with its methods and auth, every
route of the contract that exists, valid OpenAPI 3.1; and the reference page at /api/docs."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from flask import Blueprint
from openapi_spec_validator import validate

from cp.agent_api.signed import agent_endpoint
from cp.agent_api.update_schemas import UpdateNextResponseSchema, UpdateNextSchema
from cp.api import spec as spec_module
from cp.api.rollout_transitions import KINDS, TRANSITIONS
from cp.api.spec import auth_of, build_spec, openapi_path
from cp.auth import role_required
from tests.conftest import ROOT, bearer

METHODS = {"get", "put", "post", "patch", "delete"}

# The auth of every route of /work/shared/CONTRACT.md, as the contract states it.
CONTRACT_AUTH = {
    ("POST", "/api/heartbeats"): "agent",
    ("GET", "/api/installations"): "role:support",
    ("GET", "/api/installations/{}"): "role:support",
    ("GET", "/api/alerts"): "role:support",
    ("GET", "/api/job-failures"): "role:support",
    ("POST", "/api/alerts/{}/acknowledge"): "role:ops",
    ("POST", "/api/alerts/{}/resolve"): "role:ops",
    ("POST", "/api/job-failures/{}/resolve"): "role:ops",
    ("POST", "/api/releases"): "role:admin",
    ("GET", "/api/releases"): "role:support",
    ("POST", "/api/rollouts"): "role:admin",
    ("POST", "/api/rollouts/{}/advance"): "role:admin",
    ("GET", "/api/rollouts/{}"): "role:support",
    ("POST", "/api/rollouts/{}/pause"): "role:ops",
    ("POST", "/api/rollouts/{}/resume"): "role:ops",
    ("POST", "/api/rollouts/{}/cancel"): "role:admin",
    ("POST", "/api/rollouts/{}/retry"): "role:admin",
    ("POST", "/api/updates/next"): "agent",
    ("POST", "/api/updates/report"): "agent",
    ("POST", "/api/restores/schedule"): "role:admin",
    ("POST", "/api/restores/report"): "agent",
    ("GET", "/api/restores"): "role:admin",
    ("POST", "/api/plugins/releases"): "role:admin",
    ("GET", "/api/plugins/releases"): "role:admin",
    ("POST", "/api/plugins/requests"): "agent",
    ("GET", "/api/plugins/requests/list"): "role:admin",
    ("POST", "/api/plugins/requests/{}/approve"): "role:admin",
    ("POST", "/api/plugins/rollouts"): "role:admin",
    ("POST", "/api/plugins/rollouts/{}/advance"): "role:admin",
    ("POST", "/api/plugins/next"): "agent",
    ("POST", "/api/plugins/report"): "agent",
    ("GET", "/api/openapi.json"): "public",
    ("GET", "/api/users"): "role:admin",
    ("POST", "/api/users"): "role:admin",
    ("PATCH", "/api/users/{}"): "role:admin",
    ("POST", "/api/users/{}/tokens"): "role:admin",
    ("POST", "/api/tokens"): "role:support",
    ("GET", "/api/tokens"): "role:support",
    ("DELETE", "/api/tokens/{}"): "role:support",
    ("GET", "/api/me"): "role:support",
}


def contract_text() -> str | None:
    for candidate in (os.environ.get("CONTROL_PLANE_CONTRACT"), ROOT.parent / "shared" / "CONTRACT.md",
                      Path("/work/shared/CONTRACT.md")):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_text()
    return None


def normalize(path: str) -> str:
    """``/api/x/<int:id>``, ``/api/x/<id>`` and ``/api/x/{id}`` -> ``/api/x/{}``."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def api_rules(app):
    """(METHOD, normalized path, rule, view) of every /api route in the url_map."""
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        for method in sorted(m for m in rule.methods if m.lower() in METHODS):
            out.append((method, normalize(rule.rule), rule, app.view_functions[rule.endpoint]))
    return out


def spec_ops(spec):
    return {(m.upper(), normalize(p)): op for p, item in spec["paths"].items() for m, op in item.items() if m in METHODS}


def spec_auth(op) -> str:
    names = {name for s in op.get("security", []) for name in s}
    if names == {"agentSignature"}:
        return "agent"
    if names == {"bearerAuth", "sessionCookie"}:
        return f"role:{op['x-required-role']}"
    assert not names, f"unexpected security {op.get('security')}"
    return "public"


@pytest.fixture
def spec(client):
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    return resp.get_json()


def test_served_without_login_and_valid_openapi_31(client, spec):
    assert "Set-Cookie" not in client.get("/api/openapi.json").headers
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on an invalid document


def test_every_api_route_is_in_the_spec_with_its_methods_and_auth(app, spec):
    ops = spec_ops(spec)
    routes = api_rules(app)
    assert len(routes) >= 8
    for method, path, rule, view in routes:
        assert (method, path) in ops, f"{method} {rule.rule} is missing from the spec"
        assert spec_auth(ops[(method, path)]) == auth_of(view), f"{method} {rule.rule}: auth differs"
    # and nothing in the spec that the app does not serve
    served = {(m, p) for m, p, _, _ in routes}
    assert set(ops) <= served, set(ops) - served


def test_contract_routes_that_exist_are_in_the_spec_with_the_contract_auth(app, spec):
    ops = spec_ops(spec)
    served = {(m, p) for m, p, _, _ in api_rules(app)}
    present = [key for key in CONTRACT_AUTH if key in served]
    assert ("POST", "/api/heartbeats") in present and ("GET", "/api/openapi.json") in present
    for key in present:
        assert key in ops, f"{key} is missing from the spec"
        assert spec_auth(ops[key]) == CONTRACT_AUTH[key], f"{key}: {spec_auth(ops[key])} != {CONTRACT_AUTH[key]}"


def test_the_contract_table_above_lists_every_contract_route(app):
    text = contract_text()
    if text is None:
        pytest.skip("CONTRACT.md not found beside the repository")
    found = {(m, normalize(p)) for m, p in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/api/[^`\s]+)`", text)}
    assert found, "no route found in CONTRACT.md"
    # a contract route the app does not serve yet needs no entry until it is served
    served = {(m, p) for m, p, _, _ in api_rules(app)}
    assert found & served <= set(CONTRACT_AUTH), (found & served) - set(CONTRACT_AUTH)


def test_auth_in_the_spec_is_what_the_server_enforces(app, spec):
    """Without credentials: every secured operation answers 401, every public one does not."""
    client = app.test_client()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            url = re.sub(r"\{[^}]+\}", "1", path)
            resp = client.open(url, method=method.upper(), data=b'{"instance_id": "acme-001"}',
                               headers={"Content-Type": "application/json"})
            if op["security"]:
                assert resp.status_code == 401, (method, path, resp.status_code)
                assert set(resp.get_json()) == {"error", "message", "details"}
            else:
                assert resp.status_code == 200, (method, path, resp.status_code)


def test_every_operation_is_documented_in_its_docstring(app):
    """Each /api view documents each of its methods, in the apispec YAML block of its docstring
    or as data in ``cp_openapi`` (registered from a table, or by the agent gate), with a success
    response naming its schema (the spec is generated from these, not written by hand)."""
    for method, _, rule, view in api_rules(app):
        ops = spec_module.documented_operations(view)
        op = ops.get(method.lower())
        assert op, f"{method} {rule.rule}: no YAML block in the docstring of {view.__name__}"
        assert op.get("summary") or (view.__doc__ or "").strip().split("\n")[0], rule.rule
        success = [c for c in op.get("responses", {}) if 200 <= int(c) < 300]
        assert success, f"{method} {rule.rule}: no success response documented"
        for code in success:
            content = op["responses"][code].get("content") or {}
            if int(code) == 204:  # No Content
                assert not content, f"{method} {rule.rule} 204 with a body"
                continue
            assert content, f"{method} {rule.rule} {code}: no content"
            for media in content.values():
                assert media.get("schema"), f"{method} {rule.rule} {code}: no schema"


def test_errors_use_the_common_shape_and_routes_list_their_errors(spec):
    assert set(spec["components"]["schemas"]["Error"]["required"]) == {"error", "message", "details"}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            codes = {int(c) for c in op["responses"]}
            for code, resp in op["responses"].items():
                if int(code) >= 400:
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error", (method, path, code)
            assert 503 in codes
            auth = spec_auth(op)
            if auth == "agent":
                assert {400, 401, 413, 415, 422, 429} <= codes, (method, path)
                assert "Retry-After" in op["responses"]["429"]["headers"]
                assert any(p["name"] == "x-agent-timestamp" for p in op["parameters"])
            elif auth.startswith("role:"):
                assert {401, 403} <= codes, (method, path)
            if "requestBody" in op and auth != "public":
                assert {400, 413, 415, 422} <= codes, (method, path)
            if "{" in path:
                assert 404 in codes, (method, path)


def test_request_bodies_come_from_marshmallow_schemas(spec):
    schemas = spec["components"]["schemas"]
    heartbeat = spec["paths"]["/api/heartbeats"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert heartbeat == {"$ref": "#/components/schemas/Heartbeat"}
    props = schemas["Heartbeat"]["properties"]
    assert schemas["Heartbeat"]["required"] == ["instance_id"]
    assert props["health"]["enum"][:3] == ["ok", "degraded", "down"]
    assert props["slo_error_rate"]["maximum"] == 1
    assert "null" in props["version"]["type"]  # 3.1 nullable


def test_list_endpoints_document_their_query_parameters(app, spec):
    listed = 0
    for path, item in spec["paths"].items():
        op = item.get("get")
        if not op:
            continue
        success = op["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})
        ref = success.get("$ref", "")
        if not ref:
            continue
        props = spec["components"]["schemas"][ref.rsplit("/", 1)[1]].get("properties", {})
        if set(props) == {"items", "total"}:
            names = {p["name"] for p in op["parameters"] if p["in"] == "query"}
            assert {"limit", "offset"} <= names, (path, names)
            listed += 1
    assert listed >= 3
    names = {p["name"] for p in spec["paths"]["/api/installations"]["get"]["parameters"]}
    assert {"q", "health", "release_channel", "version", "stale"} <= names


def test_path_parameters_follow_the_rule_converters(spec):
    params = spec["paths"]["/api/alerts/{alert_id}/acknowledge"]["post"]["parameters"]
    alert_id = next(p for p in params if p["name"] == "alert_id")
    assert alert_id["in"] == "path" and alert_id["required"] and alert_id["schema"]["type"] == "integer"
    assert openapi_path("/api/x/<int:a>/<b>") == ("/api/x/{a}/{b}", [
        {"in": "path", "name": "a", "required": True, "schema": {"type": "integer"}},
        {"in": "path", "name": "b", "required": True, "schema": {"type": "string"}},
    ])


def test_new_routes_are_picked_up_by_themselves(make_app):
    """A route added later appears with its auth and errors, without touching cp/api/spec.py."""
    app = make_app()
    extra = Blueprint("extra", __name__, url_prefix="/api")

    @extra.post("/things/<int:thing_id>/poke")
    @role_required("ops")
    def poke(thing_id):
        """Poke a thing.
        ---
        post:
          responses:
            200:
              content:
                application/json:
                  schema: AlertSchema
            409:
              description: Already poked.
        """

    @extra.post("/agent-things")
    @agent_endpoint(UpdateNextSchema, UpdateNextResponseSchema)
    def agent_thing(body):
        """An agent thing."""

    app.register_blueprint(extra)
    spec = build_spec(app)
    validate(spec)
    op = spec["paths"]["/api/things/{thing_id}/poke"]["post"]
    assert op["x-required-role"] == "ops"
    assert {"200", "401", "403", "404", "409", "503"} <= set(map(str, op["responses"]))
    assert op["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    agent_op = spec["paths"]["/api/agent-things"]["post"]
    assert agent_op["security"] == [{"agentSignature": []}]
    assert agent_op["summary"] == "An agent thing."
    # the body and answer schemas the gate loads and declares, with no YAML block in the docstring
    assert agent_op["requestBody"] == {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/UpdateNext"}}}}
    assert agent_op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UpdateNextResponse"}


# --- the reference page ---------------------------------------------------------------------
def test_docs_page_is_served_offline_without_login(client, spec):
    resp = client.get("/api/docs")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    for path in spec["paths"]:
        assert path in html
    assert "x-agent-signature" in html and "x-agent-timestamp" in html
    # nothing loaded from elsewhere: every src/href is local
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith(("/", "#")), url
    assert "<script" not in html
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]


def test_docs_page_escapes_what_it_shows(client, monkeypatch):
    evil = "<script>alert(1)</script>"
    with client.application.app_context():
        real = spec_module.get_spec()
    monkeypatch.setattr(spec_module, "get_spec", lambda: {
        **real, "info": {**real["info"], "title": evil},
        "paths": {"/api/heartbeats": {"post": {**real["paths"]["/api/heartbeats"]["post"], "summary": evil}}}})
    html = client.get("/api/docs").get_data(as_text=True)
    assert evil not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_docs_page_is_readable_by_a_support_user_too(client):
    assert client.get("/api/docs", headers=bearer("support")).status_code == 200


def test_rollout_transitions_of_both_kinds_come_from_one_table(app, spec):
    """Every transition is a route of both kinds with its operation; those that take no body
    document none (and refuse one), those that take one name its schema."""
    for kind in KINDS:
        for transition in TRANSITIONS:
            op = spec["paths"][f"/api{kind.prefix}/{{rollout_id}}/{transition.name}"]["post"]
            assert op["x-required-role"] == transition.role
            assert op["operationId"] == f"api_{transition.name}_{kind.endpoint}"
            assert {"200", "404", "409"} <= {str(c) for c in op["responses"]}
            if transition.body is None:
                assert "requestBody" not in op
            else:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith(transition.body.__name__.removesuffix("Schema"))
