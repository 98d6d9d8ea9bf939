"""``@audited``: the audit entry of a mutating JSON endpoint, committed with its change.

The decorated handler changes things in the request's session without committing; the decorator
adds the audit entry (who: ``cp.auth.current_actor``, the source address, the target, ``ok``)
and commits both in one transaction (``cp.audit.commit_with``). A handler that commits on its
own fails loudly (``cp.audit.guard_commit``). A refused or failed attempt is rolled back and
its entry (the error code as the outcome, or ``error``) is written in a transaction of its own.
"""
from __future__ import annotations

from functools import wraps
from typing import Callable

from flask import current_app, request
from werkzeug.exceptions import HTTPException

from cp import audit
from cp.auth import current_actor
from cp.errors import DomainError
from cp.extensions import db


def _status(response) -> int | None:
    if isinstance(response, tuple) and len(response) > 1 and isinstance(response[1], int):
        return response[1]
    return getattr(response, "status_code", None)


def _target_from(response) -> str | None:
    """The id a creation answered with (``{"id"}``, or the ids of ``{"items": [...]}``)."""
    resp = response[0] if isinstance(response, tuple) else response
    body = resp.get_json(silent=True) if hasattr(resp, "get_json") else None
    if isinstance(body, dict) and "id" in body:
        return body["id"]
    if isinstance(body, dict) and isinstance(body.get("items"), list):  # a bulk creation
        ids = [str(i["id"]) for i in body["items"] if isinstance(i, dict) and "id" in i]
        return ",".join(ids) or None
    return None


def _refused(action: str, outcome: str, target, who: dict) -> None:
    db.session.rollback()
    audit.close_action()
    try:
        audit.record_apart(action, target_id=target, outcome=outcome, **who)
    except Exception:  # noqa: BLE001 - the attempt's own error is what the caller must see
        current_app.logger.warning("could not audit a refused %s", action, exc_info=True)


def audited(action: str, target_type: str | None = None, id_kwarg: str | None = None) -> Callable:
    """Decorator for mutating JSON endpoints (place it under ``role_required``)."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args, **kwargs):
            target = kwargs.get(id_kwarg) if id_kwarg else None
            who = {"actor": current_actor(), "source_ip": request.remote_addr, "target_type": target_type}
            audit.open_action()
            try:
                response = view(*args, **kwargs)
                status = _status(response)
                if status is not None and status >= 400:  # answered with an error: nothing is kept
                    _refused(action, str(status), target, who)
                    return response
                if target is None:
                    target = _target_from(response)
                audit.commit_with(action, target_id=target, outcome="ok", **who)
                return response
            except Exception as exc:
                outcome = exc.code if isinstance(exc, DomainError) else (
                    str(exc.code or "error") if isinstance(exc, HTTPException) else "error")
                _refused(action, outcome, target, who)
                raise

        wrapped.cp_audited = action  # read by the tests that check every mutating endpoint is audited
        return wrapped

    return decorator
