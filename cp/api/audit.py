"""``GET /api/audit`` (admin): the audit log for scripts, newest first, filterable."""
from __future__ import annotations

from flask import jsonify
from marshmallow import Schema, fields, validate

from cp import audit
from cp.auth import ROLES, role_required
from cp.web.parsing import load_args
from cp.web.fields import UTCDateTime
from cp.api import bp
from cp.api.schemas import ListArgsSchema, list_schema


class AuditArgsSchema(ListArgsSchema):
    action = fields.String(validate=validate.Length(max=64))
    role = fields.String(validate=validate.OneOf((*ROLES, "cli")))
    actor = fields.String(validate=validate.Length(min=1, max=255))
    outcome = fields.String(validate=validate.Length(max=32))
    target_type = fields.String(validate=validate.Length(max=64))
    target_id = fields.String(validate=validate.Length(max=255))
    since = UTCDateTime()
    until = UTCDateTime()


class AuditEntrySchema(Schema):
    id = fields.Integer(dump_only=True)
    at = UTCDateTime(dump_only=True)
    role = fields.String(dump_only=True, allow_none=True)
    actor = fields.String(dump_only=True, allow_none=True)
    action = fields.String(dump_only=True)
    target_type = fields.String(dump_only=True, allow_none=True)
    target_id = fields.String(dump_only=True, allow_none=True)
    outcome = fields.String(dump_only=True)
    source_ip = fields.String(dump_only=True, allow_none=True)
    details = fields.Dict(dump_only=True, allow_none=True)


AuditListSchema = list_schema(AuditEntrySchema, "AuditListSchema")
entry_schema = AuditEntrySchema()


@bp.get("/audit")
@role_required("admin")
def list_audit():
    """The audit log.
    ---
    get:
      tags: [audit]
      summary: Every mutating action from the panel and the API, newest first (admin).
      description: >
        Each entry says when, who (`actor`: a person's email, or the role name for a role token), with
        which role, what action on which target, the outcome (`ok`, or the
        error code of a refused or failed attempt) and the source address. Filters combine with AND;
        `since`/`until` are ISO 8601 timestamps with an offset.
      parameters:
      - in: query
        schema: AuditArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: AuditListSchema
        401:
          description: No or bad credentials.
        403:
          description: The role is not admin.
        422:
          description: A query argument failed validation.
    """
    args = load_args(AuditArgsSchema())
    items, total = audit.list_entries(**args)
    return jsonify({"items": entry_schema.dump(items, many=True), "total": total})
