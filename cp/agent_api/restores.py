"""``POST /api/restores/report`` (agent, signed)."""
from flask import jsonify
from marshmallow import fields, validate

from cp.delivery import restores
from cp.api.restore_schemas import RestoreVerificationSchema
from cp.extensions import db
from cp.web.fields import StrictFloat, StrictInteger
from cp.agent_api import bp
from cp.agent_api.schemas import MAX_MESSAGE, AgentSchema
from cp.agent_api.signed import agent_endpoint, same_installation


class RestoreReportSchema(AgentSchema):
    verification_id = StrictInteger(required=True, validate=validate.Range(min=1))
    status = fields.String(required=True, validate=validate.OneOf(("passed", "failed")))
    duration_s = StrictFloat(allow_none=True, load_default=None, validate=validate.Range(min=0))
    message = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=MAX_MESSAGE))


verification_schema = RestoreVerificationSchema()


@bp.post("/restores/report")
@agent_endpoint(RestoreReportSchema, RestoreVerificationSchema)
def report_restore(body: dict):
    """Report the result of a restore verification.
    ---
    post:
      summary: passed or failed (a failed result opens a critical restore alert); returns the verification.
      description: >
        The same result again is a no-op 200; a different result for a verification already
        reported is 409 already_reported. Another installation's verification is 403; an unknown
        id is 404.
      responses:
        403:
          description: The verification belongs to another installation.
        404:
          description: No such verification.
        409:
          description: Already reported with another result.
    """
    item = restores.get(body["verification_id"], lock=True)
    same_installation(body["instance_id"], item.installation.instance_id)
    restores.report(item, body["status"], duration_s=body["duration_s"], message=body["message"])
    out = verification_schema.dump(restores.as_dict(item))
    db.session.commit()
    return jsonify(out)
