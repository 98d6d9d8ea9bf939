"""The audit log: every mutating action from the panel or the API (when, role, action, target,
outcome, source address). Entries are written in their own transaction, so refused and failed
attempts are kept too."""
from __future__ import annotations

from datetime import datetime
from functools import wraps
from typing import Callable

from flask import g, request
from sqlalchemy import insert
from werkzeug.exceptions import HTTPException

from cp.dbutil import equal_to, paged
from cp.errors import DomainError
from cp.extensions import db
from cp.models import AuditLog
from cp.timeutil import utcnow


def _session_role() -> str | None:
    from flask_login import current_user

    return current_user.role if current_user and current_user.is_authenticated else None


def record(action: str, *, target_type: str | None = None, target_id: str | None = None, outcome: str = "ok",
           details: dict | None = None, role: str | None = None) -> None:
    try:
        ip = request.remote_addr
        role = role or g.get("cp_role") or _session_role()
    except RuntimeError:  # outside a request (CLI)
        ip, role = None, role or "cli"
    with db.engine.begin() as conn:
        conn.execute(insert(AuditLog.__table__).values(
            at=utcnow(), role=role, action=action[:64], target_type=target_type,
            target_id=None if target_id is None else str(target_id)[:255], outcome=outcome[:32],
            source_ip=ip, details=details))


def audited(action: str, target_type: str | None = None, id_kwarg: str | None = None) -> Callable:
    """Decorator for mutating JSON endpoints (place it under ``role_required``).

    Every outcome is recorded: ``ok``, the error code of a refused request (domain error or
    HTTP error), or ``error`` for a crash. The transaction of a failed request is rolled back
    before the entry is written (the entry has its own transaction)."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args, **kwargs):
            target = kwargs.get(id_kwarg) if id_kwarg else None
            try:
                response = view(*args, **kwargs)
            except DomainError as exc:
                db.session.rollback()
                record(action, target_type=target_type, target_id=target, outcome=exc.code)
                raise
            except HTTPException as exc:
                db.session.rollback()
                record(action, target_type=target_type, target_id=target, outcome=str(exc.code or "error"))
                raise
            except Exception:
                db.session.rollback()
                record(action, target_type=target_type, target_id=target, outcome="error")
                raise
            status = getattr(response, "status_code", None)
            if isinstance(response, tuple) and len(response) > 1 and isinstance(response[1], int):
                status = response[1]
            if target is None:
                resp = response[0] if isinstance(response, tuple) else response
                body = resp.get_json(silent=True) if hasattr(resp, "get_json") else None
                if isinstance(body, dict) and "id" in body:
                    target = body["id"]
                elif isinstance(body, dict) and isinstance(body.get("items"), list):  # a bulk creation
                    ids = [str(i["id"]) for i in body["items"] if isinstance(i, dict) and "id" in i]
                    target = ",".join(ids) or None
            record(action, target_type=target_type, target_id=target,
                   outcome="ok" if status is None or status < 400 else str(status))
            return response

        wrapped.cp_audited = action  # read by the tests that check every mutating endpoint is audited
        return wrapped

    return decorator


# --- reading the log --------------------------------------------------------------------------
def audit_filters(*, action: str | None = None, role: str | None = None, outcome: str | None = None,
                  target_type: str | None = None, target_id: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> list:
    conds = equal_to(AuditLog, action=action, role=role, outcome=outcome, target_type=target_type,
                     target_id=target_id)
    if since:
        conds.append(AuditLog.at >= since)
    if until:
        conds.append(AuditLog.at < until)
    return conds


def list_entries(*, limit: int = 50, offset: int = 0, **filters) -> tuple[list[AuditLog], int]:
    """Entries newest first (ties by id) and the total matching ``filters``."""
    conds = audit_filters(**filters)
    page = paged(AuditLog, conds, newest=AuditLog.at, limit=limit, offset=offset)
    return page.items, page.total
