"""``GET /metrics``: Prometheus text exposition of the fleet and of the control plane itself.

Readable by ``support`` and up (session or ``Authorization: Bearer <token>``, so a Prometheus
scrape job uses the support token). Every family is one aggregate query, so a scrape costs
the same at 100 or 100,000 installations; nothing is kept in process memory, so every web
process answers the same.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable

from flask import Blueprint, Response
from sqlalchemy import case, func, select

from cp.auth import role_required
from cp.extensions import db
from cp.fleet.queries import stale_cutoff
from cp.models import Alert, Installation, Job, OutboxEvent, RestoreVerification
from cp.timeutil import utcnow

bp = Blueprint("metrics", __name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float | int | None) -> str:
    if value is None:
        return "0"
    if isinstance(value, float):
        return repr(value) if value != int(value) else str(int(value))
    return str(int(value))


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, object], float | int | None]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{label_text}}} {_num(value)}" if labels else f"{name} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _label(value: str | None) -> str:
    return value if value else "unknown"


def collect(now: datetime | None = None) -> str:
    now = now or utcnow()
    cutoff = stale_cutoff(now)
    out = Exposition()
    s = db.session

    # the fleet: one pass over installations
    rows = s.execute(
        select(Installation.health, Installation.release_channel, func.count(),
               func.sum(case((Installation.last_seen_at < cutoff, 1), else_=0)),
               func.coalesce(func.sum(Installation.heartbeats_total), 0))
        .group_by(Installation.health, Installation.release_channel)
        .order_by(Installation.health, Installation.release_channel)).all()
    out.family("cp_installations", "gauge", "Installations by reported health and release channel.",
               [({"health": _label(h), "release_channel": _label(c)}, n) for h, c, n, _, _ in rows])
    out.family("cp_installations_total", "gauge", "Installations known to the control plane.",
               [({}, sum(r[2] for r in rows))])
    out.family("cp_installations_stale", "gauge",
               "Installations without a heartbeat for CONTROL_PLANE_STALE_AFTER_SECONDS.",
               [({}, sum(int(r[3] or 0) for r in rows))])
    out.family("cp_heartbeats_received_total", "counter",
               "Heartbeats received, summed over the installations that exist.",
               [({}, sum(int(r[4] or 0) for r in rows))])

    # open alerts, on the partial index of open alerts
    alert_rows = s.execute(
        select(Alert.level, Alert.source, func.count()).where(Alert.resolved_at.is_(None))
        .group_by(Alert.level, Alert.source).order_by(Alert.level, Alert.source)).all()
    out.family("cp_alerts_open", "gauge", "Open alerts by level and source.",
               [({"level": lvl, "source": src}, n) for lvl, src, n in alert_rows])

    # the webhook outbox
    ob = OutboxEvent.__table__
    by_status = dict(s.execute(select(ob.c.status, func.count()).group_by(ob.c.status)).all())
    out.family("cp_outbox_events", "gauge", "Alert webhook events by delivery status.",
               [({"status": st}, by_status.get(st, 0)) for st in ("pending", "delivered", "dead")])
    out.family("cp_outbox_depth", "gauge", "Alert webhook events waiting to be delivered.",
               [({}, by_status.get("pending", 0))])
    failing = s.execute(select(func.count()).where(ob.c.status == "pending", ob.c.last_error.is_not(None))).scalar()
    oldest = s.execute(select(func.min(ob.c.created_at)).where(ob.c.status == "pending")).scalar()
    out.family("cp_outbox_failing_events", "gauge",
               "Pending webhook events whose last delivery attempt failed (being retried with backoff).",
               [({}, failing)])
    out.family("cp_outbox_dead_events", "gauge",
               "Webhook events given up after CONTROL_PLANE_WEBHOOK_MAX_ATTEMPTS (retry from the admin panel).",
               [({}, by_status.get("dead", 0))])
    age = (now - oldest).total_seconds() if oldest is not None else 0.0
    out.family("cp_outbox_oldest_pending_age_seconds", "gauge",
               "Age of the oldest undelivered webhook event (0 when none).", [({}, round(max(age, 0.0), 3))])

    # rollout jobs and restore verifications
    jobs = s.execute(
        select(Job.kind, Job.status, func.count()).where(Job.rollout_id.is_not(None))
        .group_by(Job.kind, Job.status).order_by(Job.kind, Job.status)).all()
    out.family("cp_rollout_jobs", "gauge", "Jobs of rollouts by kind (update, plugin) and status.",
               [({"kind": k, "status": st}, n) for k, st, n in jobs])
    restores = s.execute(
        select(RestoreVerification.status, func.count()).group_by(RestoreVerification.status)
        .order_by(RestoreVerification.status)).all()
    out.family("cp_restore_verifications", "gauge", "Restore verifications by status.",
               [({"status": st}, n) for st, n in restores])
    s.rollback()
    return out.text()


@bp.get("/metrics")
@role_required("support")
def metrics():
    """Prometheus metrics (text exposition format 0.0.4); support and up, session or bearer token."""
    return Response(collect(), mimetype="text/plain", content_type=CONTENT_TYPE,
                    headers={"Cache-Control": "no-store"})


def init_app(app) -> None:
    app.register_blueprint(bp)
