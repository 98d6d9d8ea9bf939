"""Flask CLI commands: ``seed-demo``, ``env-table`` (and the feature modules' own groups)."""
from __future__ import annotations

import random
import secrets
from datetime import timedelta

import click
from flask import current_app
from flask.cli import with_appcontext

from config import SETTINGS

from .agent_client import build_request
from .agent_api.signed import secret_for
from .timeutil import isoformat, utcnow

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


@click.command("seed-demo")
@click.option("--count", default=42, show_default=True, help="How many installations.")
@with_appcontext
def seed_demo(count: int) -> None:
    """Fill the database with a demo fleet through the real heartbeat endpoint."""
    client = current_app.test_client()
    ok = 0
    for beat in demo_heartbeats(count):
        secret = secret_for(beat["instance_id"])
        if not secret:
            raise click.ClickException("Set CONTROL_PLANE_AGENT_TOKEN so the demo agents can sign their heartbeats.")
        req = build_request("/api/heartbeats", beat, secret)
        resp = client.post(req.path, data=req.body, headers=req.headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        if resp.status_code != 200:
            raise click.ClickException(f"heartbeat of {beat['instance_id']} refused: {resp.status_code} {resp.get_data(as_text=True)}")
        ok += 1
    click.echo(f"seeded {ok} installations")


@click.command("env-table")
def env_table() -> None:
    """Print the Markdown table of every environment setting (for the README)."""
    click.echo("| variable | default | meaning |")
    click.echo("| --- | --- | --- |")
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(unset)"
        click.echo(f"| `{s.env}` | {default} | {s.help} |")


@click.command("gen-token")
def gen_token() -> None:
    """Print a random token suitable for a role or agent secret."""
    click.echo(secrets.token_urlsafe(32))


def init_app(app) -> None:
    app.cli.add_command(seed_demo)
    app.cli.add_command(env_table)
    app.cli.add_command(gen_token)
    for module in ("worker", "releases_cli"):
        try:
            mod = __import__(f"cp.{module}", fromlist=["init_cli"])
        except ModuleNotFoundError as exc:  # a feature module not written yet
            if exc.name != f"cp.{module}":
                raise
            continue
        mod.init_cli(app)
