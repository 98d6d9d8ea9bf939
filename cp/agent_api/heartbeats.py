"""``POST /api/heartbeats``.

A valid heartbeat goes through the process's ``cp.batching.Batcher`` (group commit): the
heartbeats of distinct installations that arrive while another batch is being written share one
transaction, one rate-limit count and lock statement each and one statement for everything else
(``cp.heartbeats.record_heartbeats``). Alone (a test client, a quiet process) it is a batch of
one. A body that fails validation, and the heartbeats of a batch that failed, take the single
path below, which answers in the gate's usual order (415, 401, 429, 400, 422).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, g, jsonify, request
from marshmallow import ValidationError

from ..batching import Batcher
from ..errors import DomainError, Unavailable
from ..extensions import db
from ..heartbeats import (NOT_LOCKED, HeartbeatResult, count_and_lock, count_and_lock_many, record_heartbeat,
                          record_heartbeats)
from ..http import check_object, load
from ..timeutil import isoformat
from . import bp
from .schemas import HeartbeatSchema
from .signed import agent_endpoint, remember_nonce

heartbeat_schema = HeartbeatSchema()
EXTENSION = "cp_heartbeat_batcher"


@dataclass(eq=False)
class QueuedHeartbeat:
    """One request's heartbeat in a batch, and its outcome (set by ``write_batch``)."""
    key: str  # its instance_id: one heartbeat per installation in a batch
    rate_key: str
    nonce: str | None
    payload: dict
    result: HeartbeatResult | None = None
    error: BaseException | None = None
    alone: bool = False  # the batch failed and rolled back: answer it on its own
    done: bool = False


def write_batch(items: list[QueuedHeartbeat]) -> None:
    """One transaction for the batch: the rate-limit counts and the installations' locks of all
    its heartbeats in one statement (``count_and_lock_many``; the same locks in the same order
    in every batch), then each replay nonce, as the gate does for one request; a heartbeat
    refused there (429, replay) keeps its count and nothing else. Then the others are recorded
    together and committed.

    If a statement fails, all of it rolls back and each heartbeat is answered on its own (on a
    fresh connection, if the old one died: nothing was kept, so trying again is safe). If the
    COMMIT itself fails, nobody knows whether it took effect: each heartbeat is answered 503, as
    a single request would be, and the agent sends it again later."""
    committing = False
    try:
        accepted: list[tuple[QueuedHeartbeat, Any]] = []
        ordered = sorted(items, key=lambda i: i.key)
        for item, locked in zip(ordered, count_and_lock_many([(i.rate_key, i.key) for i in ordered])):
            if isinstance(locked, DomainError):  # refused (429): counted, nothing else kept
                item.error = locked
                continue
            if item.nonce is not None:
                try:
                    remember_nonce(item.nonce)
                except DomainError as exc:  # a replay: refused the same way
                    item.error = exc
                    continue
            accepted.append((item, locked))
        if accepted:
            results = record_heartbeats([(item.payload, locked) for item, locked in accepted], with_pending=True)
            for (item, _), result in zip(accepted, results):
                item.result = result
        committing = True
        db.session.commit()
    except Exception as exc:
        try:
            db.session.rollback()
        except Exception:  # noqa: BLE001 - the connection may already be gone
            pass
        # the class only: a database error's text carries the batch's parameters
        current_app.logger.warning("heartbeat batch of %d failed%s (%s)", len(items),
                                   " at COMMIT" if committing else "; answered one by one", type(exc).__name__)
        for item in items:
            item.result, item.error, item.alone = None, None, not committing
            if committing:
                item.error = Unavailable("The database is unavailable; retry shortly.", code="database_unavailable")


def _batched(rate_key: str):
    """The request's heartbeat through the batcher: its response, its refusal raised, or None
    for the single path (a body that is not a valid heartbeat, or a failed batch)."""
    data = g.get("agent_json")
    if data is None or g.agent_instance_id is None:
        return None
    try:
        payload = heartbeat_schema.load(check_object(data, request.get_data(cache=True)))
    except (ValidationError, DomainError):
        return None  # answered by the single path, after the count (429 comes before 400/422)
    item = QueuedHeartbeat(payload["instance_id"], rate_key, g.agent_nonce, payload)
    current_app.extensions[EXTENSION].submit(item)
    if item.alone:
        return None
    if item.error is not None:
        raise item.error
    return _response(item.result)


def _response(result: HeartbeatResult):
    return jsonify({"installation": result.instance_id, "received_at": isoformat(result.received_at),
                    "pending": result.pending})


@bp.post("/heartbeats")
@agent_endpoint(counter=count_and_lock, batched=_batched)  # the rate-limit count also locks the installation row
def heartbeat(data: dict):
    """Record a heartbeat.
    ---
    post:
      tags: [agent]
      summary: Report an installation's state; registers unknown installations.
      security: [{agentSignature: []}]
      requestBody:
        required: true
        content:
          application/json:
            schema: HeartbeatSchema
      responses:
        200:
          content:
            application/json:
              schema: HeartbeatResponseSchema
    """
    payload = load(heartbeat_schema, data)
    locked = g.agent_counted if g.agent_instance_id == payload["instance_id"] else NOT_LOCKED
    # PostgreSQL: the rest of the heartbeat and what waits for the agent in one more statement
    result = record_heartbeat(payload, with_pending=True, locked=locked)
    db.session.commit()
    return _response(result)


def init_app(app) -> None:
    app.extensions[EXTENSION] = Batcher(write_batch, app.config["CP_SETTINGS"].heartbeat_batch_max)
