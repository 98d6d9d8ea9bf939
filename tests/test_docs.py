"""The documentation stays in step with the code and stands alone: docs/api.md lists exactly the
routes of the OpenAPI document with the same method and role; the README and docs/ are guides
(no work-diary wording, nothing outside the repository, every relative link resolves); the
README stays short and its layout table names every package and module of cp/."""
from __future__ import annotations

import re

from tests.conftest import ROOT

API_DOC = ROOT / "docs" / "api.md"
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

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


# --- the guides -------------------------------------------------------------------------------
# Wording of a work diary: numbered stops, items, issues or sessions, times of day (a timestamp's
# own time, as in 2026-02-11T02:00:00Z, is not one), and pointers outside the repository.
DIARY = [
    re.compile(r"\b(?:stop|item|issue|session)s? #?\d+", re.I),
    re.compile(r"\b(?:this|last|previous|next|earlier|same) session\b", re.I),
    re.compile(r"\b(?:this|that|the same) (?:morning|afternoon|evening)\b|\bthat day\b", re.I),
    re.compile(r"(?<![\dT:.+-])(?:[01]?\d|2[0-3]):[0-5]\d(?![\d:])"),  # a time of day, not a UTC offset
    re.compile(r"\.\./shared|CONTRACT\.md"),
]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# Pages other parts of the project are adding; a link to them is allowed before they exist.
PAGES_BEING_WRITTEN = {"docs/scale-out.md", "docs/data-at-scale.md"}
# cp/ modules the README's table names ahead of their code.
MODULES_BEING_WRITTEN = {"cp/people/", "cp/sso.py"}


def anchors(path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", path.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        out.add(slug.replace(" ", "-"))
    return out


def test_docs_read_as_guides_not_a_diary():
    found = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            found += [f"{doc.relative_to(ROOT)}:{n}: {m.group(0)!r}" for rx in DIARY for m in rx.finditer(line)]
    assert not found, "\n".join(found)


def test_the_diary_check_catches_what_it_should():
    caught = ["fixed at stop 15", "item 26", "see issue 9", "the 14:47 run", "in session 3",
              "see ../shared/CONTRACT.md", "measured that afternoon"]
    fine = ['"at": "2026-11-27T10:02:11Z"', "a 2:1 ratio? no: 0.80", "login sessions", "10.0.0.7"]
    assert all(any(rx.search(text) for rx in DIARY) for text in caught)
    assert not [text for text in fine if any(rx.search(text) for rx in DIARY)]


def test_every_relative_link_resolves_inside_the_repository():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(ROOT)} -> {target}"
            if ROOT not in file.parents:
                broken.append(f"{where}: outside the repository")
            elif not file.exists():
                if file.relative_to(ROOT).as_posix() not in PAGES_BEING_WRITTEN:
                    broken.append(f"{where}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{where}: no such heading")
    assert not broken, "\n".join(broken)


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) < 200, len(lines)
    head = "\n".join(lines[:6])
    assert "make run" in head and "make test" in head


def test_readme_layout_table_names_every_package_and_module_of_cp():
    text = README.read_text()
    present = {f"cp/{p.name}/" for p in (ROOT / "cp").iterdir() if p.is_dir() and p.name != "__pycache__"}
    present |= {f"cp/{p.name}" for p in (ROOT / "cp").glob("*.py")}
    missing = sorted(name for name in present if f"`{name}`" not in text)
    assert not missing, f"add to the README's table: {missing}"
    named = set(re.findall(r"`(cp/[\w.]+/?)`", text))
    gone = sorted(name for name in named - present - MODULES_BEING_WRITTEN if "." in name or name.endswith("/"))
    assert not gone, f"the README's table names what cp/ no longer has: {gone}"
