"""One lock order everywhere (``cp.delivery.rollouts``, "Concurrency"): installation, then
rollout, then job. Raced on PostgreSQL with real threads, straight through the domain functions
(no rate-limit row in front to serialise them by chance): an agent's failed report, which
pauses its rollout by the failure gate and opens an alert on the installation, against the same
installation's heartbeat moving it to another channel, which cancels that pending job. Neither
side may be aborted as a deadlock."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from cp.delivery import rollouts
from cp.errors import DomainError
from cp.extensions import db
from cp.fleet.heartbeats import record_heartbeat
from cp.models import Installation, Job
from tests.rollout_helpers import beat, env, publish, rollout  # noqa: F401  (env: the release key)

ROUNDS = 12


def test_a_failed_report_racing_its_own_channel_change(postgres_only, app, client, agent):
    publish(client, "1.3.0")
    jobs = {}
    for n in range(ROUNDS):
        iid, channel = f"race-{n:02d}", f"race-channel-{n:02d}"
        beat(agent, iid, "1.2.0", channel)
        assert rollout(client, channel=channel, batch_size=10, max_failures=0).status_code == 201
        with app.app_context():
            jobs[iid] = db.session.scalar(select(Job.id).join(Installation).where(Installation.instance_id == iid))

    def in_app(fn):
        with app.app_context():
            try:
                return fn()
            except DomainError as exc:  # a report that came second finds its job cancelled: 409
                db.session.rollback()
                return exc.status
            finally:
                db.session.remove()

    def report(iid, start):
        start.wait()
        rollouts.report_job("update", iid, jobs[iid], "failed", "disk full")
        db.session.commit()
        return "reported"

    def move(iid, start):
        start.wait()
        record_heartbeat({"instance_id": iid, "release_channel": "elsewhere"})
        db.session.commit()
        return "moved"

    outcomes = []
    with ThreadPoolExecutor(2) as pool:
        for iid in jobs:
            start = threading.Barrier(2)
            a = pool.submit(in_app, lambda: report(iid, start))
            b = pool.submit(in_app, lambda: move(iid, start))
            outcomes.append((a.result(timeout=60), b.result(timeout=60)))
    # every heartbeat went through; a report either went first or found its job cancelled
    assert all(moved == "moved" and reported in ("reported", 409) for reported, moved in outcomes), outcomes
    with app.app_context():
        channels = set(db.session.scalars(select(Installation.release_channel)))
        statuses = set(db.session.scalars(select(Job.status)))
    assert channels == {"elsewhere"}
    assert statuses <= {"failed", "cancelled"}
