"""Marshmallow schemas of the agent payloads (one per request body)."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from cp.models import ALERT_LEVELS, BACKUP_STATUS_VALUES, HEALTH_VALUES
from cp.web.fields import StrictFloat, StrictInteger, UTCDateTime, instance_id_field  # noqa: F401

MAX_MESSAGE = 2000
MAX_ITEMS = 200


def text(max_len: int, **kw) -> fields.String:
    return fields.String(validate=validate.Length(max=max_len), **kw)


class AgentSchema(Schema):
    """Every agent body names its installation; unknown fields are ignored so that newer
    agents keep working against this server."""

    class Meta:
        unknown = EXCLUDE

    instance_id = instance_id_field()


class HeartbeatAlertSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    level = fields.String(required=True, validate=validate.OneOf(ALERT_LEVELS))
    message = fields.String(required=True, validate=validate.Length(min=1, max=MAX_MESSAGE))


class HeartbeatJobFailureSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    queue = fields.String(required=True, validate=validate.Length(min=1, max=255))
    message = fields.String(required=True, validate=validate.Length(min=1, max=MAX_MESSAGE))


class HeartbeatSchema(AgentSchema):
    domain = text(255, allow_none=True)
    client = text(255, allow_none=True)
    version = fields.String(allow_none=True, validate=validate.Length(min=1, max=64))
    release_channel = fields.String(allow_none=True, validate=validate.Length(min=1, max=64))
    health = fields.String(allow_none=True, validate=validate.OneOf(HEALTH_VALUES))
    backup_status = fields.String(allow_none=True, validate=validate.OneOf(BACKUP_STATUS_VALUES))
    last_backup_at = UTCDateTime(allow_none=True)
    alerts = fields.List(fields.Nested(HeartbeatAlertSchema), allow_none=True,
                         validate=validate.Length(max=MAX_ITEMS))
    job_failures = fields.List(fields.Nested(HeartbeatJobFailureSchema), allow_none=True,
                               validate=validate.Length(max=MAX_ITEMS))
    slo_p95_ms = StrictFloat(allow_none=True, validate=validate.Range(min=0))
    slo_error_rate = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=1))
    slo_webhook_retry_rate = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=1))


class RestoreVerificationRefSchema(Schema):
    id = fields.Integer()
    backup_id = fields.String(allow_none=True)
    scheduled_for = fields.String()


class PendingSchema(Schema):
    update = fields.Boolean()
    plugin = fields.Boolean()
    restore_verifications = fields.List(fields.Nested(RestoreVerificationRefSchema))


class HeartbeatResponseSchema(Schema):
    installation = fields.String()
    received_at = fields.String()
    pending = fields.Nested(PendingSchema)
