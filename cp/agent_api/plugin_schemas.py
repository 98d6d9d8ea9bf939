"""Schemas of the agent's plugin endpoints (``/api/plugins/requests``, ``/requests/mine``,
``/next``, ``/report``): the update pair's schemas, the job also carrying ``plugin``."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from cp.web.parsing import DEFAULT_LIMIT, MAX_LIMIT
from cp.models import PLUGIN_REQUEST_STATUSES
from cp.delivery.plugins import MAX_REASON, PLUGIN_NAME_HELP, PLUGIN_NAME_RE
from cp.delivery.releases import MAX_VERSION_LEN
from cp.web.fields import FullMatch, StrictInteger, UTCDateTime
from cp.agent_api.schemas import AgentSchema
from cp.agent_api.update_schemas import UpdateJobSchema, UpdateNextSchema, UpdateReportSchema


def plugin_field(**kw) -> fields.String:
    """A plugin name: the one pattern, matched whole (agent and JSON API alike)."""
    return fields.String(validate=FullMatch(PLUGIN_NAME_RE, error=PLUGIN_NAME_HELP), **kw)


class PluginRequestCreateSchema(AgentSchema):
    """``{"instance_id", "plugin", "version"|null, "reason"}``; ``version`` null: the newest."""

    plugin = plugin_field(required=True)
    version = fields.String(allow_none=True, load_default=None, validate=validate.Length(min=1, max=MAX_VERSION_LEN))
    reason = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=MAX_REASON))


class PluginRequestsMineSchema(AgentSchema):
    """The agent's own requests: ``status`` filter, ``limit`` (default 50, max 500), ``offset``."""

    status = fields.String(allow_none=True, validate=validate.OneOf(PLUGIN_REQUEST_STATUSES))
    limit = StrictInteger(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT))
    offset = StrictInteger(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))


class AgentPluginRequestSchema(Schema):
    """A request as its agent sees it: ``decision_reason`` is why it was rejected (or the
    approval note); ``job_id`` the install job of an approved request."""

    id = fields.Integer(dump_only=True)
    plugin = fields.String(dump_only=True)
    version = fields.String(dump_only=True, allow_none=True)
    reason = fields.String(dump_only=True, allow_none=True)
    status = fields.String(dump_only=True)
    decision_reason = fields.String(dump_only=True, allow_none=True)
    decided_at = UTCDateTime(dump_only=True, allow_none=True)
    job_id = fields.Integer(dump_only=True, allow_none=True)
    created_at = UTCDateTime(dump_only=True)


class AgentPluginRequestListSchema(Schema):
    items = fields.List(fields.Nested(AgentPluginRequestSchema))
    total = fields.Integer()


class PluginNextSchema(UpdateNextSchema):
    """``{"instance_id"}``."""


class PluginReportSchema(UpdateReportSchema):
    """``{"instance_id", "job_id", "status", "message"}`` as for updates."""


class PluginJobSchema(UpdateJobSchema):
    """An update job's fields plus the plugin's name."""

    plugin = fields.String(dump_only=True, attribute="release.plugin")


class PluginNextResponseSchema(Schema):
    job = fields.Nested(PluginJobSchema, allow_none=True)


class PluginReportResponseSchema(PluginJobSchema):
    """The reported job, and the same object under ``job`` (as for updates)."""

    job = fields.Nested(PluginJobSchema, dump_only=True)
