"""Alert forwarding: the outbox, delivery to a real local receiver, retries, order, dead events."""
from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy import text as sa_text

from cp.background import outbox
from cp.extensions import db
from cp.models import Alert, OutboxEvent
from cp.signing import verify_webhook_signature
from tests.conftest import Agent, bearer, csrf_token_from, login
from tests.webhook_receiver import Receiver

WEBHOOK_TOKEN = "webhook-token-0123456789"
ALERT_KEYS = {"id", "instance_id", "level", "source", "message", "opened_at", "resolved_at"}


def hook_env(receiver, **extra):
    env = {
        "CONTROL_PLANE_ALERT_WEBHOOK_URL": receiver.url,
        "CONTROL_PLANE_ALERT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "CONTROL_PLANE_WEBHOOK_TIMEOUT_SECONDS": "0.5",
        "CONTROL_PLANE_WEBHOOK_BACKOFF_SECONDS": "10",
        "CONTROL_PLANE_WEBHOOK_BACKOFF_MAX_SECONDS": "120",
    }
    env.update(extra)
    return env


@pytest.fixture
def hook_app(make_app, webhook_receiver):
    return make_app(**hook_env(webhook_receiver))


@pytest.fixture
def hook_agent(hook_app):
    return Agent(hook_app.test_client())


def deliver(app, **kw) -> int:
    with app.app_context():
        try:
            return outbox.deliver_all(**kw)
        finally:
            db.session.remove()


def events(app) -> list[OutboxEvent]:
    with app.app_context():
        rows = db.session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)).all()
        db.session.expunge_all()
        return list(rows)


def low_disk(agent, instance_id="acme-001", message="Low disk"):
    resp = agent.heartbeat(instance_id, alerts=[{"level": "warning", "message": message}])
    assert resp.status_code == 200, resp.get_json()


# --- body, token, signature ----------------------------------------------------------------
def test_opened_and_resolved_events_arrive_signed_with_the_contract_body(hook_app, hook_agent, webhook_receiver, clock):
    low_disk(hook_agent)
    assert deliver(hook_app) == 1
    clock.advance(minutes=1)
    assert hook_agent.heartbeat("acme-001", alerts=[]).status_code == 200
    assert deliver(hook_app) == 1

    assert [r.key[1] for r in webhook_receiver.delivered] == ["opened", "resolved"]
    opened, resolved = webhook_receiver.delivered
    for rec in (opened, resolved):
        assert rec.path == Receiver.PATH
        assert rec.headers["content-type"] == "application/json"
        assert rec.headers["authorization"] == f"Bearer {WEBHOOK_TOKEN}"
        assert set(rec.json) == {"event", "alert"}
        assert set(rec.json["alert"]) == ALERT_KEYS
        header = rec.headers["x-control-plane-signature"]
        assert verify_webhook_signature(WEBHOOK_TOKEN, rec.body, header, now=int(clock.now.timestamp()))
        assert not verify_webhook_signature("another-token", rec.body, header, now=int(clock.now.timestamp()))
        assert not verify_webhook_signature(WEBHOOK_TOKEN, rec.body + b" ", header, now=int(clock.now.timestamp()))
    a = opened.json["alert"]
    assert a["instance_id"] == "acme-001" and a["level"] == "warning" and a["source"] == "agent"
    assert a["message"] == "Low disk"
    assert a["opened_at"] == "2026-11-27T12:00:00Z" and a["resolved_at"] is None
    b = resolved.json["alert"]
    assert b["id"] == a["id"] and b["resolved_at"] == "2026-11-27T12:01:00Z" and b["opened_at"] == a["opened_at"]
    # the signature's timestamp is the sending time, in unix seconds
    def sig_time(rec):
        return int(rec.headers["x-control-plane-signature"].split(",")[0].removeprefix("t="))

    assert sig_time(opened) == int((clock.now - timedelta(minutes=1)).timestamp())
    assert sig_time(resolved) == int(clock.now.timestamp())
    assert all(e.status == "delivered" and e.attempts == 1 and e.delivered_at for e in events(hook_app))


def test_without_a_token_no_authorization_and_no_signature(make_app, webhook_receiver, clock):
    app = make_app(**hook_env(webhook_receiver, CONTROL_PLANE_ALERT_WEBHOOK_TOKEN=""))
    low_disk(Agent(app.test_client()))
    deliver(app)
    (rec,) = webhook_receiver.delivered
    assert "authorization" not in rec.headers
    assert "x-control-plane-signature" not in rec.headers
    assert rec.json["event"] == "opened"


def test_no_webhook_url_writes_no_outbox_rows(app, agent, webhook_receiver):
    low_disk(agent)
    assert events(app) == []
    assert deliver(app) == 0
    assert webhook_receiver.requests == []


def test_queued_events_wait_while_the_url_is_unset(make_app, webhook_receiver, clock):
    app = make_app(**hook_env(webhook_receiver))
    low_disk(Agent(app.test_client()))
    unset = make_app(**hook_env(webhook_receiver, CONTROL_PLANE_ALERT_WEBHOOK_URL=""))
    assert deliver(unset) == 0
    assert [e.status for e in events(app)] == ["pending"]
    assert deliver(app) == 1


def test_every_alert_source_change_goes_through_the_outbox(make_app, webhook_receiver, clock):
    app = make_app(**hook_env(webhook_receiver, SLO_P95_MS_MAX="500"))
    agent = Agent(app.test_client())
    r = agent.heartbeat("acme-001", slo_p95_ms=900, backup_status="failed",
                        alerts=[{"level": "critical", "message": "Mail queue stuck"}])
    assert r.status_code == 200
    deliver(app)
    sources = sorted(rec.json["alert"]["source"] for rec in webhook_receiver.delivered)
    assert sources == ["agent", "backup", "slo"]
    # the HTTP resolve of a human goes out too
    with app.app_context():
        alert_id = db.session.scalar(select(Alert.id).where(Alert.source == "slo"))
    assert app.test_client().post(f"/api/alerts/{alert_id}/resolve", headers=bearer("ops")).status_code == 200
    deliver(app)
    assert webhook_receiver.delivered[-1].key == (alert_id, "resolved")


# --- failures, backoff, order --------------------------------------------------------------
def test_a_receiver_down_for_minutes_gets_every_event_in_order_once_back(hook_app, hook_agent, webhook_receiver,
                                                                         clock):
    webhook_receiver.set_mode("fail", 500)
    for i in range(3):
        low_disk(hook_agent, f"inst-{i}", "Disk A")
    deliver(hook_app)
    clock.advance(minutes=1)
    for i in range(3):  # every alert resolves while the receiver is still down
        assert hook_agent.heartbeat(f"inst-{i}", alerts=[]).status_code == 200
    for _ in range(12):  # twelve minutes of failures
        clock.advance(minutes=1)
        deliver(hook_app)
    evs = events(hook_app)
    opened = [e for e in evs if e.event == "opened"]
    resolved = [e for e in evs if e.event == "resolved"]
    assert all(e.status == "pending" and e.attempts >= 3 for e in opened)
    assert all(e.last_error.startswith("HTTP 500") for e in opened)
    # a later event of an alert is never tried before its earlier one is delivered
    assert all(e.attempts == 0 for e in resolved)
    assert all(r.key[1] == "opened" for r in webhook_receiver.requests)
    assert webhook_receiver.delivered == []

    webhook_receiver.set_mode("ok")
    for _ in range(4):  # the receiver is back: within the capped backoff, everything arrives
        clock.advance(minutes=2)
        deliver(hook_app)
    keys = webhook_receiver.delivered_keys()
    assert len(keys) == 6 and len(set(keys)) == 6, keys
    for alert_id in {k[0] for k in keys}:
        assert [ev for a, ev in keys if a == alert_id] == ["opened", "resolved"]
    assert all(e.status == "delivered" for e in events(hook_app))


def test_backoff_grows_exponentially_with_jitter_and_a_cap(hook_app):
    with hook_app.app_context():
        rng = random.Random(1)
        for attempts, expected in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 120), (12, 120)):
            values = [outbox.backoff_seconds(attempts, rng=rng) for _ in range(50)]
            assert all(expected / 2 <= v <= expected for v in values), (attempts, values[:3])
            assert len({round(v, 6) for v in values}) > 1  # jittered


def test_failure_schedules_the_next_attempt_after_the_backoff(hook_app, hook_agent, webhook_receiver, clock):
    webhook_receiver.set_mode("fail", 503)
    low_disk(hook_agent)
    assert deliver(hook_app) == 1
    (ev,) = events(hook_app)
    assert ev.status == "pending" and ev.attempts == 1 and ev.last_error.startswith("HTTP 503")
    assert "receiver says no &lt;b&gt;" not in ev.last_error  # stored raw, escaped only when shown
    assert clock.now + timedelta(seconds=5) <= ev.next_attempt_at <= clock.now + timedelta(seconds=10)
    assert ev.last_attempt_at == clock.now
    assert deliver(hook_app) == 0  # not due yet
    clock.advance(seconds=10)
    assert deliver(hook_app) == 1
    assert events(hook_app)[0].attempts == 2


def test_connection_refused_is_a_retried_failure_that_never_logs_the_url(make_app, clock):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/hooks/T0KEN-IN-PATH?sig=secret"
    app = make_app(CONTROL_PLANE_ALERT_WEBHOOK_URL=url, CONTROL_PLANE_WEBHOOK_TIMEOUT_SECONDS="0.5")
    low_disk(Agent(app.test_client()))
    deliver(app)
    (ev,) = events(app)
    assert ev.status == "pending" and ev.attempts == 1
    assert ev.last_error.startswith("connection failed")
    assert "T0KEN" not in ev.last_error and "secret" not in ev.last_error


def test_a_hanging_receiver_times_out_and_the_event_is_retried(hook_app, hook_agent, webhook_receiver, clock):
    webhook_receiver.set_mode("hang")
    low_disk(hook_agent)
    deliver(hook_app)
    (ev,) = events(hook_app)
    assert ev.status == "pending" and ev.last_error.startswith("timed out after 0.5 s")
    webhook_receiver.release()
    webhook_receiver.set_mode("ok")
    clock.advance(minutes=1)
    deliver(hook_app)
    assert events(hook_app)[0].status == "delivered"


def test_a_hanging_receiver_never_slows_a_heartbeat(hook_app, hook_agent, webhook_receiver):
    """The worker is stuck in a delivery; heartbeats (which open and resolve alerts) still
    return at once, with their events queued."""
    webhook_receiver.set_mode("hang")
    app = hook_app
    low_disk(hook_agent, "first")
    stop = threading.Event()

    def worker():  # waits 0.5 s per attempt; the receiver holds each request until released
        with app.app_context():
            while not stop.is_set():
                outbox.deliver_due(should_stop=stop.is_set)
                stop.wait(0.05)
            db.session.remove()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        assert webhook_receiver.hanging.wait(10), "the worker never reached the receiver"
        for i in range(5):
            r = hook_agent.heartbeat(f"inst-{i}", alerts=[{"level": "critical", "message": f"Down {i}"}])
            assert r.status_code == 200
            r = hook_agent.heartbeat(f"inst-{i}", alerts=[])
            assert r.status_code == 200
            # still hanging: the receiver has not been released while these heartbeats ran
            assert webhook_receiver.hanging.is_set() and not webhook_receiver._release.is_set()
    finally:
        stop.set()
        webhook_receiver.release()
        t.join(10)
    evs = events(app)
    assert len(evs) == 11  # 1 + 5 opened + 5 resolved, all written by the heartbeats
    assert sum(1 for e in evs if e.event == "resolved") == 5


# --- dead events and the admin panel ---------------------------------------------------------
def test_an_event_is_dead_after_max_attempts_and_holds_back_later_ones_until_retried(
        make_app, webhook_receiver, clock):
    app = make_app(**hook_env(webhook_receiver, CONTROL_PLANE_WEBHOOK_MAX_ATTEMPTS="3"))
    agent = Agent(app.test_client())
    webhook_receiver.set_mode("fail", 500)
    low_disk(agent)
    assert agent.heartbeat("acme-001", alerts=[]).status_code == 200
    for _ in range(6):
        deliver(app)
        clock.advance(minutes=5)
    opened, resolved = events(app)
    assert opened.status == "dead" and opened.attempts == 3 and opened.last_error.startswith("HTTP 500")
    assert resolved.status == "pending" and resolved.attempts == 0
    assert len(webhook_receiver.requests) == 3

    webhook_receiver.set_mode("ok")
    clock.advance(hours=1)
    assert deliver(app) == 0  # the resolved event waits for its dead opened event
    with app.app_context():
        assert outbox.retry([opened.id, resolved.id]) == 1  # only the dead one
        db.session.commit()
    deliver(app)
    assert [r.key[1] for r in webhook_receiver.delivered] == ["opened", "resolved"]


def test_a_worker_killed_mid_delivery_loses_nothing(hook_app, hook_agent, webhook_receiver, clock):
    low_disk(hook_agent)
    with hook_app.app_context():
        claimed = outbox.claim()  # ... and the worker dies before sending or recording
        db.session.remove()
    assert [c.attempts for c in claimed] == [1]
    assert deliver(hook_app) == 0  # leased: no other worker takes it
    with hook_app.app_context():
        lease = outbox.lease_seconds()
    clock.advance(seconds=lease + 1)
    assert deliver(hook_app) == 1
    assert webhook_receiver.delivered_keys() == [(claimed[0].alert_id, "opened")]
    (ev,) = events(hook_app)
    assert ev.status == "delivered" and ev.attempts == 2


def test_a_lease_that_runs_out_on_the_last_attempt_makes_the_event_dead(make_app, webhook_receiver, clock):
    app = make_app(**hook_env(webhook_receiver, CONTROL_PLANE_WEBHOOK_MAX_ATTEMPTS="1"))
    low_disk(Agent(app.test_client()))
    with app.app_context():
        outbox.claim()
        lease = outbox.lease_seconds()
        db.session.remove()
    clock.advance(seconds=lease + 1)
    assert deliver(app) == 0
    (ev,) = events(app)
    assert ev.status == "dead" and "stopped during the last attempt" in ev.last_error
    assert webhook_receiver.requests == []


def test_stopping_hands_back_the_rest_of_a_claimed_batch(hook_app, hook_agent, webhook_receiver, clock):
    for i in range(4):
        low_disk(hook_agent, f"inst-{i}")
    calls = {"n": 0}

    def stop_after_first():
        calls["n"] += 1
        return calls["n"] > 1

    with hook_app.app_context():
        assert outbox.deliver_due(should_stop=stop_after_first) == 1
        db.session.remove()
    evs = events(hook_app)
    assert [e.status for e in evs] == ["delivered", "pending", "pending", "pending"]
    assert [e.attempts for e in evs[1:]] == [0, 0, 0]
    assert all(e.next_attempt_at <= clock.now for e in evs[1:])  # due at once for the next worker
    assert deliver(hook_app) == 3
    assert len(webhook_receiver.delivered) == 4


def test_two_workers_at_once_deliver_each_event_once(make_app, webhook_receiver, postgres_only):
    """PostgreSQL: claims with FOR UPDATE SKIP LOCKED never hand one event to two workers."""
    app = make_app(**hook_env(webhook_receiver))
    agent = Agent(app.test_client())
    for i in range(30):
        low_disk(agent, f"inst-{i:02d}")
        assert agent.heartbeat(f"inst-{i:02d}", alerts=[]).status_code == 200
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run():
        try:
            with app.app_context():
                barrier.wait()
                outbox.deliver_all()
                db.session.remove()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    keys = webhook_receiver.delivered_keys()
    assert len(keys) == 60 and len(set(keys)) == 60
    for alert_id in {k[0] for k in keys}:
        assert [ev for a, ev in keys if a == alert_id] == ["opened", "resolved"]
    assert all(e.status == "delivered" and e.attempts == 1 for e in events(app))


def test_admin_sees_the_delivery_log_and_retries_dead_events(make_app, webhook_receiver, clock):
    app = make_app(**hook_env(webhook_receiver, CONTROL_PLANE_WEBHOOK_MAX_ATTEMPTS="1"))
    agent = Agent(app.test_client())
    webhook_receiver.set_mode("fail", 500)
    low_disk(agent, message="<script>alert(1)</script>")
    deliver(app)
    (ev,) = events(app)
    assert ev.status == "dead"

    for role, status in (("support", 403), ("ops", 403)):
        c = app.test_client()
        login(c, role)
        assert c.get("/admin/outbox/").status_code == status
    c = app.test_client()
    login(c, "admin")
    page = c.get("/admin/outbox/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "HTTP 500" in html and "dead" in html and "Retry delivery" in html
    assert "<script>alert(1)</script>" not in html
    details = c.get(f"/admin/outbox/details/?id={ev.id}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in details

    webhook_receiver.set_mode("ok")
    token = csrf_token_from(html)
    resp = c.post("/admin/outbox/action/", data={"action": "retry", "rowid": [str(ev.id)], "csrf_token": token})
    assert resp.status_code in (302, 303)
    (ev,) = events(app)
    assert ev.status == "pending" and ev.attempts == 0
    deliver(app)
    assert events(app)[0].status == "delivered"
    assert webhook_receiver.delivered_keys() == [(ev.alert_id, "opened")]


def test_ops_cannot_run_the_retry_action(make_app, webhook_receiver):
    app = make_app(**hook_env(webhook_receiver))
    c = app.test_client()
    login(c, "ops")
    page = c.get("/login").get_data(as_text=True)
    token = csrf_token_from(page)
    resp = c.post("/admin/outbox/action/", data={"action": "retry", "rowid": ["1"], "csrf_token": token})
    assert resp.status_code == 403


def test_outbox_counts(hook_app, hook_agent):
    low_disk(hook_agent)
    with hook_app.app_context():
        assert outbox.counts() == {"pending": 1, "delivered": 0, "dead": 0}
        assert db.session.scalar(select(func.count()).select_from(OutboxEvent)) == 1


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh", "analyzed"])
def test_a_claim_never_takes_more_than_its_limit_on_a_small_backlog(hook_app, hook_agent, clock, postgres_only,
                                                                    analyzed):
    """Whatever plan PostgreSQL picks for a handful of rows (it once re-ran the locked,
    limited subquery per row of a nested loop), one claim leases at most ``limit`` events."""
    for i in range(4):
        hook_agent.heartbeat(f"acme-{i:03d}", alerts=[{"level": "warning", "message": f"Disk {n}"} for n in range(3)])
    with hook_app.app_context():
        if analyzed:
            db.session.execute(sa_text("ANALYZE outbox_events"))
            db.session.commit()
        for limit in (1, 2, 3, 5):
            claimed = outbox.claim(limit=limit)
            leased = db.session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.attempts > 0))
            assert len(claimed) == limit and leased == limit, (limit, len(claimed), leased)
            db.session.execute(update(OutboxEvent).values(attempts=0, next_attempt_at=clock.now))
            db.session.commit()
        db.session.remove()
