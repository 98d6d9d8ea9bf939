"""Delivering the alert outbox to ``CONTROL_PLANE_ALERT_WEBHOOK_URL``.

Rows are written by ``cp.fleet.alerts.enqueue_events`` in the transaction that opens or resolves an
alert; only the worker (``cp.background.worker``) sends them, so a slow or hanging receiver never slows
a heartbeat.

Delivery, one batch at a time:

1. **Claim** (one short transaction, one statement): at most ``limit`` of the due ``pending``
   events that are the oldest undelivered event of their alert (so an alert's ``resolved`` never
   overtakes its ``opened``), picked once in a ``MATERIALIZED`` CTE, are leased: ``attempts + 1``, ``last_attempt_at = now`` and
   ``next_attempt_at = now + lease``. On PostgreSQL the candidates are picked with
   ``FOR UPDATE SKIP LOCKED``, so concurrent workers claim disjoint rows; on SQLite the single
   ``UPDATE ... RETURNING`` is atomic.
2. **Send** with no transaction and no connection held: POST the stored body, signed.
3. **Record** (one short transaction per event): ``delivered``, or the error and the next
   attempt after an exponential backoff with jitter, or ``dead`` after
   ``CONTROL_PLANE_WEBHOOK_MAX_ATTEMPTS``.

A worker killed between 1 and 3 loses nothing: the lease runs out and another worker (or the
same one, restarted) sends the event again; that is the "at least once". A worker asked to
stop (SIGTERM) finishes the event in flight, records it, and hands back the rest of its batch.
Receivers deduplicate with ``(alert.id, event)``, which is unique.
"""
from __future__ import annotations

import json
import logging
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import requests
from flask import current_app
from sqlalchemy import and_, exists, func, select, update

from cp.dbutil import is_postgres
from cp.extensions import db
from cp.models import OutboxEvent
from cp.signing import WEBHOOK_SIGNATURE_HEADER, webhook_signature
from cp.timeutil import utcnow

log = logging.getLogger("cp.background.outbox")

outbox = OutboxEvent.__table__
CLAIM_BATCH = 10
USER_AGENT = "control-plane-webhook/1"
MAX_ERROR_CHARS = 500


@dataclass
class Claimed:
    id: int
    alert_id: int
    event: str
    payload: dict
    attempts: int  # after this claim


@dataclass
class Outcome:
    ok: bool
    error: str | None = None


def settings():
    return current_app.config["CP_SETTINGS"]


def lease_seconds(batch: int = CLAIM_BATCH) -> float:
    """How long a claimed batch is reserved: long enough to try every event of it (two
    timeouts each: connect and read) plus a margin. A worker that dies holds its events no
    longer than this."""
    return batch * 2 * settings().webhook_timeout_seconds + 30


def backoff_seconds(attempts: int, *, rng: random.Random | None = None) -> float:
    """Delay after the ``attempts``-th failed attempt: base * 2^(attempts-1), capped, with
    "equal jitter" (half fixed, half random) so that many events failing together spread out."""
    cfg = settings()
    delay = min(cfg.webhook_backoff_max_seconds, cfg.webhook_backoff_seconds * (2 ** max(0, attempts - 1)))
    r = (rng or random).random()
    return delay / 2 + r * delay / 2


def encode(payload: dict) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def request_headers(body: bytes, now: datetime | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    token = settings().alert_webhook_token
    if token:
        headers["Authorization"] = f"Bearer {token}"
        headers[WEBHOOK_SIGNATURE_HEADER] = webhook_signature(token, body, int((now or utcnow()).timestamp()))
    return headers


# --- claim ---------------------------------------------------------------------------------
def _claimable(now: datetime, limit: int, max_attempts: int):
    """Ids of due pending events with no earlier undelivered event of the same alert."""
    c = outbox.alias("c")
    earlier = outbox.alias("earlier")
    stmt = (
        select(c.c.id)
        .where(c.c.status == "pending", c.c.next_attempt_at <= now, c.c.attempts < max_attempts,
               ~exists().where(and_(earlier.c.alert_id == c.c.alert_id, earlier.c.id < c.c.id,
                                    earlier.c.status != "delivered")))
        .order_by(c.c.next_attempt_at, c.c.id)
        .limit(limit)
    )
    if is_postgres():
        stmt = stmt.with_for_update(skip_locked=True)
    return stmt


def claim(limit: int = CLAIM_BATCH, now: datetime | None = None) -> list[Claimed]:
    """Lease up to ``limit`` due events (committed before returning)."""
    now = now or utcnow()
    lease_until = now + timedelta(seconds=lease_seconds(limit))
    max_attempts = settings().webhook_max_attempts
    # the lease of a last attempt ran out (its worker died before recording it): dead, like a failure
    expired_last = (
        update(outbox)
        .where(outbox.c.status == "pending", outbox.c.next_attempt_at <= now, outbox.c.attempts >= max_attempts)
        .values(status="dead", last_error="no attempts left (the worker stopped during the last attempt)")
    )
    # The candidates are picked once, in a MATERIALIZED CTE: as a plain ``IN (subquery)`` the
    # planner may re-run the limited, locked subquery for every row of a nested loop (it did on
    # a small backlog), leasing more events than ``limit``, more than the lease has time for.
    picked = _claimable(now, limit, max_attempts).cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
    stmt = (
        update(outbox)
        .where(outbox.c.id.in_(select(picked.c.id)),
               # re-checked on the row actually locked (PostgreSQL) / written (SQLite)
               outbox.c.status == "pending", outbox.c.next_attempt_at <= now)
        .values(attempts=outbox.c.attempts + 1, last_attempt_at=now, next_attempt_at=lease_until)
        .returning(outbox.c.id, outbox.c.alert_id, outbox.c.event, outbox.c.payload, outbox.c.attempts)
    )
    try:
        db.session.execute(expired_last)
        rows = db.session.execute(stmt).all()
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    claimed = sorted((Claimed(r.id, r.alert_id, r.event, r.payload, r.attempts) for r in rows), key=lambda c: c.id)
    return claimed


def release(events: list[Claimed], now: datetime | None = None) -> None:
    """Hand back claimed events that were not tried (shutdown): due at once, attempt not counted."""
    for ev in events:
        db.session.execute(
            update(outbox).where(outbox.c.id == ev.id, outbox.c.status == "pending",
                                 outbox.c.attempts == ev.attempts)
            .values(attempts=outbox.c.attempts - 1, next_attempt_at=now or utcnow()))
    db.session.commit()


# --- send ----------------------------------------------------------------------------------
_local = threading.local()


def _http() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def _root_reason(exc: BaseException) -> str | None:
    """The operating system's sentence (``Connection refused``...) buried in ``exc``, if any."""
    stack: list = [exc]
    seen: set[int] = set()
    reason = None
    while stack:
        cur = stack.pop()
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            reason = cur.strerror
        stack.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__, *cur.args])
    return reason


def _describe(exc: BaseException) -> str:
    """A short reason without the URL (a chat webhook URL is itself a secret)."""
    if isinstance(exc, requests.Timeout):
        return f"timed out after {settings().webhook_timeout_seconds:g} s ({type(exc).__name__})"
    reason = _root_reason(exc)
    kind = "connection failed" if isinstance(exc, requests.ConnectionError) else "request failed"
    return f"{kind} ({type(exc).__name__}{': ' + reason if reason else ''})"


def send(payload: dict, now: datetime | None = None) -> Outcome:
    """POST one event; any 2xx is a delivery, anything else (redirects included) a failure."""
    cfg = settings()
    body = encode(payload)
    headers = request_headers(body, now)
    timeout = cfg.webhook_timeout_seconds
    try:
        resp = _http().post(cfg.alert_webhook_url, data=body, headers=headers, timeout=(timeout, timeout),
                            allow_redirects=False)
    except requests.RequestException as exc:
        return Outcome(False, _describe(exc))
    try:
        if 200 <= resp.status_code < 300:
            return Outcome(True)
        snippet = " ".join((resp.text or "")[:200].split())
        return Outcome(False, f"HTTP {resp.status_code}" + (f": {snippet}" if snippet else ""))
    finally:
        resp.close()


# --- record --------------------------------------------------------------------------------
def record(ev: Claimed, outcome: Outcome, now: datetime | None = None) -> str:
    """Store the outcome of one attempt; returns the event's new status."""
    now = now or utcnow()
    try:
        if outcome.ok:
            db.session.execute(update(outbox).where(outbox.c.id == ev.id, outbox.c.status == "pending")
                               .values(status="delivered", delivered_at=now))
            status = "delivered"
        else:
            dead = ev.attempts >= settings().webhook_max_attempts
            status = "dead" if dead else "pending"
            values = {"last_error": (outcome.error or "failed")[:MAX_ERROR_CHARS], "status": status}
            if not dead:
                values["next_attempt_at"] = now + timedelta(seconds=backoff_seconds(ev.attempts))
            # only while we still own the lease (nobody re-claimed it after it ran out)
            db.session.execute(update(outbox).where(outbox.c.id == ev.id, outbox.c.status == "pending",
                                                    outbox.c.attempts == ev.attempts).values(**values))
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    extra = {"event": "webhook_delivery", "outbox_id": ev.id, "alert_id": ev.alert_id, "attempt": ev.attempts,
             "status": status}
    if outcome.ok:
        log.info("webhook event delivered", extra=extra)
    else:
        log.warning("webhook delivery failed: %s", outcome.error, extra=extra)
    return status


def deliver_due(limit: int = CLAIM_BATCH, *, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Claim one batch and try each event of it; returns how many were tried.

    Nothing happens while no webhook URL is configured (events already queued wait for one).
    """
    if not settings().alert_webhook_url:
        return 0
    batch = claim(limit)
    tried = 0
    for i, ev in enumerate(batch):
        if should_stop():
            release(batch[i:])
            break
        try:
            outcome = send(ev.payload)
        except Exception as exc:  # noqa: BLE001 - never let one event kill the worker
            log.exception("webhook delivery crashed", extra={"outbox_id": ev.id})
            outcome = Outcome(False, f"internal error ({type(exc).__name__})")
        record(ev, outcome)
        tried += 1
    return tried


def deliver_all(*, should_stop: Callable[[], bool] = lambda: False, max_batches: int = 1000) -> int:
    """Deliver until nothing is due (or asked to stop); returns how many attempts were made."""
    total = 0
    for _ in range(max_batches):
        if should_stop():
            break
        n = deliver_due(should_stop=should_stop)
        total += n
        if n == 0:
            break
    return total


# --- admin ---------------------------------------------------------------------------------
def retry(ids: list[int], now: datetime | None = None) -> int:
    """Queue dead events again: pending, due now, with a fresh attempt budget (the history of
    ``last_error`` is kept until the next attempt). Pending and delivered events are left alone
    (a pending one is retried by the worker already). Returns how many were queued."""
    if not ids:
        return 0
    res = db.session.execute(
        update(outbox).where(outbox.c.id.in_(ids), outbox.c.status == "dead")
        .values(status="pending", attempts=0, next_attempt_at=now or utcnow()))
    return res.rowcount or 0


def counts() -> dict[str, int]:
    """Events per status (one aggregate query)."""
    rows = db.session.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status)).all()
    out = {"pending": 0, "delivered": 0, "dead": 0}
    out.update({status: n for status, n in rows})
    return out
