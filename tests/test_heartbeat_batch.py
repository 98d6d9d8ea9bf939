"""Group commit of heartbeats (``cp.agent_api.heartbeats.write_batch``): a batch of heartbeats
of distinct installations does exactly what the same heartbeats do one by one, refuses one
without touching the others, and falls back to one by one when it fails."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import func, select

from cp.agent_api.heartbeats import QueuedHeartbeat, write_batch
from cp.agent_api.schemas import HeartbeatSchema
from cp.errors import RateLimited, Unauthorized
from cp.extensions import db
from cp.models import Alert, Installation, InstallationEvent, JobFailure, RateLimitBucket, RestoreVerification, SloSample
from cp.web.limits import agent_key
from cp.signing import sign
from tests.conftest import AGENT_TOKEN, Agent, build_request, is_postgres
from tests.test_heartbeat_statements import SLO_ENV, StatementCounter

SCHEMA = HeartbeatSchema()


def hb(instance_id: str, rnd: int, **extra) -> dict:
    """Round ``rnd`` of an installation's heartbeats: its alert changes every round, its job
    failure repeats, its health flips (a history event), the SLO p95 breaches its limit on odd
    rounds (a derived alert that opens and resolves)."""
    return {
        "instance_id": instance_id, "domain": f"{instance_id}.example.com", "client": "Acme SA",
        "version": "1.2.3", "release_channel": "stable", "health": ("ok", "degraded")[rnd % 2],
        "backup_status": "ok", "last_backup_at": "2026-11-27T10:00:00Z",
        "alerts": [{"level": "warning", "message": f"disk round {rnd}"}, {"level": "info", "message": "steady"}],
        "job_failures": [{"queue": "billing", "message": "Timeout"}],
        "slo_p95_ms": 2000 if rnd % 2 else 300, "slo_error_rate": 0.001, "slo_webhook_retry_rate": 0.01,
        **extra,
    }


def queued(payload: dict, nonce: str | None = None) -> QueuedHeartbeat:
    iid = payload["instance_id"]
    return QueuedHeartbeat(iid, agent_key(iid), nonce, SCHEMA.load(payload))


def state(prefix: str) -> dict:
    """Everything the heartbeats wrote for the installations named ``<prefix>-*``, keyed by the
    rest of the name, without ids and times that differ between two runs."""
    s = db.session
    inst = {i.id: i.instance_id.split("-", 1)[1] for i in
            s.scalars(select(Installation).where(Installation.instance_id.like(f"{prefix}-%")))}
    out: dict = {name: {} for name in inst.values()}
    for i in s.scalars(select(Installation).where(Installation.id.in_(inst))):
        out[inst[i.id]]["row"] = (i.health, i.version, i.release_channel, i.heartbeats_total, i.domain)
    for a in s.scalars(select(Alert).where(Alert.installation_id.in_(inst))):
        out[inst[a.installation_id]].setdefault("alerts", []).append(
            (a.level, a.source, a.message, a.occurrences, a.resolved_at is None, a.resolved_by))
    for f in s.scalars(select(JobFailure).where(JobFailure.installation_id.in_(inst))):
        out[inst[f.installation_id]].setdefault("failures", []).append((f.queue, f.message, f.occurrences))
    for e in s.scalars(select(InstallationEvent).where(InstallationEvent.installation_id.in_(inst))):
        out[inst[e.installation_id]].setdefault("events", []).append((e.field, e.old_value, e.new_value))
    for p in s.scalars(select(SloSample).where(SloSample.installation_id.in_(inst))):
        out[inst[p.installation_id]].setdefault("slo", []).append((p.slo_p95_ms, p.slo_error_rate))
    for v in out.values():
        for k in ("alerts", "failures", "events", "slo"):
            v[k] = sorted(v.get(k, []), key=repr)
    return out


@pytest.fixture
def slo_app(make_app):
    return make_app(**SLO_ENV)


def test_a_batch_writes_what_the_same_heartbeats_write_one_by_one(slo_app, clock):
    agent = Agent(slo_app.test_client())
    names = ["a", "b", "c", "d"]
    with slo_app.app_context():
        # an existing fleet: a, b, c known (c on another channel), d new in round 1
        for prefix in ("one", "batch"):
            for name in ("a", "b", "c"):
                assert agent.heartbeat(f"{prefix}-{name}", **{k: v for k, v in hb("x", 0).items()
                                                              if k != "instance_id"}).status_code == 200
        for rnd in (1, 2, 3):
            clock.advance(minutes=1)
            payloads = {n: hb(f"X-{n}", rnd, **({"release_channel": "beta"} if n == "c" and rnd == 2 else {}))
                        for n in names}
            for n in names:  # one by one, through the HTTP gate
                body = {**payloads[n], "instance_id": f"one-{n}"}
                assert agent.heartbeat(**body).status_code == 200
            items = [queued({**payloads[n], "instance_id": f"batch-{n}"}) for n in names]
            write_batch(items)
            assert all(it.error is None and not it.alone and it.result is not None for it in items)
            assert [it.result.instance_id for it in items] == [f"batch-{n}" for n in names]
        one, batch = state("one"), state("batch")
        assert batch == one
        assert batch["a"]["row"][3] == 4 and batch["d"]["row"][3] == 3
        # c moved to beta in round 2 and back in round 3 (the rollout channel hook ran both times)
        assert [e for e in batch["c"]["events"] if e[0] == "release_channel"] == [
            ("release_channel", "beta", "stable"), ("release_channel", "stable", "beta")]
        # the alert of the last round is open, the earlier ones resolved; the SLO alert resolved again
        open_msgs = sorted(a[2] for a in batch["a"]["alerts"] if a[4])
        assert open_msgs[0] == "SLO breached: p95 latency (slo_p95_ms) is 2000 ms, above the limit of 1000 ms." \
            and "disk round 3" in open_msgs and "steady" in open_msgs


def test_each_heartbeat_of_a_batch_gets_its_own_pending(slo_app, clock):
    agent = Agent(slo_app.test_client())
    with slo_app.app_context():
        for iid in ("p-1", "p-2"):
            assert agent.heartbeat(iid).status_code == 200
        inst = db.session.scalar(select(Installation).where(Installation.instance_id == "p-2"))
        db.session.add(RestoreVerification(installation_id=inst.id, backup_id="bk-7", status="scheduled",
                                           scheduled_for=clock.now))
        db.session.commit()
        items = [queued({"instance_id": "p-1"}), queued({"instance_id": "p-2"})]
        write_batch(items)
        first, second = (it.result.pending for it in items)
        assert first == {"update": False, "plugin": False, "restore_verifications": []}
        assert second["restore_verifications"][0]["backup_id"] == "bk-7"
        assert second["update"] is False


def test_a_batch_costs_two_statements_whatever_its_size(slo_app, clock, postgres_only):
    agent = Agent(slo_app.test_client())
    with slo_app.app_context():
        ids = [f"s-{n}" for n in range(5)]
        for iid in ids:
            assert agent.heartbeat(**hb(iid, 0)).status_code == 200
        clock.advance(minutes=1)
        for size in (1, len(ids)):
            clock.advance(minutes=1)
            with StatementCounter(db.engine) as counter:
                items = [queued(hb(iid, size)) for iid in ids[:size]]
                write_batch(items)
            assert all(it.result is not None for it in items)
            # the rate-limit counts with the installations' locks, then everything else
            assert counter.count == 2, counter.statements


def test_a_heartbeat_refused_in_a_batch_keeps_its_count_and_nothing_else(make_app, clock):
    app = make_app(CONTROL_PLANE_AGENT_RATE_LIMIT="2")
    agent = Agent(app.test_client())
    with app.app_context():
        for _ in range(2):
            assert agent.heartbeat("busy", health="ok").status_code == 200
        assert agent.heartbeat("calm", health="ok").status_code == 200
        items = [queued({"instance_id": "busy", "health": "down"}), queued({"instance_id": "calm", "health": "down"})]
        write_batch(items)
        busy, calm = items
        assert isinstance(busy.error, RateLimited) and busy.result is None
        assert calm.error is None and calm.result is not None
        db.session.expire_all()
        rows = {i.instance_id: i for i in db.session.scalars(select(Installation))}
        assert (rows["busy"].health, rows["busy"].heartbeats_total) == ("ok", 2)
        assert (rows["calm"].health, rows["calm"].heartbeats_total) == ("down", 2)
        counts = dict(db.session.execute(select(RateLimitBucket.key, RateLimitBucket.count)).all())
        assert counts == {"agent:busy": 3, "agent:calm": 2}


def test_a_replayed_heartbeat_in_a_batch_is_refused_alone(app):
    agent = Agent(app.test_client())
    req = build_request("/api/heartbeats", {"instance_id": "r-1", "health": "ok"}, AGENT_TOKEN, timestamp=True)
    assert app.test_client().post(req.path, data=req.body, headers=req.headers).status_code == 200
    nonce = req.headers["x-agent-signature"]
    assert agent.heartbeat("r-2").status_code == 200
    with app.app_context():
        items = [queued({"instance_id": "r-1", "health": "down"}, nonce=nonce),
                 queued({"instance_id": "r-2", "health": "down"}, nonce="ab" * 32)]
        write_batch(items)
        assert isinstance(items[0].error, Unauthorized)
        assert items[1].error is None and items[1].result is not None
        db.session.expire_all()
        health = dict(db.session.execute(select(Installation.instance_id, Installation.health)).all())
        assert health == {"r-1": "ok", "r-2": "down"}


def test_a_failed_batch_rolls_back_and_leaves_each_heartbeat_to_itself(app, clock, monkeypatch):
    import cp.agent_api.heartbeats as view

    agent = Agent(app.test_client())
    assert agent.heartbeat("f-1").status_code == 200

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(view, "record_heartbeats", broken)
    with app.app_context():
        items = [queued({"instance_id": "f-1", "health": "down"}), queued({"instance_id": "f-2"})]
        write_batch(items)
        assert all(it.alone and it.error is None and it.result is None for it in items)
        db.session.expire_all()
        assert db.session.scalar(select(func.count()).select_from(Installation)) == 1  # f-2 not registered
        assert db.session.scalar(select(RateLimitBucket.count).where(RateLimitBucket.key == "agent:f-1")) == 1
    # over HTTP: the request is then answered on its own, once
    resp = agent.heartbeat("f-1", health="down")
    assert resp.status_code == 200 and resp.get_json()["installation"] == "f-1"
    with app.app_context():
        row = db.session.scalar(select(Installation).where(Installation.instance_id == "f-1"))
        assert (row.health, row.heartbeats_total) == ("down", 2)
        assert db.session.scalar(select(RateLimitBucket.count).where(RateLimitBucket.key == "agent:f-1")) == 2


def test_the_batch_size_comes_from_the_setting(make_app):
    from cp.agent_api.heartbeats import EXTENSION

    assert make_app().extensions[EXTENSION].max_size == 16
    alone = make_app(CONTROL_PLANE_HEARTBEAT_BATCH_MAX="1")
    assert alone.extensions[EXTENSION].max_size == 1
    assert Agent(alone.test_client()).heartbeat("one-at-a-time").status_code == 200


def test_invalid_bodies_keep_the_gate_order(make_app):
    """Not batched: a body that fails validation is still counted first (429 before 422)."""
    app = make_app(CONTROL_PLANE_AGENT_RATE_LIMIT="1")
    agent = Agent(app.test_client())
    assert agent.heartbeat("v-1", health="sideways").status_code == 422
    assert agent.heartbeat("v-1", health="sideways").status_code == 429


@pytest.mark.live
def test_concurrent_heartbeats_over_gunicorn_are_all_recorded_once(live_server, app, migrated):
    """Many installations at once, each sending its rounds in order, against two gunicorn
    workers of four threads: the batches form under load, and every installation ends with
    exactly what its heartbeats say."""
    if not is_postgres(migrated):
        pytest.skip("needs PostgreSQL")
    names = [f"live-{n:02d}" for n in range(24)]
    rounds = 4
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=16)
    session.mount("http://", adapter)

    def send(iid: str) -> list[int]:
        codes = []
        for rnd in range(rounds):
            body = hb(iid, rnd)
            req = build_request("/api/heartbeats", body, AGENT_TOKEN, timestamp=True)
            codes.append(session.post(live_server.url + req.path, data=req.body, headers=req.headers,
                                      timeout=30).status_code)
        return codes

    with ThreadPoolExecutor(16) as pool:
        codes = [c for cs in pool.map(send, names) for c in cs]
    assert codes == [200] * (len(names) * rounds)
    with app.app_context():
        got = state("live")
        assert sorted(got) == sorted(n.split("-", 1)[1] for n in names)
        for name, v in got.items():
            assert v["row"][3] == rounds, name
            open_agent = [a[2] for a in v["alerts"] if a[4] and a[1] == "agent"]
            assert sorted(open_agent) == [f"disk round {rounds - 1}", "steady"], (name, v["alerts"])
            assert v["failures"] == [("billing", "Timeout", rounds)], name
            assert len(v["events"]) == rounds - 1, name  # health flips every round after the first


def test_a_batch_whose_commit_fails_answers_503_and_is_not_retried(app, clock, monkeypatch):
    """Whether a failed COMMIT took effect is unknown: answering alone could record a heartbeat
    twice, so each gets the 503 a single request would get."""
    from sqlalchemy.exc import OperationalError

    with app.app_context():
        session = db.session()

        def lost(*args, **kwargs):
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

        monkeypatch.setattr(session, "commit", lost)
        items = [queued({"instance_id": "c-1"}), queued({"instance_id": "c-2"})]
        write_batch(items)
        for it in items:
            assert not it.alone and it.result is None
            assert it.error.status == 503 and it.error.code == "database_unavailable"


@pytest.fixture
def commit_modes():
    """``app -> list``: the ``synchronous_commit`` in force at each COMMIT of the app's engine,
    read in the committing transaction itself (SQLAlchemy's ``commit`` event runs just before it)."""
    from sqlalchemy import event

    seen: list[str] = []
    engines = []

    def on_commit(conn):
        seen.append(conn.exec_driver_sql("SHOW synchronous_commit").scalar())

    def watch(app):
        with app.app_context():
            engines.append(db.engine)
        event.listen(engines[-1], "commit", on_commit)
        return seen

    yield watch
    for engine in engines:
        event.remove(engine, "commit", on_commit)


@pytest.mark.parametrize("setting, expected", [({}, "off"), ({"CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT": "1"}, "on")])
def test_heartbeat_transactions_commit_asynchronously_unless_set_and_nothing_else_does(
        postgres_only, make_app, commit_modes, setting, expected):
    app = make_app(**setting)
    seen = commit_modes(app)
    agent = Agent(app.test_client())
    assert agent.heartbeat("commit-mode-1", health="ok").status_code == 200  # registers it
    assert agent.heartbeat("commit-mode-1", health="down").status_code == 200  # steady state, one change
    with app.app_context():  # a batch of two, through the batcher's own transaction
        write_batch([queued(hb("commit-mode-1", 1)), queued(hb("commit-mode-2", 1))])
    heartbeats = list(seen)
    assert heartbeats == [expected] * 3
    with app.app_context():  # any other transaction on the same pooled connections: the server's default
        db.session.execute(select(func.count()).select_from(Installation))
        db.session.commit()
    assert seen[len(heartbeats):] == ["on"]
