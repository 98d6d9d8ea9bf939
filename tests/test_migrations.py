"""The schema comes only from Alembic: one head, and the models match what the migrations build."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import Config

from cp import MIGRATIONS_DIR
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
            ctx = MigrationContext.configure(conn, opts={"compare_type": compare_type})
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
