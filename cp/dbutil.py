"""Small helpers for statements that differ between PostgreSQL and SQLite, the pool's liveness
test, and the end of a request's session when its connection died after its last statement."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import String, and_, bindparam, event, exc, func, select, text, true
from sqlalchemy.dialects import postgresql, sqlite

from cp.errors import NotFound
from cp.extensions import db

log = logging.getLogger("cp.dbutil")


def dialect_name() -> str:
    return db.session.get_bind().dialect.name


def insert(table):
    """``INSERT`` with ``on_conflict_do_update/do_nothing`` for the current backend."""
    if dialect_name() == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def is_postgres() -> bool:
    return dialect_name() == "postgresql"


def equal_to(model, **values) -> list:
    """``model.<name> == value`` for each value given (``None`` and ``""`` filter nothing): the
    conditions of a list's exact-match filters."""
    return [getattr(model, name) == value for name, value in values.items() if value not in (None, "")]


@dataclass
class Page:
    items: list[Any]
    total: int
    limit: int
    offset: int


def paged(model, conds: list, *, newest, limit: int, offset: int, options: tuple = (),
          total: int | None = None) -> Page:
    """One page of the ``model`` rows matching ``conds``, newest first by the ``newest`` column
    (ties by id, newest first too), and how many match in all: the contract's list order.
    ``total``: that count when the caller has it already (a maintained counter)."""
    if total is None:
        total = db.session.execute(select(func.count(model.id)).where(*conds)).scalar_one()
    items = db.session.scalars(select(model).options(*options).where(*conds)
                               .order_by(newest.desc(), model.id.desc()).limit(limit).offset(offset)).all()
    return Page(list(items), total, limit, offset)


def get_by_id(model, ident: int, *, missing: str, code: str = "not_found", lock: bool = False,
              skip_locked: bool = False):
    """The ``model`` row with id ``ident`` (``lock``: ``SELECT ... FOR UPDATE`` of that row, its
    attributes refreshed), else ``NotFound(missing, code)``."""
    stmt = select(model).where(model.id == ident)
    if lock:
        stmt = stmt.with_for_update(of=model, skip_locked=skip_locked).execution_options(populate_existing=True)
    row = db.session.scalars(stmt).first()
    if row is None:
        raise NotFound(missing, code=code)
    return row


def without_index_only_scans(run):
    """``run()`` with PostgreSQL's index-only scans off for it alone (``enable_indexonlyscan``,
    set for the transaction and put back after it), for reads of a table that every heartbeat
    rewrites. Such a table has no page left all-visible under a fleet's load, so an index-only
    scan reads the index and then every row from the heap as well, while the planner still
    costs it by the visibility map of the last ``VACUUM``. If ``run`` fails, the transaction is
    rolled back, and the setting with it. Elsewhere just ``run()``."""
    if not is_postgres():
        return run()
    old = db.session.execute(text("SELECT current_setting('enable_indexonlyscan'), "
                                  "set_config('enable_indexonlyscan', 'off', true)")).scalar_one()
    result = run()
    db.session.execute(text("SELECT set_config('enable_indexonlyscan', :old, true)"), {"old": old})
    return result


def ping_idle_connections(engine, idle_seconds: float) -> None:
    """Test a pooled connection with a round trip before it is reused, only when it has sat idle
    for more than ``idle_seconds`` (``CONTROL_PLANE_DB_PING_IDLE_SECONDS``; 0: every time).

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more round trip per request. A
    connection reused within a second of its last use is almost never dead, and if it is (the
    database restarted under load), the failed statement invalidates the whole pool, so each
    process loses one request, answered 503. A dead connection found here is replaced before the
    request sees it (the pool retries the checkout with a new one).
    """
    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, record) -> None:
        record.info["cp_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, proxy) -> None:
        since = record.info.pop("cp_idle_since", None)
        if since is not None and time.monotonic() - since <= idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            if engine.dialect.is_disconnect(error, dbapi_connection, None):
                raise exc.DisconnectionError(str(error)) from error  # the pool takes a new connection
            raise


def end_session(_error: BaseException | None = None) -> None:
    """End the app context's session; if the rollback that ends it finds the connection gone
    (PostgreSQL or PgBouncer restarted after the request's last statement), let the pool drop it
    instead of raising out of the teardown, which would turn the answer already made into a 500.
    Nothing is lost: the server rolled back what was open when the connection died, and what the
    request committed stays committed (its answer says so). Registered after Flask-SQLAlchemy's
    own teardown, so it runs before it (that one then finds no session left)."""
    try:
        db.session.remove()
    except exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
        log.warning("connection lost at the end of a request: %s", type(error.orig).__name__,
                    extra={"event": "db_connection_lost"})
        db.session.remove()  # the invalidated connection is discarded; nothing left to roll back


def init_app(app) -> None:
    app.teardown_appcontext(end_session)
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":  # an embedded file has no connection to lose
        ping_idle_connections(engine, app.config["CP_SETTINGS"].db_ping_idle_seconds)


TRANSACTION_SETTINGS = ("lock_timeout", "statement_timeout")


def transaction_settings_guard(dialect_name: str):
    """PostgreSQL: a condition that is true and, as it is evaluated, bounds how long the current
    transaction may wait for a lock (CONTROL_PLANE_DB_LOCK_TIMEOUT_MS) and run one statement
    (CONTROL_PLANE_DB_STATEMENT_TIMEOUT_MS), so a row another transaction holds fails this one
    request quickly (503, ``cp.web.errors``) instead of holding its thread. ``set_config(...,
    true)`` is ``SET LOCAL``: this transaction only, so it is safe behind a transaction-pooling
    PgBouncer. Other backends: ``true``.

    It rides in the first statement of the agent gate (``cp.web.limits.count_agent_request``:
    ``INSERT ... SELECT ... WHERE <guard>``), so the settings cost no round trip of their own: the
    guard is evaluated before the row is inserted, so the lock timeout already bounds that
    statement's own wait for its row (the statement timeout applies from the next statement).
    Its values: ``transaction_settings_params()``."""
    if dialect_name != "postgresql":
        return true()
    return and_(*(func.set_config(name, bindparam(f"cp_{name}", type_=String()), true()).is_not(None)
                  for name in TRANSACTION_SETTINGS))


def transaction_settings_params() -> dict[str, str]:
    """The values ``transaction_settings_guard`` sets (on other backends it has no parameters and
    SQLAlchemy ignores these)."""
    cfg = current_app.config["CP_SETTINGS"]
    return {"cp_lock_timeout": f"{cfg.db_lock_timeout_ms}ms", "cp_statement_timeout": f"{cfg.db_statement_timeout_ms}ms"}


def commit_without_flush_wait(conn) -> None:
    """PostgreSQL: this transaction's COMMIT returns before its WAL is flushed to disk
    (``synchronous_commit = off`` for it alone): faster, and a crash of the database server can
    forget it although it was acknowledged. Only where a setting opts in. Other backends: nothing."""
    if conn.dialect.name == "postgresql":
        _set_local(conn, synchronous_commit="off")


def _set_local(conn, **values: str) -> None:
    conn.execute(select(*(func.set_config(name, value, true()) for name, value in values.items())))
