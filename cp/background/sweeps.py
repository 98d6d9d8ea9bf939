"""The worker's periodic sweeps: stale installations, backup age, pruning, the rollout tick, the
compaction of the exact counters.

Every sweep is set-based: one indexed query finds the installations that need a new alert
(normally a handful, whatever the fleet size), and one statement opens their alerts with
their outbox events, in batches of ``SWEEP_BATCH`` rows per transaction. They are idempotent
and safe to run from several workers at once: on PostgreSQL a sweep runs under a
transaction-level advisory lock (a second worker skips it), candidate installation rows are
locked with ``FOR UPDATE SKIP LOCKED`` (a heartbeat in progress wins and the row is re-checked
after it), and the alert insert is ``ON CONFLICT DO NOTHING`` on the open-alert unique index.

Rules:
- **stale**: no heartbeat for ``CONTROL_PLANE_STALE_AFTER_SECONDS`` opens one critical
  ``heartbeat`` alert, once per silence (an alert resolved by hand stays resolved until the
  installation has reported again and gone silent again); the next heartbeat resolves it.
- **backup age**: an installation whose stored ``last_backup_at`` is older than
  ``CONTROL_PLANE_BACKUP_MAX_AGE_HOURS`` gets the same ``backup:age`` warning a heartbeat would
  open, even when it no longer reports (at most once per reported backup).
"""
from __future__ import annotations

import logging
import zlib
from datetime import datetime, timedelta
from typing import Any, Callable

from flask import current_app
from sqlalchemy import and_, delete, exists, func, or_, select

from cp import counters
from cp.web import limits as ratelimit
from cp.agent_api import signed
from cp.background import partitions
from cp.fleet.alerts import alert_payload, enqueue_events
from cp.dbutil import insert, is_postgres
from cp.extensions import db
from cp.fleet.queries import stale_cutoff
from cp.fleet.heartbeats import backup_age_alert
from cp.delivery import rollouts
from cp.models import Alert, Installation, OutboxEvent
from cp.timeutil import isoformat, utcnow

log = logging.getLogger("cp.background.sweeps")

SWEEP_BATCH = 500
MAX_BATCHES = 1000
PRUNE_CHUNK = 10_000
STALE_FINGERPRINT = "heartbeat:stale"
BACKUP_AGE_FINGERPRINT = "backup:age"

inst = Installation.__table__
alerts_t = Alert.__table__


def settings():
    return current_app.config["CP_SETTINGS"]


def try_lock(name: str) -> bool:
    """PostgreSQL: a transaction-level advisory lock named ``name`` (released at commit), taken
    only if free. Elsewhere always True (SQLite serialises writers anyway)."""
    if not is_postgres():
        return True
    key = zlib.crc32(f"control-plane:{name}".encode())
    return bool(db.session.execute(select(func.pg_try_advisory_xact_lock(key))).scalar())


def _open_alerts(rows: list, *, fingerprint: str, level: str, source: str, message: Callable[[Any], str],
                 now: datetime) -> int:
    """Open one alert per candidate row (``id``, ``instance_id``) and queue its event."""
    values = [{"installation_id": r.id, "level": level, "source": source, "fingerprint": fingerprint,
               "message": message(r), "opened_at": now, "last_seen_at": now, "occurrences": 1} for r in rows]
    stmt = (insert(alerts_t).values(values)
            .on_conflict_do_nothing(index_elements=["installation_id", "fingerprint"],
                                    index_where=alerts_t.c.resolved_at.is_(None))
            .returning(alerts_t.c.id, alerts_t.c.installation_id, alerts_t.c.message))
    inserted = db.session.execute(stmt).all()
    names = {r.id: r.instance_id for r in rows}
    enqueue_events([
        ("opened", alert_payload({"id": a.id, "level": level, "source": source, "message": a.message,
                                  "opened_at": now, "resolved_at": None}, names[a.installation_id]))
        for a in sorted(inserted, key=lambda a: a.id)
    ], now)
    return len(inserted)


def _sweep(name: str, candidates, open_kw: dict, now: datetime) -> int:
    """Run ``candidates`` (a select of installation rows) batch by batch and open alerts."""
    opened = 0
    for _ in range(MAX_BATCHES):
        try:
            if not try_lock(f"sweep:{name}"):
                db.session.rollback()
                break
            stmt = candidates.limit(SWEEP_BATCH)
            if is_postgres():
                stmt = stmt.with_for_update(of=inst, skip_locked=True)
            rows = db.session.execute(stmt).all()
            n = _open_alerts(rows, now=now, **open_kw) if rows else 0
            db.session.commit()
        except Exception:
            db.session.rollback()
            raise
        opened += n
        if len(rows) < SWEEP_BATCH or n == 0:
            break
    if opened:
        log.info("sweep opened alerts", extra={"event": f"sweep_{name}", "opened": opened})
    return opened


def sweep_stale(now: datetime | None = None) -> int:
    """Open the ``heartbeat`` alert of every installation silent for too long; returns how many."""
    now = now or utcnow()
    cutoff = stale_cutoff(now)
    seconds = settings().stale_after_seconds
    already = exists().where(
        alerts_t.c.installation_id == inst.c.id, alerts_t.c.fingerprint == STALE_FINGERPRINT,
        or_(alerts_t.c.resolved_at.is_(None), alerts_t.c.opened_at >= inst.c.last_seen_at))
    candidates = (select(inst.c.id, inst.c.instance_id, inst.c.last_seen_at)
                  .where(inst.c.last_seen_at < cutoff, ~already)
                  .order_by(inst.c.last_seen_at, inst.c.id))

    def message(r) -> str:
        return (f"No heartbeat since {isoformat(r.last_seen_at)} "
                f"(over the limit of {seconds} seconds); the installation is stale.")

    return _sweep("stale", candidates, {"fingerprint": STALE_FINGERPRINT, "level": "critical",
                                        "source": "heartbeat", "message": message}, now)


def sweep_backup_age(now: datetime | None = None) -> int:
    """Open the ``backup:age`` warning of installations whose last backup is too old even though
    no heartbeat came to say so; returns how many."""
    now = now or utcnow()
    cutoff = now - timedelta(hours=settings().backup_max_age_hours)
    already = exists().where(
        alerts_t.c.installation_id == inst.c.id, alerts_t.c.fingerprint == BACKUP_AGE_FINGERPRINT,
        or_(alerts_t.c.resolved_at.is_(None), alerts_t.c.opened_at > inst.c.last_backup_at))
    candidates = (select(inst.c.id, inst.c.instance_id, inst.c.last_backup_at)
                  .where(inst.c.last_backup_at.is_not(None), inst.c.last_backup_at < cutoff, ~already)
                  .order_by(inst.c.id))

    def message(r) -> str:
        desired = backup_age_alert(r.last_backup_at, now)
        return desired.message if desired else "Last backup is too old."

    return _sweep("backup_age", candidates, {"fingerprint": BACKUP_AGE_FINGERPRINT, "level": "warning",
                                             "source": "backup", "message": message}, now)


# --- pruning -------------------------------------------------------------------------------
def _chunked_delete(table, condition) -> int:
    """Delete in chunks of ``PRUNE_CHUNK`` rows, one short transaction each."""
    total = 0
    pk = list(table.primary_key.columns)[0]
    while True:
        ids = select(pk).where(condition).limit(PRUNE_CHUNK)
        n = db.session.execute(delete(table).where(pk.in_(ids))).rowcount or 0
        db.session.commit()
        total += n
        if n < PRUNE_CHUNK:
            return total


def _prune_history(spec: partitions.Partitioned, now: datetime, days: int) -> int:
    """Rows of a history table older than ``days``: on a partitioned table (PostgreSQL) the
    partitions wholly past it are dropped (and the coming ones created,
    ``cp.background.partitions``), elsewhere the rows are deleted in chunks. Returns how many
    rows went."""
    cutoff = now - timedelta(days=days)
    table = db.metadata.tables[spec.table]
    conn = db.session.connection()
    if not partitions.is_partitioned(conn, spec.table):
        return _chunked_delete(table, table.c[spec.column] < cutoff)
    if not try_lock(f"partitions:{spec.table}"):
        db.session.rollback()
        return 0
    partitions.ensure_ahead(conn, spec, now)
    removed = partitions.drop_expired(conn, spec, cutoff)
    db.session.commit()
    return removed


def prune_slo_history(now: datetime | None = None, days: int | None = None) -> int:
    return _prune_history(partitions.SLO_SAMPLES, now or utcnow(), days or settings().slo_history_retention_days)


def prune_events(now: datetime | None = None) -> int:
    return _prune_history(partitions.INSTALLATION_EVENTS, now or utcnow(), settings().event_retention_days)


def prune_outbox(now: datetime | None = None, days: int | None = None) -> int:
    """Delivered events past the retention (pending and dead ones are kept)."""
    days = days or settings().outbox_retention_days
    cutoff = (now or utcnow()) - timedelta(days=days)
    t = OutboxEvent.__table__
    return _chunked_delete(t, and_(t.c.status == "delivered", t.c.created_at < cutoff))


def prune_nonces(now: datetime | None = None) -> int:
    """Agent request signatures that can no longer be replayed (the rule lives in ``signed``)."""
    n = signed.prune_nonces(now)
    db.session.commit()
    return n


def prune_rate_limits() -> int:
    n = ratelimit.prune()
    db.session.commit()
    return n


def prune_all(now: datetime | None = None, slo_days: int | None = None) -> dict[str, int]:
    now = now or utcnow()
    try:
        return {
            "slo_samples": prune_slo_history(now, slo_days),
            "installation_events": prune_events(now),
            "outbox_events": prune_outbox(now),
            "agent_nonces": prune_nonces(now),
            "rate_limit_buckets": prune_rate_limits(),
        }
    except Exception:
        db.session.rollback()
        raise


# --- rollouts ------------------------------------------------------------------------------
def rollouts_tick(now: datetime | None = None) -> Any:
    """The rollout engine's periodic step (``cp.delivery.rollouts.tick``: auto-advance after a soak)."""
    try:
        if not try_lock("rollouts_tick"):
            db.session.rollback()
            return None
        result = rollouts.tick(now or utcnow())
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return result


# --- counters ------------------------------------------------------------------------------
def compact_counters() -> int | None:
    """Fold the exact counters' rows (``cp.counters.compact``); None when another worker does it."""
    try:
        if not try_lock("counters"):
            db.session.rollback()
            return None
        folded = counters.compact()
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return folded


def run_sweeps(now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    return {"stale": sweep_stale(now), "backup_age": sweep_backup_age(now), "rollouts": rollouts_tick(now),
            "counters": compact_counters()}
