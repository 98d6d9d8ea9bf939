"""The JSON log line (``cp.web.logs.JsonFormatter``)."""
from __future__ import annotations

import json
import logging

from cp.web.logs import JsonFormatter


def _record(created: float, **extra) -> logging.LogRecord:
    record = logging.LogRecord("cp.access", logging.INFO, __file__, 1, "request", (), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    record.__dict__.update(extra)
    return record


def test_each_line_carries_its_own_utc_time_to_the_millisecond():
    fmt = JsonFormatter()
    first = json.loads(fmt.format(_record(1_795_000_000.25, status=200)))
    same_second = json.loads(fmt.format(_record(1_795_000_000.75)))
    next_day = json.loads(fmt.format(_record(1_795_086_400.5)))
    assert first["ts"] == "2026-11-18T11:06:40.250Z"
    assert same_second["ts"] == "2026-11-18T11:06:40.750Z"
    assert next_day["ts"] == "2026-11-19T11:06:40.500Z"
    assert first["status"] == 200 and first["msg"] == "request" and first["logger"] == "cp.access"
