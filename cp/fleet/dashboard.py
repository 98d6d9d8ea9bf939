"""The panel's dashboard: one read of the whole fleet that answers "is the fleet OK?".

Each figure is one indexed, aggregated query (a few milliseconds at 100,000 installations
and a million alerts); lists are short (``LIST_LIMIT`` rows) and come with their totals.
Also the per-batch job counts of rollouts, used by the dashboard's progress bars and by the
rollout screens (``rollout_batches``); those, the open alerts by level and the fleet by health
and channel come from the exact counters (``cp.counters``), not from counting rows.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import joinedload

from cp import counters
from cp.extensions import db
from cp.fleet.queries import stale_cutoff
from cp.models import (
    HEALTH_VALUES,
    Alert,
    Installation,
    PluginRequest,
    RestoreVerification,
    Rollout,
)
from cp.timeutil import utcnow

LIST_LIMIT = 10
FAILED_RESTORE_DAYS = 7


@dataclass
class RolloutProgress:
    id: int
    kind: str
    what: str                 # "1.3.0" or "payments 2.0.1"
    channel: str | None
    status: str
    current_batch: int
    batches: int
    targets: int
    created_at: datetime
    paused_reason: str | None
    counts: dict[str, int] = field(default_factory=dict)
    per_batch: list[tuple[int, dict[str, int]]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))


@dataclass
class Dashboard:
    now: datetime
    total: int
    by_health: list[tuple[str, int]]
    by_channel: list[tuple[str, int]]
    stale_count: int
    stale: list[Installation]
    critical_count: int
    critical: list[Alert]
    open_by_level: dict[str, int]
    rollouts: list[RolloutProgress]
    failed_restores_count: int
    failed_restores: list[RestoreVerification]
    pending_requests_count: int
    pending_requests: list[PluginRequest]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def rollout_batches(rollout_ids: list[int]) -> dict[int, dict[int, dict[str, int]]]:
    """rollout id -> batch number -> job status -> count (the exact counters, ``cp.counters``)."""
    return counters.job_batches(rollout_ids)


def rollout_progress(rollouts: list[Rollout]) -> list[RolloutProgress]:
    batches = rollout_batches([r.id for r in rollouts])
    out = []
    for r in rollouts:
        per = batches.get(r.id, {})
        counts: dict[str, int] = defaultdict(int)
        for c in per.values():
            for status, n in c.items():
                counts[status] += n
        numbers = range(1, max([r.batches or 0, *per.keys(), 0]) + 1)
        release = r.release
        what = f"{r.plugin or release.plugin} {release.version}" if r.kind == "plugin" else release.version
        out.append(RolloutProgress(
            id=r.id, kind=r.kind, what=what, channel=r.channel, status=r.status, current_batch=r.current_batch,
            batches=r.batches, targets=r.targets, created_at=r.created_at, paused_reason=r.paused_reason,
            counts=dict(counts), per_batch=[(b, per.get(b, {})) for b in numbers]))
    return out


def build(now: datetime | None = None) -> Dashboard:
    now = now or utcnow()
    session = db.session
    cutoff = stale_cutoff(now)

    health = {h or "unknown": n for h, n in counters.installations_by("health").items()}
    total = sum(health.values())
    by_health = [(h, health.get(h, 0)) for h in HEALTH_VALUES] + (
        [("unknown", health["unknown"])] if health.get("unknown") else [])
    by_channel = sorted(((c or "none", n) for c, n in counters.installations_by("release_channel").items()),
                        key=lambda t: (-t[1], t[0]))

    stale_cond = Installation.last_seen_at < cutoff
    stale_count = session.execute(select(func.count()).select_from(Installation).where(stale_cond)).scalar_one()
    stale = list(session.scalars(select(Installation).where(stale_cond)
                                 .order_by(Installation.last_seen_at.asc(), Installation.id.asc()).limit(LIST_LIMIT)))

    open_levels = counters.open_alerts_by_level()
    critical_count = open_levels.get("critical", 0)
    critical = list(session.scalars(
        select(Alert).options(joinedload(Alert.installation)).where(Alert.resolved_at.is_(None), Alert.level == "critical")
        .order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(LIST_LIMIT)))

    active = list(session.scalars(
        select(Rollout).options(joinedload(Rollout.release)).where(Rollout.status.in_(("active", "paused")))
        .order_by(Rollout.created_at.desc(), Rollout.id.desc()).limit(LIST_LIMIT)))
    rollouts = rollout_progress(active)

    since = now - timedelta(days=FAILED_RESTORE_DAYS)
    failed_cond = (RestoreVerification.status == "failed", RestoreVerification.created_at >= since)
    failed_restores_count = session.execute(
        select(func.count()).select_from(RestoreVerification).where(*failed_cond)).scalar_one()
    failed_restores = list(session.scalars(
        select(RestoreVerification).options(joinedload(RestoreVerification.installation)).where(*failed_cond)
        .order_by(RestoreVerification.created_at.desc(), RestoreVerification.id.desc()).limit(LIST_LIMIT)))

    pending_requests_count = session.execute(
        select(func.count()).select_from(PluginRequest).where(PluginRequest.status == "pending")).scalar_one()
    pending_requests = list(session.scalars(
        select(PluginRequest).options(joinedload(PluginRequest.installation))
        .where(PluginRequest.status == "pending").order_by(PluginRequest.created_at.desc(), PluginRequest.id.desc()).limit(LIST_LIMIT)))

    problems = []
    if health.get("down"):
        problems.append(f"{health['down']} installation(s) down")
    if stale_count:
        problems.append(f"{stale_count} installation(s) stale (no heartbeat)")
    if critical_count:
        problems.append(f"{critical_count} open critical alert(s)")
    if failed_restores_count:
        problems.append(f"{failed_restores_count} failed restore verification(s) in {FAILED_RESTORE_DAYS} days")
    paused = [r for r in rollouts if r.status == "paused"]
    if paused:
        problems.append(f"{len(paused)} rollout(s) paused")

    return Dashboard(
        now=now, total=total, by_health=by_health, by_channel=by_channel, stale_count=stale_count, stale=stale,
        critical_count=critical_count, critical=critical, open_by_level=open_levels, rollouts=rollouts,
        failed_restores_count=failed_restores_count, failed_restores=failed_restores,
        pending_requests_count=pending_requests_count, pending_requests=pending_requests, problems=problems,
    )


def as_dict(d: Dashboard) -> dict[str, Any]:  # handy for tests and scripts
    return {"total": d.total, "by_health": dict(d.by_health), "by_channel": dict(d.by_channel),
            "stale": d.stale_count, "critical": d.critical_count, "rollouts": len(d.rollouts),
            "failed_restores": d.failed_restores_count, "pending_requests": d.pending_requests_count,
            "problems": d.problems}
