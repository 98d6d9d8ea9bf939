"""Fixed-window rate limits kept in the database, so every gunicorn worker and host shares them.

``hit(key, limit)`` counts one request in the current one-minute window in its own short
transaction (a refused or failed request still counts) and raises ``RateLimited`` (429 with
``Retry-After``) past the limit.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app, request
from sqlalchemy import delete

from .dbutil import insert
from .errors import RateLimited
from .extensions import db
from .models import RateLimitBucket
from .timeutil import utcnow

WINDOW_SECONDS = 60
buckets = RateLimitBucket.__table__


def _window(now: datetime) -> datetime:
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % WINDOW_SECONDS, tz=now.tzinfo)


def hit(key: str, limit: int, what: str) -> None:
    now = utcnow()
    window = _window(now)
    stmt = insert(buckets).values(key=key[:255], window_start=window, count=1)
    stmt = stmt.on_conflict_do_update(index_elements=["key", "window_start"],
                                      set_={"count": buckets.c.count + 1}).returning(buckets.c.count)
    with db.engine.begin() as conn:
        count = conn.execute(stmt).scalar()
    if count > limit:
        retry_after = max(1, int((window + timedelta(seconds=WINDOW_SECONDS) - now).total_seconds()) + 1)
        raise RateLimited(f"Too many {what}; retry in {retry_after} seconds.", retry_after=retry_after,
                          details={"limit": limit, "window_seconds": WINDOW_SECONDS})


def client_address() -> str:
    return request.remote_addr or "unknown"


def check_login_rate() -> None:
    hit(f"login:{client_address()}", current_app.config["CP_SETTINGS"].login_rate_limit, "login attempts")


def check_agent_rate(instance_id: str | None) -> None:
    key = f"agent:{instance_id}" if instance_id else f"agent-addr:{client_address()}"
    hit(key, current_app.config["CP_SETTINGS"].agent_rate_limit, "agent requests")


def prune(older_than: datetime | None = None) -> int:
    cutoff = older_than or (utcnow() - timedelta(seconds=WINDOW_SECONDS * 2))
    return db.session.execute(delete(buckets).where(buckets.c.window_start < cutoff)).rowcount or 0
