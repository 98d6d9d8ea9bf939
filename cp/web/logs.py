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


# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators: each would let a
# logged value start a line of its own (or rewrite the terminal) in the text format
_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                         0x2028: "\\u2028", 0x2029: "\\u2029", ord("\\"): "\\\\"})
_NEEDS_QUOTES = frozenset(' "=')


def escape_text(value: object) -> str:
    """``value`` on one line: control characters (and backslashes) written as escapes."""
    return str(value).translate(_CONTROL_ESCAPES)


def _text_value(value: object) -> str:
    text = escape_text(value)
    if not text or _NEEDS_QUOTES.intersection(text):  # a value cannot pose as another key=value
        return '"' + text.replace('"', '\\"') + '"'
    return text


class TextFormatter(logging.Formatter):
    """``<time>Z LEVEL logger message key=value ...`` for people reading a terminal.

    One record is one line: the message and every value are escaped (``escape_text``) and
    values with a space, quote or ``=`` are quoted, so nothing a client sends (a path, an
    unsigned ``instance_id``) can forge a line or a field. A traceback follows on lines that
    each start with ``  | ``."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{self.formatTime(record)}Z", record.levelname, record.name, escape_text(record.getMessage())]
        parts += [f"{key}={_text_value(value)}" for key, value in record.__dict__.items()
                  if key not in RESERVED and not key.startswith("_")]
        line = " ".join(parts)
        if record.exc_info:
            line += "".join("\n  | " + escape_text(tb_line) for tb_line in
                            self.formatException(record.exc_info).splitlines())
        return line


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
    # No global switch of the logging module is touched (``logging.logProcesses`` and the like
    # belong to the whole process: gunicorn's own lines use ``%(process)d``).
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
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
