"""Recording a heartbeat: the installation upsert, the alert set, job failures, SLO history.

The cost of a heartbeat is a fixed number of SQL statements whatever it carries (bulk
statements, never one per alert or failure); ``tests/test_heartbeat_statements.py`` holds it
to that. The installation row is locked first, which serialises concurrent heartbeats of one
installation for the rest of the transaction.

Rules (``CONTRACT.md``, Heartbeats):
- fields present in the heartbeat overwrite the stored ones; absent or null fields keep them;
- ``alerts`` is the agent's current set: reported+open -> seen again, reported+not open ->
  opened, open+not reported -> resolved (a heartbeat without ``alerts`` reports none);
- the control plane derives its own alerts from the merged state: ``slo`` per figure over its
  limit, ``backup`` for a failed/missing backup (critical; ``running`` keeps it as it is) or a
  stale ``last_backup_at`` (warning); a figure that is unknown keeps its alert as it is. A heartbeat resolves the
  ``heartbeat`` (stale) alert;
- job failures are events, deduplicated per (queue, message) while unresolved.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from flask import current_app
from sqlalchemy import Integer, bindparam, case, exists, func, literal, null, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

from cp.fleet.alerts import agent_alert_fingerprint, alert_payload, enqueue_events, job_failure_fingerprint
from cp.extensions import db
from cp.models import (
    HEARTBEAT_MANAGED_SOURCES,
    Alert,
    Installation,
    InstallationEvent,
    JobFailure,
    RestoreVerification,
    SloSample,
    UTCDateTime,
)
from cp.timeutil import isoformat, utcnow

SCALAR_FIELDS = (
    "domain", "client", "version", "release_channel", "health", "backup_status", "last_backup_at",
    "slo_p95_ms", "slo_error_rate", "slo_webhook_retry_rate",
)
SLO_FIELDS = ("slo_p95_ms", "slo_error_rate", "slo_webhook_retry_rate")
HISTORY_FIELDS = ("version", "release_channel", "health", "backup_status")
SLO_BUCKET_SECONDS = 300
# what waits for the agent, as flags the steady-state installation update returns (``_statements``)
PENDING_FLAGS = ("pending_update", "pending_plugin", "pending_restore")

SLO_LABELS = {
    "slo_p95_ms": ("p95 latency", "ms"),
    "slo_error_rate": ("error rate", ""),
    "slo_webhook_retry_rate": ("webhook retry rate", ""),
}

inst = Installation.__table__
alerts_t = Alert.__table__
failures_t = JobFailure.__table__


@dataclass
class DesiredAlert:
    fingerprint: str
    level: str
    source: str
    message: str


@dataclass
class HeartbeatResult:
    installation_id: int
    instance_id: str
    received_at: datetime
    opened: int
    resolved: int
    pending: dict | None = None  # ``pending_for``'s answer (``with_pending``)


def slo_bucket(now: datetime) -> datetime:
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % SLO_BUCKET_SECONDS, tz=now.tzinfo)


def _fmt(value: float) -> str:
    return f"{value:g}"


def derived_alerts(state: dict, now: datetime) -> tuple[list[DesiredAlert], set[str]]:
    """The alerts the control plane itself derives from an installation's merged state.

    Returns the alerts that must be open and the fingerprints whose state is unknown (kept as is).
    """
    cfg = current_app.config["CP_SETTINGS"]
    desired: list[DesiredAlert] = []
    keep: set[str] = set()
    for figure, limit in cfg.slo_limits().items():
        value = state.get(figure)
        fp = f"slo:{figure}"
        if value is None:
            keep.add(fp)
        elif value > limit:
            label, unit = SLO_LABELS[figure]
            unit = f" {unit}" if unit else ""
            desired.append(DesiredAlert(
                fp, "critical", "slo",
                f"SLO breached: {label} ({figure}) is {_fmt(value)}{unit}, above the limit of {_fmt(limit)}{unit}."))
    status = state.get("backup_status")
    if status is None or status == "running":
        # unknown, or a backup in progress: its outcome is not known yet, the alert stays as it is
        keep.add("backup:status")
    elif status in ("failed", "missing"):
        desired.append(DesiredAlert("backup:status", "critical", "backup", f"Backup status is {status}."))
    last_backup = state.get("last_backup_at")
    if last_backup is None:
        keep.add("backup:age")
    else:
        age_alert = backup_age_alert(last_backup, now)
        if age_alert is not None:
            desired.append(age_alert)
    return desired, keep


def backup_age_alert(last_backup: datetime, now: datetime) -> DesiredAlert | None:
    """The ``backup:age`` warning when ``last_backup`` is older than the limit (the one rule,
    used by the heartbeat and by the worker's backup-age sweep)."""
    limit_hours = current_app.config["CP_SETTINGS"].backup_max_age_hours
    if now - last_backup <= timedelta(hours=limit_hours):
        return None
    hours = (now - last_backup).total_seconds() / 3600
    return DesiredAlert(
        "backup:age", "warning", "backup",
        f"Last backup is {hours:.1f} hours old, over the limit of {_fmt(limit_hours)} hours.")


@dataclass
class Planned:
    """What one heartbeat will write once its installation row is locked and updated."""
    installation_id: int
    sweep: bool  # an existing installation: sweep its open alerts (a new one has none)
    desired: list[DesiredAlert]
    keep: list[str]
    events: list[dict]
    failures: list[dict]
    slo: dict | None


def record_heartbeat(data: dict, now: datetime | None = None, *, with_pending: bool = False) -> HeartbeatResult:
    """Apply one validated heartbeat (see ``HeartbeatSchema``) in the current transaction.

    The rules are decided here in Python, then written with a fixed number of statements
    whatever the heartbeat carries, the same on every backend (``_statements``): the
    installation updated in one statement when no followed field changes, else locked and read,
    then updated (or registered); one sweep of its open alerts;
    and only when needed the new alerts, history events, one job-failure upsert, one SLO upsert;
    plus the outbox when a webhook is configured and alerts opened or resolved.
    ``with_pending``: ``result.pending`` is ``pending_for``'s answer, read after everything
    else (so it sees the jobs a channel change just made), else None.
    """
    now = now or utcnow()
    conn = db.session.connection()
    st = _statements(conn.dialect.name)
    instance_id = data["instance_id"]
    provided = {k: data[k] for k in SCALAR_FIELDS if data.get(k) is not None}

    # 1. the installation row, locked, its old values read and the heartbeat's applied (or created)
    old, created = _touch(conn, st, instance_id, provided, now)
    # present when the one-statement steady update ran: no followed field (the channel included)
    # changed, so nothing below makes or cancels a job, and the flags are still true at the end
    flags = {k: old.pop(k) for k in PENDING_FLAGS if k in old}
    installation_id = old["id"]
    state = {k: old.get(k) for k in SCALAR_FIELDS}
    state.update(provided)
    if "release_channel" in provided and old.get("release_channel") != provided["release_channel"]:
        # new on a channel, or moved: rollouts add or cancel its jobs (a normal heartbeat skips this)
        from cp.delivery.rollouts import on_channel_change

        on_channel_change(installation_id, old.get("release_channel"), provided["release_channel"],
                          state.get("version"), now)

    # 2. what the heartbeat means
    # history of the fields people follow
    events = [
        {"installation_id": installation_id, "field": f, "old_value": old.get(f), "new_value": provided[f], "at": now}
        for f in HISTORY_FIELDS if f in provided and not created and old.get(f) != provided[f]
    ]
    # alerts: the agent's set plus the derived ones; ``keep``: derived ones whose state is unknown
    desired: dict[str, DesiredAlert] = {}
    for item in data.get("alerts") or []:
        fp = agent_alert_fingerprint(item["level"], item["message"])
        desired.setdefault(fp, DesiredAlert(fp, item["level"], "agent", item["message"]))
    derived, keep = derived_alerts(state, now)
    for d in derived:
        desired[d.fingerprint] = d
    # job failures, deduplicated per (queue, message)
    counts: Counter = Counter()
    first: dict[str, dict] = {}
    for item in data.get("job_failures") or []:
        fp = job_failure_fingerprint(item["queue"], item["message"])
        counts[fp] += 1
        first.setdefault(fp, item)
    failures = [{"queue": first[fp]["queue"], "message": first[fp]["message"], "fingerprint": fp,
                 "occurrences": n} for fp, n in counts.items()]
    # SLO history: one point per installation per 5 minutes (the last figures of the bucket)
    slo = {k: provided.get(k) for k in SLO_FIELDS} if any(k in provided for k in SLO_FIELDS) else None
    plan = Planned(installation_id, not created, list(desired.values()), list(keep), events, failures, slo)

    # 3. write it: open alerts seen again or resolved, new alerts, events, failures, SLO point
    swept, opened = _apply(conn, st, plan, now, slo_bucket(now))

    # 4. the webhook outbox, in the same transaction
    outbox: list[tuple[str, dict]] = []
    for r in opened:
        d = desired[r.fingerprint]
        outbox.append(("opened", alert_payload(
            {"id": r.id, "level": d.level, "source": d.source, "message": d.message,
             "opened_at": now, "resolved_at": None}, instance_id)))
    resolved = [r for r in swept if r.resolved_at is not None]
    for r in resolved:
        outbox.append(("resolved", alert_payload(
            {"id": r.id, "level": r.level, "source": r.source, "message": r.message,
             "opened_at": r.opened_at, "resolved_at": now}, instance_id)))
    if outbox:
        enqueue_events(outbox, now)
    pending = None
    if with_pending:
        if flags and not flags["pending_restore"]:  # the steady state: no verification due
            pending = _pending_answer(flags["pending_update"], flags["pending_plugin"], [])
        else:
            pending = pending_for(installation_id, now)
    return HeartbeatResult(installation_id, instance_id, now, len(opened), len(resolved), pending)


def _touch(conn, st, instance_id: str, provided: dict, now: datetime) -> tuple[dict, bool]:
    """Apply the heartbeat's fields to the installation, locking its row. Returns ``(old values
    with "id", created)``; an unknown installation registers itself (``created``, no old values).

    The steady state is one statement (``st.touch_unchanged``): the row updated only when no
    field people follow (``HISTORY_FIELDS``) changes, its new values returned, which are then
    also its old ones for those fields, with the ``PENDING_FLAGS``. Otherwise the row is locked
    and read first (the old values make the history events and the channel change), then
    updated, or registered."""
    params = {"p_instance_id": instance_id, "now": now, **{f"new_{k}": provided.get(k) for k in SCALAR_FIELDS}}
    row = conn.execute(st.touch_unchanged, params).first()
    if row is not None:
        return dict(row._mapping), False
    old = _lock_and_update(conn, st, params)
    if old is not None:
        return old, False
    new_id = conn.execute(st.register, {"instance_id": instance_id, "first_seen_at": now, "last_seen_at": now,
                                        "heartbeats_total": 1, **provided}).scalar()
    if new_id is not None:
        return {"id": new_id}, True
    # registered concurrently: lock it and continue as an update
    return _lock_and_update(conn, st, params), False


def _lock_and_update(conn, st, params: dict) -> dict | None:
    row = conn.execute(st.lock, params).first()
    if row is None:
        return None
    conn.execute(st.touch, {**params, "p_installation_id": row.id})
    return dict(row._mapping)


def _apply(conn, st, plan: Planned, now: datetime, bucket: datetime) -> tuple[list, list]:
    """Everything after the installation row: returns (the swept open alerts, the opened ones)."""
    installation_id, desired = plan.installation_id, plan.desired
    if plan.events:
        conn.execute(st.add_events, plan.events)
    swept = conn.execute(st.sweep_alerts, {
        "p_installation_id": installation_id, "now": now, "desired": [d.fingerprint for d in desired],
        "keep": plan.keep}).all() if plan.sweep else []
    still_open = {r.fingerprint for r in swept if r.resolved_at is None}
    to_open = [d for d in desired if d.fingerprint not in still_open]
    opened = []
    if to_open:
        opened = conn.execute(st.open_alerts, [
            {"installation_id": installation_id, "level": d.level, "source": d.source, "fingerprint": d.fingerprint,
             "message": d.message, "opened_at": now, "last_seen_at": now, "occurrences": 1} for d in to_open]).all()
    if plan.failures:
        conn.execute(st.upsert_failures, [
            {"installation_id": installation_id, "first_seen_at": now, "last_seen_at": now, **f}
            for f in plan.failures]).all()
    if plan.slo is not None:
        conn.execute(st.slo_sample, {"installation_id": installation_id, "bucket": bucket, **plan.slo})
    return swept, opened


@dataclass(frozen=True)
class _Statements:
    touch_unchanged: Any
    lock: Any
    touch: Any
    register: Any
    add_events: Any
    sweep_alerts: Any
    open_alerts: Any
    upsert_failures: Any
    slo_sample: Any


@lru_cache(maxsize=None)
def _statements(dialect_name: str) -> _Statements:
    """The heartbeat's statements, defined once for both backends (the dialect's ``insert`` for
    ``ON CONFLICT``) and built once per backend with bind parameters (building a statement costs
    more than running it; SQLAlchemy caches the compiled form)."""
    # what waits for the agent: one rule each, in the rollout engine and ``_due_verification``
    from cp.delivery.rollouts import waiting_job_exists

    ins = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    now = bindparam("now", type_=UTCDateTime())
    old_cols = [inst.c.id] + [inst.c[k] for k in SCALAR_FIELDS]
    # a field the heartbeat carries overwrites the stored one; an absent one (NULL) keeps it
    set_fields = {k: func.coalesce(bindparam(f"new_{k}", type_=inst.c[k].type), inst.c[k]) for k in SCALAR_FIELDS}
    set_fields.update(last_seen_at=now, heartbeats_total=inst.c.heartbeats_total + 1)
    by_instance_id = inst.c.instance_id == bindparam("p_instance_id")
    # the steady state: none of the fields people follow changes (a NULL, absent field keeps its value)
    unchanged = [inst.c[k].is_not_distinct_from(set_fields[k]) for k in HISTORY_FIELDS]

    # what waits for the agent, returned by the steady update as flags: the installation named by
    # its instance id in an uncorrelated subquery (SQLite's RETURNING cannot name the updated table)
    same = inst.alias("same")
    this_installation = select(same.c.id).where(same.c.instance_id == bindparam("p_instance_id")).scalar_subquery()
    pending_flags = [waiting_job_exists(this_installation, "update").label("pending_update"),
                     waiting_job_exists(this_installation, "plugin").label("pending_plugin"),
                     exists().where(*_due_verification(this_installation, now)).label("pending_restore")]

    # the columns come from the parameters (instance_id, first/last_seen_at, heartbeats_total, fields)
    register = ins(inst).on_conflict_do_nothing(index_elements=["instance_id"]).returning(inst.c.id)

    # one pass over the open alerts the heartbeat manages: the desired ones are seen again, the
    # others are resolved, except those whose state is unknown (``keep``), which are left alone
    desired = alerts_t.c.fingerprint.in_(bindparam("desired", expanding=True))
    sweep = (update(alerts_t)
             .where(alerts_t.c.installation_id == bindparam("p_installation_id"), alerts_t.c.resolved_at.is_(None),
                    alerts_t.c.source.in_(HEARTBEAT_MANAGED_SOURCES),
                    alerts_t.c.fingerprint.not_in(bindparam("keep", expanding=True)))
             .values(last_seen_at=case((desired, now), else_=alerts_t.c.last_seen_at),
                     occurrences=case((desired, alerts_t.c.occurrences + 1), else_=alerts_t.c.occurrences),
                     resolved_at=case((desired, null()), else_=now),
                     resolved_by=case((desired, null()), else_=literal("heartbeat")))
             .returning(alerts_t.c.id, alerts_t.c.fingerprint, alerts_t.c.level, alerts_t.c.source,
                        alerts_t.c.message, alerts_t.c.opened_at, alerts_t.c.resolved_at))

    # one multi-row upsert for all the failures: with RETURNING, SQLAlchemy sends a list of rows
    # as one INSERT ... VALUES (...), (...) ("insertmanyvalues"), never one statement per row
    failures = ins(failures_t)
    failures = failures.on_conflict_do_update(
        index_elements=["installation_id", "fingerprint"],
        index_where=failures_t.c.resolved_at.is_(None),
        set_={"occurrences": failures_t.c.occurrences + failures.excluded.occurrences,
              "last_seen_at": failures.excluded.last_seen_at},
    ).returning(failures_t.c.id)

    slo_t = SloSample.__table__
    slo = ins(slo_t)  # columns from the parameters: installation_id, bucket and the three figures
    merged = {k: func.coalesce(slo.excluded[k], slo_t.c[k]) for k in SLO_FIELDS}
    # the bucket's point is rewritten only when a figure changes (a fleet reports the same ones
    # minute after minute: no new row version, no WAL for them)
    slo = slo.on_conflict_do_update(index_elements=["installation_id", "bucket"], set_=merged,
                                    where=or_(*(slo_t.c[k].is_distinct_from(merged[k]) for k in SLO_FIELDS)))
    return _Statements(
        touch_unchanged=(update(inst).where(by_instance_id, *unchanged).values(set_fields)
                         .returning(*old_cols, *pending_flags)),
        lock=select(*old_cols).where(by_instance_id).with_for_update(),
        touch=update(inst).where(inst.c.id == bindparam("p_installation_id")).values(set_fields),
        register=register,
        add_events=InstallationEvent.__table__.insert(),
        sweep_alerts=sweep,
        open_alerts=alerts_t.insert().returning(alerts_t.c.id, alerts_t.c.fingerprint),
        upsert_failures=failures,
        slo_sample=slo,
    )


def pending_for(installation_id: int, now: datetime | None = None) -> dict:
    """What waits for the agent: update/plugin jobs and the restore verifications that are due
    (scheduled, ``scheduled_for`` reached; one scheduled for later appears once its time comes).
    One statement: the two flags and the due verifications (``_pending_statement``)."""
    now = now or utcnow()
    rows = db.session.execute(_pending_statement(), {"installation_id": installation_id, "now": now}).all()
    return _pending_answer(rows[0][0], rows[0][1], [r[2:] for r in rows if r[2] is not None])


def _pending_answer(update_waits, plugin_waits, due: list) -> dict:
    """The response's ``pending`` object: the two flags and the due verifications, rows
    ``(id, backup_id, scheduled_for)``."""
    return {
        "update": bool(update_waits),
        "plugin": bool(plugin_waits),
        "restore_verifications": [{"id": r[0], "backup_id": r[1], "scheduled_for": isoformat(r[2])} for r in due],
    }


def _due_verification(installation_id, now) -> tuple:
    """The conditions of a restore verification of ``installation_id`` that is due: scheduled,
    and ``scheduled_for`` reached."""
    rv = RestoreVerification.__table__
    return rv.c.installation_id == installation_id, rv.c.status == "scheduled", rv.c.scheduled_for <= now


@lru_cache(maxsize=None)
def _pending_statement():
    """``SELECT <update waits>, <plugin waits>, due.* FROM (one row) LEFT JOIN due``: one row when
    nothing is due, else one per due verification (at most 100, oldest first)."""
    # exactly when /api/updates/next (or /api/plugins/next) would hand out a job: one rule,
    # written once in the rollout engine
    from cp.delivery.rollouts import waiting_job_exists

    iid = bindparam("installation_id", type_=Integer())
    rv = RestoreVerification.__table__
    due = (select(rv.c.id, rv.c.backup_id, rv.c.scheduled_for)
           .where(*_due_verification(iid, bindparam("now", type_=UTCDateTime())))
           .order_by(rv.c.scheduled_for, rv.c.id).limit(100).subquery("due"))
    one = select(literal(1).label("one")).subquery("one")
    return (select(waiting_job_exists(iid, "update").label("update"), waiting_job_exists(iid, "plugin").label("plugin"),
                   due.c.id, due.c.backup_id, due.c.scheduled_for)
            .select_from(one.outerjoin(due, true()))
            .order_by(due.c.scheduled_for, due.c.id))
