"""A demo that shows the product: ``flask --app cp demo`` (what ``make run`` serves).

Everything goes through the real code paths, as agents and people would send it: the agents'
signed requests (heartbeats, job and restore reports, plugin requests) and the people's JSON API
with the role tokens (releases signed with a release key, a rollout, plugin decisions, restore
schedules, alert triage), so every write is validated, applied by the domain and audited. What it
leaves behind fills every screen of the panel:

- a fleet (``seed-demo`` alone seeds only this): installations with alerts and job failures;
- signed core releases and a rollout in progress: batch 1 done, batch 2 open with a failed job
  and one in progress;
- plugin releases, a pending plugin request, an approved one (installed) and a rejected one, and
  a plugin rollout to the plugin's next version;
- restore verifications scheduled, passed and failed (the failure opens a critical alert);
- alerts acknowledged and resolved by people, the audit entries of all of the above, and, with
  ``CONTROL_PLANE_ALERT_WEBHOOK_URL`` set, the alerts' webhook deliveries in the outbox.

The release key: ``--key`` names an Ed25519 private key (``flask --app cp keys generate``) whose
public key is in ``CONTROL_PLANE_RELEASE_KEYS`` under the key file's name (``demo.key``: ``demo``).
"""
from __future__ import annotations

import random
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from cp.agent_api.signed import secret_for
from cp.agent_client import build_request
from cp.delivery.cli import load_private_key
from cp.delivery.releases import sign_manifest
from cp.timeutil import isoformat, utcnow

DEMO_CLIENTS = [
    ("Acme SA", "acme.com"), ("Globex", "globex.io"), ("Initech", "initech.net"), ("Umbrella", "umbrella.co"),
    ("Hooli", "hooli.xyz"), ("Stark Industries", "stark.com"), ("Wayne Enterprises", "wayne.com"),
    ("Wonka", "wonka.ch"), ("Soylent", "soylent.org"), ("Tyrell", "tyrell.ai"), ("Cyberdyne", "cyberdyne.us"),
    ("Vandelay Industries", "vandelay.com"), ("Oceanic", "oceanic.aero"), ("Massive Dynamic", "massive.dev"),
]
DEMO_ALERTS = [("warning", "Low disk space on /var (8% free)"), ("critical", "Mail queue stuck for 2 hours"),
               ("info", "Certificate renews in 20 days"), ("warning", "Search index rebuild running long"),
               ("critical", "Database replica lag above 5 minutes")]
DEMO_FAILURES = [("billing", "Timeout talking to payment gateway"), ("mail", "SMTP 451 temporary failure"),
                 ("reports", "Out of memory rendering PDF"), ("sync", "Remote returned HTTP 502")]


def demo_heartbeats(count: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    now = utcnow()
    beats = []
    for i in range(count):
        client, domain = DEMO_CLIENTS[i % len(DEMO_CLIENTS)]
        n = i // len(DEMO_CLIENTS)
        channel = rng.choices(["stable", "beta", "lts"], weights=[6, 2, 2])[0]
        version = {"stable": ["1.2.3", "1.2.2", "1.1.9"], "beta": ["1.3.0-beta.2", "1.3.0-beta.1"],
                   "lts": ["1.0.14", "1.0.13"]}[channel][rng.randrange(2)]
        health = rng.choices(["ok", "degraded", "down"], weights=[8, 2, 1])[0]
        backup = rng.choices(["ok", "running", "failed", "missing"], weights=[8, 1, 1, 1])[0]
        beat = {
            "instance_id": f"{domain.split('.')[0]}-{n + 1:03d}",
            "domain": f"erp{n + 1}.{domain}" if n else f"erp.{domain}",
            "client": client,
            "version": version,
            "release_channel": channel,
            "health": health,
            "backup_status": backup,
            "last_backup_at": isoformat(now - timedelta(hours=rng.choice([2, 5, 12, 30]))),
            "alerts": [{"level": lvl, "message": msg} for lvl, msg in rng.sample(DEMO_ALERTS, rng.choice([0, 0, 1, 2]))],
            "job_failures": [{"queue": q, "message": m} for q, m in rng.sample(DEMO_FAILURES, rng.choice([0, 0, 1]))],
            "slo_p95_ms": round(rng.uniform(120, 1400), 1),
            "slo_error_rate": round(rng.uniform(0, 0.03), 4),
            "slo_webhook_retry_rate": round(rng.uniform(0, 0.08), 4),
        }
        beats.append(beat)
    return beats


class DemoClient:
    """The app's own HTTP interface in-process (``test_client``): agents sign their bodies, people
    send their role's bearer token. A refused request stops the demo with the answer."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()
        settings = app.config["CP_SETTINGS"]
        self.tokens = {"ops": settings.ops_token, "admin": settings.admin_token}

    def _bearer(self, role: str) -> dict:
        if role not in self.tokens:  # a person's token, issued by ``seed_people``
            return {"Authorization": f"Bearer {role}"}
        if not self.tokens[role]:
            raise click.ClickException(f"Set CONTROL_PLANE_{role.upper()}_TOKEN: the demo acts as {role}.")
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def _send(self, method: str, path: str, **kw):
        """One request in its own app context: a command runs inside one, and a request would
        otherwise share its ``g`` (the caller's role) with the requests before it."""
        with self.app.app_context():
            return self.client.open(path, method=method, environ_base={"REMOTE_ADDR": "127.0.0.1"}, **kw)

    def _check(self, resp, what: str, ok: tuple[int, ...] = (200, 201)):
        if resp.status_code not in ok:
            raise click.ClickException(f"{what} refused: {resp.status_code} {resp.get_data(as_text=True)[:500]}")
        return resp.get_json()

    def agent(self, path: str, payload: dict) -> dict:
        secret = secret_for(payload["instance_id"])
        if not secret:
            raise click.ClickException("Set CONTROL_PLANE_AGENT_TOKEN so the demo agents can sign their requests.")
        req = build_request(path, payload, secret)
        resp = self._send("POST", req.path, data=req.body, headers=req.headers)
        return self._check(resp, f"{path} of {payload['instance_id']}")

    def person(self, role: str, path: str, body: dict | None = None, method: str = "POST") -> dict:
        resp = self._send(method, path, json=body or {}, headers=self._bearer(role))
        return self._check(resp, f"{path} ({role})")

    def read(self, path: str) -> dict:
        resp = self._send("GET", path, headers=self._bearer("admin"))
        return self._check(resp, path)


def seed_fleet(demo: DemoClient, count: int) -> list[dict]:
    beats = demo_heartbeats(count)
    for beat in beats:
        demo.agent("/api/heartbeats", beat)
    return beats


def _manifest(version: str, plugin: str | None = None) -> dict:
    name = plugin or "erp"
    manifest = {"version": version, "artifact": f"https://downloads.example.com/{name}-{version}.tar.gz",
                "sha256": random.Random(f"{name}{version}").randbytes(32).hex(),
                "notes": f"{name} {version}: fixes and improvements"}
    if plugin:
        manifest["plugin"] = plugin
    return manifest


def seed_delivery(demo: DemoClient, beats: list[dict], key_file: Path) -> dict:
    """Releases, a core rollout in progress, plugins and their requests and rollout."""
    key, key_id = load_private_key(key_file), key_file.stem

    def signed(manifest: dict) -> dict:
        return {"manifest": manifest, "signature": sign_manifest(key, manifest), "key_id": key_id}

    for version in ("1.2.3", "1.3.0"):
        demo.person("admin", "/api/releases", {"version": version, "channel": "stable", **signed(_manifest(version))})
    stable = [b["instance_id"] for b in beats if b["release_channel"] == "stable"]
    rollout = demo.person("admin", "/api/rollouts", {"release": "1.3.0", "channel": "stable", "batch_size": 3})

    def next_job(iid: str) -> dict | None:
        return demo.agent("/api/updates/next", {"instance_id": iid})["job"]

    def report(iid: str, job: dict, status: str, message: str) -> None:
        demo.agent("/api/updates/report", {"instance_id": iid, "job_id": job["id"], "status": status,
                                           "message": message})

    # batch 1: every job fetched and installed; then batch 2 opens
    waiting = list(stable)
    for iid in list(waiting):
        job = next_job(iid)
        if job:
            waiting.remove(iid)
            report(iid, job, "succeeded", "upgraded to 1.3.0 in 48 s")
    demo.person("admin", f"/api/rollouts/{rollout['id']}/advance", {"from_batch": 1})
    # batch 2: one job failed, one under way
    outcomes = iter([("failed", "migration 0042 failed: column \"vat_code\" already exists"),
                     ("in_progress", "downloading 1.3.0")])
    for iid in waiting:
        job = next_job(iid)
        if job:
            status, message = next(outcomes, (None, None))
            if status is None:
                break
            report(iid, job, status, message)

    # plugins: two releases, requests decided three ways, a rollout to the next version
    for version in ("2.0.0", "2.1.0"):
        demo.person("admin", "/api/plugins/releases",
                    {"plugin": "payments", "version": version, **signed(_manifest(version, "payments"))})
    asking = [b["instance_id"] for b in beats[:3]]
    requests = [demo.agent("/api/plugins/requests", {"instance_id": iid, "plugin": "payments", "version": "2.0.0",
                                                     "reason": reason})
                for iid, reason in zip(asking, ("Card payments for the web shop", "Customer asked for SEPA",
                                                "Evaluating"))]
    demo.person("admin", f"/api/plugins/requests/{requests[0]['id']}/approve", {"reason": "Licensed"})
    demo.person("admin", f"/api/plugins/requests/{requests[2]['id']}/reject", {"reason": "No licence for it yet"})
    job = demo.agent("/api/plugins/next", {"instance_id": asking[0]})["job"]
    demo.agent("/api/plugins/report", {"instance_id": asking[0], "job_id": job["id"], "status": "succeeded",
                                       "message": "payments 2.0.0 installed"})
    demo.person("admin", "/api/plugins/rollouts", {"plugin": "payments", "version": "2.1.0", "batch_size": 1})
    return rollout


def seed_operations(demo: DemoClient, beats: list[dict]) -> None:
    """Restore verifications (scheduled, passed, failed) and alert triage by people."""
    ids = [b["instance_id"] for b in beats[3:6]]
    items = demo.person("admin", "/api/restores/schedule", {"instance_ids": ids, "backup_id": "nightly"})["items"]
    demo.agent("/api/restores/report", {"instance_id": items[0]["instance_id"], "verification_id": items[0]["id"],
                                        "status": "passed", "duration_s": 182.5,
                                        "message": "restored 14 GB; row counts and checksums match"})
    demo.agent("/api/restores/report", {"instance_id": items[1]["instance_id"], "verification_id": items[1]["id"],
                                        "status": "failed", "duration_s": 35.0,
                                        "message": "pg_restore: relation \"invoices\" does not exist"})
    ana = seed_people(demo)
    alerts = demo.read("/api/alerts?status=open&limit=4")["items"]
    for alert in alerts[:2]:
        demo.person(ana, f"/api/alerts/{alert['id']}/acknowledge")
    for alert in alerts[2:3]:
        demo.person("ops", f"/api/alerts/{alert['id']}/resolve")


def seed_people(demo: DemoClient) -> str:
    """Named people beside the role tokens (one deactivated), and a personal token for the ops
    person, which the triage then uses so the alerts and the audit log name her."""
    ana = demo.person("admin", "/api/users", {"email": "ana@vendor.example", "name": "Ana Ops", "role": "ops"})
    demo.person("admin", "/api/users", {"email": "sam@vendor.example", "name": "Sam Support", "role": "support"})
    left = demo.person("admin", "/api/users", {"email": "lee@vendor.example", "name": "Lee Left", "role": "support"})
    demo.person("admin", f"/api/users/{left['id']}", {"active": False}, method="PATCH")
    return demo.person("admin", f"/api/users/{ana['id']}/tokens", {"name": "demo triage"})["token"]


@click.command("seed-demo")
@click.option("--count", default=42, show_default=True, help="How many installations.")
@with_appcontext
def seed_demo(count: int) -> None:
    """Fill the database with a demo fleet (only) through the real heartbeat endpoint."""
    demo = DemoClient(current_app)
    click.echo(f"seeded {len(seed_fleet(demo, count))} installations")


@click.command("demo")
@click.option("--count", default=42, show_default=True, help="How many installations.")
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Ed25519 private key that signs the demo releases; its public key must be in "
                   "CONTROL_PLANE_RELEASE_KEYS under the file's name (demo.key: demo).")
@with_appcontext
def demo_command(count: int, key_file: Path) -> None:
    """Seed a fleet, releases, a rollout in progress, plugins, restores and triage (see cp.demo)."""
    demo = DemoClient(current_app)
    beats = seed_fleet(demo, count)
    if demo.read("/api/releases?limit=1")["total"]:
        click.echo(f"seeded {len(beats)} installations (releases and the rest were seeded before)")
        return
    rollout = seed_delivery(demo, beats, key_file)
    seed_operations(demo, beats)
    click.echo(f"seeded {len(beats)} installations, releases 1.2.3 and 1.3.0 (rollout {rollout['id']} in "
               f"progress), plugin payments, restore verifications and triage")


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the http.server name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args):  # quiet
        pass


@click.command("demo-webhook-sink")
@click.option("--port", default=5001, show_default=True)
def webhook_sink(port: int) -> None:
    """Accept every webhook POST on 127.0.0.1 (answer 204): where the demo's alerts are delivered."""
    ThreadingHTTPServer(("127.0.0.1", port), _Sink).serve_forever()


def init_cli(app) -> None:
    app.cli.add_command(seed_demo)
    app.cli.add_command(demo_command)
    app.cli.add_command(webhook_sink)
