"""An installation's past, for pictures: SLO series against their limits, and a timeline of its
heartbeat-derived changes, alerts, update jobs and restore verifications.

Reads only (no HTTP); every query is bounded by the window and a row limit (the SLO series by
``MAX_POINTS`` bins, merged in SQL on PostgreSQL and SQLite alike) and uses the
per-installation indexes (``slo_samples (installation_id, bucket)``,
``installation_events (installation_id, at)``, ``alerts (installation_id, opened_at)``,
``jobs (installation_id, ...)``, ``restore_verifications (installation_id, status)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import BigInteger, Integer, and_, case, cast, extract, func, literal, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from cp.web.charts import TimelineEvent
from cp.extensions import db
from cp.models import Alert, InstallationEvent, Job, Release, RestoreVerification, SloSample
from cp.timeutil import utcnow

WINDOWS = {"6h": timedelta(hours=6), "24h": timedelta(hours=24), "7d": timedelta(days=7),
           "30d": timedelta(days=30)}
DEFAULT_WINDOW = "7d"
MAX_POINTS = 360          # per SLO chart: samples are binned in SQL into at most this many points
BUCKET_SECONDS = 300      # one SLO sample per installation per 5 minutes
GAP = timedelta(minutes=15)  # no sample for longer (more than two buckets) breaks the line
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


class epoch_seconds(FunctionElement):
    """Whole seconds since 1970 of a UTC timestamp column, as an integer, on every backend."""

    type = BigInteger()
    name = "epoch_seconds"
    inherit_cache = True


@compiles(epoch_seconds)
def _epoch_seconds_postgresql(element: epoch_seconds, compiler, **kw) -> str:
    return compiler.process(cast(extract("epoch", *element.clauses), BigInteger), **kw)


@compiles(epoch_seconds, "sqlite")
def _epoch_seconds_sqlite(element: epoch_seconds, compiler, **kw) -> str:
    return compiler.process(cast(func.strftime("%s", *element.clauses), BigInteger), **kw)


def bin_seconds(start: datetime, end: datetime, max_points: int = MAX_POINTS) -> int:
    """The width of a chart point: one 5-minute bucket while the window holds at most
    ``max_points`` of them, else the fewest whole buckets that fit the window in ``max_points``."""
    span = int((end - start).total_seconds())
    return BUCKET_SECONDS * (span // (BUCKET_SECONDS * max_points) + 1)


def slo_series(installation_id: int, start: datetime, end: datetime) -> list[SloSeries]:
    """Each figure's points over [start, end], binned in SQL: a point per bin of
    ``bin_seconds`` (its first time, each figure's maximum, so a breach never disappears), a
    ``None`` break where no sample came for more than ``GAP`` (or for a whole bin), the breaches
    (points above the limit) and the latest value of the window."""
    limits = current_app.config["CP_SETTINGS"].slo_limits()
    width = bin_seconds(start, end)
    start_epoch = int(start.timestamp())
    in_window = (SloSample.installation_id == installation_id, SloSample.bucket >= start, SloSample.bucket <= end)
    columns = {figure: getattr(SloSample, figure) for figure in SLO_FIGURES}
    over = {figure: (func.coalesce(func.sum(case((col > limits[figure], 1), else_=0)), 0)
                     if limits.get(figure) is not None else literal(0, Integer))
            for figure, col in columns.items()}
    bins = db.session.execute(
        select(func.min(SloSample.bucket).label("first"),
               *(func.max(col).label(figure) for figure, col in columns.items()),
               *(n.label(f"over_{figure}") for figure, n in over.items()))
        .where(*in_window)
        .group_by((epoch_seconds(SloSample.bucket) - literal(start_epoch, BigInteger)) // literal(width, BigInteger))
        .order_by(func.min(SloSample.bucket))).all()
    # a figure's latest value lies in the last bin where its maximum is not None: it is that
    # maximum when a bin is one bucket (one sample), else read from that bin alone
    last_bins = {figure: next((row for row in reversed(bins) if getattr(row, figure) is not None), None)
                 for figure in columns}
    latest = {figure: getattr(row, figure) for figure, row in last_bins.items() if row is not None}
    wanted = {figure: row.first for figure, row in last_bins.items() if row is not None}
    if width > BUCKET_SECONDS and wanted:
        latest = dict(zip(wanted, db.session.execute(select(*(
            select(columns[figure]).where(*in_window, columns[figure].is_not(None), SloSample.bucket >= first,
                                          SloSample.bucket < first + timedelta(seconds=width))
            .order_by(SloSample.bucket.desc()).limit(1).scalar_subquery()
            for figure, first in wanted.items()))).one()))

    # a break where the next point is more than a bin and more than GAP after the previous one
    breaks_after = max(timedelta(seconds=width), GAP)
    out = []
    for figure, (label, unit) in SLO_FIGURES.items():
        points: list[tuple[datetime, float | None]] = []
        prev: tuple[int, datetime] | None = None
        for row in bins:
            index = (int(row.first.timestamp()) - start_epoch) // width
            if prev is not None and timedelta(seconds=(index - prev[0]) * width) > breaks_after:
                points.append((prev[1] + timedelta(seconds=width), None))
            points.append((row.first, getattr(row, figure)))
            prev = (index, row.first)
        out.append(SloSeries(
            figure=figure, label=label, unit=unit, limit=limits.get(figure), points=points,
            latest=latest.get(figure), breaches=sum(getattr(row, f"over_{figure}") for row in bins),
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
