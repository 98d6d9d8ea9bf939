"""Marshmallow fields shared by every schema (agent and human API).

Each rule of the input is written once here and used by every schema: times (``UTCDateTime``),
numbers (``StrictFloat``, ``StrictInteger``, ``StrictBoolean``), patterns (``FullMatch``: the whole
value must match, a final newline included) and the installation id.
"""
from __future__ import annotations

from datetime import timezone

from marshmallow import ValidationError, fields, validate

from config import INSTANCE_ID_HELP, INSTANCE_ID_RE

from cp.timeutil import isoformat

TIME_RANGE_HELP = "Must be within years 1-9999 once converted to UTC."
TIME_DESCRIPTION = "ISO 8601 with an offset, within years 1-9999 once converted to UTC; returned in UTC."


class UTCDateTime(fields.AwareDateTime):
    """Dumps ``2026-02-11T02:00:00Z``; loads ISO 8601 with an offset only, converted to UTC.

    A time outside years 1-9999 once in UTC (``9999-12-31T23:59:59-14:00`` is in year 10000)
    is refused: Python, the database drivers and every page that shows the value would fail on
    it later."""

    default_error_messages = {"out_of_range": TIME_RANGE_HELP}

    def __init__(self, **kw):
        metadata = kw.pop("metadata", {})
        if not kw.get("dump_only"):
            metadata.setdefault("description", TIME_DESCRIPTION)
        super().__init__(metadata=metadata, **kw)

    def _serialize(self, value, attr, obj, **kwargs):
        return isoformat(value)

    def _deserialize(self, value, attr, data, **kwargs):
        aware = super()._deserialize(value, attr, data, **kwargs)
        try:
            return aware.astimezone(timezone.utc)
        except OverflowError:  # year 0 or 10000 in UTC
            raise self.make_error("out_of_range") from None


class FullMatch(validate.Regexp):
    """``validate.Regexp`` on the whole value: ``re.match`` with ``$`` lets a final newline
    through (``"acme-001\\n"``). The pattern keeps its ``^...$`` anchors for the OpenAPI
    document, where they mean the whole value."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self.error.format(input=value, regex=self.regex.pattern))
        return value


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
    return fields.String(validate=FullMatch(INSTANCE_ID_RE, error=INSTANCE_ID_HELP), **kw)


class QueryBoolean(fields.Boolean):
    """``true``/``false`` (also 1/0) in a query string."""

    truthy = {"true", "1", "yes"}
    falsy = {"false", "0", "no"}
