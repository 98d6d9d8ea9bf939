"""The heartbeat's statements on PostgreSQL: two round trips whatever the heartbeat carries
(one per heartbeat and one per batch under group commit).

``cp.fleet.heartbeats.record_heartbeats`` decides (the rules live there, once); this module only
writes what was decided, in as few statements as PostgreSQL allows:

1. ``COUNT_AND_LOCK``, sent by the agent gate (``cp.agent_api.signed``) in place of the bare
   rate-limit count: the request's rate-limit count (``cp.web.limits``'s upsert, as a CTE) and
   the installation row locked (``FOR UPDATE`` returns its latest committed version) with its
   *old* values (history events, derived alerts and the rollout channel hook need them). The
   gate's order stays: 429 before the body is parsed or validated. (``TOUCH`` does the lock and
   the update in one statement when a heartbeat is recorded without the gate.)
2. ``APPLY``, once for a batch of heartbeats of distinct installations (one, or several under
   group commit: ``cp.agent_api.heartbeats``), after their locks, so its snapshot sees every
   earlier heartbeat of each installation: the installations' new values, one pass over their
   open alerts (seen again / resolved), the new alerts, the history events, the job-failure
   upserts and the SLO points, as data-modifying CTEs of one statement, which also reads what
   waits for each agent (the ``pending`` of each response; that read comes after the rollout
   channel hook, which runs between the two statements). Each heartbeat travels as one object of
   a JSON array and its lists as JSON arrays inside it (``jsonb_to_recordset``), so the
   statement text never changes with the number of heartbeats or items: PostgreSQL parses and
   plans it once per connection (psycopg prepares it). Its fixed cost (executor start-up, the
   relations and indexes it opens, the round trip) is most of a heartbeat's database time, so
   a batch shares it. PostgreSQL plans it once for any batch, guessing 100 rows for each
   ``jsonb_to_recordset``; every read of a table is therefore also bounded by
   ``= ANY(%(ids)s)`` (the batch's installation ids), which keeps it an index scan over the
   batch's rows whatever the guess (without it, the new-alert check hashed every open alert of
   the fleet: 20 ms a heartbeat at 10,000 installations).

The SQL is sent through ``cp.fastsql.Raw`` (no statement compilation or result object per request);
SQLAlchemy's cursor events still see it (``tests/test_heartbeat_statements.py`` counts them).
Any other backend runs the portable statements of ``cp.fleet.heartbeats`` instead.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import NamedTuple

from cp import fastsql
from cp.models import HEARTBEAT_MANAGED_SOURCES
from cp.timeutil import as_utc

SCALAR_CASTS = {
    "domain": "varchar", "client": "varchar", "version": "varchar", "release_channel": "varchar",
    "health": "varchar", "backup_status": "varchar", "last_backup_at": "timestamptz",
    "slo_p95_ms": "float8", "slo_error_rate": "float8", "slo_webhook_retry_rate": "float8",
}

OLD_NAMES = ("id", *SCALAR_CASTS)
OLD_COLUMNS = ", ".join(OLD_NAMES)


def _set_fields(new_value) -> str:
    """The installation's ``SET`` list: a field the heartbeat carries (``new_value(name, type)``)
    overwrites the stored one; an absent one (NULL) keeps it."""
    return (", ".join(f"{k} = COALESCE({new_value(k, t)}, i.{k})" for k, t in SCALAR_CASTS.items())
            + ", last_seen_at = %(now)s, heartbeats_total = i.heartbeats_total + 1")


SET_FIELDS = _set_fields(lambda k, t: f"%({k})s::{t}")  # from the statement's parameters
LOCK = "SELECT " + OLD_COLUMNS + " FROM installations WHERE instance_id = %(lock_instance_id)s FOR UPDATE"

# Statement 1 also sets two things for the rest of its transaction (``set_config(..., true)``: the
# transaction only, so PgBouncer's transaction pooling keeps working), without a statement of
# their own:
# - the generic plans of its prepared statements: PostgreSQL's default re-plans APPLY for every
#   call (its custom plans look cheaper than the generic one, whose row counts are guesses), about
#   1.5 ms of planning per call; the heartbeat's statements are index lookups whose plan does not
#   depend on the values (``= ANY(%(ids)s)``);
# - ``synchronous_commit``: ``'off'`` unless CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT
#   (``cp.fleet.heartbeats.commit_mode``; the parameter ``synchronous_commit``). The COMMIT then returns
#   without waiting for the WAL flush, which the WAL writer does a moment later.
TX_SETTINGS = ("set_config('plan_cache_mode', 'force_generic_plan', true), "
               "set_config('synchronous_commit', %(synchronous_commit)s, true)")

TOUCH = (
    "WITH old AS (" + LOCK + ")"
    " UPDATE installations AS i SET " + SET_FIELDS +
    " FROM old WHERE i.id = old.id"
    " RETURNING old.id, " + ", ".join(f"old.{k}" for k in SCALAR_CASTS) + ", " + TX_SETTINGS
)

# The heartbeats of one batch (one or more, of distinct installations): one JSON object each.
BATCH_COLUMNS = ("installation_id int, touch bool, sweep bool, "
                 + ", ".join(f"{k} {t}" for k, t in SCALAR_CASTS.items())
                 + ", desired jsonb, desired_fps varchar[], keep varchar[], events jsonb, failures jsonb, has_slo bool")
SET_BATCH_FIELDS = _set_fields(lambda k, t: f"h.{k}")  # from the batch's columns, typed there

APPLY = """
WITH hb AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS h(""" + BATCH_COLUMNS + """)
), touched AS (
    UPDATE installations AS i SET """ + SET_BATCH_FIELDS + """
    FROM hb AS h WHERE h.touch AND i.id = h.installation_id AND i.id = ANY(%(ids)s::int[])
), desired AS (
    SELECT h.installation_id, d.* FROM hb AS h
    CROSS JOIN LATERAL jsonb_to_recordset(h.desired) AS d(fingerprint varchar, level varchar, source varchar, message text)
), swept AS (
    UPDATE alerts AS a SET
        last_seen_at = CASE WHEN a.fingerprint = ANY(h.desired_fps) THEN %(now)s ELSE a.last_seen_at END,
        occurrences = CASE WHEN a.fingerprint = ANY(h.desired_fps) THEN a.occurrences + 1 ELSE a.occurrences END,
        resolved_at = CASE WHEN a.fingerprint = ANY(h.desired_fps) THEN NULL ELSE %(now)s END,
        resolved_by = CASE WHEN a.fingerprint = ANY(h.desired_fps) THEN NULL ELSE 'heartbeat' END
    FROM hb AS h
    WHERE h.sweep AND a.installation_id = h.installation_id AND a.installation_id = ANY(%(ids)s::int[])
      AND a.resolved_at IS NULL
      AND a.source = ANY(%(managed)s::varchar[]) AND NOT (a.fingerprint = ANY(h.keep))
    RETURNING a.installation_id, a.id, a.fingerprint, a.level, a.source, a.message, a.opened_at, a.resolved_at
), opened AS (
    INSERT INTO alerts (installation_id, level, source, fingerprint, message, opened_at, last_seen_at, occurrences)
    SELECT d.installation_id, d.level, d.source, d.fingerprint, d.message, %(now)s, %(now)s, 1 FROM desired AS d
    WHERE NOT EXISTS (SELECT 1 FROM alerts AS o WHERE o.installation_id = ANY(%(ids)s::int[])
                      AND o.installation_id = d.installation_id AND o.resolved_at IS NULL
                      AND o.fingerprint = d.fingerprint)
    RETURNING installation_id, id, fingerprint
), events AS (
    INSERT INTO installation_events (installation_id, field, old_value, new_value, at)
    SELECT h.installation_id, e.field, e.old_value, e.new_value, %(now)s FROM hb AS h
    CROSS JOIN LATERAL jsonb_to_recordset(h.events) AS e(field varchar, old_value varchar, new_value varchar)
), failures AS (
    INSERT INTO job_failures (installation_id, queue, message, fingerprint, first_seen_at, last_seen_at, occurrences)
    SELECT h.installation_id, f.queue, f.message, f.fingerprint, %(now)s, %(now)s, f.occurrences FROM hb AS h
    CROSS JOIN LATERAL jsonb_to_recordset(h.failures) AS f(queue varchar, message text, fingerprint varchar, occurrences int)
    ON CONFLICT (installation_id, fingerprint) WHERE resolved_at IS NULL
    DO UPDATE SET occurrences = job_failures.occurrences + EXCLUDED.occurrences, last_seen_at = EXCLUDED.last_seen_at
), slo AS (
    INSERT INTO slo_samples (installation_id, bucket, slo_p95_ms, slo_error_rate, slo_webhook_retry_rate)
    SELECT h.installation_id, %(bucket)s, h.slo_p95_ms, h.slo_error_rate, h.slo_webhook_retry_rate
    FROM hb AS h WHERE h.has_slo
    ON CONFLICT (installation_id, bucket) DO UPDATE SET
        slo_p95_ms = COALESCE(EXCLUDED.slo_p95_ms, slo_samples.slo_p95_ms),
        slo_error_rate = COALESCE(EXCLUDED.slo_error_rate, slo_samples.slo_error_rate),
        slo_webhook_retry_rate = COALESCE(EXCLUDED.slo_webhook_retry_rate, slo_samples.slo_webhook_retry_rate)
)
"""
RESULT = """
SELECT 'swept' AS kind, installation_id, id, fingerprint, level, source, message, opened_at, resolved_at FROM swept
UNION ALL
SELECT 'opened', installation_id, id, fingerprint, NULL, NULL, NULL, NULL, NULL FROM opened
"""
# with what waits for each agent (``cp.fleet.heartbeats.pending_for``'s statement, per installation of
# the batch, as one more CTE): pending rows carry the two flags in ``level``/``source`` and a due
# verification's ``backup_id`` / ``scheduled_for`` in ``message`` / ``opened_at``
RESULT_WITH_PENDING = RESULT + """UNION ALL
SELECT 'pending', p.installation_id, p.rv_id, NULL, p.p_update::varchar, p.p_plugin::varchar, p.backup_id,
       p.scheduled_for, NULL
FROM pending AS p
"""
TOUCH_STATEMENT = fastsql.Raw(TOUCH)
_with_pending: dict[str | None, fastsql.Raw] = {}
PER_INSTALLATION = "%(installation_id)s"


def _apply_sql(pending_sql: str | None) -> fastsql.Raw:
    stmt = _with_pending.get(pending_sql)
    if stmt is None:
        if pending_sql is None:
            sql = APPLY + RESULT
        else:
            if PER_INSTALLATION not in pending_sql:
                raise ValueError(f"the pending statement must filter on {PER_INSTALLATION}")
            # run once per installation of the batch: its parameter becomes the batch's column
            per_row = pending_sql.replace(PER_INSTALLATION, "h.installation_id")
            sql = (APPLY + ", pending AS (\n SELECT h.installation_id, p.* FROM hb AS h CROSS JOIN LATERAL (\n"
                   + per_row + "\n) AS p (p_update, p_plugin, rv_id, backup_id, scheduled_for)\n)" + RESULT_WITH_PENDING)
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


_count_and_lock_many: dict[str, fastsql.Raw] = {}


def count_and_lock_many(conn, count_sql: str, count_params: dict, instance_ids: list[str],
                        commit_mode: str) -> dict[str, tuple]:
    """Statement 1, for a batch of heartbeats (or one): ``count_sql`` (``cp.web.limits.count_many_statement``: one
    request counted per key, ``RETURNING key, count``), then the installations locked in id
    order, with their old values. The rate-limit rows are locked first, all of them (the lock
    waits for the count: ``hit`` is read before the first installation row), so every batch, and
    every single heartbeat, takes its locks in the same order: no deadlock between them. Returns
    ``{key: (count, old values or None)}``; ``count_params["keys"][i]`` is the key of
    ``instance_ids[i]``. ``commit_mode``: the transaction's ``synchronous_commit`` (``TX_SETTINGS``)."""
    stmt = _count_and_lock_many.get(count_sql)
    if stmt is None:
        stmt = _count_and_lock_many[count_sql] = fastsql.Raw(
            "WITH hit AS (" + count_sql + "), pairs AS ("
            " SELECT * FROM unnest(%(keys)s::varchar[], %(lock_instance_ids)s::varchar[]) AS p(key, instance_id)"
            "), inst AS (SELECT " + OLD_COLUMNS + ", instance_id FROM installations"
            " WHERE instance_id = ANY(%(lock_instance_ids)s::varchar[]) AND (SELECT count(*) FROM hit) >= 0"
            " ORDER BY id FOR UPDATE)"
            " SELECT pairs.key, hit.count, " + ", ".join(f"inst.{c}" for c in OLD_NAMES) + ", " + TX_SETTINGS +
            " FROM pairs JOIN hit ON hit.key = pairs.key LEFT JOIN inst ON inst.instance_id = pairs.instance_id")
    rows = stmt.rows(conn, {**count_params, "lock_instance_ids": instance_ids, "synchronous_commit": commit_mode})
    return {r[0]: (r[1], _old(r[2:])) for r in rows}


def _old(row: tuple) -> dict | None:
    """``OLD_COLUMNS`` as a dict (None for a missing installation)."""
    if row[0] is None:
        return None
    old = dict(zip(OLD_NAMES, row))
    old["last_backup_at"] = as_utc(old["last_backup_at"])
    return old


def touch(conn, instance_id: str, provided: dict, now: datetime, commit_mode: str) -> dict | None:
    """Statement 1: the installation's old values (``id`` and the scalar fields), or None when
    it is unknown (nothing written then). ``commit_mode`` as for ``count_and_lock_many``."""
    params = {k: provided.get(k) for k in SCALAR_CASTS}
    params.update(lock_instance_id=instance_id, now=now, synchronous_commit=commit_mode)
    rows = TOUCH_STATEMENT.rows(conn, params)
    return _old(rows[0]) if rows else None


class Planned(NamedTuple):
    """One heartbeat of a batch, as ``cp.fleet.heartbeats`` decided it: what ``apply`` writes."""
    installation_id: int
    sweep: bool
    desired: list  # of cp.fleet.heartbeats.DesiredAlert
    keep: list[str]
    events: list[dict]
    failures: list[dict]
    slo: dict | None
    touch: dict | None  # the scalar fields, when the row was only locked and still needs them


class Applied(NamedTuple):
    swept: list[Swept]
    opened: list[Opened]
    pending: list[tuple] | None


def apply(conn, planned: list[Planned], now: datetime, bucket: datetime,
          pending: tuple[str, dict] | None = None) -> dict[int, Applied]:
    """Statement 2, for a batch of heartbeats of distinct installations (one or more). Returns,
    per installation id, the open alerts the sweep touched (resolved ones have ``resolved_at``
    set), the ``(id, fingerprint)`` of the alerts it opened and, when ``pending`` (a read-only
    statement of one installation, ``%(installation_id)s``, as ``(SQL, constant parameters)``,
    see ``cp.fastsql.expanded``) is given, its rows as ``(update, plugin, id, backup_id,
    scheduled_for)`` tuples (else None)."""
    ids = [p.installation_id for p in planned]
    if len(set(ids)) != len(ids):
        raise ValueError("a batch holds at most one heartbeat per installation")
    pending_sql, pending_params = pending if pending is not None else (None, {})
    clash = set(pending_params) & _APPLY_PARAMS
    if clash:
        raise ValueError(f"pending statement parameters clash with APPLY's: {sorted(clash)}")
    batch = [{
        "installation_id": p.installation_id, "touch": p.touch is not None, "sweep": p.sweep,
        **{k: _json_value((p.touch or p.slo or {}).get(k)) for k in SCALAR_CASTS},
        "desired": [{"fingerprint": d.fingerprint, "level": d.level, "source": d.source, "message": d.message}
                    for d in p.desired],
        "desired_fps": [d.fingerprint for d in p.desired], "keep": p.keep,
        "events": [{"field": e["field"], "old_value": e["old_value"], "new_value": e["new_value"]}
                   for e in p.events],
        "failures": p.failures, "has_slo": p.slo is not None,
    } for p in planned]
    rows = _apply_sql(pending_sql).rows(conn, {**pending_params, "batch": json.dumps(batch, default=str), "ids": ids,
                                               "now": now, "bucket": bucket, "managed": MANAGED})
    out = {i: Applied([], [], None if pending is None else []) for i in ids}
    # kind, installation_id, id, fingerprint, level, source, message, opened_at, resolved_at
    for r in rows:
        got = out[r[1]]
        if r[0] == "swept":
            got.swept.append(Swept(*r[2:]))
        elif r[0] == "opened":
            got.opened.append(Opened(r[2], r[3]))
        else:
            got.pending.append((r[4] == "true", r[5] == "true", r[2], r[6], r[7]))
    for got in out.values():
        if got.pending and len(got.pending) > 1:  # due verifications, oldest first (as the pending statement orders them)
            got.pending.sort(key=lambda r: (r[4], r[2]))
    return out


def _json_value(value):
    """A scalar field as JSON: timestamps as ISO 8601 (``jsonb_to_recordset`` reads them back as
    ``timestamptz``)."""
    return value.isoformat() if isinstance(value, datetime) else value


_APPLY_PARAMS = {"batch", "ids", "now", "bucket", "managed"}
