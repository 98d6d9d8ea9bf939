"""Fixed-window rate limits kept in the database, so every gunicorn worker and host shares them.

One row per key (``login:<address>``, ``agent:<instance_id>``) holds the current one-minute
window and its count. ``hit(key, limit)`` counts one request with a single upsert that also
restarts the window in place when the stored one is over, in its own short transaction (so a
refused or failed request still counts), and raises ``RateLimited`` (429 with ``Retry-After``)
past the limit.

Logins count failures only (``count_failed_login``, called by ``cp.auth`` with the client's
``ClientAddress``): a valid credential is never refused, whatever else came from its address.

The agent hot path (``count_agent_request``) runs the same upsert in the request's own
transaction: no extra connection checkout, BEGIN or COMMIT; a request that fails or is refused
rolls back and is counted again by ``recount_agent_request`` in a short transaction of its own,
so it still counts. ``hit``'s own transactions commit with ``synchronous_commit = off`` on
PostgreSQL (a crash can forget the last fraction of a second of counts, nothing else). Old rows
are pruned in passing and by the worker (``cp.background.sweeps``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from flask import current_app, request
from sqlalchemy import Integer, String, bindparam, case, delete, literal, select, text
from sqlalchemy.dialects import postgresql, sqlite

from cp.dbutil import insert, transaction_settings_guard, transaction_settings_params
from cp.errors import RateLimited
from cp.extensions import db
from cp.models import RateLimitBucket
from cp.timeutil import utcnow

WINDOW_SECONDS = 60
PRUNE_ONE_IN = 500  # a hit prunes rows of long-gone windows once in this many calls
buckets = RateLimitBucket.__table__


def _window(now: datetime) -> datetime:
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % WINDOW_SECONDS, tz=now.tzinfo)


def _refuse(limit: int, what: str, window: datetime, now: datetime) -> RateLimited:
    retry_after = max(1, int((window + timedelta(seconds=WINDOW_SECONDS) - now).total_seconds()) + 1)
    return RateLimited(f"Too many {what}; retry in {retry_after} seconds.", retry_after=retry_after,
                       details={"limit": limit, "window_seconds": WINDOW_SECONDS})


def _count_statement(key: str, window: datetime):
    return _count_on_conflict(insert(buckets).values(key=key, window_start=window, count=1)).returning(buckets.c.count)


def _count(key: str) -> tuple[int, datetime, datetime]:
    """Count one event for ``key`` in its own short transaction; return the window's count."""
    now = utcnow()
    window = _window(now)
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
        count = conn.execute(_count_statement(key[:255], window)).scalar_one()
        if random.randrange(PRUNE_ONE_IN) == 0:
            _prune(conn, now)
    return count, window, now


def hit(key: str, limit: int, what: str) -> None:
    """Count one request for ``key``; 429 when it is over ``limit`` in the current window."""
    count, window, now = _count(key)
    if count > limit:
        raise _refuse(limit, what, window, now)


# --- login attempts: the client address and the failures it made ---------------------------------
NEAREST_HOP_FACTOR = 10  # the backstop per nearest-hop address allows this many times the limit


@dataclass(frozen=True)
class ClientAddress:
    """Where a request comes from, as far as this deployment can tell.

    ``address``: the client, ``CONTROL_PLANE_TRUSTED_PROXIES`` hops from the right of
    ``X-Forwarded-For`` (Werkzeug's ``ProxyFix``, wired in ``cp.web.security``; with fewer
    entries than that, or no trusted proxy, the connecting peer). Never the leftmost entry,
    which any client can write.

    ``nearest_hop``: with two or more trusted proxies, the rightmost entry too, which the
    nearest proxy wrote (so no client can choose it). If more hops are configured than there
    are proxies, ``address`` is client-controlled; the limit on ``nearest_hop`` (at
    ``NEAREST_HOP_FACTOR`` times the limit) still stops a rotating ``X-Forwarded-For``."""

    address: str
    nearest_hop: str | None = None


def client_address(environ, trusted_proxies: int) -> ClientAddress:
    """The ``ClientAddress`` of a WSGI request (``environ`` as seen behind ``ProxyFix``)."""
    address = environ.get("REMOTE_ADDR") or "unknown"
    nearest = None
    if trusted_proxies >= 2:
        hops = [h.strip() for h in (environ.get("HTTP_X_FORWARDED_FOR") or "").split(",") if h.strip()]
        nearest = hops[-1] if hops else None
    return ClientAddress(address[:100], nearest[:100] if nearest and nearest != address else None)


def count_failed_login(client: ClientAddress, limit: int) -> None:
    """A wrong credential (login form or bearer token) from ``client``: counted, then 429
    past ``limit`` in the window. Only failures are counted, and nothing is checked before a
    credential is compared: a right one always gets in, whatever others sent from the same
    address."""
    refusals = []
    keys = [(f"login:{client.address}", limit)]
    if client.nearest_hop:
        keys.append((f"login-hop:{client.nearest_hop}", limit * NEAREST_HOP_FACTOR))
    for key, key_limit in keys:
        count, window, now = _count(key)
        if count > key_limit:
            refusals.append(_refuse(key_limit, "failed login attempts", window, now))
    if refusals:
        raise max(refusals, key=lambda r: r.retry_after)


def _request_address() -> str:
    return request.remote_addr or "unknown"


def _settings():
    return current_app.config["CP_SETTINGS"]


def agent_key(instance_id: str | None) -> str:
    return f"agent:{instance_id}" if instance_id else f"agent-addr:{_request_address()}"


def count_agent_request(key: str) -> None:
    """The agent hot path (``cp.agent_api.signed``): the first statement of the request's own
    transaction sets its lock and statement timeouts (``cp.dbutil.transaction_settings_guard``)
    and counts one request for ``key`` (no connection and no commit of its own: one statement
    instead of a checkout, a BEGIN, the upsert and a COMMIT), 429 past the limit. The count is
    kept when the request's transaction commits; a request that fails or is refused is rolled
    back, and the gate then counts it again with ``recount_agent_request``, so it still counts."""
    conn = db.session.connection()
    now = utcnow()
    window = _window(now)
    count = conn.execute(_count_upsert(conn.dialect.name), _agent_count_params(key, window)).scalar_one()
    limit = _settings().agent_rate_limit
    if count > limit:
        raise _refuse(limit, "agent requests", window, now)


def recount_agent_request(key: str) -> None:
    """Count a failed or refused agent request in its own short transaction (never raises)."""
    try:
        with db.engine.begin() as conn:
            conn.execute(_count_upsert(conn.dialect.name), _agent_count_params(key, _window(utcnow())))
    except Exception:  # noqa: BLE001 - the request already failed; do not mask why
        current_app.logger.warning("could not count a failed agent request", exc_info=True)


def _agent_count_params(key: str, window: datetime) -> dict:
    return {"key": key[:255], "window_start": window, **transaction_settings_params()}


@lru_cache(maxsize=None)
def _count_upsert(dialect_name: str):
    """The agent count built once per backend (the values come as parameters): ``INSERT ...
    SELECT :key, :window_start, 1 WHERE <the transaction's timeouts>`` (the guard sets them on
    PostgreSQL before the row is inserted; the ``WHERE`` also keeps SQLite's ``INSERT ... SELECT
    ... ON CONFLICT`` unambiguous)."""
    ins = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    row = select(bindparam("key", type_=String()), bindparam("window_start", type_=buckets.c.window_start.type),
                 literal(1, Integer())).where(transaction_settings_guard(dialect_name))
    return _count_on_conflict(ins(buckets).from_select(["key", "window_start", "count"], row)).returning(buckets.c.count)


def _count_on_conflict(stmt):
    stored, new = buckets.c.window_start, stmt.excluded.window_start
    # Same window: +1. A newer window: restart at 1. An older one (a process whose clock lags):
    # count it into the stored, newer window.
    return stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={"count": case((stored < new, 1), else_=buckets.c.count + 1),
              "window_start": case((stored < new, new), else_=stored)},
    )


def _prune(conn, now: datetime) -> int:
    cutoff = _window(now) - timedelta(seconds=WINDOW_SECONDS)
    return conn.execute(delete(buckets).where(buckets.c.window_start < cutoff)).rowcount or 0


def prune(now: datetime | None = None) -> int:
    """Delete the counters of windows that are over (they restart anyway)."""
    with db.engine.begin() as conn:
        return _prune(conn, now or utcnow())
