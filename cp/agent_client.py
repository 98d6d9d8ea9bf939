"""Reference agent client: signs and sends what an installation's agent sends.

Library::

    client = AgentClient("https://cp.example.com", "acme-001", secret)
    client.heartbeat(version="1.2.3", health="ok", alerts=[{"level": "warning", "message": "Low disk"}])
    job = client.next_update()["job"]

Command line (``cp-agent --help``)::

    cp-agent heartbeat --url http://127.0.0.1:5000 --instance acme-001 --secret S --health ok
    cp-agent updates-next --url ... --instance ... --secret ...

Every request body is serialised once, signed over those exact bytes (``cp.signing``) and sent
with ``x-agent-timestamp`` (replay protection), always: a request without it could be replayed by
whoever saw it (docs/security.md). The timestamps a process sends are unique microseconds, so two
identical requests sent at once are two requests, not a replay. (``build_request`` can leave the
header out, for tests of a server's handling of agents that do not send it.)

A 503 means the server kept nothing of the request (its database was away, or a row stayed
locked past the lock timeout): ``AgentClient(..., retries=N)`` sends it again up to N times,
signed anew, after 0.25 s, 0.5 s, 1 s ... (at most 5 s); the command line retries twice.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from cp.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign


@dataclass
class SignedRequest:
    path: str
    body: bytes
    headers: dict[str, str]


_last_micros = 0
_micros_lock = threading.Lock()


def unique_timestamp() -> str:
    """Unix seconds with six decimals, strictly increasing within this process: two identical
    bodies signed at once still differ in what is signed (the server would refuse the second
    as a replay)."""
    global _last_micros
    with _micros_lock:
        _last_micros = max(time.time_ns() // 1000, _last_micros + 1)
        micros = _last_micros
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def build_request(path: str, payload: dict, secret: str, *, timestamp: bool = True,
                  now: float | None = None) -> SignedRequest:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    ts = None
    if timestamp:
        ts = f"{now:.6f}" if now is not None else unique_timestamp()
        headers[TIMESTAMP_HEADER] = ts
    headers[SIGNATURE_HEADER] = sign(secret, body, ts)
    return SignedRequest(path, body, headers)


RETRY_FIRST_SECONDS = 0.25
RETRY_MAX_SECONDS = 5.0


class AgentError(RuntimeError):
    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class AgentClient:
    def __init__(self, base_url: str, instance_id: str, secret: str, *, timeout: float = 10.0,
                 session: Any = None, retries: int = 0):
        self.base_url = base_url.rstrip("/")
        self.instance_id = instance_id
        self.secret = secret
        self.timeout = timeout
        self.session = session or requests.Session()
        self.retries = retries  # how many times a 503 (nothing of the request was kept) is sent again

    def post(self, path: str, payload: dict, *, raise_for_status: bool = True) -> tuple[int, Any]:
        for attempt in range(self.retries + 1):
            # signed anew each time: a fresh timestamp, so the retry is not taken for a replay
            req = build_request(path, {"instance_id": self.instance_id, **payload}, self.secret)
            resp = self.session.post(self.base_url + req.path, data=req.body, headers=req.headers,
                                     timeout=self.timeout)
            if resp.status_code != 503 or attempt == self.retries:
                break
            time.sleep(min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** attempt))
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        if raise_for_status and resp.status_code >= 400:
            raise AgentError(resp.status_code, body)
        return resp.status_code, body

    # --- the agent's calls --------------------------------------------------------------
    def heartbeat(self, **fields: Any) -> dict:
        return self.post("/api/heartbeats", fields)[1]

    def next_update(self) -> dict:
        return self.post("/api/updates/next", {})[1]

    def report_update(self, job_id: int, status: str, message: str | None = None) -> dict:
        return self.post("/api/updates/report", {"job_id": job_id, "status": status, "message": message})[1]

    def report_restore(self, verification_id: int, status: str, duration_s: float | None = None,
                       message: str | None = None) -> dict:
        return self.post("/api/restores/report", {"verification_id": verification_id, "status": status,
                                                  "duration_s": duration_s, "message": message})[1]

    def request_plugin(self, plugin: str, version: str | None = None, reason: str | None = None) -> dict:
        return self.post("/api/plugins/requests", {"plugin": plugin, "version": version, "reason": reason})[1]

    def plugin_requests(self, status: str | None = None) -> dict:
        """This installation's plugin requests and their decisions (a rejection's reason)."""
        return self.post("/api/plugins/requests/mine", {"status": status} if status else {})[1]

    def next_plugin(self) -> dict:
        return self.post("/api/plugins/next", {})[1]

    def report_plugin(self, job_id: int, status: str, message: str | None = None) -> dict:
        return self.post("/api/plugins/report", {"job_id": job_id, "status": status, "message": message})[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cp-agent", description="Reference control-plane agent client.")
    p.add_argument("--url", default=os.environ.get("CP_AGENT_URL", "http://127.0.0.1:5000"))
    p.add_argument("--instance", default=os.environ.get("CP_AGENT_INSTANCE"), required="CP_AGENT_INSTANCE" not in os.environ)
    p.add_argument("--secret", default=os.environ.get("CP_AGENT_SECRET"),
                   help="HMAC secret (or CP_AGENT_SECRET; prefer the variable: arguments show in ps)")
    sub = p.add_subparsers(dest="command", required=True)
    hb = sub.add_parser("heartbeat", help="send a heartbeat")
    for name in ("domain", "client", "version", "release-channel", "health", "backup-status", "last-backup-at"):
        hb.add_argument(f"--{name}")
    for name in ("slo-p95-ms", "slo-error-rate", "slo-webhook-retry-rate"):
        hb.add_argument(f"--{name}", type=float)
    hb.add_argument("--alert", action="append", default=[], metavar="LEVEL:MESSAGE")
    hb.add_argument("--job-failure", action="append", default=[], metavar="QUEUE:MESSAGE")
    sub.add_parser("updates-next", help="fetch the pending update job")
    ur = sub.add_parser("updates-report", help="report an update job")
    ur.add_argument("--job", type=int, required=True)
    ur.add_argument("--status", required=True, choices=["in_progress", "succeeded", "failed"])
    ur.add_argument("--message")
    rr = sub.add_parser("restore-report", help="report a restore verification")
    rr.add_argument("--verification", type=int, required=True)
    rr.add_argument("--status", required=True, choices=["passed", "failed"])
    rr.add_argument("--duration", type=float)
    rr.add_argument("--message")
    pr = sub.add_parser("plugin-request", help="ask for a plugin")
    pr.add_argument("--plugin", required=True)
    pr.add_argument("--version")
    pr.add_argument("--reason")
    rl = sub.add_parser("plugin-requests", help="list this installation's plugin requests and decisions")
    rl.add_argument("--status", choices=["pending", "approved", "rejected"])
    sub.add_parser("plugins-next", help="fetch the pending plugin job")
    pp = sub.add_parser("plugins-report", help="report a plugin job")
    pp.add_argument("--job", type=int, required=True)
    pp.add_argument("--status", required=True, choices=["in_progress", "succeeded", "failed"])
    pp.add_argument("--message")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.secret:
        print("cp-agent: --secret or CP_AGENT_SECRET is required", file=sys.stderr)
        return 2
    client = AgentClient(args.url, args.instance, args.secret, retries=2)  # a 503 kept nothing: send again
    try:
        if args.command == "heartbeat":
            fields: dict[str, Any] = {}
            for name in ("domain", "client", "version", "release_channel", "health", "backup_status",
                         "last_backup_at", "slo_p95_ms", "slo_error_rate", "slo_webhook_retry_rate"):
                value = getattr(args, name)
                if value is not None:
                    fields[name] = value
            fields["alerts"] = [dict(zip(("level", "message"), a.split(":", 1))) for a in args.alert]
            fields["job_failures"] = [dict(zip(("queue", "message"), j.split(":", 1))) for j in args.job_failure]
            out = client.heartbeat(**fields)
        elif args.command == "updates-next":
            out = client.next_update()
        elif args.command == "updates-report":
            out = client.report_update(args.job, args.status, args.message)
        elif args.command == "restore-report":
            out = client.report_restore(args.verification, args.status, args.duration, args.message)
        elif args.command == "plugin-request":
            out = client.request_plugin(args.plugin, args.version, args.reason)
        elif args.command == "plugin-requests":
            out = client.plugin_requests(args.status)
        elif args.command == "plugins-next":
            out = client.next_plugin()
        else:
            out = client.report_plugin(args.job, args.status, args.message)
    except AgentError as exc:
        print(json.dumps(exc.body, indent=2), file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
