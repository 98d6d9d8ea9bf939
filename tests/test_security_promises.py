"""docs/security.md's table of promises names tests that exist."""
from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

NODE_RE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def _table_rows() -> list[str]:
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Promises and the tests that hold them", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| promise")
            and not line.startswith("| ---")]


def test_every_promise_names_a_test_that_exists():
    rows = _table_rows()
    assert len(rows) >= 20
    for row in rows:
        nodes = NODE_RE.findall(row.rsplit(" | ", 1)[1])
        assert nodes, row
        for path, name in nodes:
            source = ROOT / path
            assert source.is_file(), (row, path)
            if name:
                defined = {node.name for node in ast.walk(ast.parse(source.read_text()))
                           if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
                assert name in defined, (row, path, name)
