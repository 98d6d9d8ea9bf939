"""Schemas of the agent's update pair (``/api/updates/next``, ``/api/updates/report``)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from cp.delivery.rollouts import REPORT_STATUSES
from cp.web.fields import StrictInteger
from cp.agent_api.schemas import MAX_MESSAGE, AgentSchema


class UpdateNextSchema(AgentSchema):
    """``{"instance_id"}``."""


class UpdateReportSchema(AgentSchema):
    job_id = StrictInteger(required=True, validate=validate.Range(min=1))
    status = fields.String(required=True, validate=validate.OneOf(REPORT_STATUSES))
    message = fields.String(allow_none=True, validate=validate.Length(max=MAX_MESSAGE))


class UpdateJobSchema(Schema):
    """A job as the agent sees it: the release's manifest, signature and key id exactly as
    published, so the agent verifies the signature itself before installing."""

    id = fields.Integer(dump_only=True)
    rollout_id = fields.Integer(dump_only=True, allow_none=True)
    status = fields.String(dump_only=True)
    version = fields.String(dump_only=True, attribute="release.version")
    manifest = fields.Dict(dump_only=True, attribute="release.manifest")
    signature = fields.String(dump_only=True, attribute="release.signature")
    key_id = fields.String(dump_only=True, attribute="release.key_id")
    message = fields.String(dump_only=True, allow_none=True)


class UpdateNextResponseSchema(Schema):
    job = fields.Nested(UpdateJobSchema, allow_none=True)


class UpdateReportResponseSchema(UpdateJobSchema):
    """The reported job, and the same object under ``job`` (the shape ``next`` answers with)."""

    job = fields.Nested(UpdateJobSchema, dump_only=True)
