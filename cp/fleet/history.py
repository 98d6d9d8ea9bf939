"""An installation's past, for pictures: SLO series against their limits, and a timeline of its
heartbeat-derived changes, alerts, update jobs and restore verifications.

Reads only (no HTTP); every query is bounded by the window and a row limit and uses the
per-installation indexes (``slo_samples (installation_id, bucket)``,
``installation_events (installation_id, at)``, ``alerts (installation_id, opened_at)``,
``jobs (installation_id, ...)``, ``restore_verifications (installation_id, status)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, or_, select

from cp.web.charts import TimelineEvent
from cp.extensions import db
from cp.models import Alert, InstallationEvent, Job, Release, RestoreVerification, SloSample
from cp.timeutil import utcnow

WINDOWS = {"6h": timedelta(hours=6), "24h": timedelta(hours=24), "7d": timedelta(days=7),
           "30d": timedelta(days=30)}
DEFAULT_WINDOW = "7d"
MAX_POINTS = 360          # per SLO chart: samples are merged into at most this many points
MAX_EVENTS_PER_LANE = 500
TIMELINE_LANES = ("heartbeat", "alerts", "updates", "restores")

# figure -> (label, unit, setting attribute of its limit)
SLO_FIGURES = {
    "slo_p95_ms": ("p95 latency", "ms"),
    "slo_error_rate": ("Error rate", ""),
    "slo_webhook_retry_rate": ("Webhook retry rate", ""),
}


def window(name: str | None) -> tuple[str, timedelta]:
    name = name if name in WINDOWS else DEFAULT_WINDOW
    return name, WINDOWS[name]


@dataclass
class SloSeries:
    figure: str
    label: str
    unit: str
    limit: float | None
    points: list[tuple[datetime, float | None]]
    latest: float | None
    breaches: int  # points above the limit in the window


def _downsample(rows: list[tuple[datetime, float | None]], start: datetime, end: datetime,
                max_points: int) -> list[tuple[datetime, float | None]]:
    """At most ``max_points`` points, keeping each bin's maximum (a breach never disappears)."""
    if len(rows) <= max_points:
        return rows
    span = (end - start).total_seconds() or 1.0
    bins: dict[int, tuple[datetime, float | None]] = {}
    for at, v in rows:
        b = min(int((at - start).total_seconds() / span * max_points), max_points - 1)
        prev = bins.get(b)
        if prev is None or (v is not None and (prev[1] is None or v > prev[1])):
            bins[b] = (at, v)
    return [bins[b] for b in sorted(bins)]


def slo_series(installation_id: int, start: datetime, end: datetime) -> list[SloSeries]:
    limits = current_app.config["CP_SETTINGS"].slo_limits()
    rows = db.session.execute(
        select(SloSample.bucket, SloSample.slo_p95_ms, SloSample.slo_error_rate, SloSample.slo_webhook_retry_rate)
        .where(SloSample.installation_id == installation_id, SloSample.bucket >= start, SloSample.bucket <= end)
        .order_by(SloSample.bucket)).all()
    out = []
    for figure, (label, unit) in SLO_FIGURES.items():
        raw = [(r.bucket, getattr(r, figure)) for r in rows]
        # a gap of more than two buckets breaks the line (no heartbeat, no data)
        points: list[tuple[datetime, float | None]] = []
        prev: datetime | None = None
        for at, v in raw:
            if prev is not None and at - prev > timedelta(minutes=15):
                points.append((prev + timedelta(minutes=5), None))
            points.append((at, v))
            prev = at
        limit = limits.get(figure)
        values = [v for _, v in raw if v is not None]
        out.append(SloSeries(
            figure=figure, label=label, unit=unit, limit=limit,
            points=_downsample(points, start, end, MAX_POINTS),
            latest=values[-1] if values else None,
            breaches=sum(1 for v in values if limit is not None and v > limit),
        ))
    return out


def timeline_events(installation_id: int, start: datetime, end: datetime) -> list[TimelineEvent]:
    """Everything that happened to the installation in [start, end], oldest first."""
    events: list[TimelineEvent] = []

    for e in db.session.scalars(
            select(InstallationEvent).where(InstallationEvent.installation_id == installation_id,
                                            InstallationEvent.at >= start, InstallationEvent.at <= end)
            .order_by(InstallationEvent.at.desc(), InstallationEvent.id.desc()).limit(MAX_EVENTS_PER_LANE)):
        kind = e.new_value if e.field in ("health", "backup_status") and e.new_value else "change"
        label = f"{e.field.replace('_', ' ')}: {e.old_value or '—'} → {e.new_value or '—'}"
        events.append(TimelineEvent("heartbeat", e.at, label, kind))

    # alerts open at any moment of the window: opened before its end, not resolved before its start
    for a in db.session.scalars(
            select(Alert).where(Alert.installation_id == installation_id, Alert.opened_at <= end,
                                or_(Alert.resolved_at.is_(None), Alert.resolved_at >= start))
            .order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(MAX_EVENTS_PER_LANE)):
        state = f"resolved {a.resolved_at:%Y-%m-%d %H:%M} UTC" if a.resolved_at else "open"
        events.append(TimelineEvent("alerts", max(a.opened_at, start), f"[{a.level}/{a.source}] {a.message} ({state})",
                                    a.level, end=a.resolved_at, open_ended=a.resolved_at is None,
                                    extra={"id": a.id}))

    jobs = db.session.execute(
        select(Job, Release.version, Release.plugin).join(Release, Release.id == Job.release_id)
        .where(Job.installation_id == installation_id,
               or_(and_(Job.created_at >= start, Job.created_at <= end),
                   and_(Job.finished_at.is_not(None), Job.finished_at >= start, Job.finished_at <= end),
                   and_(Job.finished_at.is_(None), Job.created_at <= end)))
        .order_by(Job.created_at.desc(), Job.id.desc()).limit(MAX_EVENTS_PER_LANE)).all()
    for job, version, plugin in jobs:
        what = f"{plugin} {version}" if plugin else f"update to {version}"
        at = job.finished_at or job.fetched_at or job.created_at
        text = f"{what}: {job.status}" + (f" ({job.message})" if job.message else "")
        events.append(TimelineEvent("updates", max(at, start), text, job.status))

    for r in db.session.scalars(
            select(RestoreVerification).where(
                RestoreVerification.installation_id == installation_id,
                or_(and_(RestoreVerification.scheduled_for >= start, RestoreVerification.scheduled_for <= end),
                    and_(RestoreVerification.reported_at.is_not(None), RestoreVerification.reported_at >= start,
                         RestoreVerification.reported_at <= end)))
            .order_by(RestoreVerification.created_at.desc(), RestoreVerification.id.desc())
            .limit(MAX_EVENTS_PER_LANE)):
        at = r.reported_at or r.scheduled_for
        text = f"restore verification{' of ' + r.backup_id if r.backup_id else ''}: {r.status}"
        if r.message:
            text += f" ({r.message})"
        events.append(TimelineEvent("restores", max(at, start), text, r.status))

    events.sort(key=lambda e: e.at)
    return events


def installation_pictures(installation_id: int, window_name: str | None, now: datetime | None = None) -> dict:
    """What the installation page draws: the window, the SLO series and the timeline events."""
    name, length = window(window_name)
    end = now or utcnow()
    start = end - length
    return {
        "window": name, "windows": list(WINDOWS), "start": start, "end": end,
        "slo": slo_series(installation_id, start, end),
        "events": timeline_events(installation_id, start, end),
    }
