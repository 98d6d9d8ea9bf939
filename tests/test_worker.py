"""`flask --app cp worker` as a real process: clean SIGTERM without losing or duplicating an
event, several workers at once, and the `--once` / `prune-history` commands."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import select

from cp.extensions import db
from cp.models import OutboxEvent
from tests.conftest import ROOT, Agent, wait_until

WEBHOOK_TOKEN = "worker-webhook-token-123"


def hook_env(receiver, **extra) -> dict[str, str]:
    return {
        "CONTROL_PLANE_ALERT_WEBHOOK_URL": receiver.url,
        "CONTROL_PLANE_ALERT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "CONTROL_PLANE_WEBHOOK_TIMEOUT_SECONDS": "20",
        "CONTROL_PLANE_WEBHOOK_BACKOFF_SECONDS": "0.2",
        "CONTROL_PLANE_WEBHOOK_BACKOFF_MAX_SECONDS": "1",
        "CONTROL_PLANE_WORKER_POLL_SECONDS": "0.1",
        **extra,
    }


class WorkerProcess:
    def __init__(self, env: dict[str, str], tmp_path, *args: str, name: str = "worker"):
        self.log_path = tmp_path / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "cp", "worker", *args], cwd=ROOT,
                                     env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()


def outbox_rows(app):
    with app.app_context():
        rows = db.session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)).all()
        db.session.expunge_all()
        db.session.remove()
        return list(rows)


def open_alerts(agent, count: int, resolve: bool = False) -> None:
    for i in range(count):
        iid = f"inst-{i:03d}"
        assert agent.heartbeat(iid, alerts=[{"level": "critical", "message": "Queue stuck"}]).status_code == 200
        if resolve:
            assert agent.heartbeat(iid, alerts=[]).status_code == 200


def test_sigterm_mid_delivery_finishes_the_event_and_loses_nothing(make_app, env, webhook_receiver, workers,
                                                                    tmp_path):
    overrides = hook_env(webhook_receiver)
    app = make_app(**overrides)
    open_alerts(Agent(app.test_client()), 3)
    webhook_receiver.set_mode("hang")
    worker = WorkerProcess({**env, **overrides}, tmp_path)
    workers.append(worker)
    assert webhook_receiver.hanging.wait(30), worker.output()

    worker.proc.send_signal(signal.SIGTERM)  # while the first event is in flight
    assert wait_until(lambda: "worker stopping" in worker.output()), worker.output()
    assert worker.proc.poll() is None  # it heard the signal, yet does not drop the delivery in flight
    webhook_receiver.set_mode("ok")
    webhook_receiver.release()
    assert worker.wait(30) == 0, worker.output()
    assert "worker stopped" in worker.output()

    rows = outbox_rows(app)
    assert [r.status for r in rows] == ["delivered", "pending", "pending"]
    assert [r.attempts for r in rows] == [1, 0, 0]  # the rest of the batch was handed back untried
    assert len(webhook_receiver.requests) == 1

    # the next worker delivers the rest: every event exactly once
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    keys = webhook_receiver.delivered_keys()
    assert sorted(keys) == sorted((r.alert_id, "opened") for r in rows)
    assert len(set(keys)) == len(keys) == 3
    assert all(r.status == "delivered" for r in outbox_rows(app))


def test_sigterm_while_idle_exits_cleanly(make_app, env, webhook_receiver, workers, tmp_path):
    overrides = hook_env(webhook_receiver)
    app = make_app(**overrides)
    agent = Agent(app.test_client())
    worker = WorkerProcess({**env, **overrides}, tmp_path)
    workers.append(worker)
    open_alerts(agent, 1)
    assert webhook_receiver.wait_for(lambda r: len(r.delivered) == 1, 30), worker.output()
    open_alerts(agent, 1, resolve=True)  # the same alert resolves: delivered by the running loop
    assert webhook_receiver.wait_for(lambda r: len(r.delivered) == 2, 30), worker.output()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    assert [k[1] for k in webhook_receiver.delivered_keys()] == ["opened", "resolved"]


def test_a_worker_retries_until_the_receiver_recovers(make_app, env, webhook_receiver, workers, tmp_path):
    overrides = hook_env(webhook_receiver)
    app = make_app(**overrides)
    webhook_receiver.set_mode("fail", 502)
    open_alerts(Agent(app.test_client()), 2, resolve=True)
    worker = WorkerProcess({**env, **overrides}, tmp_path)
    workers.append(worker)
    assert webhook_receiver.wait_for(lambda r: len(r.requests) >= 6, 30), worker.output()
    assert all(r.key[1] == "opened" for r in webhook_receiver.requests)  # never resolved before opened
    webhook_receiver.set_mode("ok")
    assert webhook_receiver.wait_for(lambda r: len(r.delivered) == 4, 30), worker.output()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    keys = webhook_receiver.delivered_keys()
    assert len(set(keys)) == 4
    for alert_id in {a for a, _ in keys}:
        assert [e for a, e in keys if a == alert_id] == ["opened", "resolved"]


def test_two_worker_processes_deliver_each_event_once(make_app, env, webhook_receiver, workers, tmp_path,
                                                      postgres_only):
    overrides = hook_env(webhook_receiver)
    app = make_app(**overrides)
    open_alerts(Agent(app.test_client()), 40, resolve=True)
    pair = [WorkerProcess({**env, **overrides}, tmp_path, name=f"w{i}") for i in range(2)]
    workers.extend(pair)
    assert webhook_receiver.wait_for(lambda r: len(r.delivered) >= 80, 60), pair[0].output()
    for w in pair:
        w.proc.send_signal(signal.SIGTERM)
    assert [w.wait(30) for w in pair] == [0, 0]
    keys = webhook_receiver.delivered_keys()
    assert len(keys) == 80 and len(set(keys)) == 80
    for alert_id in {a for a, _ in keys}:
        assert [e for a, e in keys if a == alert_id] == ["opened", "resolved"]
    assert all(r.status == "delivered" and r.attempts == 1 for r in outbox_rows(app))


def test_worker_once_and_prune_history_commands(make_app, webhook_receiver):
    app = make_app(**hook_env(webhook_receiver, CONTROL_PLANE_WEBHOOK_TIMEOUT_SECONDS="2"))
    open_alerts(Agent(app.test_client()), 2)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert len(webhook_receiver.delivered) == 2
    result = runner.invoke(args=["prune-history"])
    assert result.exit_code == 0
    assert "slo_samples: 0 deleted" in result.output and "outbox_events: 0 deleted" in result.output
    assert runner.invoke(args=["prune-history", "--days", "0"]).exit_code != 0


def test_a_failing_step_does_not_end_the_worker(make_app, monkeypatch):
    from cp.background import sweeps
    from cp.background import worker as worker_mod

    app = make_app()
    calls = []

    def boom(*_a, **_k):
        calls.append(1)
        raise RuntimeError("database away")

    monkeypatch.setattr(sweeps, "run_sweeps", boom)
    with app.app_context():
        w = worker_mod.Worker(app)
        assert w.iteration() is False
        w.next_sweep = 0
        assert w.iteration() is False
    assert len(calls) == 2


def test_the_worker_round_runs_the_rollout_tick(make_app, monkeypatch, clock):
    from cp.background import sweeps

    seen = []
    monkeypatch.setattr(sweeps.rollouts, "tick", lambda now: seen.append(now) or "ticked")
    app = make_app()
    with app.app_context():
        assert sweeps.rollouts_tick() == "ticked"
    assert seen == [clock.now]
