"""Request helpers shared by every JSON endpoint: body parsing, schema loading, lists.

Handlers stay thin: ``body = load_json(Schema())`` then call the domain, then ``jsonify``.
"""
from __future__ import annotations

import json
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from .errors import BadRequest, DomainError, Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class UnsupportedMediaType(DomainError):
    status, code = 415, "unsupported_media_type"


def require_json_content_type() -> None:
    """Requests with a body must be ``Content-Type: application/json`` (else 415)."""
    if not request.content_length and not request.get_data(cache=True):
        return  # no body at all (no Content-Length, or 0): nothing to type
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Requests with a body must be Content-Type: application/json.")


def parse_json_object(raw: bytes, *, allow_empty: bool = False) -> dict:
    """Decode ``raw`` as a JSON object; 400 ``invalid_json`` otherwise."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def json_body(*, allow_empty: bool = False) -> dict:
    require_json_content_type()
    return parse_json_object(request.get_data(cache=True), allow_empty=allow_empty)


def load(schema: Schema, data: Any) -> dict:
    try:
        return schema.load(data)
    except ValidationError as err:
        messages = err.messages if isinstance(err.messages, dict) else {"_schema": err.messages}
        raise Invalid("The request failed validation.", details=messages) from None


def load_json(schema: Schema, *, allow_empty: bool = False) -> dict:
    return load(schema, json_body(allow_empty=allow_empty))


def load_args(schema: Schema) -> dict:
    """Validate query-string arguments with ``schema`` (unknown ones are ignored)."""
    return load(schema, request.args.to_dict())


def page(query_total: int, items: list) -> dict:
    return {"items": items, "total": query_total}
