"""Structured logging: one JSON object per line (or plain text), one line per request.

Request lines carry method, path, status, duration and the caller's address; never headers,
bodies, tokens or query strings (a ``next=`` or token could ride there).
"""
from __future__ import annotations

import json
import logging
import sys
import time

from flask import g, request

RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    _second: tuple[int, str] = (-1, "")  # the last second formatted (one access line per request)

    def _timestamp(self, created: float) -> str:
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self._timestamp(record.created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``<time>Z LEVEL logger message key=value ...`` for people reading a terminal."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items()
                          if k not in RESERVED and not k.startswith("_"))
        return f"{line} {extras}" if extras else line


ACCESS = logging.getLogger("cp.access")
UNLOGGED_PATHS = ("/healthz",)


def log_request(method: str, path: str, status: int, started: float, remote: str | None, role: str | None) -> None:
    """The one access line of a request (``started``: its ``time.perf_counter()``)."""
    if path not in UNLOGGED_PATHS:
        ACCESS.info("request", extra={
            "method": method, "path": path[:200], "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2), "remote": remote, "role": role,
        })


def init_app(app) -> None:
    settings = app.config["CP_SETTINGS"]
    # Neither format shows the caller's file and line, thread or process: not collecting them
    # makes every record cheaper (the logging HOWTO's "Optimization"; one line per request).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)sZ %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("cp")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    root.propagate = False
    app.logger.handlers[:] = [handler]
    app.logger.setLevel(settings.log_level)
    app.logger.propagate = False

    @app.before_request
    def _start_timer():
        g.cp_started = time.perf_counter()

    @app.after_request
    def _log_request(response):
        started = g.get("cp_started")
        if started is not None:
            log_request(request.method, request.path, response.status_code, started, request.remote_addr,
                        g.get("cp_role"))
        return response
