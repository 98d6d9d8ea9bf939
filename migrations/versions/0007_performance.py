"""performance: trigram indexes for the fleet search at scale

``?q=`` searches instance_id, client and domain as case-insensitive substrings (ILIKE
'%...%'), which no B-tree serves: at 100,000 installations that is a sequential scan per
search. On PostgreSQL, pg_trgm GIN indexes answer it (docs/performance.md), built without
GIN's pending list (``fastupdate = off``): every heartbeat writes a new version of its
installation row, and a search would otherwise scan the ever-growing list. ``CREATE
EXTENSION pg_trgm`` needs the database owner (pg_trgm is a trusted extension since PostgreSQL
13) or a superuser. On SQLite the same indexes are plain ones (the model declares them for both).

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SEARCH_COLUMNS = ("instance_id", "client", "domain")


def upgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    with op.batch_alter_table("installations", schema=None) as batch_op:
        for col in SEARCH_COLUMNS:
            batch_op.create_index(f"ix_installations_{col}_trgm", [col], unique=False,
                                  postgresql_using="gin", postgresql_ops={col: "gin_trgm_ops"},
                                  postgresql_with={"fastupdate": "off"})


def downgrade():
    with op.batch_alter_table("installations", schema=None) as batch_op:
        for col in SEARCH_COLUMNS:
            batch_op.drop_index(f"ix_installations_{col}_trgm")
    # the pg_trgm extension stays: other objects may use it
