"""Reading the fleet: installations, alerts and job failures with their filters.

One implementation of every filter, shared by the JSON API (``cp.api.fleet``), the HTML
views (``cp.web.pages``) and the admin panel. Lists are newest first with ties broken by id,
and paginated with ``limit``/``offset``; totals come from one ``COUNT`` with the same filters,
except the alerts' total, which comes from the exact counters (``cp.counters``).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import joinedload

from cp import counters
from cp.dbutil import Page, equal_to, paged, without_index_only_scans
from cp.errors import NotFound
from cp.extensions import db
from cp.models import Alert, Installation, InstallationEvent, InstallationPlugin, InstallationSearch, JobFailure
from cp.timeutil import utcnow

SORTS = {
    "last_seen": (Installation.last_seen_at.desc(), Installation.id.desc()),
    "instance_id": (Installation.instance_id.asc(), Installation.id.asc()),
    "client": (Installation.client.asc(), Installation.id.asc()),
    "health": (Installation.health.asc(), Installation.last_seen_at.desc(), Installation.id.desc()),
    "version": (Installation.version.asc(), Installation.id.asc()),
    "first_seen": (Installation.first_seen_at.desc(), Installation.id.desc()),
}


def stale_cutoff(now: datetime | None = None) -> datetime:
    cfg = current_app.config["CP_SETTINGS"]
    return (now or utcnow()) - timedelta(seconds=cfg.stale_after_seconds)


def is_stale(last_seen_at: datetime | None, now: datetime | None = None) -> bool:
    return last_seen_at is None or last_seen_at < stale_cutoff(now)


def _like(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def installation_ids_matching(q: str) -> Select:
    """Ids of the installations whose instance id, client or domain contains ``q``
    (case-insensitive). Read from ``installation_search`` (kept by triggers, migration 0008),
    whose trigram GIN indexes answer the ILIKE on PostgreSQL (a BitmapOr of the three)."""
    pattern = _like(q.strip())
    return select(InstallationSearch.installation_id).where(or_(
        InstallationSearch.instance_id.ilike(pattern, escape="\\"),
        InstallationSearch.client.ilike(pattern, escape="\\"),
        InstallationSearch.domain.ilike(pattern, escape="\\")))


def installation_filters(*, q: str | None = None, health: str | None = None, release_channel: str | None = None,
                         version: str | None = None, stale: bool | None = None, plugin: str | None = None,
                         plugin_version: str | None = None, now: datetime | None = None) -> list:
    conds = equal_to(Installation, health=health, release_channel=release_channel, version=version)
    if q:
        conds.append(Installation.id.in_(installation_ids_matching(q)))
    if stale is not None:
        cutoff = stale_cutoff(now)
        conds.append(Installation.last_seen_at < cutoff if stale else Installation.last_seen_at >= cutoff)
    if plugin:
        # installations that run the plugin (an approved plugin counts once its install succeeded)
        sub = select(InstallationPlugin.installation_id).where(InstallationPlugin.plugin == plugin)
        if plugin_version:
            sub = sub.where(InstallationPlugin.version == plugin_version)
        else:
            sub = sub.where(InstallationPlugin.version.is_not(None))
        conds.append(Installation.id.in_(sub))
    return conds


def open_alert_count_column():
    return (select(func.count(Alert.id))
            .where(Alert.installation_id == Installation.id, Alert.resolved_at.is_(None))
            .correlate(Installation).scalar_subquery().label("open_alerts"))


def _count(stmt: Select) -> int:
    return db.session.execute(select(func.count()).select_from(stmt.order_by(None).subquery())).scalar_one()


def list_installations(*, limit: int = 50, offset: int = 0, sort: str = "last_seen", now: datetime | None = None,
                       **filters: Any) -> Page:
    """Installations with their open alert count; each item is ``(Installation, open_alerts)``."""
    conds = installation_filters(now=now, **filters)
    base = select(Installation.id).where(and_(*conds)) if conds else select(Installation.id)
    # every heartbeat rewrites its installation's row: a sequential scan counts the whole fleet in
    # half the time of an index-only scan that visits the heap for every row anyway
    total = without_index_only_scans(lambda: _count(base))
    stmt = (select(Installation, open_alert_count_column()).where(*conds)
            .order_by(*SORTS.get(sort, SORTS["last_seen"])).limit(limit).offset(offset))
    rows = db.session.execute(stmt).all()
    return Page([(r[0], r[1]) for r in rows], total, limit, offset)


def get_installation(instance_id: str) -> Installation:
    inst = db.session.scalars(select(Installation).where(Installation.instance_id == instance_id)).first()
    if inst is None:
        raise NotFound(f"No installation {instance_id!r}.")
    return inst


def open_alert_count(installation_id: int) -> int:
    return db.session.execute(select(func.count(Alert.id)).where(
        Alert.installation_id == installation_id, Alert.resolved_at.is_(None))).scalar_one()


def installation_alerts(installation_id: int, resolved_limit: int = 50) -> list[Alert]:
    """Open alerts (newest first), then the ``resolved_limit`` newest resolved ones."""
    open_ = db.session.scalars(select(Alert).where(Alert.installation_id == installation_id, Alert.resolved_at.is_(None))
                               .order_by(Alert.opened_at.desc(), Alert.id.desc())).all()
    resolved = db.session.scalars(
        select(Alert).where(Alert.installation_id == installation_id, Alert.resolved_at.is_not(None))
        .order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(resolved_limit)).all()
    return list(open_) + list(resolved)


def installation_job_failures(installation_id: int, limit: int = 50) -> list[JobFailure]:
    return list(db.session.scalars(
        select(JobFailure).where(JobFailure.installation_id == installation_id)
        .order_by(JobFailure.last_seen_at.desc(), JobFailure.id.desc()).limit(limit)).all())


def installation_events(installation_id: int, limit: int = 100) -> list[InstallationEvent]:
    return list(db.session.scalars(
        select(InstallationEvent).where(InstallationEvent.installation_id == installation_id)
        .order_by(InstallationEvent.at.desc(), InstallationEvent.id.desc()).limit(limit)).all())


def _installation_id_filter(column, instance_id: str | None) -> list:
    if not instance_id:
        return []
    return [column.in_(select(Installation.id).where(Installation.instance_id == instance_id))]


def _open_or_resolved(resolved_at, status: str | None) -> list:
    """``status`` open / resolved (else any) as a condition on the ``resolved_at`` column."""
    return {"open": [resolved_at.is_(None)], "resolved": [resolved_at.is_not(None)]}.get(status or "", [])


def alert_filters(*, instance_id: str | None = None, status: str | None = None, level: str | None = None,
                  source: str | None = None, acknowledged: bool | None = None) -> list:
    conds = (_installation_id_filter(Alert.installation_id, instance_id) + _open_or_resolved(Alert.resolved_at, status)
             + equal_to(Alert, level=level, source=source))
    if acknowledged is not None:
        conds.append(Alert.acknowledged_at.is_not(None) if acknowledged else Alert.acknowledged_at.is_(None))
    return conds


def list_alerts(*, limit: int = 50, offset: int = 0, **filters: Any) -> Page:
    """Newest first; the exact ``total`` comes from the counters (``cp.counters``) unless the
    list is one installation's (then a count of its rows on their index)."""
    conds = alert_filters(**filters)
    # one installation's alerts: a count of its rows on their index; else the counters
    total = None if filters.get("instance_id") else counters.alert_count(
        **{k: v for k, v in filters.items() if k != "instance_id"})
    return paged(Alert, conds, newest=Alert.opened_at, limit=limit, offset=offset,
                 options=(joinedload(Alert.installation),), total=total)


def list_job_failures(*, limit: int = 50, offset: int = 0, instance_id: str | None = None,
                      status: str | None = None, queue: str | None = None) -> Page:
    conds = (_installation_id_filter(JobFailure.installation_id, instance_id)
             + _open_or_resolved(JobFailure.resolved_at, status) + equal_to(JobFailure, queue=queue))
    return paged(JobFailure, conds, newest=JobFailure.last_seen_at, limit=limit, offset=offset,
                 options=(joinedload(JobFailure.installation),))
