"""OpenAPI operations as data, for what the code declares rather than a docstring: the routes
registered from a table (``cp.api.actions``) and the request and answer schemas of the agent gate
(``cp.agent_api.signed``). A view carries them in ``cp_openapi`` (method -> operation);
``cp.api.spec`` reads them together with the YAML block of the view's docstring."""
from __future__ import annotations

from marshmallow import Schema


def json_content(schema: type[Schema]) -> dict:
    return {"application/json": {"schema": schema}}


def operation(*, answer: type[Schema], status: int = 200, body: type[Schema] | None = None,
              body_required: bool = True, errors: dict[int, str] | None = None, **fields) -> dict:
    """One operation: ``answer`` is the schema of the success response (sent with ``status``),
    ``body`` the request body's; ``errors`` the error responses the route gives beyond the
    common ones (status -> description); ``fields`` the rest as OpenAPI names it (``summary``,
    ``tags``, ``parameters`` ...). ``cp.api.spec`` adds auth, path parameters and common errors."""
    responses: dict = {status: {"content": json_content(answer)}}
    responses.update({code: {"description": text} for code, text in (errors or {}).items()})
    op = {**fields, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": json_content(body)}
    return op
