"""Hot-path statements compiled once per process and sent as plain SQL on PostgreSQL.

``Connection.execute(core_statement)`` costs SQLAlchemy 100-200 µs of CPU per call on top of the
driver (parameter processing, expanding ``IN`` lists, the execution context, result
processing), more than the database needs to run a small statement. For the few statements
that run on every agent request, ``run`` compiles the statement once (its constant values
become fixed parameters, expanding lists are rendered), then sends the SQL string with
``exec_driver_sql``: SQLAlchemy's cursor events still fire (the statement-count test sees it)
and psycopg prepares it server-side after a few calls. Other backends use ``conn.execute``.

Only for statements whose variable parts are named ``bindparam()`` values of plain types
(ints, strings, floats, timezone-aware datetimes): no bind or result processors run, so a
timestamp read back must go through ``cp.timeutil.as_utc`` / ``isoformat`` (they do).
"""
from __future__ import annotations

from typing import Any

_compiled: dict[tuple[int, str], tuple[Any, str, dict]] = {}


def run(conn, stmt, params: dict):
    """Execute ``stmt`` with ``params`` (a dict of its named bind parameters)."""
    if conn.dialect.name != "postgresql":
        return conn.execute(stmt, params)
    sql, fixed = expanded(stmt, conn.dialect, params)
    return conn.exec_driver_sql(sql, {**fixed, **params})


def expanded(stmt, dialect, params: dict) -> tuple[str, dict]:
    """``stmt`` as ``(SQL with %(name)s placeholders, its constant parameters)``, compiled once.
    The named parameters of ``params`` stay placeholders; constant lists such as ``IN (...)``
    are rendered as one parameter each (with this first call's values: they are constants)."""
    key = (id(stmt), dialect.name)
    entry = _compiled.get(key)
    if entry is None or entry[0] is not stmt:
        state = stmt.compile(dialect=dialect).construct_expanded_state(params)
        entry = (stmt, state.statement, {k: v for k, v in state.parameters.items() if k not in params})
        _compiled[key] = entry
    return entry[1], entry[2]
