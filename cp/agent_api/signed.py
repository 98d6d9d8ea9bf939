"""``agent_endpoint``: the one gate in front of every agent view.

Order: 415 for a body that is not ``application/json``; then the signature over the raw bytes
(401 ``invalid_signature`` for no secret, no header, a non-hex header or a mismatch; a
malformed, expired or replayed timestamp too); then the per-installation rate limit (429);
only then 400 for a body that is not a JSON object, then the route's body schema (422). The signing
secret is ``CONTROL_PLANE_AGENT_SECRETS[instance_id]``, else ``CONTROL_PLANE_AGENT_TOKEN``; a
listed installation never signs with the shared token.

Replay protection (optional ``x-agent-timestamp``: unix seconds, optionally with up to six
decimals): the timestamp is signed with the body, must be within 5 minutes of the server's
clock, and the signature is remembered as a nonce *in the request's own transaction*: a request
takes effect at most once (a concurrent duplicate waits for the first and is then refused), and
a request that failed (rolled back) may be retried with the same bytes. Nonces older than the
window can never match again and are pruned in passing.
"""
from __future__ import annotations

import random
import re
from datetime import timedelta
from functools import wraps
from typing import Callable, NamedTuple

from flask import current_app, g, request
from marshmallow import Schema
from sqlalchemy import delete

from config import INSTANCE_ID_RE
from cp import signing
from cp.dbutil import insert
from cp.errors import BadRequest, Forbidden, Unauthorized
from cp.extensions import db
from cp.web.openapi import operation
from cp.web.parsing import check_object, decode_json, load, parse_json_object, require_json_content_type
from cp.models import AgentNonce
from cp.timeutil import utcnow


def secret_for(instance_id: str | None) -> str | None:
    cfg = current_app.config["CP_SETTINGS"]
    if instance_id is not None and instance_id in cfg.agent_secrets:
        return cfg.agent_secrets[instance_id]
    return cfg.agent_token


def _json_object_or_none(raw: bytes) -> dict | None:
    try:
        data = decode_json(raw)
    except BadRequest:
        return None
    return data if isinstance(data, dict) else None


TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}(?:\.[0-9]{1,6})?$")  # fullmatch; the OpenAPI document's pattern
# a nonce can match only while its timestamp is in the window (up to 5 minutes either side)
NONCE_TTL = timedelta(seconds=2 * signing.REPLAY_WINDOW_SECONDS + 60)
PRUNE_ONE_IN = 500


def _invalid(message: str) -> Unauthorized:
    return Unauthorized(message, code="invalid_signature")


class _Mismatch(Unauthorized):
    """The signature does not match (logged by ``verify_request``; the other refusals are not)."""

    def __init__(self, instance_id: str | None):
        super().__init__("The x-agent-signature header is missing or does not match the body.",
                         code="invalid_signature")
        self.instance_id = instance_id


class Signed(NamedTuple):
    instance_id: str | None  # the body's ``instance_id``, when it is a well-formed one
    data: dict | None  # the body, parsed once, when it is a JSON object
    nonce: str | None  # the signature, as a replay nonce, when the request is timestamped


def check_signature(raw: bytes, signature: str | None, timestamp: str | None) -> Signed:
    """The agent signing rules: the request's signed parts, or 401 ``invalid_signature``
    (raised, nothing logged).

    The HMAC is checked over the raw bytes before the body is decoded: first against the
    shared token, and only a body that matches it is decoded (once; kept for the view), to
    refuse an installation listed in CONTROL_PLANE_AGENT_SECRETS that signed with the shared
    token. A body that does not match the shared token can only be an installation with its own
    secret: it is decoded to read the ``instance_id`` that names the secret, and nothing else is
    done with it before that secret's check (a body with no readable ``instance_id`` has only
    the shared token to match)."""
    cfg = current_app.config["CP_SETTINGS"]
    if timestamp is None and cfg.require_agent_timestamp:
        raise _invalid(f"The {signing.TIMESTAMP_HEADER} header is required.")
    if timestamp is not None:
        # ASCII digits only (str.isdigit() accepts "²" or Arabic-Indic digits, which int() or the
        # ASCII signing of the timestamp then choke on)
        if not TIMESTAMP_RE.fullmatch(timestamp):
            raise _invalid(f"The {signing.TIMESTAMP_HEADER} header must be unix seconds.")
        if abs(utcnow().timestamp() - float(timestamp)) > signing.REPLAY_WINDOW_SECONDS:
            raise _invalid("The request timestamp is outside the allowed window of 5 minutes.")
    shared = signing.verify(cfg.agent_token, raw, signature, timestamp)
    if not shared and not cfg.agent_secrets:
        raise _Mismatch(None)  # refused unread: no installation has a secret of its own
    data = _json_object_or_none(raw)
    value = data.get("instance_id") if data is not None else None
    # only a well-formed id names an installation (its secret, rate-limit count and lock); any
    # other value is checked against the shared token and then refused by the schema (422)
    instance_id = value if isinstance(value, str) and INSTANCE_ID_RE.fullmatch(value) else None
    own = cfg.agent_secrets.get(instance_id) if instance_id is not None else None
    if shared:
        refused = own is not None  # a listed installation never signs with the shared token
    else:
        refused = own is None or not signing.verify(own, raw, signature, timestamp)
    if refused:
        raise _Mismatch(instance_id)
    return Signed(instance_id, data, signature.strip().lower() if timestamp is not None else None)


def verify_request() -> str | None:
    """Check the signature of the current request; return the signed ``instance_id`` (or None).
    The parsed body and the nonce are left in ``g.agent_json`` and ``g.agent_nonce``."""
    raw = request.get_data(cache=True)
    try:
        signed = check_signature(raw, request.headers.get(signing.SIGNATURE_HEADER),
                                 request.headers.get(signing.TIMESTAMP_HEADER))
    except _Mismatch as exc:
        current_app.logger.info("agent signature refused",
                                extra={"event": "invalid_signature", "instance_id": (exc.instance_id or "")[:128]})
        raise
    g.agent_json, g.agent_nonce = signed.data, signed.nonce
    return signed.instance_id


def remember_nonce(signature: str) -> None:
    """A timestamped signature takes effect once: the nonce is written in the request's own
    transaction, so it is kept exactly when the request's effects are."""
    nonces = AgentNonce.__table__
    now = utcnow()
    stmt = insert(nonces).values(signature=signature, seen_at=now)
    # RETURNING, not rowcount: psycopg reports no rowcount for ON CONFLICT DO NOTHING
    stmt = stmt.on_conflict_do_nothing(index_elements=["signature"]).returning(nonces.c.signature)
    if db.session.execute(stmt).first() is None:
        raise _invalid("This signed request was already received (replay).")
    if random.randrange(PRUNE_ONE_IN) == 0:
        prune_nonces(now)


def prune_nonces(now=None) -> int:
    """Forget nonces that can no longer match a request inside the window."""
    nonces = AgentNonce.__table__
    cutoff = (now or utcnow()) - NONCE_TTL
    return db.session.execute(delete(nonces).where(nonces.c.seen_at < cutoff)).rowcount or 0


def agent_endpoint(body: type[Schema], answer: type[Schema], *, status: int = 200) -> Callable[[Callable], Callable]:
    """The gate of an agent view that takes a ``body`` and answers with ``answer`` (sent with
    ``status``): verify, count, parse, validate with ``body`` and hand the view the loaded body.
    The same two schemas are the operation's request body and success response in the OpenAPI
    document (``cp_openapi``); the view's docstring adds its summary and its own error responses.

    The request's transaction first gets its lock and statement timeouts
    (``cp.dbutil.transaction_settings_guard``: a row held elsewhere fails this request alone,
    503) in the same statement as the rate-limit count; the count and the nonce ride in it (no
    extra connection or commit on the hot path). A request that fails or is refused rolls back,
    and then still counts: recounted in a short transaction of its own.
    """
    schema = body()

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args, **kwargs):
            require_json_content_type()
            g.agent_instance_id = verify_request()
            from cp.web.limits import agent_key, count_agent_request, recount_agent_request

            key = agent_key(g.agent_instance_id)
            try:
                count_agent_request(key)  # first: it sets the transaction's timeouts too
                if g.agent_nonce is not None:
                    remember_nonce(g.agent_nonce)
                data = g.get("agent_json")
                if data is None:
                    data = parse_json_object(request.get_data(cache=True))  # 400 for what is not an object
                else:
                    data = check_object(data, request.get_data(cache=True))
                response = current_app.make_response(view(load(schema, data), *args, **kwargs))
            except Exception:
                db.session.rollback()
                recount_agent_request(key)
                raise
            if response.status_code < 400:
                # keep the count and the nonce even when the view only read (and so did not commit)
                if db.session().in_transaction():
                    db.session.commit()
            else:
                db.session.rollback()
                recount_agent_request(key)
            return response

        # read by the OpenAPI spec: the agent auth, and the operation's body and answer
        wrapped.cp_agent = True
        wrapped.cp_openapi = {"post": operation(body=body, answer=answer, status=status)}
        return wrapped

    return decorate


def same_installation(instance_id: str, owner_instance_id: str) -> None:
    """An agent may only read or report its own jobs, verifications and requests."""
    if instance_id != owner_instance_id:
        raise Forbidden("This belongs to another installation.", code="forbidden")


__all__ = ["agent_endpoint", "verify_request", "secret_for", "same_installation"]
