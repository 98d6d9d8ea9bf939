"""``POST /api/heartbeats``: the one entrance of a heartbeat.

The agent gate (``cp.agent_api.signed.agent_endpoint``) verifies the signature, counts the
request and validates the body with ``HeartbeatSchema``; the view records it with
``cp.fleet.heartbeats.record_heartbeat`` and commits; the 200 goes out only after the COMMIT,
so an acknowledged heartbeat is on disk (docs/operations.md, Durability).
"""
from __future__ import annotations

from flask import current_app

from cp.dbutil import commit_without_flush_wait
from cp.extensions import db
from cp.fleet.heartbeats import record_heartbeat
from cp.timeutil import isoformat
from cp.agent_api import bp
from cp.agent_api.schemas import HeartbeatResponseSchema, HeartbeatSchema
from cp.agent_api.signed import agent_endpoint


@bp.post("/heartbeats")
@agent_endpoint(HeartbeatSchema, HeartbeatResponseSchema)
def heartbeat(payload: dict):
    """Report an installation's state; registers unknown installations."""
    if not current_app.config["CP_SETTINGS"].heartbeat_synchronous_commit:
        commit_without_flush_wait(db.session.connection())
    result = record_heartbeat(payload, with_pending=True)
    db.session.commit()
    return {"installation": result.instance_id, "received_at": isoformat(result.received_at),
            "pending": result.pending}
