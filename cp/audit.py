"""The audit log: every mutating action from the panel, the API and the CLI (when, who, which
role, what, on what, outcome, source address). No HTTP here: callers pass the actor and the
source address.

- ``add`` puts an entry into the caller's session: it is committed in the same transaction as
  the action it records, or not at all. An action is never on disk without its entry.
- ``record_apart`` writes the entry of a refused or failed attempt in a transaction of its own,
  after the attempt's own transaction was rolled back (refusals are kept too).
- ``open_action`` / ``close_action`` mark a request whose transaction belongs to an audited
  action: a commit before the entry is added fails loudly (``guard_commit``), so a handler that
  commits on its own cannot slip an unaudited change through.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import event, func, insert, select
from sqlalchemy.orm import Session

from cp.extensions import db
from cp.models import AuditLog
from cp.people import Actor  # noqa: F401  (callers name their actor through this module too)
from cp.timeutil import utcnow

CLI = Actor(role="cli", via="role_token", name="cli")  # what the command line's actions are recorded as


def _values(action: str, actor: Actor | None, source_ip: str | None, target_type: str | None,
            target_id: object, outcome: str, details: dict | None) -> dict:
    return dict(at=utcnow(), role=actor.role if actor else None, actor=actor.label[:255] if actor else None,
                action=action[:64], target_type=target_type,
                target_id=None if target_id is None else str(target_id)[:255], outcome=outcome[:32],
                source_ip=None if source_ip is None else source_ip[:64], details=details)


def add(action: str, *, actor: Actor | None, source_ip: str | None = None, target_type: str | None = None,
        target_id: object = None, outcome: str = "ok", details: dict | None = None) -> AuditLog:
    """An entry in the session's transaction, committed with the action it records."""
    entry = AuditLog(**_values(action, actor, source_ip, target_type, target_id, outcome, details))
    db.session.add(entry)
    return entry


def record_apart(action: str, *, actor: Actor | None, source_ip: str | None = None,
                 target_type: str | None = None, target_id: object = None, outcome: str = "ok",
                 details: dict | None = None) -> None:
    """An entry in a transaction of its own (for an attempt that was refused or rolled back)."""
    with db.engine.begin() as conn:
        conn.execute(insert(AuditLog.__table__).values(
            **_values(action, actor, source_ip, target_type, target_id, outcome, details)))


# --- an audited action owns its transaction -----------------------------------------------------
GUARD_KEY = "cp_audit_open"  # in ``Session.info``: the session's transaction belongs to an audited action


def open_action() -> None:
    """From here, the session's transaction is an audited action's: only ``commit_with`` commits it."""
    db.session.info[GUARD_KEY] = True


def close_action() -> None:
    db.session.info.pop(GUARD_KEY, None)


def commit_with(action: str, **entry) -> AuditLog:
    """Add the action's entry and commit both in one transaction (the one commit of an audited
    action); closes the action."""
    row = add(action, **entry)
    close_action()
    db.session.commit()
    return row


def guard_commit(session: Session) -> None:
    if session.info.get(GUARD_KEY) and not session.in_nested_transaction():  # a savepoint's release is fine
        raise RuntimeError("an audited action tried to commit before its audit entry was added; "
                           "its entry and the action commit together (cp.audit.commit_with)")


def init_app(app) -> None:
    if not event.contains(Session, "before_commit", guard_commit):
        event.listen(Session, "before_commit", guard_commit)


# --- reading the log --------------------------------------------------------------------------
def audit_filters(*, action: str | None = None, role: str | None = None, actor: str | None = None,
                  outcome: str | None = None, target_type: str | None = None, target_id: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> list:
    conds: list = []
    if action:
        conds.append(AuditLog.action == action)
    if role:
        conds.append(AuditLog.role == role)
    if actor:
        conds.append(AuditLog.actor == actor.strip().lower() if "@" in actor else AuditLog.actor == actor)
    if outcome:
        conds.append(AuditLog.outcome == outcome)
    if target_type:
        conds.append(AuditLog.target_type == target_type)
    if target_id:
        conds.append(AuditLog.target_id == target_id)
    if since:
        conds.append(AuditLog.at >= since)
    if until:
        conds.append(AuditLog.at < until)
    return conds


def list_entries(*, limit: int = 50, offset: int = 0, **filters) -> tuple[list[AuditLog], int]:
    """Entries newest first (ties by id) and the total matching ``filters``."""
    conds = audit_filters(**filters)
    total = db.session.execute(select(func.count()).select_from(AuditLog).where(*conds)).scalar_one()
    items = db.session.scalars(select(AuditLog).where(*conds).order_by(AuditLog.at.desc(), AuditLog.id.desc())
                               .limit(limit).offset(offset)).all()
    return list(items), total
