"""Schemas of the plugin marketplace's human API: the core release and rollout schemas
(``cp.api.rollout_schemas``) with ``plugin`` instead of ``channel``."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from cp.models import PLUGIN_REQUEST_STATUSES, ROLLOUT_STATUSES
from cp.delivery.plugins import MAX_REASON
from cp.delivery.releases import MAX_VERSION_LEN
from cp.agent_api.plugin_schemas import AgentPluginRequestSchema, plugin_field
from cp.api.rollout_schemas import (
    ReleaseCreateSchema,
    ReleaseItemSchema,
    ReleaseSchema,
    RolloutCreateSchema,
    RolloutDetailSchema,
    RolloutSchema,
    list_schema,
    version_field,
)
from cp.api.schemas import ListArgsSchema


class PluginReleaseCreateSchema(ReleaseCreateSchema):
    """``POST /api/plugins/releases``: a signed plugin release (no channel)."""

    class Meta:
        exclude = ("channel",)

    plugin = plugin_field(required=True)


class PluginReleaseArgsSchema(ListArgsSchema):
    plugin = fields.String(validate=validate.Length(max=128))
    version = fields.String(validate=validate.Length(max=MAX_VERSION_LEN))


class PluginReleaseSchema(ReleaseSchema):
    """A plugin release as created (``201``)."""

    class Meta:
        exclude = ("channel",)

    plugin = fields.String(dump_only=True)


class PluginReleaseItemSchema(ReleaseItemSchema):
    """A plugin release in the list: also its manifest and signature exactly as stored."""

    class Meta:
        exclude = ("channel",)

    plugin = fields.String(dump_only=True)


class PluginJobRefSchema(Schema):
    """The install job of an approved request."""

    id = fields.Integer(dump_only=True)
    status = fields.String(dump_only=True)
    version = fields.String(dump_only=True, attribute="release.version")


class PluginRequestSchema(AgentPluginRequestSchema):
    """A plugin request: what its agent sees, plus the installation, who decided and the job.
    ``reason`` is the agent's; ``decision_reason`` the admin's (the rejection reason).
    ``version`` null: the newest release."""

    instance_id = fields.String(dump_only=True, attribute="installation.instance_id")
    decided_by = fields.String(dump_only=True, allow_none=True)
    job = fields.Nested(PluginJobRefSchema, dump_only=True, allow_none=True)


class PluginRequestArgsSchema(ListArgsSchema):
    status = fields.String(validate=validate.OneOf(PLUGIN_REQUEST_STATUSES))
    plugin = fields.String(validate=validate.Length(max=128))
    instance_id = fields.String(validate=validate.Length(max=128))


class PluginRequestApproveSchema(Schema):
    """Optional note kept with the decision."""

    reason = fields.String(allow_none=True, validate=validate.Length(max=MAX_REASON))


class PluginRequestRejectSchema(Schema):
    """Why the request is rejected: the agent sees it in its request list."""

    reason = fields.String(required=True, validate=validate.Length(min=1, max=MAX_REASON))


class PluginRolloutCreateSchema(RolloutCreateSchema):
    """``POST /api/plugins/rollouts``: the core settings (batch_size, gates, allow_downgrade)
    with ``plugin`` and ``version`` instead of ``release`` and ``channel``."""

    class Meta:
        exclude = ("release", "channel")

    plugin = plugin_field(required=True)
    version = version_field(required=True)


class PluginRolloutArgsSchema(ListArgsSchema):
    status = fields.String(validate=validate.OneOf(ROLLOUT_STATUSES))
    plugin = fields.String(validate=validate.Length(max=128))


class PluginRolloutSchema(RolloutSchema):
    """A plugin rollout: as a core one, plus ``version`` (equal to ``release``)."""

    version = fields.String(dump_only=True)


class PluginRolloutDetailSchema(RolloutDetailSchema):
    version = fields.String(dump_only=True)


PluginReleaseListSchema = list_schema(PluginReleaseItemSchema, "PluginReleaseListSchema")
PluginRequestListSchema = list_schema(PluginRequestSchema, "PluginRequestListSchema")
PluginRolloutListSchema = list_schema(PluginRolloutSchema, "PluginRolloutListSchema")
