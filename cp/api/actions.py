"""Routes registered from data, for the two shapes the API repeats most:

- ``register_action``: an action on one thing by id (``POST /api/<things>/<id>/<action>``):
  parse the body (or refuse one where the action takes none), run the domain call as the
  caller, commit with its audit entry, answer with the thing; role-checked and audited like every mutating endpoint.
- ``register_list``: a list (``GET``) with validated query arguments, ``{"items", "total"}``.

Each route carries its OpenAPI operation as data (``cp_openapi``, built by ``cp.web.openapi.operation``,
read by ``cp.api.spec``)."""
from __future__ import annotations

from typing import Callable

from flask import jsonify
from marshmallow import Schema

from cp.api import bp
from cp.api.audited import audited
from cp.auth import current_actor, role_required
from cp.web.openapi import operation
from cp.web.parsing import load_args, load_json, require_no_body


def register_action(rule: str, *, endpoint: str, id_arg: str, role: str, audit: str, target_type: str,
                    summary: str, tag: str, answer: type[Schema], errors: dict[int, str],
                    run: Callable[[int, dict, str | None], dict], body: type[Schema] | None = None) -> None:
    """``run(id, body, actor)`` returns the answer's data (``actor``: who, as every "by" field
    records it); ``body=None``: the action takes none. ``audited`` commits the change with its
    audit entry."""

    def view(**kwargs):
        data = require_no_body() if body is None else load_json(body(), allow_empty=True)
        return jsonify(run(kwargs[id_arg], data or {}, current_actor().label))

    view.__name__ = endpoint
    view.__doc__ = summary
    view.cp_openapi = {"post": operation(tags=[tag], summary=summary, answer=answer, errors=errors, body=body,
                                         body_required=False)}
    bp.add_url_rule(rule, view_func=role_required(role)(audited(audit, target_type, id_arg)(view)),
                    methods=["POST"])


def register_list(rule: str, *, endpoint: str, role: str, tag: str, summary: str, args: type[Schema],
                  answer: type[Schema], fetch: Callable, dump: Callable[[list], list]) -> None:
    """``fetch(**query arguments)`` returns (items, total) or a page (``.items``, ``.total``);
    ``dump(items)`` is their JSON form."""

    def view():
        found = fetch(**load_args(args()))
        items, total = found if isinstance(found, tuple) else (found.items, found.total)
        return jsonify({"items": dump(items), "total": total})

    view.__name__ = endpoint
    view.__doc__ = summary
    view.cp_openapi = {"get": operation(tags=[tag], summary=summary, parameters=[{"in": "query", "schema": args}],
                                        answer=answer)}
    bp.add_url_rule(rule, view_func=role_required(role)(view), methods=["GET"])
