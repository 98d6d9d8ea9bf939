"""``cp.fastsql.Raw``: the hot path's statements sent through psycopg's ``RawCursor``."""
from __future__ import annotations

import pytest
from sqlalchemy import event, exc

from cp import fastsql
from cp.extensions import db


def test_named_placeholders_become_numbered_ones_in_order_of_first_use():
    stmt = fastsql.Raw("SELECT %(b)s,\n   %(a)s, %(b)s::int, '100%%' WHERE x LIKE 'a%%'")
    assert stmt.sql == "SELECT $1, $2, $1::int, '100%' WHERE x LIKE 'a%'"
    assert stmt.names == ("b", "a")


@pytest.fixture
def pg_conn(postgres_only, app):
    with app.app_context():
        yield db.session.connection()
        db.session.rollback()


def test_rows_are_tuples_and_listeners_see_the_statement(pg_conn):
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    event.listen(pg_conn.engine, "before_cursor_execute", record)
    try:
        rows = fastsql.Raw("SELECT %(n)s::int + 1, %(s)s::text").rows(pg_conn, {"n": 41, "s": "x", "unused": 1})
    finally:
        event.remove(pg_conn.engine, "before_cursor_execute", record)
    assert rows == [(42, "x")]
    assert seen == [("SELECT $1::int + 1, $2::text", [41, "x"])]


def test_a_statement_without_rows_returns_an_empty_list(pg_conn):
    assert fastsql.Raw("CREATE TEMPORARY TABLE fastsql_probe (id int)").rows(pg_conn, {}) == []


def test_driver_errors_are_raised_as_sqlalchemy_errors(pg_conn):
    with pytest.raises(exc.DataError):  # cp.errors turns these into a 422, never a 500
        fastsql.Raw("SELECT 1 / %(zero)s::int").rows(pg_conn, {"zero": 0})
