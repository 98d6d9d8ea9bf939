"""The partitioned history at scale: the installation page's charts over 30 days of 5-minute SLO
points, and what retention costs (dropping a day's partition against deleting its rows).

One run: a scratch PostgreSQL database, migrated (``slo_samples`` partitioned by day,
``installation_events`` by month); ``--fleet`` installations seeded in bulk, a partition for each
of the last ``--days`` days, and every installation's point every 5 minutes over those days
(``--fleet`` x 288 x ``--days`` rows, day by day with generate_series) plus 10 history events
each over the same days. Then, in the service in-process (``app.test_client()``):

1. the installation page (``/installations/<id>?window=...``, its SLO charts and timeline) for
   each window, the history reads alone (``cp.fleet.history.installation_pictures``), and the SLO
   series alone two ways in the same run: binned in SQL (``cp.fleet.history.slo_series``) against
   the former read of every point of the window merged in Python (``every_point_series`` below);
2. retention: the worker's prune a day later (``cp.background.sweeps.prune_all``: the oldest
   day's partition dropped, the next ones created), against a ``DELETE`` of a day's rows (timed
   on another day's partition and rolled back).

    python -m bench.history [--fleet 4000] [--days 30] [--repeat 15] [--pg DSN]
"""
from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone

import psycopg
from sqlalchemy import select

from bench import fleet as bf
from bench import serverside
from bench.run import vacuum
from bench.scratch import execute, fmt_table, one, parser, scratch_database
from cp.extensions import db
from cp.fleet.history import GAP, MAX_POINTS, SLO_FIGURES
from cp.models import SloSample

TARGET_MS = 50.0
EVENTS_PER_INSTALLATION = 10


def log(msg: str) -> None:
    print(f"[history] {msg}", file=sys.stderr, flush=True)


def slo_day_sql(fleet: int, day: datetime, until: datetime) -> str:
    """Every installation's points of one day (up to ``until``), in time order as heartbeats write them."""
    return f"""
        INSERT INTO slo_samples (installation_id, bucket, slo_p95_ms, slo_error_rate, slo_webhook_retry_rate)
        SELECT i, b, 300 + (i * 37 + extract(epoch FROM b)::bigint / 300) % 400, ((i * 13) % 50) / 10000.0,
            ((i * 7) % 30) / 1000.0
        FROM generate_series(timestamptz '{day.isoformat()}',
                             least(timestamptz '{(day + timedelta(days=1)).isoformat()}',
                                   timestamptz '{until.isoformat()}') - interval '5 minutes',
                             interval '5 minutes') AS b,
             generate_series(1, {fleet}) AS i
        ORDER BY b, i"""


def events_sql(fleet: int, days: int, now: datetime) -> str:
    return f"""
        INSERT INTO installation_events (installation_id, field, old_value, new_value, at)
        SELECT (g - 1) % {fleet} + 1, (ARRAY['health', 'backup_status'])[g % 2 + 1],
            (ARRAY['ok', 'ok'])[g % 2 + 1], (ARRAY['degraded', 'running'])[g % 2 + 1],
            timestamptz '{now.isoformat()}' - (g % {days * 1440}) * interval '1 minute'
        FROM generate_series(1, {fleet * EVENTS_PER_INSTALLATION}) AS g"""


def every_point_series(installation_id: int, start: datetime, end: datetime) -> list[list]:
    """The SLO series as they were read before binning in SQL, kept here as the reference: every
    5-minute point of the window fetched, gaps marked and merged into at most ``MAX_POINTS``
    points per figure (each bin's maximum) in Python."""
    rows = db.session.execute(
        select(SloSample.bucket, *(getattr(SloSample, f) for f in SLO_FIGURES))
        .where(SloSample.installation_id == installation_id, SloSample.bucket >= start, SloSample.bucket <= end)
        .order_by(SloSample.bucket)).all()
    span = (end - start).total_seconds() or 1.0
    out = []
    for figure in SLO_FIGURES:
        points, prev = [], None
        for r in rows:
            if prev is not None and r.bucket - prev > GAP:
                points.append((prev + timedelta(minutes=5), None))
            points.append((r.bucket, getattr(r, figure)))
            prev = r.bucket
        if len(points) > MAX_POINTS:
            bins: dict = {}
            for at, v in points:
                b = min(int((at - start).total_seconds() / span * MAX_POINTS), MAX_POINTS - 1)
                kept = bins.get(b)
                if kept is None or (v is not None and (kept[1] is None or v > kept[1])):
                    bins[b] = (at, v)
            points = [bins[b] for b in sorted(bins)]
        out.append(points)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--fleet", type=int, default=4_000, help="installations (default 4,000)")
    ap.add_argument("--days", type=int, default=30, help="days of 5-minute history (default 30)")
    a = ap.parse_args(argv)

    from cp import create_app
    from cp.background import partitions, sweeps
    from cp.extensions import db
    from cp.fleet import history

    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    now -= timedelta(minutes=now.minute % 5)
    first_day = partitions.SLO_SAMPLES.start_of(now - timedelta(days=a.days))
    with scratch_database(a.pg, keep=a.keep_db) as (dsn, env, _key):
        app = create_app(env)
        try:
            t0 = time.monotonic()
            execute(dsn, bf.seed_sql(a.fleet)[:2])  # the installations
            with app.app_context():
                conn = db.session.connection()
                day = first_day
                while day < now:
                    partitions.create_partition(conn, partitions.SLO_SAMPLES, day)
                    partitions.create_partition(conn, partitions.INSTALLATION_EVENTS,
                                                partitions.INSTALLATION_EVENTS.start_of(day))
                    day = partitions.SLO_SAMPLES.after(day)
                db.session.commit()
            day = first_day
            while day < now:
                execute(dsn, [slo_day_sql(a.fleet, day, now)])
                day += timedelta(days=1)
            execute(dsn, [events_sql(a.fleet, a.days, now)])
            vacuum(dsn)
            rows = one(dsn, "SELECT count(*) FROM slo_samples")
            size = one(dsn, "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_inherits i "
                            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'slo_samples'::regclass")
            parts = one(dsn, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'slo_samples'::regclass")
            seed_s = time.monotonic() - t0
            log(f"seeded in {seed_s:.0f} s: {rows:,} SLO points in {parts} partitions ({size})")

            client = app.test_client()
            serverside._login(client, env["CONTROL_PLANE_SUPPORT_TOKEN"])
            middle = a.fleet // 2 + 1
            page, reads, binned, every = {}, {}, {}, {}
            for window in history.WINDOWS:
                path = f"/installations/{bf.instance_id(middle)}?window={window}"
                page[window] = serverside._timed(lambda p=path: serverside._check(client.get(p), 200, p), a.repeat)
                with app.app_context():
                    reads[window] = serverside._timed(
                        lambda w=window: history.installation_pictures(middle, w, now=now), a.repeat)
                    start = now - history.WINDOWS[window]
                    binned[window] = serverside._timed(
                        lambda s=start: history.slo_series(middle, s, now), a.repeat)
                    every[window] = serverside._timed(lambda s=start: every_point_series(middle, s, now), a.repeat)
                    db.session.remove()

            # retention: the DELETE a day's pruning used to be, on one day's rows (rolled back) ...
            victim = partitions.SLO_SAMPLES.name(first_day + timedelta(days=1))
            with psycopg.connect(dsn) as conn:
                t0 = time.perf_counter()
                deleted = conn.execute("DELETE FROM slo_samples WHERE bucket >= %s AND bucket < %s",
                                       (first_day + timedelta(days=1), first_day + timedelta(days=2))).rowcount
                delete_ms = (time.perf_counter() - t0) * 1000
                conn.rollback()
            # ... and the worker's prune a day later: the oldest day dropped, the next days created
            with app.app_context():
                retention = app.config["CP_SETTINGS"].slo_history_retention_days
                prune_at = first_day + timedelta(days=retention + 1, minutes=1)
                t0 = time.perf_counter()
                pruned = sweeps.prune_slo_history(prune_at)
                prune_ms = (time.perf_counter() - t0) * 1000
                db.session.remove()
            log(f"prune at {prune_at:%Y-%m-%d %H:%M}: {pruned:,} rows in {prune_ms:.0f} ms; "
                f"DELETE of {deleted:,} rows of {victim[-8:]}: {delete_ms:.0f} ms")
        finally:
            with app.app_context():
                db.engine.dispose()

    table = [(f"installation page, window {w}", page[w]["p50_ms"], page[w]["max_ms"],
              reads[w]["p50_ms"], reads[w]["max_ms"], binned[w]["p50_ms"], every[w]["p50_ms"])
             for w in history.WINDOWS]
    print(f"\n{a.fleet:,} installations x {a.days} days of 5-minute SLO points: {rows:,} rows in {parts} daily "
          f"partitions ({size}), seeded in {seed_s:.0f} s; {a.fleet * EVENTS_PER_INSTALLATION:,} events. "
          f"Median and worst ms of {a.repeat} runs:\n")
    print(fmt_table(table, ("read", "page p50", "page max", "history reads p50", "history reads max",
                            "SLO series p50 (binned in SQL)", "SLO series p50 (every point, before)")))
    print(f"\nretention of one day ({deleted:,} rows): DELETE {delete_ms:.0f} ms (and as many dead rows to vacuum) "
          f"against the worker's prune (partition dropped, the coming ones created) {prune_ms:.0f} ms")
    slow = [r[0] for r in table if r[1] > TARGET_MS]
    print(f"\ntarget {TARGET_MS:g} ms: {'all met' if not slow else 'missed by ' + ', '.join(slow)}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
