"""``POST /api/heartbeats``."""
from flask import jsonify

from ..extensions import db
from ..heartbeats import pending_for, record_heartbeat
from ..http import load
from ..timeutil import isoformat
from . import bp
from .schemas import HeartbeatSchema
from .signed import agent_endpoint

heartbeat_schema = HeartbeatSchema()


@bp.post("/heartbeats")
@agent_endpoint
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
    result = record_heartbeat(payload)
    pending = pending_for(result.installation_id, result.received_at)
    db.session.commit()
    return jsonify({"installation": result.instance_id, "received_at": isoformat(result.received_at),
                    "pending": pending})
