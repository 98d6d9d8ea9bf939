"""The one error hierarchy: domain code raises the ``DomainError`` subclasses below.

Each carries the status and snake_case code it answers with, but no HTTP machinery:
``cp.web.errors`` turns them, and every ``HTTPException``, into the one error shape
``{"error": "<snake_case_code>", "message": "...", "details": {...}}``.
"""
from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or {}


class BadRequest(DomainError):
    status, code = 400, "bad_request"


class Unauthorized(DomainError):
    status, code = 401, "unauthorized"


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class NotFound(DomainError):
    status, code = 404, "not_found"


class Conflict(DomainError):
    status, code = 409, "conflict"


class Invalid(DomainError):
    """Semantically invalid input (422); ``details`` maps field -> list of messages."""

    status, code = 422, "validation_error"


class RateLimited(DomainError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Unavailable(DomainError):
    status, code = 503, "unavailable"
