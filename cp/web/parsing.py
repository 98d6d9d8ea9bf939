"""Request helpers shared by every JSON endpoint: body parsing, schema loading, lists.

Handlers stay thin: ``body = load_json(Schema())`` then call the domain, then ``jsonify``.
"""
from __future__ import annotations

import json
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from cp.errors import BadRequest, DomainError, Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class UnsupportedMediaType(DomainError):
    status, code = 415, "unsupported_media_type"


def require_json_content_type() -> None:
    """Requests with a body must be ``Content-Type: application/json`` (else 415)."""
    if not request.content_length and not request.get_data(cache=True):
        return  # no body at all (no Content-Length, or 0): nothing to type
    if not is_json_content_type(request.headers.get("Content-Type")):
        raise UnsupportedMediaType("Requests with a body must be Content-Type: application/json.")


JSON_MIMETYPE = "application/json"


def is_json_content_type(value: str | None) -> bool:
    """``Content-Type: application/json`` (parameters such as ``charset`` aside)."""
    return value is not None and value.partition(";")[0].strip().lower() == JSON_MIMETYPE


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def decode_json(raw: bytes) -> Any:
    """Strict JSON (NaN and Infinity are not JSON); 400 ``invalid_json`` otherwise."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None


def check_object(data: Any, raw: bytes) -> dict:
    """The decoded body must be an object (400); text with a NUL character, which PostgreSQL
    cannot store, is a 422 naming the field."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    if b"\\u0000" in raw:  # cheap pre-check; the walk runs only when an escape is present
        bad = {str(k): ["Text may not contain NUL (\\u0000) characters."]
               for k, v in data.items() if _has_nul(k) or _has_nul(v)}
        if bad:
            raise Invalid("The request failed validation.", details=bad)
    return data


def parse_json_object(raw: bytes, *, allow_empty: bool = False) -> dict:
    """Decode ``raw`` as a JSON object (see ``decode_json`` and ``check_object``)."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return check_object(decode_json(raw), raw)


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
