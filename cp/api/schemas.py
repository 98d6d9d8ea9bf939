"""One schema per resource of the human API: query arguments (load) and items (dump)."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate

from cp.web.parsing import DEFAULT_LIMIT, MAX_LIMIT, text_errors
from cp.models import ALERT_LEVELS, ALERT_SOURCES, HEALTH_VALUES
from cp.web.fields import QueryBoolean, UTCDateTime


class ListArgsSchema(Schema):
    """``?limit=`` (default 50, capped at 500) and ``?offset=``."""

    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))

    @pre_load
    def _storable_text(self, data, **_kw):
        """A filter the database cannot compare (``?q=%00``) names its argument (422)."""
        errors = text_errors(data)
        if errors:
            raise ValidationError(errors)
        return data

    def load(self, data, **kw):  # type: ignore[override]
        out = super().load(data, **kw)
        out["limit"] = min(out["limit"], MAX_LIMIT)
        return out


class InstallationArgsSchema(ListArgsSchema):
    q = fields.String(validate=validate.Length(max=200))
    health = fields.String(validate=validate.OneOf(HEALTH_VALUES))
    release_channel = fields.String(validate=validate.Length(max=64))
    version = fields.String(validate=validate.Length(max=64))
    stale = QueryBoolean()
    plugin = fields.String(validate=validate.Length(max=128))
    plugin_version = fields.String(validate=validate.Length(max=64))


class AlertArgsSchema(ListArgsSchema):
    instance_id = fields.String(validate=validate.Length(max=128))
    status = fields.String(validate=validate.OneOf(("open", "resolved")))
    level = fields.String(validate=validate.OneOf(ALERT_LEVELS))
    source = fields.String(validate=validate.OneOf(ALERT_SOURCES))


class JobFailureArgsSchema(ListArgsSchema):
    instance_id = fields.String(validate=validate.Length(max=128))
    status = fields.String(validate=validate.OneOf(("open", "resolved")))
    queue = fields.String(validate=validate.Length(max=255))


class RecurringSchema(Schema):
    """What alerts and job failures share: a message of an installation, seen again and again
    until it is resolved."""

    id = fields.Integer(dump_only=True)
    instance_id = fields.String(dump_only=True)
    message = fields.String(dump_only=True)
    last_seen_at = UTCDateTime(dump_only=True)
    occurrences = fields.Integer(dump_only=True)
    resolved_at = UTCDateTime(dump_only=True, allow_none=True)


class AlertSchema(RecurringSchema):
    level = fields.String(dump_only=True)
    source = fields.String(dump_only=True)
    opened_at = UTCDateTime(dump_only=True)
    acknowledged_at = UTCDateTime(dump_only=True, allow_none=True)
    acknowledged_by = fields.String(dump_only=True, allow_none=True)
    resolved_by = fields.String(dump_only=True, allow_none=True)


class JobFailureSchema(RecurringSchema):
    queue = fields.String(dump_only=True)
    first_seen_at = UTCDateTime(dump_only=True)


class InstallationSchema(Schema):
    instance_id = fields.String(dump_only=True)
    domain = fields.String(dump_only=True, allow_none=True)
    client = fields.String(dump_only=True, allow_none=True)
    version = fields.String(dump_only=True, allow_none=True)
    release_channel = fields.String(dump_only=True, allow_none=True)
    health = fields.String(dump_only=True, allow_none=True)
    backup_status = fields.String(dump_only=True, allow_none=True)
    last_backup_at = UTCDateTime(dump_only=True, allow_none=True)
    slo_p95_ms = fields.Float(dump_only=True, allow_none=True)
    slo_error_rate = fields.Float(dump_only=True, allow_none=True)
    slo_webhook_retry_rate = fields.Float(dump_only=True, allow_none=True)
    first_seen_at = UTCDateTime(dump_only=True)
    last_seen_at = UTCDateTime(dump_only=True)
    stale = fields.Boolean(dump_only=True)
    open_alerts = fields.Integer(dump_only=True)
    # core releases of its channel newer than its version (null: version unknown or not semver)
    releases_behind = fields.Integer(dump_only=True, allow_none=True)


class InstallationEventSchema(Schema):
    field = fields.String(dump_only=True)
    old_value = fields.String(dump_only=True, allow_none=True)
    new_value = fields.String(dump_only=True, allow_none=True)
    at = UTCDateTime(dump_only=True)


class InstalledPluginSchema(Schema):
    plugin = fields.String(dump_only=True)
    version = fields.String(dump_only=True)


class InstallationDetailSchema(InstallationSchema):
    alerts = fields.List(fields.Nested(AlertSchema), dump_only=True)
    job_failures = fields.List(fields.Nested(JobFailureSchema), dump_only=True)
    events = fields.List(fields.Nested(InstallationEventSchema), dump_only=True)
    # installed plugins and their versions, by name (cp.delivery.plugins.installed_plugins)
    plugins = fields.List(fields.Nested(InstalledPluginSchema), dump_only=True)


def list_schema(item: type[Schema], name: str) -> type[Schema]:
    """``{"items": [...], "total": N}`` of ``item`` (for the OpenAPI spec)."""
    return type(name, (Schema,), {"items": fields.List(fields.Nested(item)), "total": fields.Integer()})


InstallationListSchema = list_schema(InstallationSchema, "InstallationListSchema")
AlertListSchema = list_schema(AlertSchema, "AlertListSchema")
JobFailureListSchema = list_schema(JobFailureSchema, "JobFailureListSchema")
