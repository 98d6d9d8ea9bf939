"""``flask --app cp users ...``: people from the command line (the first admin, scripts).

- ``users create EMAIL --role ROLE [--name NAME]``
- ``users token EMAIL --name NAME [--expires-in-days N]``: the new token alone on the last line
  of stdout (``TOKEN=$(flask --app cp users token ... | tail -n 1)``)
- ``users deactivate EMAIL``
- ``users list``

Each change is audited (actor ``cli``) in the same transaction as the change.
"""
from __future__ import annotations

import click
from flask.cli import with_appcontext

from cp import audit, people
from cp.errors import DomainError, NotFound
from cp.extensions import db
from cp.models import ROLES


def _fail(exc: DomainError) -> click.ClickException:
    db.session.rollback()
    return click.ClickException(exc.message)


def _person(email: str):
    person = people.find_person_by_email(email)
    if person is None:
        raise NotFound(f"No person with the email {email}.")
    return person


def _commit(action: str, target_type: str, target_id, details: dict | None = None) -> None:
    audit.add(action, actor=audit.CLI, target_type=target_type, target_id=target_id, details=details)
    db.session.commit()


@click.group("users")
def users() -> None:
    """Named people: create, issue a personal token, deactivate, list."""


@users.command("create")
@click.argument("email")
@click.option("--role", required=True, type=click.Choice(ROLES), help="support, ops or admin.")
@click.option("--name", default=None, help="Display name (default: the part of the email before @).")
@with_appcontext
def create(email: str, role: str, name: str | None) -> None:
    """Add an active person."""
    try:
        person = people.create_person(email, name, role, by=audit.CLI.label)
        _commit("user.create", "user", person.id, {"email": person.email, "role": role})
    except DomainError as exc:
        raise _fail(exc) from None
    click.echo(f"created {person.email} ({person.role}), id {person.id}")


@users.command("token")
@click.argument("email")
@click.option("--name", required=True, help="What the token is for (a laptop, a script).")
@click.option("--expires-in-days", type=click.IntRange(1, people.MAX_EXPIRY_DAYS), default=None,
              help="Days until it stops working (default: never).")
@with_appcontext
def token(email: str, name: str, expires_in_days: int | None) -> None:
    """Issue a personal token; the token is printed alone on the last line, once."""
    try:
        row, secret = people.issue_token(_person(email), name, expires_in_days)
        _commit("token.issue", "api_token", row.id, {"email": row.user.email, "name": row.name})
    except DomainError as exc:
        raise _fail(exc) from None
    expiry = f", expires {row.expires_at:%Y-%m-%d}" if row.expires_at else ""
    click.echo(f"token {row.id} '{row.name}' for {row.user.email}{expiry}; it is shown only now:")
    click.echo(secret)


@users.command("deactivate")
@click.argument("email")
@with_appcontext
def deactivate(email: str) -> None:
    """Deactivate a person: their sessions end and their tokens stop at once."""
    try:
        person = people.update_person(_person(email).id, by=audit.CLI, active=False)
        _commit("user.update", "user", person.id, {"active": False})
    except DomainError as exc:
        raise _fail(exc) from None
    click.echo(f"deactivated {person.email}")


@users.command("list")
@with_appcontext
def list_() -> None:
    """Every person: id, email, role, active."""
    items, _total = people.list_people(limit=10_000)
    for person in items:
        click.echo(f"{person.id}\t{person.email}\t{person.role}\t{'active' if person.active else 'inactive'}")


def init_cli(app) -> None:
    app.cli.add_command(users)
