"""Request helpers shared by every JSON endpoint: body parsing, schema loading, lists.

Handlers stay thin: ``body = load_json(Schema())`` then call the domain, then ``jsonify``.
"""
from __future__ import annotations

import json
import re
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


# --- limits of what a JSON body may hold (docs/security.md, "Input limits") ----------------
MAX_JSON_DEPTH = 64  # the body object is level 1; each object or array inside it one more
NUL_MESSAGE = "Text may not contain NUL (\\u0000) characters."
SURROGATE_MESSAGE = "Text may not contain a lone UTF-16 surrogate (\\ud800-\\udfff)."
# Text the database cannot store: NUL (PostgreSQL refuses it), lone surrogates (not encodable
# as UTF-8). In a body decoded as strict UTF-8 both can only come from an escape (backslash,
# u, 0000 or d800-dfff), which is what the cheap pre-check looks for in the raw bytes; the walk
# over the body runs only when one is present.
_BAD_TEXT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _too_deep(data: Any, limit: int) -> bool:
    """Whether ``data`` nests objects/arrays more than ``limit`` levels (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((item, depth + 1) for item in value if isinstance(item, (dict, list)))
    return False


def decode_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only (UTF-16 and -32 too are 400), no NaN or Infinity, nested at most
    ``MAX_JSON_DEPTH`` levels; 400 ``invalid_json`` otherwise."""
    try:
        # strict UTF-8 (a leading BOM aside): json.loads(bytes) would let encoded surrogates through
        text = raw.decode("utf-8-sig")
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None
    # an object or array opens with a bracket: with few of them the walk cannot find too many
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _too_deep(data, MAX_JSON_DEPTH):
        raise BadRequest(f"The request body is nested deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json",
                         details={"max_depth": MAX_JSON_DEPTH})
    return data


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None."""
    if "\x00" in value:
        return NUL_MESSAGE
    if _LONE_SURROGATE.search(value):
        return SURROGATE_MESSAGE
    return None


def text_errors(value: Any) -> Any:
    """The text in ``value`` that cannot be stored, as marshmallow reports errors (field ->
    messages, nested objects and list indexes as nested maps), or None when there is none.
    A field name that cannot be stored is reported under its escaped form."""
    if isinstance(value, str):
        problem = text_problem(value)
        return [problem] if problem else None
    if isinstance(value, dict):
        errors = {}
        for key, item in value.items():
            problem = text_problem(key) if isinstance(key, str) else None
            sub = [problem] if problem else text_errors(item)
            if sub:
                errors[ascii(key)[1:-1] if problem else key] = sub
        return errors or None
    if isinstance(value, list):
        errors = {i: sub for i, item in enumerate(value) if (sub := text_errors(item))}
        return errors or None
    return None


def check_object(data: Any, raw: bytes) -> dict:
    """The decoded body must be an object (400); text that cannot be stored (NUL characters,
    lone surrogates) is a 422 naming the field."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    errors = text_errors(data) if _BAD_TEXT_ESCAPE.search(raw) else None
    if errors:
        raise Invalid("The request failed validation.", details=errors)
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


class NoBodySchema(Schema):
    """No fields: any field sent is a 422 (``Unknown field.``)."""


def require_no_body() -> dict:
    """For actions that take no body: none at all, or an empty JSON object (returned). Another
    content type is a 415, anything else in the body a 400 or 422, as for every other body."""
    return load_json(NoBodySchema(), allow_empty=True)


def load_args(schema: Schema) -> dict:
    """Validate query-string arguments with ``schema`` (unknown ones are ignored)."""
    return load(schema, request.args.to_dict())
