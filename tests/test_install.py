"""The production install: ``pip install .`` without the dev extra, in a fresh virtualenv,
gives a package that imports, migrates a database and serves (every runtime dependency is
declared in pyproject.toml). Slow (a real pip install, about a minute with a warm pip cache),
so it runs with the ``live`` tests: in CI's PostgreSQL pass, not its SQLite pass."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.live

SERVE = """
from cp import create_app
app = create_app()
client = app.test_client()
assert client.get("/api/openapi.json").status_code == 200, "spec"
assert client.get("/api/docs").status_code == 200, "docs"
assert client.get("/readyz").status_code == 200, "ready"
print("served")
"""


def _run(args, cwd, env, timeout=600):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_pip_install_without_extras_imports_migrates_and_serves(tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, os.environ)
    bin_dir = venv / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(ROOT)], tmp_path, os.environ)
    installed = _run([str(bin_dir / "python"), "-m", "pip", "list", "--format=freeze"], tmp_path, os.environ)
    assert "pytest==" not in installed and "hypothesis==" not in installed  # no dev extra
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "CONTROL_PLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
        "CONTROL_PLANE_INSTANCE_PATH": str(tmp_path / "instance"),
        "CONTROL_PLANE_SECRET_KEY": "install-test-" + "k" * 40,
    }
    # cwd outside the repository: the installed package is imported, not the source tree
    _run([str(bin_dir / "python"), "-c", "from cp import create_app; create_app()"], tmp_path, env)
    _run([str(bin_dir / "flask"), "--app", "cp", "db", "upgrade"], tmp_path, env)
    assert "served" in _run([str(bin_dir / "python"), "-c", SERVE], tmp_path, env)
