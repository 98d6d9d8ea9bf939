"""A small fleet for the panel and view tests, sent as real signed heartbeats.

``send(beat)`` is any callable that posts one heartbeat payload (the Flask test client's
``agent.post`` or a live ``AgentClient``), so the same fleet seeds the in-process tests and
the browser tests against gunicorn.
"""
from __future__ import annotations

from typing import Callable

XSS = "<script>alert('xss')</script>"
XSS_ESCAPED = "&lt;script&gt;alert("

FLEET = [
    {"instance_id": "acme-001", "client": "Acme SA", "domain": "erp.acme.com", "version": "1.2.3",
     "release_channel": "stable", "health": "ok", "backup_status": "ok",
     "alerts": [{"level": "critical", "message": "Mail queue stuck for 2 hours"},
                {"level": "warning", "message": "Low disk space"}],
     "job_failures": [{"queue": "billing", "message": "Timeout talking to gateway"}],
     "slo_p95_ms": 420, "slo_error_rate": 0.002, "slo_webhook_retry_rate": 0.01},
    {"instance_id": "globex-001", "client": "Globex", "domain": "erp.globex.io", "version": "1.2.2",
     "release_channel": "stable", "health": "degraded", "backup_status": "running",
     "alerts": [{"level": "warning", "message": "Search index rebuild running long"}],
     "slo_p95_ms": 900, "slo_error_rate": 0.01, "slo_webhook_retry_rate": 0.02},
    {"instance_id": "initech-001", "client": "Initech", "domain": "erp.initech.net", "version": "1.3.0-beta.1",
     "release_channel": "beta", "health": "down", "backup_status": "failed",
     "alerts": [{"level": "critical", "message": "Database replica lag above 5 minutes"}],
     "job_failures": [{"queue": "mail", "message": "SMTP 451 temporary failure"}]},
    {"instance_id": "umbrella-001", "client": "Umbrella", "domain": "erp.umbrella.co", "version": "1.0.14",
     "release_channel": "lts", "health": "ok", "backup_status": "ok"},
    {"instance_id": "hooli-001", "client": "Hooli", "domain": "erp.hooli.xyz", "version": "1.2.3",
     "release_channel": "stable", "health": "ok", "backup_status": "ok"},
    # agent-supplied text that must be shown escaped everywhere
    {"instance_id": "xss-001", "client": XSS, "domain": "xss.example.com", "version": "1.2.3",
     "release_channel": "stable", "health": "ok", "backup_status": "ok",
     "alerts": [{"level": "critical", "message": f"Disk {XSS} full"}],
     "job_failures": [{"queue": XSS, "message": f"failed {XSS}"}]},
]


def seed(send: Callable[[dict], object]) -> list[str]:
    for beat in FLEET:
        send(beat)
    return [b["instance_id"] for b in FLEET]
