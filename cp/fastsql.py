"""Hot-path statements compiled once per process and sent as plain SQL on PostgreSQL.

``Connection.execute(core_statement)`` costs SQLAlchemy 100-200 µs of CPU per call on top of the
driver (parameter processing, expanding ``IN`` lists, the execution context, result
processing), more than the database needs to run a small statement. For the few statements
that run on every agent request, ``run`` compiles the statement once (its constant values
become fixed parameters, expanding lists are rendered), then sends the SQL string with
psycopg's ``RawCursor`` (``Raw``: native ``$n`` placeholders, so psycopg does not parse the
query on every call, and plain tuples back, so no result object is built). SQLAlchemy's
``before_cursor_execute`` listeners are still called (the statement-count tests count these
statements with them), and psycopg prepares each statement server-side after a few calls.
Other backends use ``conn.execute``.

Only for statements whose variable parts are named ``bindparam()`` values of plain types
(ints, strings, floats, timezone-aware datetimes): no bind or result processors run, so a
timestamp read back must go through ``cp.timeutil.as_utc`` / ``isoformat`` (they do).
"""
from __future__ import annotations

import re
from typing import Any

import psycopg

_compiled: dict[tuple[int, str], tuple[Any, str, dict]] = {}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


class Raw:
    """A PostgreSQL statement written with ``%(name)s`` placeholders, sent as ``$n`` ones."""

    __slots__ = ("sql", "names")

    def __init__(self, sql: str):
        names: list[str] = []

        def number(m: re.Match) -> str:
            if m.group(0) == "%%":
                return "%"
            if m.group(1) not in names:
                names.append(m.group(1))
            return f"${names.index(m.group(1)) + 1}"

        self.sql = _PLACEHOLDER.sub(number, " ".join(sql.split()))
        self.names = tuple(names)

    def rows(self, conn, params: dict) -> list[tuple]:
        """Run it on ``conn`` (a SQLAlchemy ``Connection``, in its transaction): its rows, as tuples."""
        values = [params[n] for n in self.names]
        cursor = psycopg.RawCursor(conn.connection.driver_connection)
        if conn._has_events or conn.engine._has_events:
            conn.dispatch.before_cursor_execute(conn, cursor, self.sql, values, None, False)
        try:
            cursor.execute(self.sql, values)
            return cursor.fetchall() if cursor.pgresult.status == psycopg.pq.ExecStatus.TUPLES_OK else []
        except psycopg.Error as exc:
            # as SQLAlchemy would raise it (cp.errors turns OperationalError into a 503)
            conn._handle_dbapi_exception(exc, self.sql, values, cursor, None)
            raise
        finally:
            cursor.close()


def run(conn, stmt, params: dict):
    """Execute ``stmt`` with ``params`` (a dict of its named bind parameters)."""
    if conn.dialect.name != "postgresql":
        return conn.execute(stmt, params)
    sql, fixed = expanded(stmt, conn.dialect, params)
    return conn.exec_driver_sql(sql, {**fixed, **params})


def expanded(stmt, dialect, params: dict) -> tuple[str, dict]:
    """``stmt`` as ``(SQL with %(name)s placeholders, its constant parameters)``, compiled once.
    The named parameters of ``params`` stay placeholders; the statement's constants (``kind =
    'update'``, ``IN ('active', 'completed')``, ``LIMIT 100``...) are written into the SQL as
    literals when they are plain strings or integers (fewer parameters to send, and PostgreSQL
    plans with the real values), else kept as parameters."""
    key = (id(stmt), dialect.name)
    entry = _compiled.get(key)
    if entry is None or entry[0] is not stmt:
        state = stmt.compile(dialect=dialect).construct_expanded_state(params)
        sql, fixed = state.statement, {}
        for name, value in state.parameters.items():
            if name in params:
                continue
            literal = _literal(value)
            placeholder = f"%({name})s"
            if literal is not None and sql.count(placeholder) >= 1:
                sql = sql.replace(placeholder, literal)
            else:
                fixed[name] = value
        entry = (stmt, sql, fixed)
        _compiled[key] = entry
    return entry[1], entry[2]


def _literal(value) -> str | None:
    """A constant as SQL text (strings quoted, ``%`` doubled for the driver), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and "\x00" not in value:
        return "'" + value.replace("'", "''").replace("%", "%%") + "'"
    return None
