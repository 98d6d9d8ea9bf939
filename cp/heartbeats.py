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
  limit, ``backup`` for a failed/missing backup (critical) or a stale ``last_backup_at``
  (warning); a figure that is unknown keeps its alert as it is. A heartbeat resolves the
  ``heartbeat`` (stale) alert;
- job failures are events, deduplicated per (queue, message) while unresolved.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, exists, select, update

from .alerts import agent_alert_fingerprint, alert_payload, enqueue_events, job_failure_fingerprint
from .dbutil import insert
from .extensions import db
from .models import (
    HEARTBEAT_MANAGED_SOURCES,
    Alert,
    Installation,
    InstallationEvent,
    Job,
    JobFailure,
    RestoreVerification,
    Rollout,
    SloSample,
)
from .timeutil import isoformat, utcnow

SCALAR_FIELDS = (
    "domain", "client", "version", "release_channel", "health", "backup_status", "last_backup_at",
    "slo_p95_ms", "slo_error_rate", "slo_webhook_retry_rate",
)
SLO_FIELDS = ("slo_p95_ms", "slo_error_rate", "slo_webhook_retry_rate")
HISTORY_FIELDS = ("version", "release_channel", "health", "backup_status")
SLO_BUCKET_SECONDS = 300

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
    if status is None:
        keep.add("backup:status")
    elif status in ("failed", "missing"):
        desired.append(DesiredAlert("backup:status", "critical", "backup", f"Backup status is {status}."))
    last_backup = state.get("last_backup_at")
    if last_backup is None:
        keep.add("backup:age")
    else:
        max_age = timedelta(hours=cfg.backup_max_age_hours)
        if now - last_backup > max_age:
            hours = (now - last_backup).total_seconds() / 3600
            desired.append(DesiredAlert(
                "backup:age", "warning", "backup",
                f"Last backup is {hours:.1f} hours old, over the limit of {_fmt(cfg.backup_max_age_hours)} hours."))
    return desired, keep


def record_heartbeat(data: dict, now: datetime | None = None) -> HeartbeatResult:
    """Apply one validated heartbeat (see ``HeartbeatSchema``) in the current transaction."""
    now = now or utcnow()
    session = db.session
    instance_id = data["instance_id"]
    provided = {k: data[k] for k in SCALAR_FIELDS if data.get(k) is not None}

    # 1. the installation row, locked (or created)
    cols = [inst.c.id] + [inst.c[k] for k in SCALAR_FIELDS]
    row = session.execute(select(*cols).where(inst.c.instance_id == instance_id).with_for_update()).first()
    if row is None:
        ins = (insert(inst).values(instance_id=instance_id, first_seen_at=now, last_seen_at=now,
                                   heartbeats_total=1, **provided)
               .on_conflict_do_nothing(index_elements=["instance_id"]).returning(inst.c.id))
        new_id = session.execute(ins).scalar()
        if new_id is None:  # registered concurrently: lock it and continue as an update
            row = session.execute(select(*cols).where(inst.c.instance_id == instance_id).with_for_update()).first()
        else:
            old = {}
            installation_id = new_id
    if row is not None:
        installation_id = row.id
        old = dict(row._mapping)
        session.execute(update(inst).where(inst.c.id == installation_id).values(
            last_seen_at=now, heartbeats_total=inst.c.heartbeats_total + 1, **provided))
    state = {k: old.get(k) for k in SCALAR_FIELDS}
    state.update(provided)

    # 2. history of the fields people follow
    events = [
        {"installation_id": installation_id, "field": f, "old_value": old.get(f), "new_value": provided[f], "at": now}
        for f in HISTORY_FIELDS if f in provided and old and old.get(f) != provided[f]
    ]
    if events:
        session.execute(insert(InstallationEvent), events)

    # 3. alerts: the agent's set plus the derived ones, against what is open
    desired: dict[str, DesiredAlert] = {}
    for item in data.get("alerts") or []:
        fp = agent_alert_fingerprint(item["level"], item["message"])
        desired.setdefault(fp, DesiredAlert(fp, item["level"], "agent", item["message"]))
    derived, keep = derived_alerts(state, now)
    for d in derived:
        desired[d.fingerprint] = d
    open_rows = session.execute(
        select(alerts_t.c.id, alerts_t.c.fingerprint, alerts_t.c.level, alerts_t.c.source, alerts_t.c.message,
               alerts_t.c.opened_at)
        .where(alerts_t.c.installation_id == installation_id, alerts_t.c.resolved_at.is_(None),
               alerts_t.c.source.in_(HEARTBEAT_MANAGED_SOURCES))
    ).all()
    open_by_fp = {r.fingerprint: r for r in open_rows}
    to_open = [d for fp, d in desired.items() if fp not in open_by_fp]
    seen_ids = [r.id for fp, r in open_by_fp.items() if fp in desired]
    to_resolve = [r for fp, r in open_by_fp.items() if fp not in desired and fp not in keep]

    outbox: list[tuple[str, dict]] = []
    if to_open:
        opened = session.execute(
            insert(alerts_t).returning(alerts_t.c.id, alerts_t.c.fingerprint),
            [{"installation_id": installation_id, "level": d.level, "source": d.source, "fingerprint": d.fingerprint,
              "message": d.message, "opened_at": now, "last_seen_at": now, "occurrences": 1} for d in to_open],
        ).all()
        ids = {r.fingerprint: r.id for r in opened}
        for d in to_open:
            outbox.append(("opened", alert_payload(
                {"id": ids[d.fingerprint], "level": d.level, "source": d.source, "message": d.message,
                 "opened_at": now, "resolved_at": None}, instance_id)))
    if seen_ids:
        session.execute(update(alerts_t).where(alerts_t.c.id.in_(seen_ids))
                        .values(last_seen_at=now, occurrences=alerts_t.c.occurrences + 1))
    if to_resolve:
        session.execute(update(alerts_t).where(alerts_t.c.id.in_([r.id for r in to_resolve]))
                        .values(resolved_at=now, resolved_by="heartbeat"))
        for r in to_resolve:
            outbox.append(("resolved", alert_payload(
                {"id": r.id, "level": r.level, "source": r.source, "message": r.message,
                 "opened_at": r.opened_at, "resolved_at": now}, instance_id)))
    if outbox:
        enqueue_events(outbox, now)

    # 4. job failures: one upsert for all of them
    counts: Counter = Counter()
    first: dict[str, dict] = {}
    for item in data.get("job_failures") or []:
        fp = job_failure_fingerprint(item["queue"], item["message"])
        counts[fp] += 1
        first.setdefault(fp, item)
    if counts:
        stmt = insert(failures_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["installation_id", "fingerprint"],
            index_where=failures_t.c.resolved_at.is_(None),
            set_={"occurrences": failures_t.c.occurrences + stmt.excluded.occurrences,
                  "last_seen_at": stmt.excluded.last_seen_at},
        )
        session.execute(stmt, [
            {"installation_id": installation_id, "queue": first[fp]["queue"], "message": first[fp]["message"],
             "fingerprint": fp, "first_seen_at": now, "last_seen_at": now, "occurrences": n}
            for fp, n in counts.items()
        ])

    # 5. SLO history: one point per installation per 5 minutes (the last figures of the bucket)
    slo = {k: provided[k] for k in SLO_FIELDS if k in provided}
    if slo:
        stmt = insert(SloSample.__table__).values(installation_id=installation_id, bucket=slo_bucket(now), **slo)
        stmt = stmt.on_conflict_do_update(index_elements=["installation_id", "bucket"],
                                          set_={k: stmt.excluded[k] for k in slo})
        session.execute(stmt)

    return HeartbeatResult(installation_id, instance_id, now, len(to_open), len(to_resolve))


def pending_for(installation_id: int, now: datetime | None = None) -> dict:
    """What waits for the agent: update/plugin jobs and scheduled restore verifications."""
    now = now or utcnow()
    jobs_t = Job.__table__
    rollouts_t = Rollout.__table__

    def waiting(kind: str):
        # a job waits when it is unfinished and either has no rollout (plugin approval) or
        # belongs to an opened batch of an active rollout
        return exists().where(
            jobs_t.c.installation_id == installation_id, jobs_t.c.kind == kind,
            jobs_t.c.status.in_(("pending", "in_progress")),
            (jobs_t.c.rollout_id.is_(None)) | exists().where(
                and_(rollouts_t.c.id == jobs_t.c.rollout_id, rollouts_t.c.status == "active",
                     jobs_t.c.batch <= rollouts_t.c.current_batch)),
        )

    flags = db.session.execute(select(waiting("update").label("update"), waiting("plugin").label("plugin"))).one()
    rv = RestoreVerification.__table__
    restores = db.session.execute(
        select(rv.c.id, rv.c.backup_id, rv.c.scheduled_for)
        .where(rv.c.installation_id == installation_id, rv.c.status == "scheduled")
        .order_by(rv.c.scheduled_for, rv.c.id).limit(100)
    ).all()
    return {
        "update": bool(flags.update),
        "plugin": bool(flags.plugin),
        "restore_verifications": [
            {"id": r.id, "backup_id": r.backup_id, "scheduled_for": isoformat(r.scheduled_for)} for r in restores
        ],
    }


def installation_id_for(instance_id: str) -> int | None:
    return db.session.execute(select(inst.c.id).where(inst.c.instance_id == instance_id)).scalar()

