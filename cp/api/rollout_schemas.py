"""Schemas of the release and rollout API (request bodies, query arguments, items)."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates

from cp.models import JOB_STATUSES, ROLLOUT_STATUSES
from cp.delivery.releases import MAX_VERSION_LEN, is_version
from cp.delivery.rollouts import MAX_BATCH_SIZE, MAX_SOAK_MINUTES
from cp.web.fields import StrictBoolean, StrictFloat, StrictInteger, UTCDateTime
from cp.api.schemas import ListArgsSchema

CHANNEL = validate.Length(min=1, max=64)  # as a heartbeat's release_channel


def version_field(**kw) -> fields.String:
    return fields.String(validate=validate.Length(min=1, max=MAX_VERSION_LEN), **kw)


class ReleaseCreateSchema(Schema):
    """``POST /api/releases``: a signed core release."""

    version = version_field(required=True)
    channel = fields.String(required=True, validate=CHANNEL)
    manifest = fields.Dict(required=True, keys=fields.String())
    signature = fields.String(required=True, validate=validate.Length(min=1, max=512))
    key_id = fields.String(required=True, validate=validate.Length(min=1, max=128))

    @validates("version")
    def _semver(self, value: str, **_kw) -> None:
        if not is_version(value):
            raise ValidationError("Not a semantic version (e.g. 1.3.0 or 2.0.0-rc.1).")


class ReleaseArgsSchema(ListArgsSchema):
    channel = fields.String(validate=validate.Length(max=64))
    version = fields.String(validate=validate.Length(max=MAX_VERSION_LEN))


class ReleaseSchema(Schema):
    """A release as created (``201``)."""

    id = fields.Integer(dump_only=True)
    version = fields.String(dump_only=True)
    channel = fields.String(dump_only=True, allow_none=True)
    key_id = fields.String(dump_only=True)
    created_at = UTCDateTime(dump_only=True)


class ReleaseItemSchema(ReleaseSchema):
    """A release in the list: also its manifest and signature exactly as stored."""

    manifest = fields.Dict(dump_only=True)
    signature = fields.String(dump_only=True)
    created_by = fields.String(dump_only=True, allow_none=True)


class AutoAdvanceSchema(Schema):
    success_ratio = StrictFloat(required=True, validate=validate.Range(min=0, max=1, min_inclusive=False))
    soak_minutes = StrictFloat(load_default=0, validate=validate.Range(min=0, max=MAX_SOAK_MINUTES))


class RolloutCreateSchema(Schema):
    """``POST /api/rollouts``. ``channel`` defaults to the release's channel."""

    release = version_field(required=True)
    channel = fields.String(validate=CHANNEL)
    batch_size = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_BATCH_SIZE))
    max_failures = StrictInteger(allow_none=True, validate=validate.Range(min=0))
    max_failure_ratio = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=1))
    auto_advance = fields.Nested(AutoAdvanceSchema, allow_none=True)
    allow_downgrade = StrictBoolean(load_default=False)


class RolloutAdvanceSchema(Schema):
    """``force``: advance although a job of the current batch failed. ``from_batch``: the batch
    you saw as current; an advance from it that already happened returns the rollout unchanged."""

    force = StrictBoolean(load_default=False)
    from_batch = StrictInteger(allow_none=True, validate=validate.Range(min=1))


class RolloutPauseSchema(Schema):
    reason = fields.String(allow_none=True, validate=validate.Length(max=500))


class RolloutArgsSchema(ListArgsSchema):
    status = fields.String(validate=validate.OneOf(ROLLOUT_STATUSES))
    channel = fields.String(validate=validate.Length(max=64))
    kind = fields.String(load_default="core", validate=validate.OneOf(("core", "plugin")))
    plugin = fields.String(validate=validate.Length(max=128))


def _job_counts_field() -> fields.Dict:
    return fields.Dict(keys=fields.String(validate=validate.OneOf(JOB_STATUSES)), values=fields.Integer(),
                       dump_only=True)


class BatchSchema(Schema):
    batch = fields.Integer(dump_only=True)
    opened = fields.Boolean(dump_only=True)
    jobs = _job_counts_field()


class RolloutSchema(Schema):
    id = fields.Integer(dump_only=True)
    kind = fields.String(dump_only=True)
    release = fields.String(dump_only=True)
    plugin = fields.String(dump_only=True, allow_none=True)
    channel = fields.String(dump_only=True, allow_none=True)
    batch_size = fields.Integer(dump_only=True)
    status = fields.String(dump_only=True)
    current_batch = fields.Integer(dump_only=True)
    batches = fields.Integer(dump_only=True)
    targets = fields.Integer(dump_only=True)
    skipped = fields.Integer(dump_only=True)
    max_failures = fields.Integer(dump_only=True, allow_none=True)
    max_failure_ratio = fields.Float(dump_only=True, allow_none=True)
    auto_advance = fields.Nested(AutoAdvanceSchema, dump_only=True, allow_none=True)
    allow_downgrade = fields.Boolean(dump_only=True)
    paused_reason = fields.String(dump_only=True, allow_none=True)
    batch_opened_at = UTCDateTime(dump_only=True, allow_none=True)
    created_at = UTCDateTime(dump_only=True)
    created_by = fields.String(dump_only=True, allow_none=True)
    completed_at = UTCDateTime(dump_only=True, allow_none=True)
    jobs = _job_counts_field()
    requeued = fields.Integer(dump_only=True)


class RolloutDetailSchema(RolloutSchema):
    per_batch = fields.List(fields.Nested(BatchSchema), dump_only=True)


def rollout_data(rollout, counts: dict | None = None, per_batch: list | None = None, **extra) -> dict:
    """The plain dict every rollout schema dumps."""
    data = {c: getattr(rollout, c) for c in (
        "id", "kind", "plugin", "channel", "batch_size", "status", "current_batch", "batches", "targets", "skipped",
        "max_failures", "max_failure_ratio", "allow_downgrade", "paused_reason", "batch_opened_at", "created_at",
        "created_by", "completed_at")}
    data["release"] = rollout.release.version
    data["auto_advance"] = None if rollout.auto_advance_success_ratio is None else {
        "success_ratio": rollout.auto_advance_success_ratio, "soak_minutes": rollout.auto_advance_soak_minutes or 0}
    if counts is not None:
        data["jobs"] = counts
    if per_batch is not None:
        data["per_batch"] = per_batch
    data.update(extra)
    return data


def list_schema(item: type[Schema], name: str) -> type[Schema]:
    return type(name, (Schema,), {"items": fields.List(fields.Nested(item)), "total": fields.Integer()})


ReleaseListSchema = list_schema(ReleaseItemSchema, "ReleaseListSchema")
RolloutListSchema = list_schema(RolloutSchema, "RolloutListSchema")
