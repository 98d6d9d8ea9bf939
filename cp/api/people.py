"""``/api/users`` (admin), ``/api/tokens`` (a person, for themselves) and ``/api/me`` (anyone).

People are managed by admins; no delete: ``active: false`` ends a person's sessions and stops
their tokens at once. A personal token's secret is in the answer that creates it and nowhere
else (only its hash is stored). Handlers parse, call ``cp.people``, and dump.
"""
from __future__ import annotations

from flask import jsonify
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from cp import people
from cp.api import bp
from cp.api.actions import register_list
from cp.api.audited import audited
from cp.api.schemas import ListArgsSchema, list_schema
from cp.auth import current_actor, role_required
from cp.errors import Forbidden
from cp.models import ROLES
from cp.web.fields import StrictBoolean, StrictInteger, UTCDateTime
from cp.web.openapi import operation
from cp.web.parsing import load_json

ROLE_FIELD_ERROR = f"Must be one of: {', '.join(ROLES)}."


def _email(value: str) -> None:
    if not people.EMAIL_RE.fullmatch(value.strip()):
        raise ValidationError("Not a valid email address.")


class PersonSchema(Schema):
    id = fields.Integer(dump_only=True)
    email = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    role = fields.String(dump_only=True, metadata={"enum": list(ROLES)})
    active = fields.Boolean(dump_only=True)
    created_at = UTCDateTime(dump_only=True)
    last_seen_at = UTCDateTime(dump_only=True, allow_none=True)


class PersonCreateSchema(Schema):
    email = fields.String(required=True, validate=[validate.Length(min=3, max=254), _email])
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=200))
    role = fields.String(required=True, validate=validate.OneOf(ROLES, error=ROLE_FIELD_ERROR))


class PersonUpdateSchema(Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    role = fields.String(validate=validate.OneOf(ROLES, error=ROLE_FIELD_ERROR))
    active = StrictBoolean()

    @validates_schema
    def _something(self, data, **_kw):
        if not data:
            raise ValidationError("Send at least one of name, role, active.", "_schema")


class TokenCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    expires_in_days = StrictInteger(load_default=None, allow_none=True,
                                    validate=validate.Range(min=1, max=people.MAX_EXPIRY_DAYS))


class TokenSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    created_at = UTCDateTime(dump_only=True)
    expires_at = UTCDateTime(dump_only=True, allow_none=True)
    last_used_at = UTCDateTime(dump_only=True, allow_none=True)


class TokenCreatedSchema(TokenSchema):
    token = fields.String(dump_only=True, metadata={"description": "The secret: shown in this answer only."})


class MeSchema(Schema):
    name = fields.String(dump_only=True)
    email = fields.String(dump_only=True, allow_none=True, metadata={"description": "null for a role token"})
    role = fields.String(dump_only=True, metadata={"enum": list(ROLES)})
    via = fields.String(dump_only=True, metadata={"enum": list(people.VIAS)})


PersonListSchema = list_schema(PersonSchema, "PersonListSchema")
TokenListSchema = list_schema(TokenSchema, "TokenListSchema")
person_schema, token_schema = PersonSchema(), TokenSchema()


def _created(token, secret: str):
    return jsonify({**token_schema.dump(token), "token": secret}), 201


@bp.get("/me")
@role_required("support")
def me():
    """Who the caller is.
    ---
    get:
      tags: [people]
      summary: The caller's name, email (null for a role token), role and how they authenticated.
      responses:
        200:
          content:
            application/json:
              schema: MeSchema
    """
    actor = current_actor()
    return jsonify({"name": actor.name or actor.label, "email": actor.email, "role": actor.role, "via": actor.via})


register_list("/users", endpoint="list_users", role="admin", tag="people",
              summary="Every person, newest first (admin).", args=ListArgsSchema, answer=PersonListSchema,
              fetch=people.list_people, dump=lambda items: person_schema.dump(items, many=True))


@bp.post("/users")
@role_required("admin")
@audited("user.create", "user")
def create_user():
    """Add a person.
    ---
    post:
      tags: [people]
      summary: A new active person with a role (admin). The email is compared case-insensitively.
      requestBody:
        required: true
        content:
          application/json:
            schema: PersonCreateSchema
      responses:
        201:
          content:
            application/json:
              schema: PersonSchema
        409:
          description: A person with this email exists (`duplicate_email`).
    """
    body = load_json(PersonCreateSchema())
    person = people.create_person(body["email"], body["name"], body["role"], by=current_actor().label)
    return jsonify(person_schema.dump(person)), 201


@bp.patch("/users/<int:user_id>")
@role_required("admin")
@audited("user.update", "user", "user_id")
def update_user(user_id: int):
    """Change a person's name, role or active flag.
    ---
    patch:
      tags: [people]
      summary: Rename, change the role, deactivate or reactivate a person (admin).
      description: >
        `active: false` ends the person's sessions and stops their tokens at once; a role change
        applies to their next request. Nobody raises their own role (403 `own_role`); the last
        active admin is neither deactivated nor demoted (409 `last_admin`).
      requestBody:
        required: true
        content:
          application/json:
            schema: PersonUpdateSchema
      responses:
        200:
          content:
            application/json:
              schema: PersonSchema
        403:
          description: Raising your own role (`own_role`).
        409:
          description: The last active admin (`last_admin`).
    """
    body = load_json(PersonUpdateSchema())
    person = people.update_person(user_id, by=current_actor(), **body)
    return jsonify(person_schema.dump(person))


def _issue_token_op(summary: str, errors: dict[int, str]) -> dict:
    """The OpenAPI operation of the two ways to get a new personal token (the secret is in
    their answer only)."""
    return {"post": operation(tags=["people"], summary=summary, answer=TokenCreatedSchema, status=201,
                              errors=errors, body=TokenCreateSchema)}


def _issue_token_for(person_id: int):
    body = load_json(TokenCreateSchema())
    return _created(*people.issue_token(people.get_person(person_id), body["name"], body["expires_in_days"]))


@bp.post("/users/<int:user_id>/tokens")
@role_required("admin")
@audited("token.issue", "api_token")
def issue_user_token(user_id: int):
    """Issue a personal token for a person."""
    return _issue_token_for(user_id)


issue_user_token.cp_openapi = _issue_token_op(
    "A new personal token for that person (admin); the secret is in this answer only.",
    {409: "The person is deactivated (`inactive_person`)."})


def _own_person():
    actor = current_actor()
    if actor.person_id is None:
        raise Forbidden("Personal tokens belong to people; a role token has none.", code="not_a_person")
    return actor.person_id


@bp.post("/tokens")
@role_required("support")
@audited("token.create", "api_token")
def create_token():
    """Create a personal token for yourself."""
    return _issue_token_for(_own_person())


create_token.cp_openapi = _issue_token_op(
    "A new personal token of the caller (a person; a role token gets 403). The secret is in this answer only.", {})


def _own_tokens(**args):
    return people.list_tokens(current_actor().person_id, **args)


register_list("/tokens", endpoint="list_tokens", role="support", tag="people",
              summary="The caller's personal tokens that are not revoked, newest first, without secrets.",
              args=ListArgsSchema, answer=TokenListSchema, fetch=_own_tokens,
              dump=lambda items: token_schema.dump(items, many=True))


@bp.delete("/tokens/<int:token_id>")
@role_required("support")
@audited("token.revoke", "api_token", "token_id")
def revoke_token(token_id: int):
    """Revoke one of your personal tokens.
    ---
    delete:
      tags: [people]
      summary: Revoke a token of the caller at once (another person's token is 404).
      responses:
        204:
          description: Revoked.
    """
    actor = current_actor()
    people.revoke_token(actor.person_id if actor.person_id is not None else -1, token_id)
    return "", 204
