"""Marshmallow fields shared by every schema (agent and human API)."""
from __future__ import annotations

from marshmallow import fields, validate

from config import INSTANCE_ID_RE

from cp.timeutil import isoformat


class UTCDateTime(fields.DateTime):
    """Dumps ``2026-02-11T02:00:00Z``; loads ISO 8601 with an offset only."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._aware = fields.AwareDateTime()

    def _serialize(self, value, attr, obj, **kwargs):
        return isoformat(value)

    def _deserialize(self, value, attr, data, **kwargs):
        return self._aware._deserialize(value, attr, data, **kwargs)


class StrictFloat(fields.Float):
    """A JSON number only: no strings, no booleans, no NaN/Infinity."""

    def _validated(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictInteger(fields.Integer):
    """A JSON integer only: no strings, no booleans, no floats."""

    def __init__(self, **kw):
        super().__init__(strict=True, **kw)

    def _validated(self, value):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictBoolean(fields.Boolean):
    truthy = {True}
    falsy = {False}


def instance_id_field(**kw) -> fields.String:
    kw.setdefault("required", True)
    return fields.String(
        validate=validate.Regexp(INSTANCE_ID_RE, error="Must be 1-128 characters of [A-Za-z0-9._-]."), **kw)


class QueryBoolean(fields.Boolean):
    """``true``/``false`` (also 1/0) in a query string."""

    truthy = {"true", "1", "yes"}
    falsy = {"false", "0", "no"}
