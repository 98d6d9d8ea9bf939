"""Shared fixtures: a fresh database per test process (PostgreSQL when
``CONTROL_PLANE_TEST_DATABASE_URL`` is set, else SQLite; with pytest-xdist each worker has its
own), migrated with Alembic once; every test starts from empty tables; ``app``, ``client``,
``runner`` as in the Flask tutorial, plus signed agent requests, role logins, a live gunicorn
server and ``wait_until`` (poll for a condition instead of sleeping).

``CONTROL_PLANE_TEST_PGBOUNCER=1`` (with a PostgreSQL URL) runs the suite through a PgBouncer in
transaction pooling mode started for the session (``bench.cluster.PgBouncer``), with
``CONTROL_PLANE_DB_POOLER=transaction``: the database is created and dropped directly, everything
else (migrations, the app, the test's own engine, live servers) goes through the pooler."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from flask_migrate import upgrade
from sqlalchemy.engine import make_url

from bench.cluster import PgBouncer
from cp import create_app
from cp.agent_client import build_request
from cp.extensions import db
from cp.signing import sign
from cp.timeutil import set_clock
from tests.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {  # role tokens need at least 32 characters
    "support": "support-token-0123456789abcdefghijkl",
    "ops": "ops-token-0123456789abcdefghijklmnop",
    "admin": "admin-token-0123456789abcdefghijklmn",
}
AGENT_TOKEN = "shared-agent-token-abcdef"
AGENT_SECRETS = {"mapped-001": "mapped-secret-001", "mapped-002": "mapped-secret-002"}


def behind_pgbouncer() -> bool:
    """The suite runs through a PgBouncer in transaction pooling mode (CONTROL_PLANE_TEST_PGBOUNCER=1)."""
    return os.environ.get("CONTROL_PLANE_TEST_PGBOUNCER") == "1"


def base_env(db_url: str, instance_path: str) -> dict[str, str]:
    return {
        "CONTROL_PLANE_DATABASE_URL": db_url,
        "CONTROL_PLANE_DB_POOLER": "transaction" if behind_pgbouncer() else "none",
        "CONTROL_PLANE_INSTANCE_PATH": instance_path,
        "CONTROL_PLANE_SECRET_KEY": "test-secret-key-" + "x" * 32,
        "CONTROL_PLANE_SUPPORT_TOKEN": TOKENS["support"],
        "CONTROL_PLANE_OPS_TOKEN": TOKENS["ops"],
        "CONTROL_PLANE_ADMIN_TOKEN": TOKENS["admin"],
        "CONTROL_PLANE_AGENT_TOKEN": AGENT_TOKEN,
        "CONTROL_PLANE_AGENT_SECRETS": json.dumps(AGENT_SECRETS),
        "CONTROL_PLANE_LOG_FORMAT": "json",
        "CONTROL_PLANE_AGENT_RATE_LIMIT": "100000",
        "CONTROL_PLANE_LOGIN_RATE_LIMIT": "1000",
    }


def pytest_collection_modifyitems(config, items):
    """Tests that start a real gunicorn are ``live`` (CI's SQLite pass leaves them out); tests that
    ask for the ``postgres_only`` fixture carry its marker too (CI's PgBouncer pass selects them)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "live_server" in names:
            item.add_marker(pytest.mark.live)
        if "postgres_only" in names:
            item.add_marker(pytest.mark.postgres_only)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy, and return that (None after
    ``timeout`` seconds: a bound on waiting, not an assertion of speed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(interval)


# --- the database ---------------------------------------------------------------------------
def worker_id() -> str:
    """``gw0``, ``gw1``... under pytest-xdist, ``main`` in a single process."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """A database of this test process alone: a file in the worker's own temporary directory
    (SQLite), or a database created for it on the server and dropped after (PostgreSQL)."""
    server = os.environ.get("CONTROL_PLANE_TEST_DATABASE_URL")
    if not server or server == "sqlite":
        if not server and os.environ.get("CI") == "true":
            pytest.fail("CI must run the suite on PostgreSQL: set CONTROL_PLANE_TEST_DATABASE_URL "
                        "(or 'sqlite' for the explicit SQLite pass)")
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        return
    url = make_url(server)
    name = f"cp_test_{worker_id()}_{uuid.uuid4().hex[:12]}"
    admin_engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:  # fails loudly when PostgreSQL is not there
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    pooler = None
    if behind_pgbouncer():
        # tests that put a session's ``options`` in the URL stand in for a server configured so;
        # behind the pooler they get the server's own settings (they run directly in the plain pass)
        pooler = PgBouncer(tmp_path_factory.mktemp("pgbouncer"),
                           url.set(drivername="postgresql").render_as_string(hide_password=False),
                           ignore_startup_parameters=("extra_float_digits", "options")).start()
        yield pooler.url(name)
    else:
        yield url.set(database=name).render_as_string(hide_password=False)
    if pooler:
        pooler.close()
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin_engine.dispose()


@pytest.fixture(scope="session")
def instance_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp("instance"))


@pytest.fixture(scope="session")
def migrated(database_url, instance_path):
    """Run the Alembic migrations once: the only way the schema is created."""
    app = create_app(base_env(database_url, instance_path))
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return database_url


@pytest.fixture(scope="session")
def db_engine(migrated):
    engine = sa.create_engine(migrated, connect_args={"prepare_threshold": None} if behind_pgbouncer() else {})
    yield engine
    engine.dispose()


def empty_tables(engine) -> None:
    # counter_deltas last: on SQLite, deleting alerts and jobs fires their counting triggers
    tables = [t.name for t in reversed(db.metadata.sorted_tables) if t.name != "counter_deltas"] + ["counter_deltas"]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        else:
            for t in tables:
                conn.execute(sa.text(f'DELETE FROM "{t}"'))


@pytest.fixture
def clean_db(db_engine):
    """Every test starts, and leaves, with empty tables."""
    yield db_engine
    empty_tables(db_engine)


@pytest.fixture
def env(migrated, instance_path):
    """The environment the app is built from; tests may add settings before using ``app``."""
    return base_env(migrated, instance_path)


@pytest.fixture
def make_app(env, clean_db):
    apps = []

    def factory(**overrides: str):
        app = create_app({**env, **overrides})
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def clock():
    """A controllable clock for the domain code (``cp.timeutil.utcnow``)."""
    class Clock:
        def __init__(self):
            self.now = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)

        def __call__(self):
            return self.now

        def advance(self, **kw):
            self.now += timedelta(**kw)
            return self.now

    c = Clock()
    set_clock(c)
    yield c
    set_clock(None)


# --- agents ---------------------------------------------------------------------------------
class Agent:
    """Signed agent requests through the Flask test client."""

    def __init__(self, client):
        self.client = client

    @staticmethod
    def secret_for(instance_id: str) -> str:
        return AGENT_SECRETS.get(instance_id, AGENT_TOKEN)

    def post(self, path: str, payload: dict, *, secret: str | None = None, timestamp: bool = False,
             headers: dict | None = None):
        iid = payload.get("instance_id") if isinstance(payload.get("instance_id"), str) else ""
        req = build_request(path, payload, secret or self.secret_for(iid), timestamp=timestamp)
        return self.client.post(req.path, data=req.body, headers={**req.headers, **(headers or {})})

    def raw(self, path: str, body: bytes, *, secret: str | None = AGENT_TOKEN,
            content_type: str = "application/json", signature: str | None = None):
        headers = {"Content-Type": content_type}
        if signature is not None:
            headers["x-agent-signature"] = signature
        elif secret is not None:
            headers["x-agent-signature"] = sign(secret, body)
        return self.client.post(path, data=body, headers=headers)

    def heartbeat(self, instance_id: str = "acme-001", **fields):
        return self.post("/api/heartbeats", {"instance_id": instance_id, **fields})


@pytest.fixture
def agent(client):
    return Agent(client)


# --- people ---------------------------------------------------------------------------------
CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"')


def csrf_token_from(html: str) -> str:
    m = CSRF_RE.search(html) or re.search(r'id="csrf_token" name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return next(g for g in m.groups() if g)


def login(client, role: str, next_url: str | None = None):
    page = client.get("/login")
    token = csrf_token_from(page.get_data(as_text=True))
    url = "/login" + (f"?next={next_url}" if next_url else "")
    return client.post(url, data={"token": TOKENS[role], "csrf_token": token})


@pytest.fixture
def login_as(client):
    def do(role: str):
        resp = login(client, role)
        assert resp.status_code in (302, 303), resp.get_data(as_text=True)
        return client

    return do


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


# --- a live server --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """gunicorn on a free port of 127.0.0.1. Its output goes to a log file (never an unread
    pipe, which would block the server once it fills)."""

    def __init__(self, env: dict[str, str], workers: int = 2, log_path: Path | None = None,
                 args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.workers = workers
        self.args = args  # more gunicorn options (a later --log-level wins)
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="cp-gunicorn-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LiveServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers",
                 str(self.workers), "--threads", "4", "--log-level", "warning", *self.args, "cp:create_app()"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited: " + self.log_path.read_text(errors="replace")[-2000:])
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not start in 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def live_server(env, app):
    """gunicorn serving ``cp:create_app()`` on 127.0.0.1 against the test database."""
    server = LiveServer(env).start()
    yield server
    server.stop()


def is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


@pytest.fixture
def fresh_database_url(migrated, tmp_path):
    """An empty database on the test backend (a new PostgreSQL database, or a SQLite file)."""
    if not migrated.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = sa.engine.make_url(migrated)
    name = f"cp_test_mig_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_only(migrated):
    if not is_postgres(migrated):
        pytest.skip("needs PostgreSQL (set CONTROL_PLANE_TEST_DATABASE_URL)")


# --- an alert-webhook receiver (operational health) -------------------------------------------
@pytest.fixture
def webhook_receiver():
    """A real HTTP receiver on 127.0.0.1 that can answer 200, fail, hang and recover
    (``tests/webhook_receiver.py``)."""
    receiver = Receiver().start()
    yield receiver
    receiver.stop()
