"""Faults survived, with real processes:

(a) PostgreSQL unreachable mid-load. The shared PostgreSQL server is never stopped: a small TCP
    proxy (a thread on 127.0.0.1) sits between a live gunicorn and PostgreSQL and is cut. While
    it is down /readyz says 503, requests get 503 in the contract's error shape (no 500, no stack
    trace), nothing is half-written; once it is back the same processes recover by themselves
    (the engine's ``pool_pre_ping``).
(b) A worker process killed (SIGKILL) in the middle of a webhook delivery: the event is
    delivered later, once.
(c) A hanging webhook receiver never slows heartbeats served by gunicorn while a real worker
    process is stuck on it.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from cp.agent_client import AgentClient, build_request
from cp.extensions import db
from cp.models import OutboxEvent
from cp.timeutil import set_clock, utcnow
from tests.conftest import AGENT_TOKEN, ROOT, TOKENS, LiveServer, bearer, wait_until
from tests.consistency import inconsistencies

pytestmark = pytest.mark.live


# --- a TCP proxy that can be cut ------------------------------------------------------------------
class CuttableProxy:
    """127.0.0.1:<port> -> target. ``cut()`` drops every open connection and answers new ones by
    closing them at once (as a dead host behind a live load balancer would); ``restore()`` lets
    traffic through again."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.closing = False
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> "CuttableProxy":
        self.thread.start()
        return self

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def restore(self) -> None:
        self.up.set()

    def stop(self) -> None:
        self.closing = True
        self.cut()
        self.listener.close()


def assert_contract_503(resp) -> None:
    assert resp.status_code == 503, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"error", "message", "details"}
    assert body["error"] == "database_unavailable"
    assert "Traceback" not in resp.text and "psycopg" not in resp.text and "sqlalchemy" not in resp.text.lower()


# --- (a) the database away mid-load --------------------------------------------------------------
def test_database_unreachable_mid_load_then_back(postgres_only, env, app, db_engine):
    url = make_url(env["CONTROL_PLANE_DATABASE_URL"])
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server = LiveServer({**env, "CONTROL_PLANE_DATABASE_URL": proxied}, workers=2).start()
    master_pid = server.proc.pid
    sent: dict[str, list[int]] = {}  # instance -> statuses
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int) -> None:
        """One agent per thread: heartbeats that each report one new job failure and change the
        alert set, so a half-applied heartbeat would show (bounded: 400 requests at most)."""
        iid = f"load-{worker:02d}"
        with requests.Session() as s:
            client = AgentClient(server.url, iid, AGENT_TOKEN, session=s, timeout=30)
            for i in range(400):
                if stop.is_set():
                    break
                try:
                    status, _ = client.post("/api/heartbeats", {
                        "health": "ok", "alerts": [{"level": "warning", "message": f"beat {i}"}],
                        "job_failures": [{"queue": "q", "message": f"failure {i}"}]}, raise_for_status=False)
                except requests.RequestException:
                    status = -1
                with lock:
                    sent.setdefault(iid, []).append(status)
                time.sleep(0.01)

    try:
        pool = concurrent.futures.ThreadPoolExecutor(4)
        futures = [pool.submit(load, w) for w in range(4)]
        assert wait_until(lambda: sum(st.count(200) for st in sent.values()) >= 20), sent

        proxy.cut()  # mid-load
        readyz = wait_until(lambda: [r for r in [requests.get(server.url + "/readyz", timeout=30)]
                                     if r.status_code == 503])
        assert readyz, "readyz never said 503"
        assert readyz[0].json()["status"] == "unavailable"
        assert requests.get(server.url + "/healthz", timeout=30).status_code == 200  # alive, not ready
        # every kind of request: a clean 503, never a 500 or a stack trace
        req = build_request("/api/heartbeats", {"instance_id": "during-cut", "health": "down"}, AGENT_TOKEN)
        assert_contract_503(requests.post(server.url + req.path, data=req.body, headers=req.headers, timeout=30))
        assert_contract_503(requests.get(server.url + "/api/installations", headers=bearer("support"), timeout=30))
        assert_contract_503(requests.post(server.url + "/api/alerts/1/acknowledge", headers=bearer("ops"),
                                          timeout=30))
        page = requests.get(server.url + "/login", timeout=30)  # HTML without the DB still renders
        assert page.status_code == 200
        login = requests.post(server.url + "/login", data={"token": TOKENS["admin"]}, timeout=30)
        assert login.status_code in (400, 503) and "Traceback" not in login.text
        def sent_total() -> int:
            with lock:
                return sum(len(st) for st in sent.values())

        hits = sent_total()  # the load keeps hitting the cut database for a while
        assert wait_until(lambda: sent_total() >= hits + 4), sent
        with lock:
            during = [s for st in sent.values() for s in st]
        assert 500 not in during, during

        proxy.restore()
        assert wait_until(lambda: requests.get(server.url + "/readyz", timeout=30).status_code == 200), \
            "readyz did not recover"
        ok_after = wait_until(lambda: AgentClient(server.url, "after-cut", AGENT_TOKEN).post(
            "/api/heartbeats", {"health": "ok"}, raise_for_status=False)[0] == 200)
        assert ok_after, "heartbeats did not recover"
        assert requests.get(server.url + "/api/installations", headers=bearer("support"), timeout=30).status_code == 200
        assert server.proc.poll() is None and server.proc.pid == master_pid  # the same server, not restarted
        stop.set()
        for f in futures:
            f.result(timeout=60)
        pool.shutdown()
    finally:
        stop.set()
        server.stop()
        proxy.stop()

    statuses = [s for st in sent.values() for s in st]
    assert 500 not in statuses, statuses
    log = server.log_path.read_text(errors="replace")
    assert "database unavailable" in log
    assert "unhandled error" not in log, log[-3000:]
    assert statuses.count(503) + statuses.count(-1) >= 1, "the load never met the cut database"
    assert set(statuses) <= {200, 503, -1, 401}, set(statuses)
    # nothing half-written: every stored heartbeat stored its job failure and its alert set whole
    assert inconsistencies(db_engine) == []
    with db_engine.connect() as conn:
        for iid, st in sent.items():
            total = conn.execute(text("SELECT heartbeats_total FROM installations WHERE instance_id = :i"),
                                 {"i": iid}).scalar()
            failures = conn.execute(text(
                "SELECT count(*) FROM job_failures j JOIN installations i ON i.id = j.installation_id "
                "WHERE i.instance_id = :i"), {"i": iid}).scalar()
            open_alerts = conn.execute(text(
                "SELECT count(*) FROM alerts a JOIN installations i ON i.id = a.installation_id "
                "WHERE i.instance_id = :i AND a.resolved_at IS NULL"), {"i": iid}).scalar()
            acknowledged = st.count(200)
            # every acknowledged heartbeat is there; at most the in-doubt ones (no answer) more
            assert acknowledged <= total <= acknowledged + st.count(-1) + st.count(503), (iid, total, st)
            assert failures == total, (iid, failures, total)
            assert open_alerts == 1, (iid, open_alerts)
        assert conn.execute(text("SELECT count(*) FROM installations WHERE instance_id = 'during-cut'")).scalar() == 0


def test_readyz_and_errors_in_process_when_the_database_is_gone(make_app, tmp_path):
    """The same promise without processes: an app whose database cannot be reached."""
    app = make_app(CONTROL_PLANE_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    req = build_request("/api/heartbeats", {"instance_id": "acme-001"}, AGENT_TOKEN)
    resp = client.post(req.path, data=req.body, headers=req.headers)
    assert resp.status_code == 503 and resp.get_json()["error"] == "database_unavailable"
    resp = client.get("/api/installations", headers=bearer("support"))
    assert resp.status_code == 503 and set(resp.get_json()) == {"error", "message", "details"}


# --- (b) and (c): the webhook worker -----------------------------------------------------------------
WEBHOOK_ENV = {
    "CONTROL_PLANE_ALERT_WEBHOOK_TOKEN": "faults-webhook-token-123",
    "CONTROL_PLANE_WEBHOOK_TIMEOUT_SECONDS": "30",
    "CONTROL_PLANE_WORKER_POLL_SECONDS": "0.1",
}


def start_worker(env: dict, log_path) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen([sys.executable, "-m", "flask", "--app", "cp", "worker"], cwd=ROOT,
                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)


def outbox_rows(app) -> list[OutboxEvent]:
    with app.app_context():
        rows = list(db.session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))
        db.session.expunge_all()
        db.session.remove()
        return rows


def test_a_worker_killed_during_delivery_delivers_later_once(make_app, env, webhook_receiver, tmp_path):
    from cp.background import outbox

    hook = {**WEBHOOK_ENV, "CONTROL_PLANE_ALERT_WEBHOOK_URL": webhook_receiver.url}
    app = make_app(**hook)
    client = app.test_client()
    req = build_request("/api/heartbeats", {"instance_id": "acme-001",
                                            "alerts": [{"level": "critical", "message": "Disk full"}]}, AGENT_TOKEN)
    assert client.post(req.path, data=req.body, headers=req.headers).status_code == 200
    webhook_receiver.set_mode("hang")
    worker = start_worker({**env, **hook}, tmp_path / "worker.log")
    try:
        assert webhook_receiver.hanging.wait(60), (tmp_path / "worker.log").read_text()
        os.kill(worker.pid, signal.SIGKILL)  # in the middle of the POST
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    (row,) = outbox_rows(app)
    assert row.status == "pending" and row.attempts == 1  # claimed, never recorded
    webhook_receiver.set_mode("ok")  # the hung request stays hung: its client is dead
    # while the dead worker's lease runs, nobody sends it again (no duplicate)...
    with app.app_context():
        assert outbox.deliver_all() == 0
        lease = outbox.lease_seconds()
        db.session.remove()
    assert webhook_receiver.delivered_keys() == []
    # ...then a worker (restarted) delivers it, once
    later = utcnow() + timedelta(seconds=lease + 1)
    set_clock(lambda: later)
    try:
        result = app.test_cli_runner().invoke(args=["worker", "--once"])
        assert result.exit_code == 0, result.output
        result = app.test_cli_runner().invoke(args=["worker", "--once"])  # and a second round sends nothing
        assert result.exit_code == 0, result.output
    finally:
        set_clock(None)
    (row,) = outbox_rows(app)
    assert row.status == "delivered" and row.attempts == 2
    assert webhook_receiver.delivered_keys() == [(row.alert_id, "opened")]


def test_a_hanging_receiver_never_slows_heartbeats_on_a_live_server(env, app, webhook_receiver, tmp_path):
    hook = {**WEBHOOK_ENV, "CONTROL_PLANE_ALERT_WEBHOOK_URL": webhook_receiver.url,
            "CONTROL_PLANE_WEBHOOK_TIMEOUT_SECONDS": "120"}
    webhook_receiver.set_mode("hang")
    server = LiveServer({**env, **hook}, workers=2).start()
    worker = start_worker({**env, **hook}, tmp_path / "worker.log")
    try:
        first = AgentClient(server.url, "first", AGENT_TOKEN)
        first.heartbeat(alerts=[{"level": "critical", "message": "Down"}])
        assert webhook_receiver.hanging.wait(60), (tmp_path / "worker.log").read_text()
        # the worker is stuck in a POST for up to two minutes; heartbeats go on regardless,
        # each answered well inside a client timeout far shorter than the hang
        for i in range(10):
            agent = AgentClient(server.url, f"inst-{i}", AGENT_TOKEN, timeout=10)
            agent.heartbeat(alerts=[{"level": "critical", "message": f"Down {i}"}])
            agent.heartbeat(alerts=[])
            assert webhook_receiver.hanging.is_set() and not webhook_receiver._release.is_set()
        with app.app_context():
            queued = db.session.scalar(select(func.count()).select_from(OutboxEvent))
            db.session.remove()
        assert queued == 21  # 1 + 10 opened + 10 resolved, written by the heartbeats themselves
        assert len(webhook_receiver.requests) == 1  # the worker has not got past the first one
        # once the receiver answers, everything arrives, each alert's events in order
        webhook_receiver.set_mode("ok")
        webhook_receiver.release()
        assert webhook_receiver.wait_for(lambda r: len(r.delivered) >= 21, timeout=60), \
            (tmp_path / "worker.log").read_text()[-2000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        server.stop()
    keys = webhook_receiver.delivered_keys()
    assert len(set(keys)) == 21
    by_alert: dict[int, list[str]] = {}
    for alert_id, event in keys:
        by_alert.setdefault(alert_id, []).append(event)
    assert all(evs[0] == "opened" for evs in by_alert.values())
    assert sum(1 for evs in by_alert.values() if evs == ["opened", "resolved"]) == 10
