"""plugin marketplace

What ``cp.delivery.plugins`` relies on beyond the foundation tables (``releases.plugin``,
``plugin_requests``, ``installation_plugins``, ``rollouts.kind/plugin``, ``jobs.kind``):
at most one open (pending) request per installation and plugin, enforced by a partial unique
index (two agents' requests racing cannot both stay open), and the admin list's status filter.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PENDING = "status = 'pending'"


def upgrade():
    with op.batch_alter_table("plugin_requests", schema=None) as batch_op:
        batch_op.create_index("uq_plugin_requests_pending", ["installation_id", "plugin"], unique=True,
                              postgresql_where=sa.text(PENDING), sqlite_where=sa.text(PENDING))
        batch_op.create_index("ix_plugin_requests_status_created", ["status", "created_at"])


def downgrade():
    with op.batch_alter_table("plugin_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_plugin_requests_status_created")
        batch_op.drop_index("uq_plugin_requests_pending")
