"""The heartbeat's statements on PostgreSQL: two round trips whatever the heartbeat carries.

``cp.heartbeats.record_heartbeat`` decides (the rules live there, once); this module only
writes what was decided, in as few statements as PostgreSQL allows:

1. ``COUNT_AND_LOCK``, sent by the agent gate (``cp.agent_api.signed``) in place of the bare
   rate-limit count: the request's rate-limit count (``cp.ratelimit``'s upsert, as a CTE) and
   the installation row locked (``FOR UPDATE`` returns its latest committed version) with its
   *old* values (history events, derived alerts and the rollout channel hook need them). The
   gate's order stays: 429 before the body is parsed or validated. (``TOUCH`` does the lock and
   the update in one statement when a heartbeat is recorded without the gate.)
2. ``APPLY``: the installation's new values, after the lock, so its snapshot sees every earlier heartbeat of the installation:
   one pass over its open alerts (seen again / resolved), the new alerts, the history events,
   the job-failure upsert and the SLO point, as data-modifying CTEs of one statement, which
   also reads what waits for the agent (the ``pending`` of the response; that read comes after
   the rollout channel hook, which runs between the two statements). The
   lists travel as JSON arrays (``jsonb_to_recordset``), so the statement text never changes
   with the number of items: PostgreSQL parses and plans it once per connection (psycopg
   prepares it), and it is one statement whatever a heartbeat carries.

The SQL is sent through ``cp.fastsql.Raw`` (no statement compilation or result object per request);
SQLAlchemy's cursor events still see it (``tests/test_heartbeat_statements.py`` counts them).
Any other backend runs the portable statements of ``cp.heartbeats`` instead.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import NamedTuple

from . import fastsql
from .models import HEARTBEAT_MANAGED_SOURCES
from .timeutil import as_utc

SCALAR_CASTS = {
    "domain": "varchar", "client": "varchar", "version": "varchar", "release_channel": "varchar",
    "health": "varchar", "backup_status": "varchar", "last_backup_at": "timestamptz",
    "slo_p95_ms": "float8", "slo_error_rate": "float8", "slo_webhook_retry_rate": "float8",
}

OLD_NAMES = ("id", *SCALAR_CASTS)
OLD_COLUMNS = ", ".join(OLD_NAMES)
# a field the heartbeat carries overwrites the stored one; an absent one (NULL) keeps it
SET_FIELDS = (", ".join(f"{k} = COALESCE(%({k})s::{t}, i.{k})" for k, t in SCALAR_CASTS.items())
              + ", last_seen_at = %(now)s, heartbeats_total = i.heartbeats_total + 1")
LOCK = "SELECT " + OLD_COLUMNS + " FROM installations WHERE instance_id = %(lock_instance_id)s FOR UPDATE"

TOUCH = (
    "WITH old AS (" + LOCK + ")"
    " UPDATE installations AS i SET " + SET_FIELDS +
    " FROM old WHERE i.id = old.id"
    " RETURNING old.id, " + ", ".join(f"old.{k}" for k in SCALAR_CASTS)
)

APPLY = """
WITH touched AS (
    UPDATE installations AS i SET """ + SET_FIELDS + """
    WHERE %(touch)s AND i.id = %(installation_id)s
), desired AS (
    SELECT * FROM jsonb_to_recordset(%(desired)s::jsonb) AS d(fingerprint varchar, level varchar,
                                                                source varchar, message text)
), swept AS (
    UPDATE alerts AS a SET
        last_seen_at = CASE WHEN a.fingerprint = ANY(%(desired_fps)s::varchar[]) THEN %(now)s ELSE a.last_seen_at END,
        occurrences = CASE WHEN a.fingerprint = ANY(%(desired_fps)s::varchar[]) THEN a.occurrences + 1
                           ELSE a.occurrences END,
        resolved_at = CASE WHEN a.fingerprint = ANY(%(desired_fps)s::varchar[]) THEN NULL ELSE %(now)s END,
        resolved_by = CASE WHEN a.fingerprint = ANY(%(desired_fps)s::varchar[]) THEN NULL ELSE 'heartbeat' END
    WHERE %(sweep)s AND a.installation_id = %(installation_id)s AND a.resolved_at IS NULL
      AND a.source = ANY(%(managed)s::varchar[]) AND NOT (a.fingerprint = ANY(%(keep)s::varchar[]))
    RETURNING a.id, a.fingerprint, a.level, a.source, a.message, a.opened_at, a.resolved_at
), opened AS (
    INSERT INTO alerts (installation_id, level, source, fingerprint, message, opened_at, last_seen_at, occurrences)
    SELECT %(installation_id)s, d.level, d.source, d.fingerprint, d.message, %(now)s, %(now)s, 1 FROM desired AS d
    WHERE NOT EXISTS (SELECT 1 FROM alerts AS o WHERE o.installation_id = %(installation_id)s
                      AND o.resolved_at IS NULL AND o.fingerprint = d.fingerprint)
    RETURNING id, fingerprint
), events AS (
    INSERT INTO installation_events (installation_id, field, old_value, new_value, at)
    SELECT %(installation_id)s, e.field, e.old_value, e.new_value, %(now)s
    FROM jsonb_to_recordset(%(events)s::jsonb) AS e(field varchar, old_value varchar, new_value varchar)
), failures AS (
    INSERT INTO job_failures (installation_id, queue, message, fingerprint, first_seen_at, last_seen_at, occurrences)
    SELECT %(installation_id)s, f.queue, f.message, f.fingerprint, %(now)s, %(now)s, f.occurrences
    FROM jsonb_to_recordset(%(failures)s::jsonb) AS f(queue varchar, message text, fingerprint varchar, occurrences int)
    ON CONFLICT (installation_id, fingerprint) WHERE resolved_at IS NULL
    DO UPDATE SET occurrences = job_failures.occurrences + EXCLUDED.occurrences, last_seen_at = EXCLUDED.last_seen_at
), slo AS (
    INSERT INTO slo_samples (installation_id, bucket, slo_p95_ms, slo_error_rate, slo_webhook_retry_rate)
    SELECT %(installation_id)s, %(bucket)s, %(slo_p95_ms)s::float8, %(slo_error_rate)s::float8,
           %(slo_webhook_retry_rate)s::float8
    WHERE %(has_slo)s
    ON CONFLICT (installation_id, bucket) DO UPDATE SET
        slo_p95_ms = COALESCE(EXCLUDED.slo_p95_ms, slo_samples.slo_p95_ms),
        slo_error_rate = COALESCE(EXCLUDED.slo_error_rate, slo_samples.slo_error_rate),
        slo_webhook_retry_rate = COALESCE(EXCLUDED.slo_webhook_retry_rate, slo_samples.slo_webhook_retry_rate)
)
"""
RESULT = """
SELECT 'swept' AS kind, id, fingerprint, level, source, message, opened_at, resolved_at FROM swept
UNION ALL
SELECT 'opened', id, fingerprint, NULL, NULL, NULL, NULL, NULL FROM opened
"""
# with what waits for the agent (``cp.heartbeats.pending_for``'s statement as one more CTE):
# pending rows carry the two flags in ``level``/``source`` and a due verification's
# ``backup_id`` / ``scheduled_for`` in ``message`` / ``opened_at``
RESULT_WITH_PENDING = RESULT + """UNION ALL
SELECT 'pending', p.rv_id, NULL, p.p_update::varchar, p.p_plugin::varchar, p.backup_id, p.scheduled_for, NULL
FROM pending AS p
"""
TOUCH_STATEMENT = fastsql.Raw(TOUCH)
_with_pending: dict[str | None, fastsql.Raw] = {}


def _apply_sql(pending_sql: str | None) -> fastsql.Raw:
    stmt = _with_pending.get(pending_sql)
    if stmt is None:
        sql = APPLY + RESULT if pending_sql is None else (
            APPLY + ", pending (p_update, p_plugin, rv_id, backup_id, scheduled_for) AS (\n" + pending_sql + "\n)"
            + RESULT_WITH_PENDING)
        stmt = _with_pending[pending_sql] = fastsql.Raw(sql)
    return stmt


MANAGED = list(HEARTBEAT_MANAGED_SOURCES)


class Swept(NamedTuple):
    id: int
    fingerprint: str
    level: str
    source: str
    message: str
    opened_at: datetime
    resolved_at: datetime | None


class Opened(NamedTuple):
    id: int
    fingerprint: str


_count_and_lock: dict[str, fastsql.Raw] = {}


def count_and_lock(conn, count_sql: str, count_params: dict, instance_id: str) -> tuple[int, dict | None]:
    """Statement 1 from the gate: ``count_sql`` (the rate-limit upsert ``RETURNING count``) and
    the installation locked: ``(count, old values or None for an unknown installation)``."""
    stmt = _count_and_lock.get(count_sql)
    if stmt is None:
        stmt = _count_and_lock[count_sql] = fastsql.Raw(
            "WITH hit AS (" + count_sql + "), inst AS (" + LOCK + ")"
            " SELECT hit.count AS hit_count, inst.* FROM hit LEFT JOIN inst ON true")
    row = stmt.rows(conn, {**count_params, "lock_instance_id": instance_id})[0]
    return row[0], _old(row[1:])


def _old(row: tuple) -> dict | None:
    """``OLD_COLUMNS`` as a dict (None for a missing installation)."""
    if row[0] is None:
        return None
    old = dict(zip(OLD_NAMES, row))
    old["last_backup_at"] = as_utc(old["last_backup_at"])
    return old


def touch(conn, instance_id: str, provided: dict, now: datetime) -> dict | None:
    """Statement 1: the installation's old values (``id`` and the scalar fields), or None when
    it is unknown (nothing written then)."""
    params = {k: provided.get(k) for k in SCALAR_CASTS}
    params.update(lock_instance_id=instance_id, now=now)
    rows = TOUCH_STATEMENT.rows(conn, params)
    return _old(rows[0]) if rows else None


def apply(conn, installation_id: int, now: datetime, *, sweep: bool, desired: list, keep: list,
          events: list[dict], failures: list[dict], slo: dict | None, bucket: datetime,
          pending: tuple[str, dict] | None = None, touch: dict | None = None):
    """Statement 2. ``touch``: the heartbeat's scalar fields, when the installation row was only
    locked (``count_and_lock``) and still needs them. Returns ``(swept, opened, pending)``: the open alerts the sweep touched
    (resolved ones have ``resolved_at`` set), the ``(id, fingerprint)`` of the alerts it opened,
    and, when ``pending`` (a read-only statement as ``(SQL, constant parameters)``, see
    ``cp.fastsql.expanded``) is given, its rows as ``(update, plugin, id, backup_id,
    scheduled_for)`` tuples (else None)."""
    pending_sql, pending_params = pending if pending is not None else (None, {})
    clash = set(pending_params) & _APPLY_PARAMS
    if clash:
        raise ValueError(f"pending statement parameters clash with APPLY's: {sorted(clash)}")
    fields = {k: (touch or {}).get(k) for k in SCALAR_CASTS}
    rows = _apply_sql(pending_sql).rows(conn, {**pending_params, **fields, "touch": touch is not None, 
        "installation_id": installation_id, "now": now, "sweep": sweep, "managed": MANAGED,
        "desired": json.dumps([{"fingerprint": d.fingerprint, "level": d.level, "source": d.source,
                                "message": d.message} for d in desired]),
        "desired_fps": [d.fingerprint for d in desired], "keep": keep,
        "events": json.dumps([{"field": e["field"], "old_value": e["old_value"], "new_value": e["new_value"]}
                              for e in events], default=str),
        "failures": json.dumps(failures),
        "has_slo": slo is not None, "bucket": bucket,
        "slo_p95_ms": (slo or {}).get("slo_p95_ms"), "slo_error_rate": (slo or {}).get("slo_error_rate"),
        "slo_webhook_retry_rate": (slo or {}).get("slo_webhook_retry_rate"),
    })
    swept = [Swept(*r[1:]) for r in rows if r[0] == "swept"]
    opened = [Opened(r[1], r[2]) for r in rows if r[0] == "opened"]
    if pending is None:
        return swept, opened, None
    # kind, id, fingerprint, level, source, message, opened_at, resolved_at
    waiting = [(r[3] == "true", r[4] == "true", r[1], r[5], r[6]) for r in rows if r[0] == "pending"]
    if len(waiting) > 1:  # due verifications, oldest first (as the pending statement orders them)
        waiting.sort(key=lambda r: (r[4], r[2]))
    return swept, opened, waiting


_APPLY_PARAMS = {"touch", "sweep", "managed", "desired", "desired_fps", "keep", "events", "failures", "has_slo",
                 "bucket", *SCALAR_CASTS}  # besides installation_id and now
