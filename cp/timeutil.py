"""Time in one place: every timestamp is timezone-aware UTC, rendered ISO 8601 with ``Z``.

Domain code calls ``utcnow()`` so tests can move the clock (``freeze`` / ``set_clock``).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

_clock: Callable[[], datetime] | None = None


def utcnow() -> datetime:
    if _clock is not None:
        return _clock()
    return datetime.now(timezone.utc)


def set_clock(clock: Callable[[], datetime] | None) -> None:
    """Replace the clock (tests only); ``None`` restores the real one."""
    global _clock
    _clock = clock


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def isoformat(value: datetime | None) -> str | None:
    """``2026-02-11T02:00:00Z`` (microseconds kept when present)."""
    value = as_utc(value)
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")
