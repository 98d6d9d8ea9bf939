"""``agent_endpoint``: the one gate in front of every agent view.

Order: 415 for a body that is not ``application/json``; then the signature over the raw bytes
(401 ``invalid_signature`` for no secret, no header, a non-hex header or a mismatch; replayed
or expired timestamps too); only then 400 for a body that is not a JSON object, then the
view's schema (422). The signing secret is ``CONTROL_PLANE_AGENT_SECRETS[instance_id]``, else
``CONTROL_PLANE_AGENT_TOKEN``; a listed installation never signs with the shared token.
"""
from __future__ import annotations

import json
from functools import wraps
from typing import Callable

from flask import current_app, g, request

from .. import signing
from ..dbutil import insert
from ..errors import Forbidden, Unauthorized
from ..extensions import db
from ..http import parse_json_object, require_json_content_type
from ..models import AgentNonce
from ..timeutil import utcnow


def secret_for(instance_id: str | None) -> str | None:
    cfg = current_app.config["CP_SETTINGS"]
    if instance_id is not None and instance_id in cfg.agent_secrets:
        return cfg.agent_secrets[instance_id]
    return cfg.agent_token


def _instance_id_of(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = data.get("instance_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _invalid(message: str) -> Unauthorized:
    return Unauthorized(message, code="invalid_signature")


def verify_request() -> str | None:
    """Check the signature of the current request; return the signed ``instance_id`` (or None)."""
    cfg = current_app.config["CP_SETTINGS"]
    raw = request.get_data(cache=True)
    instance_id = _instance_id_of(raw)
    timestamp = request.headers.get(signing.TIMESTAMP_HEADER)
    if timestamp is None and cfg.require_agent_timestamp:
        raise _invalid(f"The {signing.TIMESTAMP_HEADER} header is required.")
    if timestamp is not None:
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise _invalid(f"The {signing.TIMESTAMP_HEADER} header must be unix seconds.")
        if abs(int(utcnow().timestamp()) - int(timestamp)) > signing.REPLAY_WINDOW_SECONDS:
            raise _invalid("The request timestamp is outside the allowed window of 5 minutes.")
    header = request.headers.get(signing.SIGNATURE_HEADER)
    if not signing.verify(secret_for(instance_id), raw, header, timestamp):
        current_app.logger.info("agent signature refused",
                                extra={"event": "invalid_signature", "instance_id": (instance_id or "")[:128]})
        raise _invalid("The x-agent-signature header is missing or does not match the body.")
    if timestamp is not None:
        _remember_nonce(header.strip().lower())
    return instance_id


def _remember_nonce(signature: str) -> None:
    """A timestamped signature is accepted once (its own short transaction, so a refused
    request still burns it)."""
    stmt = insert(AgentNonce.__table__).values(signature=signature, seen_at=utcnow())
    stmt = stmt.on_conflict_do_nothing(index_elements=["signature"])
    with db.engine.begin() as conn:
        if conn.execute(stmt).rowcount == 0:
            raise _invalid("This signed request was already received (replay).")


def agent_endpoint(view: Callable) -> Callable:
    """Verify, parse and hand the view the JSON object; the view validates it with its schema."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        require_json_content_type()
        g.agent_instance_id = verify_request()
        from ..ratelimit import check_agent_rate

        check_agent_rate(g.agent_instance_id)
        data = parse_json_object(request.get_data(cache=True))
        return view(data, *args, **kwargs)

    wrapped.cp_agent = True  # read by the OpenAPI spec
    return wrapped


def same_installation(instance_id: str, owner_instance_id: str) -> None:
    """An agent may only read or report its own jobs, verifications and requests."""
    if instance_id != owner_instance_id:
        raise Forbidden("This belongs to another installation.", code="forbidden")


__all__ = ["agent_endpoint", "verify_request", "secret_for", "same_installation"]
