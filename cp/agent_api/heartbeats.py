"""``POST /api/heartbeats``.

A valid heartbeat goes through the process's ``cp.batching.Batcher`` (group commit): the
heartbeats of distinct installations that arrive while another batch is being written share one
transaction, one rate-limit count and lock statement each and one statement for everything else
(``cp.fleet.heartbeats.record_heartbeats``). Alone (a test client, a quiet process) it is a batch of
one. A body that fails validation, and the heartbeats of a batch that failed, take the single
path below, which answers in the gate's usual order (415, 401, 429, 400, 422).

Two entrances lead to the batcher: ``FastPath``, a WSGI middleware that answers a heartbeat
that is in order without Flask's request cycle, and the Flask view, which answers everything
``FastPath`` hands on (and every request of the test client, which goes through both).
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from marshmallow import ValidationError
from werkzeug.http import HTTP_STATUS_CODES

from cp import signing
from cp.batching import Batcher
from cp.errors import DomainError, Unavailable
from cp.web.errors import error_body, error_headers, log
from cp.extensions import db
from cp.fleet.heartbeats import (NOT_LOCKED, HeartbeatResult, count_and_lock, count_and_lock_many, record_heartbeat,
                          record_heartbeats)
from cp.web.parsing import JSON_MIMETYPE, check_object, is_json_content_type, json_bytes, load
from cp.web.logs import log_request
from cp.web.limits import agent_key
from cp.web.security import default_headers
from cp.timeutil import isoformat
from cp.agent_api import bp
from cp.agent_api.schemas import HeartbeatSchema
from cp.agent_api.signed import agent_endpoint, check_signature, remember_nonce

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


def submit(raw: bytes, data: dict | None, instance_id: str | None, nonce: str | None,
           rate_key: str) -> HeartbeatResult | None:
    """A signed heartbeat through the batcher (both entrances: the Flask gate and ``FastPath``):
    its result, or its refusal raised (429, replay; 503 when the COMMIT failed), or None for the
    single path (a body that is not a valid heartbeat, or a batch that failed and rolled back)."""
    if data is None or instance_id is None:
        return None
    try:
        payload = heartbeat_schema.load(check_object(data, raw))
    except (ValidationError, DomainError):
        return None  # answered by the single path, after the count (429 comes before 400/422)
    item = QueuedHeartbeat(payload["instance_id"], rate_key, nonce, payload)
    current_app.extensions[EXTENSION].submit(item)
    if item.alone:
        return None
    if item.error is not None:
        raise item.error
    return item.result


def _batched(rate_key: str):
    """The gate's ``batched`` hook: the heartbeat's response, or None for the single path."""
    result = submit(request.get_data(cache=True), g.get("agent_json"), g.agent_instance_id, g.agent_nonce, rate_key)
    return None if result is None else _response(result)


def response_body(result: HeartbeatResult) -> bytes:
    """The 200 answer's bytes (the same through either entrance)."""
    return json_bytes({"installation": result.instance_id, "received_at": isoformat(result.received_at),
                       "pending": result.pending})


def _response(result: HeartbeatResult):
    return current_app.response_class(response_body(result), mimetype=JSON_MIMETYPE)


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


SIGNATURE_KEY, TIMESTAMP_KEY = _environ_key(signing.SIGNATURE_HEADER), _environ_key(signing.TIMESTAMP_HEADER)
JSON_HEADERS = [("Content-Type", JSON_MIMETYPE)]


class FastPath:
    """WSGI middleware: ``POST /api/heartbeats``, the request a whole fleet sends every minute,
    without Flask's request cycle (request context, routing, login session, CSRF, hooks, response
    object: about a fifth of the web side's CPU per heartbeat, ``docs/performance.md``).

    It answers only a request that is in order: ``Content-Type: application/json``, a
    ``Content-Length`` within the body limit, a valid signature (``check_signature``, the gate's
    rules) and a body the schema accepts; and only the outcomes of the batch (``submit``, the
    same code as the Flask entrance): 200, or the batch's refusals (429, replay, 503 when the
    COMMIT failed) in the contract's error shape. Everything else goes to Flask unchanged (the
    body it read handed on), which answers it in the gate's order as for any agent request: a
    bad signature or content type, an invalid body, another path or method, a batch that failed
    and rolled back (nothing of it was kept). Its answers carry the same security headers
    (``cp.web.security.default_headers``) and access log line (``cp.web.logs.log_request``) as Flask's.
    A ``before_request`` or ``after_request`` hook added to the app does not run for the
    heartbeats answered here: what one must do for them belongs in the shared functions above.
    """

    def __init__(self, app, wsgi_app, path: str):
        self.app, self.wsgi_app, self.path = app, wsgi_app, path

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "POST":
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        raw = self._body(environ)
        answer = None
        if raw is not None:
            with self.app.app_context():
                answer = self._answer(raw, environ)
                if answer is not None:
                    log_request("POST", self.path, answer[0], started, environ.get("REMOTE_ADDR"), None)
        if answer is None:
            return self.wsgi_app(environ, start_response)
        status, body, extra = answer
        headers = [*JSON_HEADERS, ("Content-Length", str(len(body))), *extra.items(),
                   *default_headers({"content-type", "content-length", *(k.lower() for k in extra)}, nonce=None,
                                    static=False, config=self.app.config)]
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", headers)
        return [body]

    def _body(self, environ) -> bytes | None:
        """The raw body, when this path may answer; else None. What was read is handed on to
        Flask in ``wsgi.input`` (a client that sent less than its ``Content-Length`` gets
        Flask's 400)."""
        declared = environ.get("CONTENT_LENGTH") or ""
        length = int(declared) if declared.isascii() and declared.isdigit() else 0
        if (not is_json_content_type(environ.get("CONTENT_TYPE")) or environ.get("HTTP_TRANSFER_ENCODING")
                or environ.get("cp.body_too_large") or not 0 < length <= self.app.config["MAX_CONTENT_LENGTH"]):
            return None
        try:
            raw = environ["wsgi.input"].read(length)
        except Exception:  # noqa: BLE001 - the client went away: Flask answers what is left
            raw = b""
        environ["wsgi.input"] = io.BytesIO(raw)
        return raw if len(raw) == length else None

    def _answer(self, raw: bytes, environ) -> tuple[int, bytes, dict] | None:
        try:
            signed = check_signature(raw, environ.get(SIGNATURE_KEY), environ.get(TIMESTAMP_KEY))
        except DomainError:
            return None  # Flask refuses it, and logs a mismatch
        if not signed.instance_id:
            return None  # the single path counts it by the caller's address
        try:
            result = submit(raw, signed.data, signed.instance_id, signed.nonce, agent_key(signed.instance_id))
        except DomainError as exc:
            return exc.status, json_bytes(error_body(exc.status, exc.code, exc.message, exc.details)), error_headers(exc)
        except Exception:  # as Flask's last error handler does (cp.errors)
            log.exception("unhandled error on %s", self.path)
            return 500, json_bytes(error_body(500)), {}
        return None if result is None else (200, response_body(result), {})


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
    settings = app.config["CP_SETTINGS"]
    app.extensions[EXTENSION] = Batcher(write_batch, settings.heartbeat_batch_max,
                                        settings.heartbeat_batch_wait_ms / 1000)
    app.wsgi_app = FastPath(app, app.wsgi_app, bp.url_prefix + "/heartbeats")
