"""The schema comes only from Alembic: one head, and the models match what the migrations build."""
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import Config

from cp import MIGRATIONS_DIR
from cp.background.partitions import include_name
from cp.extensions import db


def test_migrations_have_a_single_head(app):
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1, f"multiple heads: {heads}"


def test_models_match_migrations(app):
    with app.app_context():
        # reuse env.py's type comparison (UTCDateTime is a DateTime(timezone=True) underneath)
        from cp.models import UTCDateTime
        from sqlalchemy import DateTime

        def compare_type(ctx, inspected_column, metadata_column, inspected_type, metadata_type):
            if isinstance(metadata_type, UTCDateTime):
                return not isinstance(inspected_type, DateTime)
            return None

        with db.engine.connect() as conn:
            # the partitions of the history tables are not models (env.py leaves them out too)
            ctx = MigrationContext.configure(conn, opts={"compare_type": compare_type, "include_name": include_name})
            diff = compare_metadata(ctx, db.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_app_factory_does_not_create_tables(make_app, tmp_path):
    """A fresh database stays empty until `flask db upgrade` runs."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    app = make_app(CONTROL_PLANE_DATABASE_URL=url)
    with app.app_context():
        app.test_client().get("/healthz")
        assert sa.inspect(db.engine).get_table_names() == []


# --- 0008: the search side table, its backfill and triggers, and its downgrade ----------------
def _installation_row(conn, i: int, client: str | None, domain: str | None) -> None:
    conn.execute(sa.text(
        "INSERT INTO installations (id, instance_id, client, domain, first_seen_at, last_seen_at, heartbeats_total)"
        " VALUES (:id, :iid, :client, :domain, :now, :now, 1)"),
        {"id": i, "iid": f"inst-{i:03d}", "client": client, "domain": domain,
         "now": datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)})


def _search_rows(conn) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.text(
        "SELECT installation_id, instance_id, client, domain FROM installation_search ORDER BY installation_id"))]


def _triggers(conn) -> set[str]:
    if conn.dialect.name == "postgresql":
        sql = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'installations'::regclass AND NOT tgisinternal"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'installations'"
    return {r[0] for r in conn.execute(sa.text(sql))}


def test_0008_backfills_keeps_in_step_and_downgrades(make_app, fresh_database_url):
    from flask_migrate import downgrade, upgrade

    trgm = {f"ix_installations_{c}_trgm" for c in ("instance_id", "client", "domain")}
    side_trgm = {f"ix_installation_search_{c}_trgm" for c in ("instance_id", "client", "domain")}
    triggers = {"installation_search_on_insert", "installation_search_on_update"}
    app = make_app(CONTROL_PLANE_DATABASE_URL=fresh_database_url)
    with app.app_context():
        upgrade(revision="0007")
        with db.engine.begin() as conn:
            _installation_row(conn, 1, "Acme SA", "acme.com")
            _installation_row(conn, 2, None, None)

        upgrade(revision="0008")  # backfill, triggers, the indexes move
        with db.engine.begin() as conn:
            assert _search_rows(conn) == [(1, "inst-001", "Acme SA", "acme.com"), (2, "inst-002", None, None)]
            assert _triggers(conn) == triggers
            _installation_row(conn, 3, "Globex", "globex.io")
            conn.execute(sa.text("UPDATE installations SET domain = 'acme.org', last_seen_at = last_seen_at"
                                 " WHERE id = 1"))
            conn.execute(sa.text("DELETE FROM installations WHERE id = 2"))
            assert _search_rows(conn) == [(1, "inst-001", "Acme SA", "acme.org"), (3, "inst-003", "Globex", "globex.io")]
        inspector = sa.inspect(db.engine)
        assert not trgm & {ix["name"] for ix in inspector.get_indexes("installations")}
        assert side_trgm <= {ix["name"] for ix in inspector.get_indexes("installation_search")}

        downgrade(revision="0007")
        inspector = sa.inspect(db.engine)
        assert "installation_search" not in inspector.get_table_names()
        assert trgm <= {ix["name"] for ix in inspector.get_indexes("installations")}
        with db.engine.begin() as conn:
            assert _triggers(conn) == set()
            if conn.dialect.name == "postgresql":
                assert conn.execute(sa.text("SELECT to_regprocedure('installation_search_sync()')")).scalar() is None
            _installation_row(conn, 4, "Initech", "initech.net")  # no trigger, no side table: still fine

        upgrade()  # and up again: the row written at 0007 is backfilled
        with db.engine.begin() as conn:
            assert [r[0] for r in _search_rows(conn)] == [1, 3, 4]
        db.engine.dispose()


# --- 0009: people and their tokens, added beside the existing rows ---------------------------
def test_0009_adds_people_without_touching_existing_rows(make_app, fresh_database_url):
    from flask_migrate import downgrade, upgrade

    at = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    app = make_app(CONTROL_PLANE_DATABASE_URL=fresh_database_url)
    with app.app_context():
        upgrade(revision="0008")
        with db.engine.begin() as conn:
            _installation_row(conn, 1, "Acme SA", "acme.com")
            conn.execute(sa.text(
                "INSERT INTO alerts (id, installation_id, level, source, fingerprint, message, opened_at, last_seen_at,"
                " occurrences, acknowledged_at, acknowledged_by) VALUES (7, 1, 'warning', 'agent', 'fp', 'disk',"
                " :at, :at, 3, :at, 'ops')"), {"at": at})
            conn.execute(sa.text("INSERT INTO audit_log (id, at, role, action, outcome) VALUES (5, :at, 'ops',"
                                 " 'alert.acknowledge', 'ok')"), {"at": at})
            before = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM alerts"))]

        upgrade()
        inspector = sa.inspect(db.engine)
        assert {"users", "api_tokens"} <= set(inspector.get_table_names())
        with db.engine.begin() as conn:
            assert [tuple(r) for r in conn.execute(sa.text("SELECT * FROM alerts"))] == before
            assert conn.execute(sa.text("SELECT role, actor, action FROM audit_log")).one() == \
                ("ops", None, "alert.acknowledge")
            # an email fits where a role name did
            conn.execute(sa.text("UPDATE alerts SET acknowledged_by = :by"), {"by": "a" * 60 + "@example.com"})
            assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar() == 0

        downgrade(revision="0008")
        assert "users" not in sa.inspect(db.engine).get_table_names()
        db.engine.dispose()
