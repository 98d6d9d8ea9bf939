"""The Flask extensions, created unbound; ``create_app`` binds them with ``init_app``."""
import sqlite3

import psycopg
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

# Deterministic constraint names, so Alembic migrations are reproducible on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()


@event.listens_for(Engine, "connect")
def _session_settings(dbapi_connection, connection_record) -> None:
    """The embedded SQLite default: WAL so the worker and the web processes read while one
    writes, a busy timeout instead of "database is locked", and enforced foreign keys.

    PostgreSQL: the session's time zone is UTC, whatever the server's ``timezone`` setting.
    The driver hands back a ``timestamptz`` in the session's zone, and a time the service
    accepts (years 1-9999 in UTC) may fall outside them in another zone
    (``9999-12-31T23:59:59Z`` is year 10000 in Tokyo): every read of that row would fail.
    A pooler in transaction mode (PgBouncer) keeps the setting: it tracks ``TimeZone`` per
    client."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
    elif isinstance(dbapi_connection, psycopg.Connection):
        dbapi_connection.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.commit()
