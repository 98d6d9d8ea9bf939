"""Admin list filters that Flask-Admin cannot scaffold on its own.

Flask-Admin does not know the ``UTCDateTime`` TypeDecorator and offers a dozen string
operators per text column; these filters are the ones people use, each one a cheap indexed
condition: a value out of a fixed list, an exact text, open/resolved, yes/no, stale/fresh,
an installation by its instance id (a sub-select, never a join), and UTC date ranges.

Every filter validates its value (an invalid one is ignored with a flash message by
Flask-Admin) and is usable by any screen: ``column_filters = [ChoiceFilter(Model.col, ...)]``.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from flask_admin.contrib.sqla.filters import BaseSQLAFilter
from sqlalchemy import select

from cp.fleet import queries as fleet
from cp.models import Installation

DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def parse_utc(value: str) -> datetime:
    """``2026-02-11 02:00:00`` (or without seconds, or a date) read as UTC."""
    value = value.strip()
    for fmt in DATETIME_FORMATS:
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    raise ValueError(f"not a date/time: {value!r}")


class _Filter(BaseSQLAFilter):
    op = "equals"

    def operation(self) -> str:
        return self.op

    def validate(self, value: Any) -> bool:
        try:
            self.clean(value)
        except (ValueError, TypeError):
            return False
        return True


class ChoiceFilter(_Filter):
    """``column = value`` where value is one of ``choices`` (a drop-down)."""

    def __init__(self, column, name: str, choices: Iterable[str]):
        self.choices = tuple(choices)
        super().__init__(column, name, options=[(c, c) for c in self.choices])

    def clean(self, value: str) -> str:
        if value not in self.choices:
            raise ValueError(value)
        return value

    def apply(self, query, value, alias=None):
        return query.filter(self.get_column(alias) == value)


class TextEqualFilter(_Filter):
    """``column = value`` (exact, so the column's index is used)."""

    def __init__(self, column, name: str, max_length: int = 255):
        self.max_length = max_length
        super().__init__(column, name)

    def clean(self, value: str) -> str:
        value = value.strip()
        if not value or len(value) > self.max_length:
            raise ValueError(value)
        return value

    def apply(self, query, value, alias=None):
        return query.filter(self.get_column(alias) == value)


class NullStatusFilter(_Filter):
    """Two states of a nullable timestamp: ``open`` (NULL) / ``resolved`` (set)."""

    op = "is"

    def __init__(self, column, name: str, null_label: str = "open", set_label: str = "resolved"):
        self.null_label, self.set_label = null_label, set_label
        super().__init__(column, name, options=[(null_label, null_label), (set_label, set_label)])

    def clean(self, value: str) -> bool:
        if value not in (self.null_label, self.set_label):
            raise ValueError(value)
        return value == self.set_label

    def apply(self, query, value, alias=None):
        col = self.get_column(alias)
        return query.filter(col.is_not(None) if value else col.is_(None))


class YesNoSetFilter(NullStatusFilter):
    """``yes``: the timestamp is set (e.g. acknowledged); ``no``: it is not."""

    def __init__(self, column, name: str):
        super().__init__(column, name, null_label="no", set_label="yes")


class StaleFilter(_Filter):
    """Installations whose last heartbeat is older than ``CONTROL_PLANE_STALE_AFTER_SECONDS``."""

    op = "is"

    def __init__(self, column=Installation.last_seen_at, name: str = "Stale"):
        super().__init__(column, name, options=[("yes", "yes"), ("no", "no")])

    def clean(self, value: str) -> bool:
        if value not in ("yes", "no"):
            raise ValueError(value)
        return value == "yes"

    def apply(self, query, value, alias=None):
        return query.filter(*fleet.installation_filters(stale=value))


class InstallationFilter(_Filter):
    """Rows of one installation, by its ``instance_id`` (a sub-select on the unique index)."""

    def __init__(self, column, name: str = "Instance id"):
        super().__init__(column, name)

    def clean(self, value: str) -> str:
        value = value.strip()
        if not value or len(value) > 128:
            raise ValueError(value)
        return value

    def apply(self, query, value, alias=None):
        return query.filter(self.get_column(alias).in_(
            select(Installation.id).where(Installation.instance_id == value)))


class DateTimeBetweenFilter(_Filter):
    """``start to end`` (UTC, inclusive), with Flask-Admin's date-range picker."""

    op = "between"

    def __init__(self, column, name: str):
        super().__init__(column, name, data_type="datetimerangepicker")

    def clean(self, value: str) -> tuple[datetime, datetime]:
        parts = value.split(" to ")
        if len(parts) != 2:
            raise ValueError(value)
        start, end = parse_utc(parts[0]), parse_utc(parts[1])
        if start > end:
            raise ValueError(value)
        return start, end

    def apply(self, query, value, alias=None):
        start, end = value
        return query.filter(self.get_column(alias).between(start, end))


class DateTimeAfterFilter(_Filter):
    op = "after"

    def __init__(self, column, name: str):
        super().__init__(column, name, data_type="datetimepicker")

    def clean(self, value: str) -> datetime:
        return parse_utc(value)

    def apply(self, query, value, alias=None):
        return query.filter(self.get_column(alias) >= value)


class DateTimeBeforeFilter(DateTimeAfterFilter):
    op = "before"

    def apply(self, query, value, alias=None):
        return query.filter(self.get_column(alias) < value)


def date_filters(column, name: str) -> list[_Filter]:
    """Between / after / before filters of one UTC timestamp column."""
    return [DateTimeBetweenFilter(column, name), DateTimeAfterFilter(column, name),
            DateTimeBeforeFilter(column, name)]
