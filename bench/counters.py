"""The exact counters at scale: the reads that show them, on 1,000,000 alerts and a
100,000-target rollout, against the COUNT(*) they replace.

One run: a scratch PostgreSQL database, migrated; the bench fleet seeded in bulk
(``bench.fleet.seed_sql``: 100,000 installations, 1,000,000 alerts) with 30% of the alerts
reopened (about 300,000 open); a release published and a rollout created over the stable
channel through the API (99,900 targets, batches of 1,000), its first 30 batches finished
set-based (10% failed) and batch 31 in progress. Then, in the service in-process
(``app.test_client()``, as ``bench.serverside``):

1. the reads (``GET /api/alerts?status=open``, ``GET /api/rollouts/<id>``, the panel's dashboard
   and rollout screens) and the COUNT(*) each one used to run, timed in SQL;
2. the same reads after churn: ``--churn`` single-row changes of jobs and alerts, each its own
   statement (as agents and people make them), so each leaves its own counter rows until the
   worker's sweep folds them: the worst case between two sweeps;
3. the compaction (``cp.counters.compact``) and the reads after it;
4. the counters checked against COUNT(*) (exact, or the run fails).

    python -m bench.counters [--fleet 100000] [--churn 20000] [--repeat 15] [--pg DSN]
"""
from __future__ import annotations

import base64
import json
import sys
import time

import psycopg

from bench import fleet as bf
from bench import serverside
from bench.run import vacuum
from bench.scratch import execute, fmt_table, one, parser, scratch_database, timed_sql

TARGET_MS = 50.0
BATCH_SIZE = 1000
OPEN_SHARE_TENTHS = 3  # alerts reopened: id % 10 < 3


def log(msg: str) -> None:
    print(f"[counters] {msg}", file=sys.stderr, flush=True)


def create_rollout(client, env: dict, release_key) -> tuple[int, float]:
    admin = {"Authorization": f"Bearer {env['CONTROL_PLANE_ADMIN_TOKEN']}"}
    manifest = {"version": bf.NEW_VERSION, "artifacts": [{"url": "https://downloads.example.com/erp.tar.gz",
                                                          "sha256": "0" * 64}]}
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    signature = base64.b64encode(release_key.sign(canonical)).decode()
    serverside._check(client.post("/api/releases", json={"version": bf.NEW_VERSION, "channel": "stable",
                                                         "manifest": manifest, "signature": signature,
                                                         "key_id": "bench"}, headers=admin), 201, "publish")
    t0 = time.perf_counter()
    resp = serverside._check(client.post("/api/rollouts", json={"release": bf.NEW_VERSION, "channel": "stable",
                                                                "batch_size": BATCH_SIZE}, headers=admin),
                             201, "create rollout")
    return resp.get_json()["id"], (time.perf_counter() - t0) * 1000


def progress_sql(rollout_id: int) -> list[str]:
    """Batches 1-30 finished (every tenth job failed), batch 31 in progress: set-based."""
    return [
        f"""UPDATE jobs SET status = CASE WHEN id % 10 = 0 THEN 'failed' ELSE 'succeeded' END,
               attempts = 1, fetched_at = now(), finished_at = now(), updated_at = now()
            WHERE rollout_id = {rollout_id} AND batch <= 30""",
        f"""UPDATE jobs SET status = 'in_progress', attempts = 1, fetched_at = now(), updated_at = now()
            WHERE rollout_id = {rollout_id} AND batch = 31""",
        f"UPDATE rollouts SET current_batch = 31 WHERE id = {rollout_id}",
    ]


def churn(dsn: str, rollout_id: int, n: int) -> float:
    """``n`` single-row job changes (pending -> in_progress -> succeeded, one statement each) and
    ``n`` single alert resolutions, committed every 500 statements; returns the seconds."""
    t0 = time.monotonic()
    with psycopg.connect(dsn) as conn:
        jobs = [r[0] for r in conn.execute(
            "SELECT id FROM jobs WHERE rollout_id = %s AND status = 'pending' ORDER BY id LIMIT %s",
            (rollout_id, n // 2)).fetchall()]
        alerts = [r[0] for r in conn.execute(
            "SELECT id FROM alerts WHERE resolved_at IS NULL ORDER BY id LIMIT %s", (n,)).fetchall()]
        steps = [("UPDATE jobs SET status = 'in_progress' WHERE id = %s", j) for j in jobs]
        steps += [("UPDATE jobs SET status = 'succeeded' WHERE id = %s", j) for j in jobs]
        steps += [("UPDATE alerts SET resolved_at = now(), resolved_by = 'bench' WHERE id = %s", a) for a in alerts]
        for i, (sql, row_id) in enumerate(steps, 1):
            conn.execute(sql, (row_id,))
            if i % 500 == 0:
                conn.commit()
        conn.commit()
    return time.monotonic() - t0


SEEN_AGAIN = """UPDATE alerts SET last_seen_at = now(), occurrences = occurrences + 1
    WHERE installation_id = %s AND resolved_at IS NULL RETURNING id"""


def trigger_cost(dsn: str, fleet: int, statements: int, rounds: int = 3) -> dict:
    """Microseconds per heartbeat-shaped statement (an installation's open alerts seen again, one
    statement; a round's statements in one transaction, so the commit's flush does not drown the
    difference) with the counting triggers of ``alerts`` on and off, alternating ``rounds``
    times; the median of the rounds."""
    per: dict[str, list[float]] = {"on": [], "off": []}
    with psycopg.connect(dsn) as conn:
        for r in range(rounds * 2):
            mode = "on" if r % 2 == 0 else "off"
            conn.execute(f"ALTER TABLE alerts {'ENABLE' if mode == 'on' else 'DISABLE'} TRIGGER USER")
            conn.commit()
            t0 = time.perf_counter()
            for i in range(statements):
                conn.execute(SEEN_AGAIN, ((i * 7919) % fleet + 1,)).fetchall()
            conn.commit()
            per[mode].append((time.perf_counter() - t0) / statements * 1e6)
        conn.execute("ALTER TABLE alerts ENABLE TRIGGER USER")
        conn.commit()
    return {mode: round(sorted(v)[len(v) // 2], 1) for mode, v in per.items()}


OLD_COUNTS = {
    "api_alerts_open": "SELECT count(*) FROM alerts WHERE resolved_at IS NULL",
    "api_rollout": ("SELECT batch, status, count(*) FROM jobs WHERE rollout_id = {rid} GROUP BY batch, status"),
    "dashboard": "SELECT level, count(*) FROM alerts WHERE resolved_at IS NULL GROUP BY level",
}


def measure_reads(app, client, env: dict, rollout_id: int, repeat: int) -> dict:
    support = {"Authorization": f"Bearer {env['CONTROL_PLANE_SUPPORT_TOKEN']}"}

    def get(path: str, headers: dict | None = None):
        return lambda: serverside._check(client.get(path, headers=headers or {}), 200, path)

    reads = {
        "api_alerts_open": get("/api/alerts?status=open", support),
        "api_alerts_open_critical": get("/api/alerts?status=open&level=critical", support),
        "api_rollout": get(f"/api/rollouts/{rollout_id}", support),
        "dashboard": get("/admin/"),
        "panel_rollouts": get("/admin/rollouts/"),
        "panel_rollout_details": get(f"/admin/rollouts/details/?id={rollout_id}"),
    }
    return {name: serverside._timed(fn, repeat) for name, fn in reads.items()}


def compact(app) -> float:
    """The worker's compaction of the counters (``cp.counters.compact``); returns the ms."""
    from cp import counters
    from cp.extensions import db

    with app.app_context():
        t0 = time.perf_counter()
        counters.compact()
        db.session.commit()
        ms = (time.perf_counter() - t0) * 1000
        db.session.remove()
    return ms


def check_exact(dsn: str) -> None:
    truth = one(dsn, """SELECT json_build_array(
        (SELECT count(*) FROM alerts WHERE resolved_at IS NULL), (SELECT count(*) FROM alerts),
        (SELECT count(*) FROM jobs WHERE rollout_id IS NOT NULL),
        (SELECT count(*) FROM jobs WHERE status = 'succeeded'))""")
    kept = one(dsn, """SELECT json_build_array(
        (SELECT coalesce(sum(delta), 0) FROM counter_deltas WHERE counter = 'alerts' AND status = 'open'),
        (SELECT coalesce(sum(delta), 0) FROM counter_deltas WHERE counter = 'alerts'),
        (SELECT coalesce(sum(delta), 0) FROM counter_deltas WHERE counter = 'jobs'),
        (SELECT coalesce(sum(delta), 0) FROM counter_deltas WHERE counter = 'jobs' AND status = 'succeeded'))""")
    if truth != kept:
        raise SystemExit(f"counters differ from COUNT(*): {kept} != {truth}")
    log(f"counters exact: open alerts, alerts, rollout jobs, succeeded jobs = {truth}")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--fleet", type=int, default=100_000, help="installations (10 alerts each; default 100,000)")
    ap.add_argument("--churn", type=int, default=20_000, help="single-row changes before compaction (default 20,000)")
    a = ap.parse_args(argv)

    from cp import create_app
    from cp.extensions import db

    with scratch_database(a.pg, keep=a.keep_db) as (dsn, env, release_key):
        t0 = time.monotonic()
        execute(dsn, bf.seed_sql(a.fleet)[:-1])
        execute(dsn, [f"UPDATE alerts SET resolved_at = NULL, resolved_by = NULL WHERE id % 10 < {OPEN_SHARE_TENTHS}"])
        vacuum(dsn)
        log(f"seeded in {time.monotonic() - t0:.1f} s: {one(dsn, 'SELECT count(*) FROM alerts')} alerts, "
            f"{one(dsn, 'SELECT count(*) FROM alerts WHERE resolved_at IS NULL')} open")
        app = create_app(env)
        client = app.test_client()
        serverside._login(client, env["CONTROL_PLANE_SUPPORT_TOKEN"])
        try:
            rollout_id, create_ms = create_rollout(client, env, release_key)
            targets = one(dsn, f"SELECT count(*) FROM jobs WHERE rollout_id = {rollout_id}")
            log(f"rollout {rollout_id} created in {create_ms:.0f} ms: {targets} targets")
            execute(dsn, progress_sql(rollout_id))
            seeded_rows = one(dsn, "SELECT count(*) FROM counter_deltas")
            seed_compact_ms = compact(app)
            log(f"the seed's {seeded_rows:,} counter rows (a row per alert inserted or reopened) compacted in "
                f"{seed_compact_ms:.0f} ms, as the worker's next sweep does")
            vacuum(dsn)
            old = {name: timed_sql(dsn, sql.format(rid=rollout_id), a.repeat) for name, sql in OLD_COUNTS.items()}
            cost = trigger_cost(dsn, a.fleet, 2000)
            log(f"a heartbeat-shaped UPDATE of alerts: {cost['on']} us with the counting triggers, "
                f"{cost['off']} us without")
            fresh = measure_reads(app, client, env, rollout_id, a.repeat)
            rows_before = one(dsn, "SELECT count(*) FROM counter_deltas")
            churn_s = churn(dsn, rollout_id, a.churn)
            rows_churned = one(dsn, "SELECT count(*) FROM counter_deltas")
            log(f"churn: {a.churn} job and {a.churn} alert changes in {churn_s:.1f} s; "
                f"counter rows {rows_before} -> {rows_churned}")
            churned = measure_reads(app, client, env, rollout_id, a.repeat)
            compact_ms = compact(app)
            rows_after = one(dsn, "SELECT count(*) FROM counter_deltas")
            log(f"compacted in {compact_ms:.0f} ms; {rows_after} rows left")
            compacted = measure_reads(app, client, env, rollout_id, a.repeat)
            check_exact(dsn)
        finally:
            with app.app_context():
                db.engine.dispose()

    rows = []
    for name in fresh:
        was = old.get(name, {}).get("p50_ms", "")
        rows.append((name, was, fresh[name]["p50_ms"], churned[name]["p50_ms"], compacted[name]["p50_ms"],
                     max(fresh[name]["max_ms"], churned[name]["max_ms"], compacted[name]["max_ms"])))
    print(f"\n{a.fleet:,} installations, {one_line_counts(a.fleet)}; rollout of {targets:,} targets "
          f"(batches of {BATCH_SIZE:,}), created in {create_ms:.0f} ms; {a.churn:,} job + {a.churn:,} alert "
          f"single-row changes between sweeps: counter rows {rows_before:,} -> {rows_churned:,}, "
          f"compacted to {rows_after:,} in {compact_ms:.0f} ms. Median ms of {a.repeat} runs:\n")
    print(fmt_table(rows, ("read", "COUNT(*) it replaced", "counters", "after churn", "after compaction",
                           "worst")))
    print(f"\nwriters' cost: an installation's open alerts seen again (one UPDATE) takes "
          f"{cost['on']} us with the counting triggers, {cost['off']} us without (median of 3 rounds of 2,000)")
    slow = [r[0] for r in rows if max(r[2], r[3], r[4]) > TARGET_MS]
    print(f"\ntarget {TARGET_MS:g} ms: {'all met' if not slow else 'missed by ' + ', '.join(slow)}")
    return 1 if slow else 0


def one_line_counts(fleet: int) -> str:
    return f"{fleet * bf.ALERTS_PER_INSTALLATION:,} alerts ({OPEN_SHARE_TENTHS * 10}% open)"


if __name__ == "__main__":
    sys.exit(main())
