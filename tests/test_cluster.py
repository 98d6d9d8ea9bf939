"""The scale-out topology, for real (``bench.cluster``): PgBouncer in transaction pooling mode in
front of PostgreSQL, two gunicorn hosts sharing only the database and the secret key, two
``flask --app cp worker`` processes delivering to a real webhook receiver. The client alternates
hosts (the round robin). Every test asserts its invariants in the database or at the receiver."""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url

from bench.cluster import Cluster, wait_until
from cp.agent_client import AgentClient
from cp.delivery.releases import sign_manifest
from cp.extensions import db
from cp.models import Installation, InstallationPlugin, Job, OutboxEvent
from tests.conftest import AGENT_TOKEN, TOKENS, base_env, bearer, csrf_token_from, is_postgres
from tests.rollout_helpers import KEY, RELEASE_KEYS, query, release_body
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.cluster, pytest.mark.postgres_only, pytest.mark.live]

AGENT_LIMIT = 30  # agent requests per installation per minute in the cluster (every other test stays far below)
THREADS = 24


@pytest.fixture(scope="module")
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def cluster(migrated, receiver, tmp_path_factory):
    """The cluster on the session's migrated database (its own PgBouncer in front of the server)."""
    if not is_postgres(migrated):
        pytest.skip("needs PostgreSQL (set CONTROL_PLANE_TEST_DATABASE_URL)")
    server = make_url(os.environ["CONTROL_PLANE_TEST_DATABASE_URL"]).set(drivername="postgresql")
    env = {**base_env(migrated, ""), "CONTROL_PLANE_RELEASE_KEYS": RELEASE_KEYS,
           "CONTROL_PLANE_ALERT_WEBHOOK_URL": receiver.url, "CONTROL_PLANE_WORKER_POLL_SECONDS": "0.1",
           "CONTROL_PLANE_WEBHOOK_BACKOFF_SECONDS": "0.2", "CONTROL_PLANE_WEBHOOK_BACKOFF_MAX_SECONDS": "0.5",
           "CONTROL_PLANE_WEBHOOK_TIMEOUT_SECONDS": "2", "CONTROL_PLANE_AGENT_RATE_LIMIT": str(AGENT_LIMIT),
           "CONTROL_PLANE_LOG_LEVEL": "INFO"}
    c = Cluster(env, database=make_url(migrated).database,
                server_dsn=server.render_as_string(hide_password=False), hosts=2, workers=2, gunicorn_workers=1,
                threads=8, workdir=tmp_path_factory.mktemp("cluster"))
    c.start()
    yield c
    c.stop()


@pytest.fixture
def hosts(cluster, clean_db, receiver):
    """The two hosts' URLs, each test starting from empty tables and an empty receiver."""
    with receiver.lock:
        receiver.requests.clear()
        receiver.delivered.clear()
    receiver.set_mode("ok")
    return cluster.urls


def agent(url: str, iid: str) -> AgentClient:
    return AgentClient(url, iid, AGENT_TOKEN, timeout=60)


def json_or_text(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def parallel(fn, args) -> list:
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(fn, args))


def admin(url: str, path: str, body: dict | None = None, method: str = "POST") -> dict:
    resp = requests.request(method, url + path, json=body, headers=bearer("admin"), timeout=60)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def installations(hosts: list[str], n: int, prefix: str, channel: str = "stable") -> list[str]:
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    parallel(lambda k: agent(hosts[k % 2], ids[k]).heartbeat(version="1.2.0", release_channel=channel),
             range(n))
    return ids


# --- the pooler setting ---------------------------------------------------------------------------
def test_the_pooler_setting_turns_off_server_side_prepared_statements(postgres_only, make_app):
    for pooler, threshold in (("transaction", None), ("none", 5)):
        app = make_app(CONTROL_PLANE_DB_POOLER=pooler)
        with app.app_context():
            with db.engine.connect() as conn:
                assert conn.connection.dbapi_connection.prepare_threshold == threshold


# --- jobs and reports -----------------------------------------------------------------------------
def test_update_jobs_are_handed_out_once_and_no_report_is_lost_across_hosts(app, hosts):
    ids = installations(hosts, 40, "u", channel="conc")
    admin(hosts[0], "/api/releases", release_body("1.3.0", "conc"))
    assert admin(hosts[1], "/api/rollouts", {"release": "1.3.0", "channel": "conc", "batch_size": 40})["targets"] == 40

    # every installation asks three times at once, on both hosts
    asks = [(iid, hosts[k % 2]) for iid in ids for k in range(3)]
    answers = parallel(lambda a: (a[0], agent(a[1], a[0]).next_update()["job"]), asks)
    jobs: dict[str, set[int]] = {}
    for iid, job in answers:
        assert job is not None and job["status"] == "in_progress"
        jobs.setdefault(iid, set()).add(job["id"])
    assert all(len(j) == 1 for j in jobs.values())  # the same job each time
    assert len({next(iter(j)) for j in jobs.values()}) == 40  # no job handed to two installations
    assert query(app, select(Job.status, Job.attempts, func.count()).group_by(Job.status, Job.attempts)) == [
        ("in_progress", 1, 40)]

    # every installation reports success twice at once, once on each host: all land, none twice
    reports = [(iid, hosts[k]) for iid in ids for k in range(2)]
    codes = parallel(lambda r: agent(r[1], r[0]).post(
        "/api/updates/report", {"job_id": next(iter(jobs[r[0]])), "status": "succeeded"},
        raise_for_status=False)[0], reports)
    assert Counter(codes) == {200: 80}
    assert query(app, select(Job.status, func.count()).group_by(Job.status)) == [("succeeded", 40)]
    assert query(app, select(func.count()).select_from(Installation).where(Installation.version == "1.3.0")) == [
        (40,)]


def test_plugin_jobs_are_handed_out_once_and_no_report_is_lost_across_hosts(app, hosts):
    ids = installations(hosts, 30, "p")
    manifest = {"plugin": "payments", "version": "2.0.0", "artifact": "https://dl.example.com/payments.zip",
                "sha256": "cd" * 32}
    admin(hosts[0], "/api/plugins/releases", {"plugin": "payments", "version": "2.0.0", "manifest": manifest,
                                              "signature": sign_manifest(KEY, manifest), "key_id": "k1"})
    for k, iid in enumerate(ids):  # asked on one host, approved on the other
        rid = agent(hosts[k % 2], iid).request_plugin("payments")["id"]
        admin(hosts[(k + 1) % 2], f"/api/plugins/requests/{rid}/approve", {})

    answers = parallel(lambda a: (a[0], agent(a[1], a[0]).next_plugin()["job"]),
                       [(iid, hosts[k % 2]) for iid in ids for k in range(3)])
    jobs: dict[str, set[int]] = {}
    for iid, job in answers:
        assert job is not None and job["plugin"] == "payments"
        jobs.setdefault(iid, set()).add(job["id"])
    assert all(len(j) == 1 for j in jobs.values()) and len({next(iter(j)) for j in jobs.values()}) == 30

    codes = parallel(lambda r: agent(r[1], r[0]).post(
        "/api/plugins/report", {"job_id": next(iter(jobs[r[0]])), "status": "succeeded"},
        raise_for_status=False)[0], [(iid, hosts[k]) for iid in ids for k in range(2)])
    assert Counter(codes) == {200: 60}
    assert query(app, select(InstallationPlugin.version, func.count()).group_by(InstallationPlugin.version)) == [
        ("2.0.0", 30)]


# --- state shared through the database ------------------------------------------------------------
def test_a_rollout_advanced_on_one_host_is_seen_on_the_other_at_once(hosts):
    ids = installations(hosts, 4, "r")
    admin(hosts[0], "/api/releases", release_body("1.3.0"))
    rollout = admin(hosts[0], "/api/rollouts", {"release": "1.3.0", "channel": "stable", "batch_size": 2})
    rid = rollout["id"]
    first = {iid: agent(hosts[1], iid).next_update()["job"] for iid in ids}
    batch1 = {iid for iid, job in first.items() if job}
    assert len(batch1) == 2
    for iid in batch1:
        agent(hosts[0], iid).report_update(first[iid]["id"], "succeeded")

    for step in range(2):  # advanced on one host, read on the other in the very next request
        by, seen_on = hosts[step % 2], hosts[(step + 1) % 2]
        advanced = admin(by, f"/api/rollouts/{rid}/advance", {})
        assert admin(seen_on, f"/api/rollouts/{rid}", method="GET")["current_batch"] == advanced["current_batch"]
        if step == 0:
            assert advanced["current_batch"] == 2
            rest = [iid for iid in ids if iid not in batch1]
            jobs = [agent(seen_on, iid).next_update()["job"] for iid in rest]
            assert all(job and job["rollout_id"] == rid for job in jobs)
            for iid, job in zip(rest, jobs):
                agent(by, iid).report_update(job["id"], "succeeded")
        else:
            assert advanced["status"] == "completed"
            assert admin(seen_on, f"/api/rollouts/{rid}", method="GET")["status"] == "completed"


def test_a_login_on_one_host_holds_on_the_other_until_logged_out_there(hosts):
    a, b = hosts
    s = requests.Session()
    token = csrf_token_from(s.get(a + "/login", timeout=30).text)
    resp = s.post(a + "/login", data={"token": TOKENS["admin"], "csrf_token": token}, allow_redirects=False,
                  timeout=30)
    assert resp.status_code in (302, 303), resp.text
    assert s.get(b + "/api/installations", timeout=30).status_code == 200  # the session, on the other host
    installations(hosts, 1, "l")
    admin(a, "/api/releases", release_body("1.3.0"))
    rid = admin(a, "/api/rollouts", {"release": "1.3.0", "channel": "stable", "batch_size": 1})["id"]
    page_token = csrf_token_from(s.get(a + "/", timeout=30).text)  # a form token from host a ...
    paused = s.post(b + f"/api/rollouts/{rid}/pause", json={}, headers={"X-CSRFToken": page_token}, timeout=30)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"  # ... accepted by host b
    assert s.post(b + "/logout", json={}, timeout=30).status_code == 200
    s.cookies.clear()
    # the old cookie, replayed on the host that did not see the logout: refused
    replay = requests.get(a + "/api/installations", cookies=resp.cookies, timeout=30)
    assert replay.status_code == 401


def test_the_agent_rate_limit_holds_across_hosts(hosts):
    now = time.time()
    if now % 60 > 45:  # keep the burst inside one fixed one-minute window
        time.sleep(61 - now % 60)
    codes = [agent(hosts[k % 2], "rate-001").post("/api/heartbeats", {"health": "ok"}, raise_for_status=False)[0]
             for k in range(AGENT_LIMIT + 10)]
    assert Counter(codes) == {200: AGENT_LIMIT, 429: 10}
    assert codes[:AGENT_LIMIT] == [200] * AGENT_LIMIT


# --- the webhook outbox with two workers ----------------------------------------------------------
def flap(hosts: list[str], ids: list[str], rounds: int) -> None:
    """Each installation opens and resolves its alert ``rounds`` times (one alert per round)."""
    def run(k: int) -> None:
        a = agent(hosts[k % 2], ids[k])
        for r in range(rounds):
            a.heartbeat(alerts=[{"level": "critical", "message": f"disk full {r}"}])
            a.heartbeat(alerts=[])
    parallel(run, range(len(ids)))


def delivered_by(cluster) -> Counter:
    """How many deliveries each worker logged."""
    out = Counter()
    for w in cluster.workers:
        for line in w.process.log_path.read_text(errors="replace").splitlines():
            if '"webhook_delivery"' in line and '"delivered"' in line:
                out[w.name] += 1
    return out


def assert_in_order_per_alert(receiver: Receiver, expected_alerts: int) -> None:
    keys = receiver.delivered_keys()
    per_alert: dict[int, list[str]] = {}
    for alert_id, event in keys:
        if not per_alert.get(alert_id) or per_alert[alert_id][-1] != event:  # at least once: a repeat is allowed
            per_alert.setdefault(alert_id, []).append(event)
    assert len(per_alert) == expected_alerts
    assert all(events == ["opened", "resolved"] for events in per_alert.values()), per_alert


def test_webhook_events_keep_their_order_per_alert_with_both_workers_delivering(cluster, hosts, receiver, app):
    before = delivered_by(cluster)
    ids = installations(hosts, 20, "w")
    flap(hosts, ids, rounds=3)
    assert receiver.wait_for(lambda r: len({x.key for x in r.delivered}) == 120, timeout=60), len(receiver.delivered)
    assert_in_order_per_alert(receiver, expected_alerts=60)
    wait_until(lambda: query(app, select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status))
               == [("delivered", 120)], 30, "every event recorded as delivered")
    after = delivered_by(cluster)
    assert all(after[w.name] > before[w.name] for w in cluster.workers), (before, after)  # both delivered


def hanging_worker(cluster, receiver: Receiver):
    """The worker whose delivery the receiver is holding (its pid by the request's port, from ``ss``)."""
    with receiver.lock:
        port = receiver.requests[-1].peer_port
    out = subprocess.run(["ss", "-Htnp", "state", "established", "src", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout
    pids = {int(p) for p in re.findall(r"pid=(\d+)", out)}
    holders = [w for w in cluster.workers if w.process.pid in pids]
    assert len(holders) == 1, out
    return holders[0]


def test_a_worker_killed_mid_delivery_loses_nothing(cluster, hosts, receiver, app):
    ids = installations(hosts, 6, "k")
    receiver.set_mode("hang")
    flap(hosts, ids, rounds=1)
    assert receiver.hanging.wait(30)
    victim = hanging_worker(cluster, receiver)
    victim.process.kill()  # SIGKILL mid-delivery: no hand-back, no clean-up
    receiver.set_mode("ok")
    receiver.release()
    leased = (OutboxEvent.status == "pending") & (OutboxEvent.next_attempt_at > func.now() + text("interval '10 s'"))
    try:
        # what the victim had claimed is leased, not lost (pending, one attempt), and everything
        # queued behind it waits; the other worker delivers all the rest
        def settled() -> bool:
            held = query(app, select(OutboxEvent.alert_id).where(leased))
            delivered = query(app, select(func.count()).select_from(OutboxEvent).where(
                OutboxEvent.status == "delivered"))[0][0]
            return bool(held) and delivered + 2 * len(held) == 12

        wait_until(settled, 30, "the other worker's share")
        held = query(app, select(OutboxEvent.alert_id, OutboxEvent.event, OutboxEvent.attempts).where(leased))
        assert {(e, a) for _id, e, a in held} == {("opened", 1)}
        assert not {alert_id for alert_id, _e in receiver.delivered_keys()} & {r.alert_id for r in held}
        # the lease runs out (moved forward here instead of waiting the minute it lasts): the
        # other worker delivers the rest, each alert's events in order
        with app.app_context():
            db.session.execute(update(OutboxEvent).where(leased).values(next_attempt_at=func.now()))
            db.session.commit()
            db.session.remove()
        assert receiver.wait_for(lambda r: len({x.key for x in r.delivered}) == 12, timeout=60)
        assert_in_order_per_alert(receiver, expected_alerts=6)
        wait_until(lambda: query(app, select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status))
                   == [("delivered", 12)], 30, "every event recorded as delivered")
    finally:
        victim.start()
        wait_until(victim.ready, 60, "the restarted worker")


def test_a_connection_lost_after_the_last_statement_keeps_the_answer(cluster, hosts, make_app):
    """The session's closing rollback finds the connection gone: the answer stands (no 500)."""
    installations(hosts, 1, "c")
    app = make_app(CONTROL_PLANE_DATABASE_URL=cluster.database_url, CONTROL_PLANE_DB_POOLER="transaction")

    restarted: list[float] = []

    @app.after_request
    def restart_pgbouncer(response):  # after the view's last statement, before the teardown
        cluster.pgbouncer.restart()
        restarted.append(time.monotonic())
        return response

    resp = app.test_client().get("/api/installations", headers=bearer("support"))
    assert resp.status_code == 200 and [i["instance_id"] for i in resp.get_json()["items"]] == ["c-000"]
    ready_again(cluster, restarted[0])


def ready_again(cluster, restarted_at: float) -> None:
    """After a restart of PgBouncer, before the next test: the hosts' pooled connections from
    before it have sat idle past CONTROL_PLANE_DB_PING_IDLE_SECONDS (1 s), so each is tested
    before its next use and replaced (a connection reused sooner costs its request a 503, which
    the restart test counts), and both hosts answer."""
    time.sleep(max(0.0, restarted_at + 1.5 - time.monotonic()))
    for url in cluster.urls:
        wait_until(lambda: requests.get(url + "/readyz", timeout=30).status_code == 200, 30, f"{url} ready")


# --- PgBouncer restarted under load ---------------------------------------------------------------
def test_pgbouncer_restarted_under_load_costs_one_503_per_request_in_flight_and_no_wrong_answer(
        cluster, hosts, app):
    clients, per_client = 8, 12  # each client cycles over its installations (far below their rate limit)
    ids = installations(hosts, clients * per_client, "b")
    stop = threading.Event()
    back_at: list[float] = []
    results: dict[int, list] = {k: [] for k in range(clients)}

    def client(k: int) -> None:
        mine, n = ids[k * per_client:(k + 1) * per_client], 0
        while not stop.is_set() or n < 2 * per_client:
            n += 1
            iid = mine[n % per_client]
            started = time.monotonic()
            code, body = agent(hosts[n % 2], iid).post("/api/heartbeats", {"slo_p95_ms": float(n)},
                                                       raise_for_status=False)
            results[k].append(("beat", iid, started, n, code, body))
            read = requests.get(hosts[(n + 1) % 2] + f"/api/installations/{iid}", headers=bearer("support"),
                                timeout=60)
            results[k].append(("read", iid, started, n, read.status_code, json_or_text(read)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    cluster.pgbouncer.restart()
    back_at.append(time.monotonic())
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(60)

    last_ok: dict[str, int] = {}
    for rows in results.values():
        late_503 = 0
        for kind, iid, started, n, code, body in rows:
            assert code in (200, 503), (code, body)  # never a 500
            if code == 503:
                assert body["error"] == "database_unavailable", body
                late_503 += started > back_at[0]
            elif kind == "read":  # this installation, at least as new as acknowledged
                assert body["instance_id"] == iid, body
                assert iid not in last_ok or body["slo_p95_ms"] >= last_ok[iid], body
            else:
                assert body["installation"] == iid, body
                last_ok[iid] = n
        assert late_503 <= 2, rows  # once the pooler is back: at most its heartbeat and its read in flight
        assert [r[4] for r in rows[-2 * per_client:]] == [200] * 2 * per_client  # and then it works
    assert sum(1 for rows in results.values() for r in rows if r[4] == 503) >= 1  # the restart was felt
    stored = dict(query(app, select(Installation.instance_id, Installation.slo_p95_ms)))
    assert {iid: stored[iid] for iid in ids} == {iid: float(last_ok[iid]) for iid in ids}
