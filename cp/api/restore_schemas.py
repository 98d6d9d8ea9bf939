"""Schemas of the restore-verification API (``/api/restores``)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from cp.models import RESTORE_STATUSES
from cp.web.fields import UTCDateTime, instance_id_field
from cp.api.schemas import ListArgsSchema, list_schema

MAX_SCHEDULE = 500


class RestoreScheduleSchema(Schema):
    """Unknown fields are refused (422): a misspelt ``scheduled_for`` must not schedule for now."""

    instance_ids = fields.List(instance_id_field(), required=True,
                               validate=validate.Length(min=1, max=MAX_SCHEDULE))
    backup_id = fields.String(allow_none=True, load_default=None, validate=validate.Length(min=1, max=255))
    scheduled_for = UTCDateTime(allow_none=True, load_default=None)


class RestoreArgsSchema(ListArgsSchema):
    instance_id = fields.String(validate=validate.Length(max=128))
    status = fields.String(validate=validate.OneOf(RESTORE_STATUSES))
    backup_id = fields.String(validate=validate.Length(max=255))


class RestoreVerificationSchema(Schema):
    id = fields.Integer(dump_only=True)
    instance_id = fields.String(dump_only=True)
    backup_id = fields.String(dump_only=True, allow_none=True)
    scheduled_for = UTCDateTime(dump_only=True)
    status = fields.String(dump_only=True)
    duration_s = fields.Float(dump_only=True, allow_none=True)
    message = fields.String(dump_only=True, allow_none=True)
    created_at = UTCDateTime(dump_only=True)
    created_by = fields.String(dump_only=True, allow_none=True)
    reported_at = UTCDateTime(dump_only=True, allow_none=True)


class RestoreScheduledSchema(Schema):
    items = fields.List(fields.Nested(RestoreVerificationSchema))


RestoreListSchema = list_schema(RestoreVerificationSchema, "RestoreListSchema")
