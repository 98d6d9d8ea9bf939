"""The audit log: every mutating action from the panel or the API (when, role, action, target,
outcome, source address). Entries are written in their own transaction, so refused and failed
attempts are kept too."""
from __future__ import annotations

from functools import wraps
from typing import Callable

from flask import g, request
from sqlalchemy import insert

from .errors import DomainError
from .extensions import db
from .models import AuditLog
from .timeutil import utcnow


def record(action: str, *, target_type: str | None = None, target_id: str | None = None, outcome: str = "ok",
           details: dict | None = None, role: str | None = None) -> None:
    try:
        ip = request.remote_addr
        role = role or g.get("cp_role")
    except RuntimeError:  # outside a request (CLI)
        ip, role = None, role or "cli"
    with db.engine.begin() as conn:
        conn.execute(insert(AuditLog.__table__).values(
            at=utcnow(), role=role, action=action, target_type=target_type,
            target_id=None if target_id is None else str(target_id)[:255], outcome=outcome[:32],
            source_ip=ip, details=details))


def audited(action: str, target_type: str | None = None, id_kwarg: str | None = None) -> Callable:
    """Decorator for mutating JSON endpoints (place it under ``role_required``)."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args, **kwargs):
            target = kwargs.get(id_kwarg) if id_kwarg else None
            try:
                response = view(*args, **kwargs)
            except DomainError as exc:
                record(action, target_type=target_type, target_id=target, outcome=exc.code)
                raise
            status = getattr(response, "status_code", None)
            if isinstance(response, tuple) and len(response) > 1 and isinstance(response[1], int):
                status = response[1]
            if target is None:
                body = getattr(response, "json", None) if hasattr(response, "is_json") else None
                if isinstance(body, dict) and "id" in body:
                    target = body["id"]
            record(action, target_type=target_type, target_id=target,
                   outcome="ok" if status is None or status < 400 else str(status))
            return response

        return wrapped

    return decorator
