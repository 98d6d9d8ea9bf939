"""The floor: the least a signed heartbeat endpoint can do, to measure the service against.

Verify the HMAC of the raw body, parse the JSON, one ``INSERT ... ON CONFLICT DO UPDATE``
through psycopg (one connection per thread, autocommit: the single statement is its own
transaction), answer a small JSON object. Two variants, served by the same gunicorn settings
as the service (``BENCH_FLOOR_DSN`` and ``CONTROL_PLANE_AGENT_TOKEN`` set; the table is
``bench.fleet.FLOOR_SCHEMA``):

- ``bench.floor:app``, a minimal Flask app (the framework the service is built on): the floor
  the targets are measured against;
- ``bench.floor:bare``, a bare WSGI callable: how much the framework itself costs.

Each commit waits for the WAL flush (the server's ``synchronous_commit``), as the service's
heartbeats do by default: a 200 from either means the heartbeat is on disk.
"""
import hashlib
import hmac
import json
import os
import threading
from datetime import datetime, timezone

import psycopg
from flask import Flask, request

SECRET = os.environ["CONTROL_PLANE_AGENT_TOKEN"].encode()
DSN = os.environ["BENCH_FLOOR_DSN"]
UPSERT = ("INSERT INTO bench_floor (instance_id, payload, last_seen_at, heartbeats) VALUES (%s, %s, %s, 1) "
          "ON CONFLICT (instance_id) DO UPDATE SET payload = EXCLUDED.payload, "
          "last_seen_at = EXCLUDED.last_seen_at, heartbeats = bench_floor.heartbeats + 1")
_local = threading.local()


def _conn() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(DSN, autocommit=True)
    return conn


def _signed(raw: bytes, signature: str) -> bool:
    expected = hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.encode(), expected.encode())


def _record(raw: bytes) -> dict:
    data = json.loads(raw)
    now = datetime.now(timezone.utc)
    _conn().execute(UPSERT, (data["instance_id"], raw.decode(), now))
    return {"installation": data["instance_id"], "received_at": now.isoformat()}


app = Flask(__name__)


@app.post("/api/heartbeats")
def heartbeat():
    raw = request.get_data()
    if not _signed(raw, request.headers.get("x-agent-signature", "")):
        return {"error": "invalid_signature"}, 401
    return _record(raw)


def bare(environ, start_response):
    raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    if not _signed(raw, environ.get("HTTP_X_AGENT_SIGNATURE", "")):
        start_response("401 Unauthorized", [("Content-Type", "application/json")])
        return [b'{"error":"invalid_signature"}']
    out = json.dumps(_record(raw)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
