"""Alert and job-failure lifecycle: identity, open, acknowledge, resolve, and the outbox hook.

Every change that opens or resolves an alert goes through ``enqueue_events`` in the same
transaction, so the webhook outbox (``cp.background.outbox``) never misses or invents an event.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Iterable

from flask import current_app
from sqlalchemy import select, update

from cp.dbutil import get_by_id, insert
from cp.errors import NotFound
from cp.extensions import db
from cp.models import Alert, Installation, JobFailure, OutboxEvent
from cp.timeutil import isoformat, utcnow


# --- identity ------------------------------------------------------------------------------
def agent_alert_fingerprint(level: str, message: str) -> str:
    """An agent alert is identified by (installation, level, message)."""
    return "agent:" + hashlib.sha256(f"{level}\x00{message}".encode()).hexdigest()[:40]


def job_failure_fingerprint(queue: str, message: str) -> str:
    return hashlib.sha256(f"{queue}\x00{message}".encode()).hexdigest()[:40]


# --- outbox --------------------------------------------------------------------------------
def alert_payload(alert: dict | Alert, instance_id: str) -> dict:
    get = alert.get if isinstance(alert, dict) else (lambda k: getattr(alert, k))
    return {
        "id": get("id"),
        "instance_id": instance_id,
        "level": get("level"),
        "source": get("source"),
        "message": get("message"),
        "opened_at": isoformat(get("opened_at")),
        "resolved_at": isoformat(get("resolved_at")),
    }


def webhook_enabled() -> bool:
    return bool(current_app.config["CP_SETTINGS"].alert_webhook_url)


def enqueue_events(events: Iterable[tuple[str, dict]], now: datetime | None = None) -> int:
    """Write ``(event, alert_payload)`` pairs to the outbox in the current transaction
    (one statement). Nothing is written when no webhook is configured."""
    rows = [
        {"alert_id": p["id"], "event": ev, "payload": {"event": ev, "alert": p},
         "status": "pending", "attempts": 0, "next_attempt_at": now or utcnow(), "created_at": now or utcnow()}
        for ev, p in events
    ]
    if not rows or not webhook_enabled():
        return 0
    db.session.execute(insert(OutboxEvent), rows)
    return len(rows)


# --- single-alert operations (sweeps, restores, rollouts, humans) --------------------------
def open_alert(installation: Installation, *, level: str, source: str, fingerprint: str,
               message: str, now: datetime | None = None) -> Alert:
    """Open an alert unless one with this fingerprint is open (then it is seen again)."""
    now = now or utcnow()
    existing = db.session.scalars(
        select(Alert).where(Alert.installation_id == installation.id, Alert.fingerprint == fingerprint,
                            Alert.resolved_at.is_(None)).with_for_update()
    ).first()
    if existing is not None:
        existing.last_seen_at = now
        existing.occurrences += 1
        return existing
    alert = Alert(installation_id=installation.id, level=level, source=source, fingerprint=fingerprint,
                  message=message, opened_at=now, last_seen_at=now, occurrences=1)
    db.session.add(alert)
    db.session.flush()
    enqueue_events([("opened", alert_payload(alert, installation.instance_id))], now)
    return alert


def resolve_open(installation_id: int, fingerprint: str, *, by: str, now: datetime | None = None) -> int:
    """Resolve the open alert with this fingerprint, if any; returns how many were resolved."""
    now = now or utcnow()
    alerts = db.session.scalars(
        select(Alert).where(Alert.installation_id == installation_id, Alert.fingerprint == fingerprint,
                            Alert.resolved_at.is_(None)).with_for_update()
    ).all()
    for alert in alerts:
        _resolve(alert, by, now)
    return len(alerts)


def _resolve(alert: Alert, by: str, now: datetime) -> None:
    alert.resolved_at = now
    alert.resolved_by = by
    db.session.flush()
    enqueue_events([("resolved", alert_payload(alert, alert.installation.instance_id))], now)


def get_alert(alert_id: int, *, lock: bool = False) -> Alert:
    return get_by_id(Alert, alert_id, lock=lock, missing=f"No alert with id {alert_id}.")


def acknowledge_alert(alert_id: int, *, by: str, now: datetime | None = None) -> Alert:
    """Acknowledge; repeating it (or acknowledging a resolved alert) changes nothing."""
    alert = get_alert(alert_id, lock=True)
    if alert.acknowledged_at is None and alert.resolved_at is None:
        alert.acknowledged_at = now or utcnow()
        alert.acknowledged_by = by
    return alert


def resolve_alert(alert_id: int, *, by: str, now: datetime | None = None) -> Alert:
    """Resolve by hand; repeating it changes nothing. An agent alert that is still reported
    opens again as a new row on the next heartbeat."""
    alert = get_alert(alert_id, lock=True)
    if alert.resolved_at is None:
        _resolve(alert, by, now or utcnow())
    return alert


def resolve_job_failure(failure_id: int, *, by: str, now: datetime | None = None) -> JobFailure:
    failure = db.session.scalars(
        select(JobFailure).where(JobFailure.id == failure_id).with_for_update()).first()
    if failure is None:
        raise NotFound(f"No job failure with id {failure_id}.")
    if failure.resolved_at is None:
        failure.resolved_at = now or utcnow()
        failure.resolved_by = by
    return failure


def bulk_acknowledge(ids: list[int], *, by: str) -> int:
    now = utcnow()
    res = db.session.execute(
        update(Alert).where(Alert.id.in_(ids), Alert.acknowledged_at.is_(None), Alert.resolved_at.is_(None))
        .values(acknowledged_at=now, acknowledged_by=by))
    return res.rowcount or 0


def bulk_resolve(ids: list[int], *, by: str) -> int:
    n = 0
    for alert_id in ids:
        alert = get_alert(alert_id, lock=True)
        if alert.resolved_at is None:
            _resolve(alert, by, utcnow())
            n += 1
    return n


def bulk_resolve_job_failures(ids: list[int], *, by: str) -> int:
    res = db.session.execute(
        update(JobFailure).where(JobFailure.id.in_(ids), JobFailure.resolved_at.is_(None))
        .values(resolved_at=utcnow(), resolved_by=by))
    return res.rowcount or 0
