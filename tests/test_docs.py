"""The documentation stays in step with the code: docs/api.md lists exactly the routes of the
OpenAPI document, with the same method and role."""
from __future__ import annotations

import re

from tests.conftest import ROOT

API_DOC = ROOT / "docs" / "api.md"

# A row of a route table in docs/api.md: | `METHOD /api/path` | who | what |
ROUTE_ROW = re.compile(r"^\|\s*`(GET|POST|PUT|PATCH|DELETE) (/api/[^`\s]+)`\s*\|\s*([a-z]+)\s*\|", re.M)

# Routes documented ahead of their code (named accounts and personal tokens): allowed to be
# missing from the OpenAPI document; once served, they are compared like every other route.
DOCUMENTED_AHEAD = {
    ("GET", "/api/users"), ("POST", "/api/users"), ("PATCH", "/api/users/{}"),
    ("POST", "/api/users/{}/tokens"), ("POST", "/api/tokens"), ("GET", "/api/tokens"),
    ("DELETE", "/api/tokens/{}"), ("GET", "/api/me"),
}


def normalize(path: str) -> str:
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def documented_routes() -> dict[tuple[str, str], str]:
    rows = ROUTE_ROW.findall(API_DOC.read_text())
    routes = {(method, normalize(path)): who for method, path, who in rows}
    assert len(routes) == len(rows), "a route is listed twice in docs/api.md"
    return routes


def spec_routes(spec: dict) -> dict[tuple[str, str], str]:
    """(METHOD, path) -> who, in the words of docs/api.md (agent, public or the role)."""
    out = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            names = {name for s in op.get("security", []) for name in s}
            who = "agent" if "agentSignature" in names else op.get("x-required-role", "public")
            out[(method.upper(), normalize(path))] = who
    return out


def test_api_doc_lists_every_route_of_the_openapi_document_with_its_role(client):
    spec = client.get("/api/openapi.json").get_json()
    served, documented = spec_routes(spec), documented_routes()
    assert len(documented) >= 40
    missing = set(served) - set(documented)
    assert not missing, f"routes served but not in docs/api.md: {sorted(missing)}"
    unknown = set(documented) - set(served) - DOCUMENTED_AHEAD
    assert not unknown, f"routes in docs/api.md that the app does not serve: {sorted(unknown)}"
    wrong = {key: (documented[key], served[key]) for key in set(served) & set(documented)
             if documented[key] != served[key]}
    assert not wrong, f"docs/api.md (who) differs from the OpenAPI document: {wrong}"
