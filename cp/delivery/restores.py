"""Restore verifications: scheduled by an admin, run by the agent, reported back.

- ``schedule`` creates one ``scheduled`` verification per installation (``scheduled_for``
  unset: now); an unknown installation refuses the whole request (404, nothing created).
- The agent sees its verifications in the heartbeat response once ``scheduled_for`` is
  reached (``cp.fleet.heartbeats.pending_for``).
- ``report`` stores ``passed`` or ``failed`` once (the agent endpoint checks first that the
  verification is the reporting installation's own). The same result again is a no-op; a
  different one is a 409. A ``failed`` result opens a critical ``restore`` alert (one per
  verification, forwarded to the webhook like every alert); a later ``passed`` verification of
  the same installation resolves the ``restore`` alerts of the earlier failed ones.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from cp.fleet import alerts
from cp.dbutil import Page, get_by_id, paged
from cp.delivery.rollouts import refuse_another_report
from cp.errors import Conflict, NotFound
from cp.extensions import db
from cp.models import Alert, Installation, RestoreVerification
from cp.timeutil import utcnow

ALERT_PREFIX = "restore:"
# Who may read restore verifications, wherever they are shown: ``GET /api/restores``, the panel's
# "Restore verifications" screen and the installation page's table. A failed one also opens an
# alert, which every role sees.
READ_ROLE = "admin"
HISTORY_LIMIT = 50


def alert_fingerprint(verification_id: int) -> str:
    return f"{ALERT_PREFIX}{verification_id}"


def _create(installations: list[Installation], *, backup_id: str | None, scheduled_for: datetime | None,
            by: str | None, now: datetime) -> list[RestoreVerification]:
    items = [RestoreVerification(installation=inst, installation_id=inst.id, backup_id=backup_id,
                                 scheduled_for=scheduled_for or now, status="scheduled", created_at=now,
                                 created_by=by)
             for inst in installations]
    db.session.add_all(items)
    db.session.flush()
    return items


def schedule(instance_ids: list[str], *, backup_id: str | None = None, scheduled_for: datetime | None = None,
             by: str | None = None, now: datetime | None = None) -> list[RestoreVerification]:
    """Schedule one verification per installation (duplicates in ``instance_ids`` count once,
    in the order given). Any unknown installation: ``NotFound`` naming them, nothing created."""
    wanted = list(dict.fromkeys(instance_ids))
    found = {i.instance_id: i for i in db.session.scalars(
        select(Installation).where(Installation.instance_id.in_(wanted))).all()}
    unknown = [i for i in wanted if i not in found]
    if unknown:
        raise NotFound(f"Unknown installation(s): {', '.join(unknown[:20])}.", code="unknown_installation",
                       details={"instance_ids": unknown})
    return _create([found[i] for i in wanted], backup_id=backup_id, scheduled_for=scheduled_for, by=by,
                   now=now or utcnow())


def schedule_for_installations(installation_ids: list[int], *, by: str | None = None,
                               now: datetime | None = None) -> list[RestoreVerification]:
    """The admin panel's bulk action: one verification per selected installation, due now."""
    found = db.session.scalars(select(Installation).where(Installation.id.in_(installation_ids))
                               .order_by(Installation.id)).all()
    if len(found) != len(set(installation_ids)):
        raise NotFound("Some selected installations no longer exist.")
    return _create(list(found), backup_id=None, scheduled_for=None, by=by, now=now or utcnow())


def get(verification_id: int, *, lock: bool = False) -> RestoreVerification:
    return get_by_id(RestoreVerification, verification_id, lock=lock,
                     missing=f"No restore verification with id {verification_id}.")


def report(item: RestoreVerification, status: str, *, duration_s: float | None = None,
           message: str | None = None, now: datetime | None = None) -> bool:
    """Store the agent's result on ``item`` (fetched with ``get(..., lock=True)`` and checked to
    belong to the reporting installation). Returns whether anything changed: the same status
    again changes nothing; another status on a reported verification is a ``Conflict``."""
    now = now or utcnow()
    if item.status != "scheduled":
        refuse_another_report(item.status, status, Conflict(
            f"Restore verification {item.id} was already reported as {item.status}.", code="already_reported",
            details={"status": item.status}))
        return False
    item.status = status
    item.duration_s = duration_s
    item.message = message
    item.reported_at = now
    db.session.flush()
    if status == "failed":
        backup = f" of backup {item.backup_id}" if item.backup_id else ""
        alerts.open_alert(item.installation, level="critical", source="restore",
                          fingerprint=alert_fingerprint(item.id),
                          message=f"Restore verification #{item.id}{backup} failed"
                                  + (f": {message}" if message else "."),
                          now=now)
    else:
        _resolve_earlier_failures(item, now)
    return True


def _resolve_earlier_failures(item: RestoreVerification, now: datetime) -> None:
    open_fps = db.session.scalars(
        select(Alert.fingerprint).where(Alert.installation_id == item.installation_id, Alert.source == "restore",
                                        Alert.resolved_at.is_(None))).all()
    for fp in open_fps:
        ref = fp[len(ALERT_PREFIX):] if fp.startswith(ALERT_PREFIX) else ""
        if ref.isdigit() and int(ref) < item.id:
            alerts.resolve_open(item.installation_id, fp, by="restore", now=now)


def filters(*, instance_id: str | None = None, status: str | None = None, backup_id: str | None = None) -> list:
    conds: list = []
    if instance_id:
        conds.append(RestoreVerification.installation_id.in_(
            select(Installation.id).where(Installation.instance_id == instance_id)))
    if status:
        conds.append(RestoreVerification.status == status)
    if backup_id:
        conds.append(RestoreVerification.backup_id == backup_id)
    return conds


def list_verifications(*, limit: int = 50, offset: int = 0, **kw: Any) -> Page:
    """Newest first (by creation, ties by id)."""
    conds = filters(**kw)
    return paged(RestoreVerification, conds, newest=RestoreVerification.created_at, limit=limit, offset=offset,
                 options=(joinedload(RestoreVerification.installation),))


def installation_history(installation_id: int, limit: int = HISTORY_LIMIT) -> list[RestoreVerification]:
    """The installation page's restore section: its newest verifications."""
    return list(db.session.scalars(
        select(RestoreVerification).where(RestoreVerification.installation_id == installation_id)
        .order_by(RestoreVerification.created_at.desc(), RestoreVerification.id.desc()).limit(limit)).all())


def as_dict(item: RestoreVerification) -> dict:
    return {
        "id": item.id, "instance_id": item.installation.instance_id, "backup_id": item.backup_id,
        "scheduled_for": item.scheduled_for, "status": item.status, "duration_s": item.duration_s,
        "message": item.message, "created_at": item.created_at, "created_by": item.created_by,
        "reported_at": item.reported_at,
    }
