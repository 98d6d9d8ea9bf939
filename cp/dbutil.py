"""Small helpers for statements that differ between PostgreSQL and SQLite."""
from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite

from .extensions import db


def dialect_name() -> str:
    return db.session.get_bind().dialect.name


def insert(table):
    """``INSERT`` with ``on_conflict_do_update/do_nothing`` for the current backend."""
    if dialect_name() == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def is_postgres() -> bool:
    return dialect_name() == "postgresql"
