"""``/api/restores``: schedule (admin) and list (admin) restore verifications."""
from flask import jsonify

from cp.delivery import restores
from cp.api.audited import audited
from cp.auth import current_actor, role_required
from cp.web.parsing import load_args, load_json
from cp.api import bp
from cp.api.restore_schemas import RestoreArgsSchema, RestoreScheduleSchema, RestoreVerificationSchema

verification_schema = RestoreVerificationSchema()


@bp.post("/restores/schedule")
@role_required("admin")
@audited("restore.schedule", "restore_verification")
def schedule_restores():
    """Schedule restore verifications.
    ---
    post:
      tags: [restores]
      summary: One scheduled verification per installation; the agent sees it in its heartbeat response once due.
      description: >
        scheduled_for null (or absent) means now. An unknown instance id refuses the whole request
        (404 unknown_installation, details.instance_ids lists them) and creates nothing. An id given
        twice counts once.
      requestBody:
        required: true
        content:
          application/json:
            schema: RestoreScheduleSchema
      responses:
        201:
          content:
            application/json:
              schema: RestoreScheduledSchema
        404:
          description: An unknown installation; nothing created.
        422:
          description: Validation failed.
    """
    body = load_json(RestoreScheduleSchema())
    items = restores.schedule(body["instance_ids"], backup_id=body["backup_id"],
                              scheduled_for=body["scheduled_for"], by=current_actor().label)
    out = {"items": verification_schema.dump([restores.as_dict(i) for i in items], many=True)}
    return jsonify(out), 201


@bp.get("/restores")
@role_required(restores.READ_ROLE)
def list_restores():
    """List restore verifications.
    ---
    get:
      tags: [restores]
      summary: Restore verifications, newest first, filtered by installation, status and backup id.
      parameters:
      - in: query
        schema: RestoreArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: RestoreListSchema
    """
    page = restores.list_verifications(**load_args(RestoreArgsSchema()))
    items = verification_schema.dump([restores.as_dict(i) for i in page.items], many=True)
    return jsonify({"items": items, "total": page.total})
