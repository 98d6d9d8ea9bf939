"""Errors in one shape, for every response.

The handlers registered by ``init_app`` turn the domain's ``DomainError`` (``cp.errors``) and
every ``HTTPException`` into ``{"error": "<snake_case_code>", "message": "...", "details": {...}}``
for the JSON side, and into a small escaped HTML page for the browser side. No response ever
carries a stack trace.
"""
from __future__ import annotations

import logging

from flask import jsonify, render_template, request
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from cp.errors import DomainError, RateLimited
from cp.extensions import db

log = logging.getLogger("cp.errors")


# Default code and sentence per HTTP status (for errors raised by Flask/Werkzeug themselves).
HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request is malformed."),
    401: ("unauthorized", "Authentication is required."),
    403: ("forbidden", "Your role does not allow this."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "This method is not allowed here."),
    409: ("conflict", "The request conflicts with the current state."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "Requests with a body must be Content-Type: application/json."),
    422: ("validation_error", "The request failed validation."),
    429: ("rate_limited", "Too many requests."),
    500: ("internal_error", "Something went wrong on our side; it has been logged."),
    503: ("unavailable", "The service is temporarily unavailable."),
}


def error_body(status: int, code: str | None = None, message: str | None = None,
               details: dict | None = None) -> dict:
    default_code, default_message = HTTP_CODES.get(status, ("error", "Request failed."))
    return {"error": code or default_code, "message": message or default_message, "details": details or {}}


def error_headers(exc: DomainError) -> dict[str, str]:
    """The headers a domain error's answer carries besides the body (``Retry-After`` on a 429)."""
    return {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else {}


def error_response(status: int, code: str | None = None, message: str | None = None,
                   details: dict | None = None, headers: dict | None = None):
    resp = jsonify(error_body(status, code, message, details))
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def wants_json() -> bool:
    if request.path.startswith("/api/") or request.path == "/api" or request.path == "/metrics":
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def init_app(app) -> None:
    def _render(status: int, code: str, message: str, details: dict | None = None, headers=None):
        if wants_json():
            return error_response(status, code, message, details, headers)
        return render_template("error.html", status=status, code=code, message=message), status, headers or {}

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError):
        db.session.rollback()
        return _render(exc.status, exc.code, exc.message, exc.details, error_headers(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        code, message = HTTP_CODES.get(status, ("error", exc.description or "Request failed."))
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"The request body is over the limit of {limit} bytes."
        headers = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(exc.valid_methods)
        return _render(status, code, message, None, headers)

    @app.errorhandler(DataError)
    @app.errorhandler(OverflowError)
    def _out_of_range(exc):
        """A value the database cannot hold (an id or number out of its column's range): the
        client's input, never a 500 (cp.web.security bounds path ids already)."""
        log.info("value out of range on %s: %s", _safe_path(), type(exc).__name__)
        try:
            db.session.rollback()
        except Exception:  # noqa: BLE001
            pass
        return _render(422, "validation_error", "A value is out of the range this service accepts.",
                       {"_schema": ["A number is out of range."]})

    @app.errorhandler(OperationalError)
    def _db_down(exc):
        log.error("database unavailable: %s", type(exc.orig).__name__ if hasattr(exc, "orig") else exc)
        try:
            db.session.rollback()
        except Exception:  # noqa: BLE001 - the connection may already be gone
            pass
        return _render(503, "database_unavailable", "The database is unavailable; retry shortly.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, DBAPIError) and getattr(exc, "connection_invalidated", False):
            return _db_down(exc)
        log.exception("unhandled error on %s", _safe_path())
        try:
            db.session.rollback()
        except Exception:  # noqa: BLE001
            pass
        return _render(500, "internal_error", HTTP_CODES[500][1])


def _safe_path() -> str:
    return request.path[:200]
