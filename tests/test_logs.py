"""The log lines: JSON (``cp.web.logs.JsonFormatter``) and text (``TextFormatter``, one line
per record whatever a client sends), and the logging module left as the process had it."""
from __future__ import annotations

import ast
import json
import logging
import re
import sys
import time

from cp.web.logs import JsonFormatter, TextFormatter
from tests.conftest import ROOT, LiveServer


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


# --- the text format: one record, one line ----------------------------------------------------
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
HOSTILE = "acme\n 2026-01-01 00:00:00,000Z INFO cp.access request forged=1\r\x1b[2K\u2028\x85\x00end"


def test_the_text_format_escapes_control_characters_in_the_message_and_every_field():
    record = _record(1_795_000_000.25, path="/x" + HOSTILE, instance_id=HOSTILE, status=200, note="a b=c")
    record.msg = "refused " + HOSTILE
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert "\u2028" not in line and "\x85" not in line
    assert LINE_START.match(line)
    assert "acme\\n 2026-01-01" in line and "\\x1b[2K\\u2028\\x85\\x00end" in line
    assert " status=200" in line and ' note="a b=c"' in line
    assert ' instance_id="acme\\n 2026-01-01 00:00:00,000Z INFO cp.access request forged=1' in line


def test_a_traceback_stays_under_its_record():
    try:
        raise ValueError("boom\nINFO forged")
    except ValueError:
        record = logging.LogRecord("cp", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = TextFormatter().format(record).split("\n")
    assert LINE_START.match(lines[0]) and len(lines) > 2
    assert all(line.startswith("  | ") for line in lines[1:])
    assert lines[-2:] == ["  | ValueError: boom", "  | INFO forged"]  # never at the start of a line


def test_hostile_paths_and_unsigned_instance_ids_cannot_forge_text_log_lines(make_app, capsys):
    app = make_app(CONTROL_PLANE_LOG_FORMAT="text", CONTROL_PLANE_LOG_LEVEL="INFO")
    client = app.test_client()
    client.get("/api/installations%0A2026-01-01%2000:00:00,000Z%20INFO%20cp.access%20forged")
    body = json.dumps({"instance_id": HOSTILE}).encode()
    resp = client.post("/api/heartbeats", data=body, headers={"Content-Type": "application/json",
                                                             "x-agent-signature": "00" * 32})
    assert resp.status_code == 401
    lines = capsys.readouterr().err.splitlines()
    assert any("/api/installations\\n2026-01-01" in line for line in lines)
    assert len(lines) >= 2 and all(LINE_START.match(line) for line in lines), lines


# --- no global switch of the logging module -------------------------------------------------
def test_the_code_sets_no_global_switch_of_the_logging_module():
    """``logging.logProcesses = False`` and the like change every logger of the process
    (gunicorn's ``[%(process)d]`` lines then fail with a TypeError)."""
    offenders = []
    for path in sorted((ROOT / "cp").rglob("*.py")) + [ROOT / "config.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id == "logging":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "logging" \
                    and node.func.attr in ("disable", "basicConfig", "setLoggerClass", "setLogRecordFactory"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders


def test_gunicorns_own_process_lines_log_under_the_app(env, app):
    """With the app loaded in the master (``--preload``), gunicorn's ``[%(process)d]`` lines of
    booting and exiting workers are written, not replaced by a logging error."""
    server = LiveServer({**env, "CONTROL_PLANE_LOG_FORMAT": "text"}, workers=1,
                        args=("--preload", "--log-level", "info")).start()
    try:
        deadline = time.monotonic() + 30
        while "Booting worker with pid" not in server.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, server.log_path.read_text(errors="replace")
            time.sleep(0.1)
    finally:
        server.stop()
    text = server.log_path.read_text(errors="replace")
    assert "Logging error" not in text and "TypeError" not in text, text
    assert re.search(r"\[(\d+)\] \[INFO\] Booting worker with pid: \1\n", text), text
    assert re.search(r"\[\d+\] \[INFO\] Worker exiting \(pid: \d+\)", text), text
