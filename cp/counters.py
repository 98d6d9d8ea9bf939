"""Exact counts that stay cheap however many rows they count: alerts by status, level, source
and acknowledgement, each rollout's jobs by batch and status, installations by health and
release channel.

The counts live in ``counter_deltas`` (``cp.models.CounterDelta``), written by the database
triggers of migration 0010 in the same transaction as every change of an alert or a job, so
they are exact at any moment for any reader. A key's count is the sum of its rows: writers only
insert (they never wait on each other), readers sum a handful of rows through an index-only
scan, and ``compact`` (the worker's sweep) folds each key's rows into one.
"""
from __future__ import annotations

import logging
from collections import defaultdict

from sqlalchemy import delete, func, insert, select, tuple_

from cp.extensions import db
from cp.models import JOB_STATUSES, CounterDelta

log = logging.getLogger("cp.counters")

t = CounterDelta.__table__
KEY_COLUMNS = (t.c.counter, t.c.scope_id, t.c.batch, t.c.status, t.c.level, t.c.source, t.c.acknowledged,
               t.c.channel)
ALERT_STATUSES = ("open", "resolved")


def alert_count(*, status: str | None = None, level: str | None = None, source: str | None = None,
                acknowledged: bool | None = None) -> int:
    """How many alerts match (each filter optional: the same filters as ``GET /api/alerts``
    without ``instance_id``; ``status`` is ``open`` or ``resolved``)."""
    conds = [t.c.counter == "alerts"]
    if status:
        conds.append(t.c.status == status)
    if level:
        conds.append(t.c.level == level)
    if source:
        conds.append(t.c.source == source)
    if acknowledged is not None:
        conds.append(t.c.acknowledged.is_(acknowledged))
    return int(db.session.execute(select(func.coalesce(func.sum(t.c.delta), 0)).where(*conds)).scalar_one())


def open_alerts_by_level() -> dict[str, int]:
    """Level -> number of open alerts (levels without any left out)."""
    rows = db.session.execute(
        select(t.c.level, func.sum(t.c.delta)).where(t.c.counter == "alerts", t.c.status == "open")
        .group_by(t.c.level)).all()
    return {level: int(n) for level, n in rows if n}


def installations_by(field: str) -> dict[str | None, int]:
    """``health`` or ``release_channel`` -> number of installations (None: not reported; values
    without any installation left out)."""
    column = {"health": t.c.status, "release_channel": t.c.channel}[field]
    rows = db.session.execute(
        select(column, func.sum(t.c.delta)).where(t.c.counter == "installations").group_by(column)).all()
    return {value or None: int(n) for value, n in rows if n}


def job_batches(rollout_ids: list[int]) -> dict[int, dict[int, dict[str, int]]]:
    """Rollout id -> batch -> job status -> count, for the statuses with jobs (rollouts without
    any job left out). A job without a batch is counted in batch 0."""
    out: dict[int, dict[int, dict[str, int]]] = {}
    if not rollout_ids:
        return out
    rows = db.session.execute(
        select(t.c.scope_id, t.c.batch, t.c.status, func.sum(t.c.delta))
        .where(t.c.counter == "jobs", t.c.scope_id.in_(rollout_ids))
        .group_by(t.c.scope_id, t.c.batch, t.c.status)).all()
    for rollout_id, batch, status, n in rows:
        if n:
            out.setdefault(rollout_id, {}).setdefault(batch, {})[status] = int(n)
    return out


def job_counts(rollout_ids: list[int]) -> dict[int, dict[str, int]]:
    """Rollout id -> job status -> count, every status present (zeros included)."""
    out = {rid: {s: 0 for s in JOB_STATUSES} for rid in rollout_ids}
    if not rollout_ids:
        return out
    rows = db.session.execute(
        select(t.c.scope_id, t.c.status, func.sum(t.c.delta))
        .where(t.c.counter == "jobs", t.c.scope_id.in_(rollout_ids))
        .group_by(t.c.scope_id, t.c.status)).all()
    for rollout_id, status, n in rows:
        out[rollout_id][status] = int(n)
    return out


def compact() -> int:
    """Fold every key's rows into one (a key whose count is 0 keeps no row), in the current
    transaction; returns how many rows were folded. Exact under concurrent writers and
    compactions: the rows are deleted with ``RETURNING`` and their sum inserted again, so each
    row's delta is carried over exactly once (a row deleted by a concurrent compaction is
    skipped by this one), and rows inserted meanwhile are left for the next round."""
    keys = list(KEY_COLUMNS)
    several = select(*keys).group_by(*keys).having(func.count() > 1)
    rows = db.session.execute(delete(t).where(tuple_(*keys).in_(several)).returning(*keys, t.c.delta)).all()
    sums: dict[tuple, int] = defaultdict(int)
    for row in rows:
        sums[tuple(row[:-1])] += row[-1]
    folded = [dict(zip((c.name for c in keys), key), delta=n) for key, n in sums.items() if n]
    if folded:
        db.session.execute(insert(t), folded)
    if rows:
        log.info("counters compacted", extra={"event": "counters_compacted", "rows": len(rows), "keys": len(folded)})
    return len(rows)
