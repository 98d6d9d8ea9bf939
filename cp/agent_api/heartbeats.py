"""``POST /api/heartbeats``."""
from flask import g, jsonify

from ..extensions import db
from ..heartbeats import NOT_LOCKED, count_and_lock, pending_for, record_heartbeat
from ..http import load
from ..timeutil import isoformat
from . import bp
from .schemas import HeartbeatSchema
from .signed import agent_endpoint

heartbeat_schema = HeartbeatSchema()


@bp.post("/heartbeats")
@agent_endpoint(counter=count_and_lock)  # the rate-limit count also locks the installation row
def heartbeat(data: dict):
    """Record a heartbeat.
    ---
    post:
      tags: [agent]
      summary: Report an installation's state; registers unknown installations.
      security: [{agentSignature: []}]
      requestBody:
        required: true
        content:
          application/json:
            schema: HeartbeatSchema
      responses:
        200:
          content:
            application/json:
              schema: HeartbeatResponseSchema
    """
    payload = load(heartbeat_schema, data)
    locked = g.agent_counted if g.agent_instance_id == payload["instance_id"] else NOT_LOCKED
    # PostgreSQL: the rest of the heartbeat and what waits for the agent in one more statement
    result = record_heartbeat(payload, with_pending=True, locked=locked)
    pending = result.pending if result.pending is not None else pending_for(result.installation_id,
                                                                            result.received_at)
    db.session.commit()
    return jsonify({"installation": result.instance_id, "received_at": isoformat(result.received_at),
                    "pending": pending})
