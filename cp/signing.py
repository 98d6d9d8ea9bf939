"""The agent signing scheme, written once and used by the server and the reference client.

``x-agent-signature: hex(HMAC-SHA256(secret, signed_bytes))`` where ``signed_bytes`` is the
raw request body, or ``"<x-agent-timestamp>." + body`` when the optional timestamp header is
sent (replay protection). Alert webhooks are signed the same way with
``x-control-plane-signature: t=<unix>,v1=<hex HMAC-SHA256(token, "<t>." + body)>``.
"""
from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "x-agent-signature"
TIMESTAMP_HEADER = "x-agent-timestamp"
WEBHOOK_SIGNATURE_HEADER = "x-control-plane-signature"
REPLAY_WINDOW_SECONDS = 300


def signed_bytes(body: bytes, timestamp: str | None = None) -> bytes:
    if timestamp is None:
        return body
    return timestamp.encode("ascii") + b"." + body


def sign(secret: str, body: bytes, timestamp: str | None = None) -> str:
    return hmac.new(secret.encode("utf-8"), signed_bytes(body, timestamp), hashlib.sha256).hexdigest()


def verify(secret: str | None, body: bytes, header: str | None, timestamp: str | None = None) -> bool:
    """Constant-time check of ``header`` against the expected signature.

    No secret, no header, a header that is not hex, or a mismatch: False (never an exception).
    """
    if not secret or not header:
        return False
    candidate = header.strip().lower().encode("utf-8", "surrogateescape")
    if len(candidate) != 64 or any(c not in b"0123456789abcdef" for c in candidate):
        return False
    try:
        expected = sign(secret, body, timestamp).encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(candidate, expected)


def webhook_signature(token: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(token.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_webhook_signature(token: str, body: bytes, header: str | None, *, now: int,
                             tolerance: int = REPLAY_WINDOW_SECONDS) -> bool:
    """What a webhook receiver runs (documented in docs/operations.md; used by the tests)."""
    if not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    expected = webhook_signature(token, body, ts).split("v1=", 1)[1]
    return hmac.compare_digest(parts.get("v1", "").encode(), expected.encode())
