"""The benchmark fleet: instance ids, what each installation reports, the pre-signed bodies,
and the bulk-SQL seed of a fleet at scale (installations, alerts, job failures, history).

Installation ``i`` (1-based) is ``bench-<i:06d>`` and has row id ``i`` (fresh database).
Its heartbeat body is fixed for the whole run, so after one pass every heartbeat is a
steady-state one (the same alerts seen again, the same job failure counted again), which is
what a fleet sends minute after minute. The seed writes the same scalar fields the bodies
carry, so a heartbeat does not record history events either.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cp.signing import sign

HEALTH_CYCLE = ("ok",) * 90 + ("degraded",) * 7 + ("down",) * 3  # 3% down, 7% degraded
STALE_EVERY = 20  # 5% of the fleet last seen long ago (stale)
NONTARGET_EVERY = 1000  # 0.1% of the fleet on the "beta" channel (not a target of the stable rollout)
ALERTS_PER_INSTALLATION = 10  # 1,000,000 alerts at 100,000 installations
OPEN_ALERT_EVERY = 20  # 5% of the alerts open
FAILURES_PER_INSTALLATION = 2
EVENTS_PER_INSTALLATION = 3
SLO_SAMPLES_PER_INSTALLATION = 6
VERSION = "1.2.3"
NEW_VERSION = "1.3.0"

BODY_ALERTS = [
    {"level": "warning", "message": "Disk /var is 91% full (18.2 GB free of 200 GB)"},
    {"level": "info", "message": "TLS certificate for the public domain renews in 12 days"},
    {"level": "warning", "message": "Mail queue has 120 messages waiting for more than 10 minutes"},
]
BODY_JOB_FAILURES = [
    {"queue": "billing", "message": "Timeout after 30 s calling the payment gateway (invoice run 2026-11)"},
]


def instance_id(i: int) -> str:
    return f"bench-{i:06d}"


def health_of(i: int) -> str:
    return HEALTH_CYCLE[i % len(HEALTH_CYCLE)]


def channel_of(i: int) -> str:
    return "beta" if i % NONTARGET_EVERY == 0 else "stable"


def last_backup_at(now: datetime) -> datetime:
    return (now - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def heartbeat(i: int, now: datetime) -> dict:
    """What installation ``i`` reports: a few alerts, a job failure, SLO figures."""
    return {
        "instance_id": instance_id(i),
        "domain": f"erp{i:06d}.example.com",
        "client": f"Client {i:06d} SA",
        "version": VERSION,
        "release_channel": channel_of(i),
        "health": health_of(i),
        "backup_status": "ok",
        "last_backup_at": last_backup_at(now).isoformat().replace("+00:00", "Z"),
        "alerts": BODY_ALERTS,
        "job_failures": BODY_JOB_FAILURES,
        "slo_p95_ms": 300 + (i * 37) % 400,
        "slo_error_rate": round(((i * 13) % 50) / 10000, 4),
        "slo_webhook_retry_rate": round(((i * 7) % 30) / 1000, 3),
    }


def write_bodies(path: Path, fleet: int, secret: str, now: datetime | None = None) -> Path:
    """One line per installation: ``<hex signature>\\t<compact JSON body>`` (no timestamp header,
    so no replay nonce: each body may be sent many times, as a load generator must)."""
    now = now or datetime.now(timezone.utc)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(1, fleet + 1):
            body = json.dumps(heartbeat(i, now), separators=(",", ":"), ensure_ascii=False).encode()
            fh.write(f"{sign(secret, body)}\t{body.decode()}\n")
    return path


def read_bodies(path: Path) -> list[tuple[str, bytes]]:
    out = []
    with path.open("rb") as fh:
        for line in fh:
            sig, _, body = line.rstrip(b"\n").partition(b"\t")
            out.append((sig.decode(), body))
    return out


# --- bulk seed (PostgreSQL) ---------------------------------------------------------------------
def seed_sql(fleet: int) -> list[str]:
    """Statements that seed ``fleet`` installations and their history in bulk (generate_series).

    The fleet's last heartbeats are spread over the last 10 minutes (5% stale: hours ago); 10
    alerts per installation of which 5% open (``1,000,000`` at 100,000), 2 job failures each (10%
    open), 3 history events and 6 SLO points each.
    """
    n = int(fleet)
    health_case = "CASE WHEN g % 100 < 90 THEN 'ok' WHEN g % 100 < 97 THEN 'degraded' ELSE 'down' END"
    return [
        f"""
        INSERT INTO installations (id, instance_id, domain, client, version, release_channel, health,
            backup_status, last_backup_at, slo_p95_ms, slo_error_rate, slo_webhook_retry_rate,
            first_seen_at, last_seen_at, heartbeats_total)
        SELECT g, 'bench-' || lpad(g::text, 6, '0'), 'erp' || lpad(g::text, 6, '0') || '.example.com',
            'Client ' || lpad(g::text, 6, '0') || ' SA', '{VERSION}',
            CASE WHEN g % {NONTARGET_EVERY} = 0 THEN 'beta' ELSE 'stable' END,
            {health_case}, 'ok', date_trunc('hour', now() - interval '3 hours'),
            300 + (g * 37) % 400, ((g * 13) % 50) / 10000.0, ((g * 7) % 30) / 1000.0,
            now() - interval '90 days' + (g % 1000) * interval '1 hour',
            CASE WHEN g % {STALE_EVERY} = 0 THEN now() - interval '6 hours' - (g % 97) * interval '1 minute'
                 ELSE now() - (g % 600) * interval '1 second' END,
            1000 + g % 5000
        FROM generate_series(1, {n}) AS g
        """,
        "SELECT setval(pg_get_serial_sequence('installations', 'id'), (SELECT max(id) FROM installations))",
        f"""
        INSERT INTO alerts (installation_id, level, source, fingerprint, message, opened_at, last_seen_at,
            occurrences, acknowledged_at, acknowledged_by, resolved_at, resolved_by)
        SELECT (g - 1) % {n} + 1,
            (ARRAY['info', 'warning', 'critical'])[g % 3 + 1],
            (ARRAY['agent', 'agent', 'agent', 'slo', 'backup'])[g % 5 + 1],
            'agent:' || substr(md5(g::text), 1, 40),
            'Seeded alert #' || g || ': ' || (ARRAY['Disk /data is 85% full', 'Queue backlog over 500',
                'Replica lag above 30 s', 'Certificate expires soon', 'Cron job late'])[g % 5 + 1],
            now() - interval '30 days' + (g % 43200) * interval '1 minute',
            now() - interval '30 days' + (g % 43200) * interval '1 minute' + interval '10 minutes',
            1 + g % 20,
            CASE WHEN g % 7 = 0 THEN now() - interval '1 day' END, CASE WHEN g % 7 = 0 THEN 'ops' END,
            CASE WHEN g % {OPEN_ALERT_EVERY} = 0 THEN NULL
                 ELSE now() - interval '30 days' + (g % 43200) * interval '1 minute' + interval '1 hour' END,
            CASE WHEN g % {OPEN_ALERT_EVERY} = 0 THEN NULL ELSE 'heartbeat' END
        FROM generate_series(1, {n * ALERTS_PER_INSTALLATION}) AS g
        """,
        f"""
        INSERT INTO job_failures (installation_id, queue, message, fingerprint, first_seen_at, last_seen_at,
            occurrences, resolved_at, resolved_by)
        SELECT (g - 1) % {n} + 1, (ARRAY['billing', 'mail', 'sync', 'reports'])[g % 4 + 1],
            'Seeded failure #' || g, substr(md5('jf' || g::text), 1, 40),
            now() - interval '20 days' + (g % 28800) * interval '1 minute',
            now() - interval '20 days' + (g % 28800) * interval '1 minute' + interval '5 minutes',
            1 + g % 5,
            CASE WHEN g % 10 = 0 THEN NULL ELSE now() - interval '19 days' + (g % 28800) * interval '1 minute' END,
            CASE WHEN g % 10 = 0 THEN NULL ELSE 'ops' END
        FROM generate_series(1, {n * FAILURES_PER_INSTALLATION}) AS g
        """,
        f"""
        INSERT INTO installation_events (installation_id, field, old_value, new_value, at)
        SELECT (g - 1) % {n} + 1, (ARRAY['version', 'health', 'backup_status'])[g % 3 + 1],
            (ARRAY['1.2.2', 'degraded', 'running'])[g % 3 + 1], (ARRAY['{VERSION}', 'ok', 'ok'])[g % 3 + 1],
            now() - interval '60 days' + (g % 86400) * interval '1 minute'
        FROM generate_series(1, {n * EVENTS_PER_INSTALLATION}) AS g
        """,
        f"""
        INSERT INTO slo_samples (installation_id, bucket, slo_p95_ms, slo_error_rate, slo_webhook_retry_rate)
        SELECT i, date_trunc('hour', now()) - k * interval '5 minutes', 300 + (i * 37 + k) % 400,
            ((i * 13) % 50) / 10000.0, ((i * 7) % 30) / 1000.0
        FROM generate_series(1, {n}) AS i, generate_series(1, {SLO_SAMPLES_PER_INSTALLATION}) AS k
        """,
        "ANALYZE",
    ]


# the floor's table (bench/floor.py)
FLOOR_SCHEMA = """CREATE TABLE IF NOT EXISTS bench_floor (
    instance_id varchar(128) PRIMARY KEY, payload jsonb NOT NULL,
    last_seen_at timestamptz NOT NULL, heartbeats bigint NOT NULL)"""
