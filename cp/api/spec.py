"""The OpenAPI 3.1 document of every ``/api`` operation, built from the routes themselves.

``GET /api/openapi.json`` (no login) and ``GET /api/docs`` (a reference page for agent authors,
rendered on the server from the same document; no JavaScript, no CDN).

Nothing is listed by hand: ``build_spec`` walks ``app.url_map`` and reads, for each ``/api``
rule and method, the apispec YAML block of the view's docstring (``---`` then ``get:`` /
``post:`` ...; schemas are named by their marshmallow class), and what the code declares as data
in the view's ``cp_openapi`` attribute (``cp.web.openapi``: the operations of views registered
from a table, the body and answer schemas of agent views). It then completes each operation
from what the code itself declares, so the document cannot drift from the routes:

- auth: views wrapped by ``cp.auth.role_required`` (``cp_required_role``) take a bearer token
  (or the session cookie), views wrapped by ``cp.agent_api.signed.agent_endpoint``
  (``cp_agent``) take ``x-agent-signature`` (and the optional ``x-agent-timestamp``), others
  are public;
- path parameters from the rule (``<int:id>`` is an integer);
- the error responses each route can give, all in the common ``Error`` shape: 401/403 for
  human routes, 401/429 for agent routes, 413/415 on every unsafe route, 400/422 where a JSON body is read, 422 where
  query arguments are validated, 404 where the path names something, 503 everywhere (database
  unavailable), plus whatever the docstring lists (409, agent 403/404 ...).
"""
from __future__ import annotations

import copy
import re
from http import HTTPStatus
from importlib import metadata

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.yaml_utils import load_operations_from_docstring
from flask import current_app, jsonify, render_template
from marshmallow import Schema, fields

from cp import signing
from cp.web.parsing import MAX_JSON_DEPTH
from cp.agent_api.signed import TIMESTAMP_RE
from cp.web.errors import HTTP_CODES
from cp.api import bp

OPENAPI_VERSION = "3.1.0"
METHODS = ("get", "put", "post", "patch", "delete")
RULE_ARG_RE = re.compile(r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\([^)]*\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")
CONVERTER_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}}

ERROR_DESCRIPTIONS = {
    400: f"The body is not UTF-8 JSON, not a JSON object, or nested deeper than {MAX_JSON_DEPTH} levels "
         "(`invalid_json`).",
    401: "No or bad credentials.",
    403: "Your role does not allow this, or it belongs to another installation.",
    404: "Unknown id.",
    409: "Conflicts with the current state.",
    413: "The body is over CONTROL_PLANE_MAX_BODY_BYTES.",
    415: "A body that is not Content-Type: application/json.",
    422: "Validation failed; `details` maps each field to its messages (also text holding NUL or a lone "
         "UTF-16 surrogate, and times outside years 1-9999 in UTC).",
    429: "Rate limited; retry after `Retry-After` seconds.",
    503: ("The database is unavailable, or (agent routes) a row stayed locked past "
          "CONTROL_PLANE_DB_LOCK_TIMEOUT_MS; nothing was kept: retry shortly."),
}

INPUT_LIMITS = f"""\
**Input limits.** A body is UTF-8 JSON nested at most {MAX_JSON_DEPTH} levels (the body object is
level 1; deeper: 400). Text may not hold NUL (`\\u0000`) or a lone UTF-16 surrogate
(`\\ud800`-`\\udfff`), in any field, nested ones included: 422 naming the field. Times are
ISO 8601 with an offset and must fall within years 1-9999 once converted to UTC
(`9999-12-31T23:59:59-14:00` is year 10000): 422. A `pattern` matches the whole value
(`acme-001` followed by a newline is refused)."""

DESCRIPTION = """\
The control plane's HTTP API. Every error is `{"error": "<snake_case_code>", "message": "...",
"details": {...}}`. Lists take `limit` (default 50, max 500) and `offset` and return
`{"items": [...], "total": N}`, newest first.

{input_limits}

**People** (`support` < `ops` < `admin`) send `Authorization: Bearer <token>`: a personal token
(`/api/tokens`; the person's current role) or a role token (attributed to the role name); or the
session cookie of `/login`. Wrong credentials are counted per client address; past
CONTROL_PLANE_LOGIN_RATE_LIMIT a minute they get 429 with `Retry-After` (a right one never does).

**Agents** sign the exact request body: `x-agent-signature: hex(HMAC-SHA256(secret, body))`,
where the secret is the installation's own (CONTROL_PLANE_AGENT_SECRETS) or the shared
CONTROL_PLANE_AGENT_TOKEN. With the optional `x-agent-timestamp: <unix seconds>` header the
signed bytes are `timestamp + "." + body`; such a request is refused when it is more than 5
minutes off the server's clock or was already received (replay). Agent requests are limited per
installation (CONTROL_PLANE_AGENT_RATE_LIMIT per minute, 429 with `Retry-After`).
""".replace("{input_limits}", INPUT_LIMITS)


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "snake_case error code", "example": "not_found"})
    message = fields.String(required=True, metadata={"description": "A human sentence."})
    details = fields.Dict(required=True, metadata={
        "description": "More about the error: for 422, each field mapped to its messages."})


def _version() -> str:
    try:
        return metadata.version("control-plane")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


def openapi_path(rule: str) -> tuple[str, list[dict]]:
    """``/api/x/<int:id>`` -> (``/api/x/{id}``, its path parameters)."""
    params = []
    for m in RULE_ARG_RE.finditer(rule):
        schema = dict(CONVERTER_TYPES.get(m.group("converter") or "", {"type": "string"}))
        params.append({"in": "path", "name": m.group("name"), "required": True, "schema": schema})
    return RULE_ARG_RE.sub(lambda m: "{" + m.group("name") + "}", rule), params


def auth_of(view) -> str:
    """``agent``, ``role:<role>`` or ``public``: what the code (not the docstring) enforces."""
    if getattr(view, "cp_agent", False):
        return "agent"
    role = getattr(view, "cp_required_role", None)
    return f"role:{role}" if role else "public"


def _error_response(status: int, description: str | None = None) -> dict:
    resp = {
        "description": description or ERROR_DESCRIPTIONS.get(status) or HTTP_CODES.get(status, ("", "Error."))[1],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status == 429:
        resp["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
    return resp


def _summary_of(view) -> tuple[str, str]:
    doc = (view.__doc__ or "").split("---", 1)[0].strip()
    first, _, rest = doc.partition("\n")
    return first.strip(), rest.strip()


def _complete(op: dict, view, method: str, endpoint: str, path_params: list[dict], many_methods: bool) -> dict:
    auth = auth_of(view)
    summary, description = _summary_of(view)
    op.setdefault("summary", summary or endpoint)
    if description and "description" not in op:
        op["description"] = description
    # agent routes are tagged ``agent``; the others by their blueprint, unless the docstring says
    op.setdefault("tags", ["agent"] if auth == "agent" else [endpoint.split(".", 1)[0]])
    op.setdefault("operationId", endpoint.replace(".", "_") + (f"_{method}" if many_methods else ""))

    params = op.setdefault("parameters", [])
    declared = {(p.get("in"), p.get("name")) for p in params if isinstance(p, dict)}
    for p in path_params:
        if ("path", p["name"]) not in declared:
            params.append(copy.deepcopy(p))
    has_query = any(isinstance(p, dict) and p.get("in") == "query" for p in params)
    has_body = "requestBody" in op

    statuses: set[int] = {503}
    if auth == "agent":
        op["security"] = [{"agentSignature": []}]
        if not any(isinstance(p, dict) and p.get("name") == signing.TIMESTAMP_HEADER for p in params):
            params.append({
                "in": "header", "name": signing.TIMESTAMP_HEADER, "required": False,
                "description": "Unix seconds (decimals allowed); when sent, the signature covers "
                               "`timestamp + \".\" + body` and the request is refused if older than 5 minutes "
                               "or replayed. Required when CONTROL_PLANE_REQUIRE_AGENT_TIMESTAMP=1.",
                "schema": {"type": "string", "pattern": TIMESTAMP_RE.pattern},
            })
        # the agent gate always reads a JSON object body (cp.agent_api.signed)
        statuses |= {400, 401, 413, 415, 422, 429}
    elif auth.startswith("role:"):
        role = auth.split(":", 1)[1]
        op["security"] = [{"bearerAuth": []}, {"sessionCookie": []}]
        op["x-required-role"] = role
        statuses |= {401, 403}
        if method != "get":  # cp.api: any body sent to an unsafe route is JSON, even where none is read
            statuses |= {413, 415}
        if has_body:
            statuses |= {400, 422}
    else:
        op["security"] = []
    if has_query:
        statuses.add(422)
    if path_params:
        statuses.add(404)

    responses = op.setdefault("responses", {})
    for code in list(responses):
        status = int(code)
        resp = responses[code]
        if resp is None:
            resp = responses[code] = {}
        if "description" not in resp:
            resp["description"] = HTTPStatus(status).phrase if status < 400 else \
                ERROR_DESCRIPTIONS.get(status, HTTPStatus(status).phrase)
        if status >= 400 and "content" not in resp:
            resp.update({k: v for k, v in _error_response(status, resp["description"]).items()
                         if k != "description"})
    existing = {int(c) for c in responses}
    for status in sorted(statuses - existing):
        responses[status] = _error_response(status)
    if not any(200 <= int(c) < 400 for c in responses):
        responses[200] = {"description": "OK"}
    return op


def documented_operations(view) -> dict:
    """What a view documents, by method: the YAML block of its docstring, joined by the operations
    the code declares as data (``cp_openapi``: a route registered from a table, the body and
    answer schemas of the agent gate). The data wins where both name the same thing; their
    responses add up."""
    ops = load_operations_from_docstring(view.__doc__ or "") or {}
    for method, declared in (getattr(view, "cp_openapi", None) or {}).items():
        op = ops.setdefault(method, {})
        responses = {**(op.get("responses") or {}), **declared.get("responses", {})}
        op.update(declared)
        op["responses"] = responses
    return ops


def build_spec(app) -> dict:
    """The OpenAPI document of the ``/api`` routes registered on ``app``."""
    spec = APISpec(
        title="control-plane API", version=_version(), openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()], info={"description": DESCRIPTION},
    )
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer",
        "description": "A person's personal token (POST /api/tokens), or a role token: "
                       "CONTROL_PLANE_SUPPORT_TOKEN, _OPS_TOKEN or _ADMIN_TOKEN."})
    spec.components.security_scheme("sessionCookie", {
        "type": "apiKey", "in": "cookie", "name": app.config.get("SESSION_COOKIE_NAME", "session"),
        "description": "The session cookie set by POST /login (browsers)."})
    spec.components.security_scheme("agentSignature", {
        "type": "apiKey", "in": "header", "name": signing.SIGNATURE_HEADER,
        "description": "hex(HMAC-SHA256(secret, [timestamp + '.'] + raw body))."})
    spec.components.schema("Error", schema=ErrorSchema)

    rules = sorted((r for r in app.url_map.iter_rules() if r.rule.startswith("/api/")),
                   key=lambda r: (r.rule, r.endpoint))
    by_path: dict[str, dict] = {}
    for rule in rules:
        view = app.view_functions[rule.endpoint]
        path, path_params = openapi_path(rule.rule)
        documented = documented_operations(view)
        methods = sorted(m.lower() for m in (rule.methods or ()) if m.lower() in METHODS)
        ops = by_path.setdefault(path, {})
        for method in methods:
            op = copy.deepcopy(documented.get(method) or {})
            ops[method] = _complete(op, view, method, rule.endpoint, path_params, len(methods) > 1)
    for path, ops in by_path.items():
        spec.path(path=path, operations=ops)
    return spec.to_dict()


def get_spec() -> dict:
    """The document of the running app, built once (routes do not change after start-up)."""
    ext = current_app.extensions
    if "cp_openapi" not in ext:
        ext["cp_openapi"] = build_spec(current_app)
    return ext["cp_openapi"]


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3.1 document of every /api operation.
    ---
    get:
      tags: [meta]
      summary: This document (no login needed).
      responses:
        200:
          description: The OpenAPI document.
          content:
            application/json:
              schema: {type: object}
    """
    return jsonify(get_spec())


def _resolve(spec: dict, node):
    """Follow a local ``$ref`` (for the reference page)."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 20:
        parts = node["$ref"].lstrip("#/").split("/")
        target = spec
        for part in parts:
            target = target.get(part, {})
        node, seen = target, seen + 1
    return node


def _schema_rows(spec: dict, schema, depth: int = 0, prefix: str = "") -> list[dict]:
    """Flatten a JSON schema into (field, type, required, constraints) rows, nested objects indented."""
    schema = _resolve(spec, schema or {})
    rows: list[dict] = []
    if depth > 4 or not isinstance(schema, dict):
        return rows
    required = set(schema.get("required", []))
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop or {}
        target = _resolve(spec, prop)
        any_of = prop.get("anyOf") or []
        if any_of:
            target = _resolve(spec, next((a for a in any_of if a.get("type") != "null"), {}))
        kind = target.get("type", "object" if "properties" in target else "")
        if isinstance(kind, list):
            kind = " | ".join(kind)
        if any_of and "null" not in kind:
            kind += " | null"
        items = _resolve(spec, target.get("items") or {})
        if "array" in kind and items:
            kind = kind.replace("array", f"array of {items.get('type', 'object')}")
        notes = []
        for key in ("enum", "pattern", "format", "minimum", "maximum", "minLength", "maxLength", "maxItems",
                    "default"):
            if key in target:
                notes.append(f"{key}: {target[key]}")
        if target.get("readOnly"):
            notes.append("read-only")
        rows.append({"name": prefix + name, "type": kind, "required": name in required, "notes": ", ".join(notes),
                     "depth": depth})
        nested = items if "array" in kind and items else target
        if nested.get("properties"):
            rows.extend(_schema_rows(spec, nested, depth + 1, prefix + name + ("[]." if "array" in kind else ".")))
    return rows


def reference(spec: dict) -> list[dict]:
    """The operations of ``spec`` as plain data for the reference page, agent operations first."""
    ops = []
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            security = op.get("security") or []
            names = {name for s in security for name in s}
            auth = "agent" if "agentSignature" in names else (
                op.get("x-required-role", "role") if names else "public")
            body = ((op.get("requestBody") or {}).get("content") or {}).get("application/json", {}).get("schema")
            responses = []
            for code, resp in sorted(op.get("responses", {}).items(), key=lambda kv: str(kv[0])):
                schema = ((resp.get("content") or {}).get("application/json") or {}).get("schema")
                ref = (schema or {}).get("$ref", "")
                responses.append({"status": str(code), "description": resp.get("description", ""),
                                  "error": ref.endswith("/Error"),
                                  "rows": [] if ref.endswith("/Error") else _schema_rows(spec, schema)})
            ops.append({
                "id": op.get("operationId", f"{method}-{path}"), "method": method.upper(), "path": path,
                "summary": op.get("summary", ""), "description": op.get("description", ""), "auth": auth,
                "parameters": [p for p in op.get("parameters", []) if isinstance(p, dict)],
                "body": _schema_rows(spec, body) if body else None, "responses": responses,
            })
    order = {"agent": 0, "public": 2}
    ops.sort(key=lambda o: (order.get(o["auth"], 1), o["path"], o["method"]))
    return ops


@bp.get("/docs")
def api_docs():
    """The API reference as an HTML page (rendered on the server from the OpenAPI document).
    ---
    get:
      tags: [meta]
      summary: A readable reference of this API for agent authors (no login needed).
      responses:
        200:
          description: An HTML page.
          content:
            text/html:
              schema: {type: string}
    """
    spec = get_spec()
    return render_template("api_docs.html", spec=spec, info=spec["info"], operations=reference(spec),
                           error_schema=_schema_rows(spec, {"$ref": "#/components/schemas/Error"}))
