"""Browser tests: Playwright driving Debian's Chromium (``/usr/bin/chromium``, never a
downloaded browser) against a real gunicorn on 127.0.0.1.

To stay fast there is one browser per session and one server per module, seeded once with a
realistic fleet through signed heartbeats (the reference agent client over HTTP), releases and a
rollout through the JSON API, and 24 hours of back-filled history for one installation (the
pictures need a past). Every test opens its own browser context (its own cookies) and logs in
through the login form. Screenshots go to ``test-artifacts/`` (and to ``docs/screenshots/``
with ``CP_UPDATE_SCREENSHOTS=1``).
"""
from __future__ import annotations

import math
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from playwright.sync_api import sync_playwright

from cp.agent_client import AgentClient
from cp.demo import demo_heartbeats
from tests.conftest import AGENT_SECRETS, AGENT_TOKEN, ROOT, TOKENS, LiveServer, base_env, empty_tables, worker_id
from tests.panel_seed import FLEET
from tests.rollout_helpers import RELEASE_KEYS, release_body

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
SLO_LIMITS = {"SLO_P95_MS_MAX": "800", "SLO_ERROR_RATE_MAX": "0.02", "SLO_WEBHOOK_RETRY_RATE_MAX": "0.05"}
STALE_ID = "tyrell-002"


# --- the browser ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: CI installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


class Session:
    """One person in the browser: a context with its own cookies, logged in as ``role``."""

    def __init__(self, browser, base_url: str, role: str | None):
        self.base_url = base_url
        self.context = browser.new_context(base_url=base_url, viewport={"width": 1440, "height": 1000})
        self.context.set_default_timeout(10_000)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))
        if role:
            self.login(role)

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.accept()

    def login(self, role: str, next_path: str | None = None):
        page = self.page
        page.goto("/login" + (f"?next={next_path}" if next_path else ""))
        page.fill("input[name=token]", TOKENS[role])
        page.click("button[type=submit]")
        page.wait_for_load_state()
        assert "/login" not in page.url, page.content()[:500]

    def goto(self, path: str):
        resp = self.page.goto(path)
        self.page.wait_for_load_state()
        return resp

    def csrf_token(self) -> str:
        return self.page.locator("input[name=csrf_token]").first.get_attribute("value")

    def post(self, path: str, form: dict):
        """A form POST with this session's cookies (as a crafted request would be)."""
        return self.context.request.post(self.base_url + path, form=form, max_redirects=0)

    def menu(self) -> list[str]:
        return [t.strip() for t in self.page.locator("#admin-navbar-collapse .navbar-nav a").all_inner_texts()]

    def close(self):
        self.context.close()


@pytest.fixture
def session_as(browser, panel):
    opened: list[Session] = []

    def make(role: str | None) -> Session:
        s = Session(browser, panel.url, role)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


# --- the server and its data ----------------------------------------------------------------------
def _agent(url: str, instance_id: str) -> AgentClient:
    return AgentClient(url, instance_id, AGENT_SECRETS.get(instance_id, AGENT_TOKEN))


def _api(url: str, method: str, path: str, role: str = "admin", **kw):
    resp = requests.request(method, url + path, headers={"Authorization": f"Bearer {TOKENS[role]}"}, timeout=10, **kw)
    assert resp.status_code < 300, (path, resp.status_code, resp.text)
    return resp.json()


def seed_fleet(url: str) -> None:
    """Demo installations, then the test fleet (``tests.panel_seed``) over some of them."""
    for beat in demo_heartbeats(28):
        beat = dict(beat)
        _agent(url, beat.pop("instance_id")).heartbeat(**beat)
    for beat in FLEET:
        beat = dict(beat)
        _agent(url, beat.pop("instance_id")).heartbeat(**beat)


def seed_releases_and_rollout(url: str) -> dict:
    for version in ("1.2.3", "1.3.0"):
        _api(url, "POST", "/api/releases", json=release_body(version, "stable"))
    rollout = _api(url, "POST", "/api/rollouts", json={"release": "1.3.0", "channel": "stable", "batch_size": 4})
    # the first batch is under way: agents fetch their jobs; one succeeds, one is still running
    done = 0
    for iid in ("acme-001", "hooli-001", "globex-001", "xss-001", "umbrella-001", "initech-001", "wonka-001"):
        agent = _agent(url, iid)
        job = agent.next_update().get("job")
        if not job:
            continue
        if done == 0:
            agent.report_update(job["id"], "succeeded", "upgraded in 42 s")
        done += 1
        if done == 2:
            break
    return rollout


def seed_restores(url: str) -> None:
    items = _api(url, "POST", "/api/restores/schedule", json={"instance_ids": ["initech-001"]})["items"]
    _agent(url, "initech-001").report_restore(items[0]["id"], "failed", 35.0, "pg_restore: relation \"invoices\" missing")


def backfill_history(engine, instance_id: str, now: datetime) -> None:
    """24 hours of past for one installation: SLO samples every 5 minutes (with a p95 breach and an
    error-rate spike), health/version/backup changes, resolved alerts, an update and a restore."""
    md = sa.MetaData()
    t = {name: sa.Table(name, md, autoload_with=engine) for name in (
        "installations", "slo_samples", "installation_events", "alerts", "jobs", "releases",
        "restore_verifications")}
    with engine.begin() as conn:
        iid = conn.execute(sa.select(t["installations"].c.id).where(
            t["installations"].c.instance_id == instance_id)).scalar_one()
        rel = conn.execute(sa.select(t["releases"].c.id).where(t["releases"].c.version == "1.2.3",
                                                               t["releases"].c.plugin.is_(None))).scalar_one()
        start = now - timedelta(hours=24)
        epoch = int(start.timestamp())
        bucket = datetime.fromtimestamp(epoch - epoch % 300, tz=timezone.utc)
        rows = []
        i = 0
        while bucket < now - timedelta(minutes=10):
            h = (now - bucket).total_seconds() / 3600
            p95 = 360 + 90 * math.sin(i / 20) + 25 * math.sin(i / 3.1)
            if 8.0 <= h <= 9.0:
                p95 = 950 + 120 * math.sin(i / 2)
            err = 0.003 + 0.002 * math.sin(i / 7) ** 2 + (0.028 if 14.8 <= h <= 15.3 else 0)
            retry = 0.012 + 0.008 * math.sin(i / 11) ** 2
            if not 3.0 <= h <= 3.5:  # half an hour without heartbeats: a gap in the lines
                rows.append({"installation_id": iid, "bucket": bucket, "slo_p95_ms": round(p95, 1),
                             "slo_error_rate": round(err, 4), "slo_webhook_retry_rate": round(retry, 4)})
            bucket += timedelta(minutes=5)
            i += 1
        conn.execute(t["slo_samples"].insert(), rows)

        def ago(hours: float) -> datetime:
            return now - timedelta(hours=hours)

        conn.execute(t["installation_events"].insert(), [
            {"installation_id": iid, "field": "version", "old_value": "1.2.2", "new_value": "1.2.3", "at": ago(20)},
            {"installation_id": iid, "field": "health", "old_value": "ok", "new_value": "degraded", "at": ago(9)},
            {"installation_id": iid, "field": "health", "old_value": "degraded", "new_value": "ok", "at": ago(7.9)},
            {"installation_id": iid, "field": "backup_status", "old_value": "ok", "new_value": "running",
             "at": ago(22)},
            {"installation_id": iid, "field": "backup_status", "old_value": "running", "new_value": "ok",
             "at": ago(21.5)},
        ])
        conn.execute(t["alerts"].insert(), [
            {"installation_id": iid, "level": "critical", "source": "slo", "fingerprint": "hist:slo_p95_ms",
             "message": "SLO breached: p95 latency (slo_p95_ms) is 1070 ms, above the limit of 800 ms.",
             "opened_at": ago(9), "last_seen_at": ago(8), "occurrences": 12, "resolved_at": ago(8),
             "resolved_by": "heartbeat"},
            {"installation_id": iid, "level": "critical", "source": "slo", "fingerprint": "hist:slo_error_rate",
             "message": "SLO breached: error rate (slo_error_rate) is 0.031, above the limit of 0.02.",
             "opened_at": ago(15.2), "last_seen_at": ago(14.8), "occurrences": 5, "resolved_at": ago(14.8),
             "resolved_by": "heartbeat"},
            {"installation_id": iid, "level": "warning", "source": "agent", "fingerprint": "hist:disk",
             "message": "Low disk space on /var (9% free)", "opened_at": ago(18), "last_seen_at": ago(12),
             "occurrences": 70, "acknowledged_at": ago(17), "acknowledged_by": "ops", "resolved_at": ago(12),
             "resolved_by": "ops"},
        ])
        conn.execute(t["jobs"].insert(), [
            {"kind": "update", "release_id": rel, "installation_id": iid, "position": 0, "status": "succeeded",
             "message": "upgraded in 61 s", "attempts": 1, "created_at": ago(20.5), "fetched_at": ago(20.2),
             "finished_at": ago(20), "updated_at": ago(20)},
        ])
        conn.execute(t["restore_verifications"].insert(), [
            {"installation_id": iid, "backup_id": "nightly-2026-11-26", "scheduled_for": ago(16.2),
             "status": "passed", "duration_s": 182.0, "message": "restored 14 GB, checks passed",
             "created_at": ago(16.5), "created_by": "admin", "reported_at": ago(16)},
        ])


def make_stale(engine, instance_id: str, hours: float) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE installations SET last_seen_at = :t WHERE instance_id = :i"),
                     {"t": datetime.now(timezone.utc) - timedelta(hours=hours), "i": instance_id})


@pytest.fixture(scope="module")
def panel(migrated, instance_path, db_engine):
    """gunicorn on 127.0.0.1 with the seeded fleet; the tables are emptied afterwards."""
    empty_tables(db_engine)
    env = {**base_env(migrated, instance_path), **SLO_LIMITS, "CONTROL_PLANE_RELEASE_KEYS": RELEASE_KEYS}
    server = LiveServer(env, log_path=ARTIFACTS / f"browser-server-{worker_id()}.log").start()
    try:
        seed_fleet(server.url)
        server.rollout = seed_releases_and_rollout(server.url)
        seed_restores(server.url)
        backfill_history(db_engine, "acme-001", datetime.now(timezone.utc))
        make_stale(db_engine, STALE_ID, 3)
        yield server
    finally:
        server.stop()
        empty_tables(db_engine)


def save_screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("CP_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / name)
    return path
