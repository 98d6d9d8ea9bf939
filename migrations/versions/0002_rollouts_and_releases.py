"""rollouts and releases

Adds what the rollout engine (``cp.delivery.rollouts``) relies on beyond the foundation tables:
``rollouts.skipped``; at most one open (active or paused) rollout per channel and per plugin;
one job per installation per rollout.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPEN_CORE = "kind = 'core' AND status IN ('active', 'paused')"
OPEN_PLUGIN = "kind = 'plugin' AND status IN ('active', 'paused')"


def upgrade():
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("skipped", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index("uq_rollouts_open_core_channel", ["channel"], unique=True,
                              postgresql_where=sa.text(OPEN_CORE), sqlite_where=sa.text(OPEN_CORE))
        batch_op.create_index("uq_rollouts_open_plugin", ["plugin"], unique=True,
                              postgresql_where=sa.text(OPEN_PLUGIN), sqlite_where=sa.text(OPEN_PLUGIN))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_jobs_rollout_installation", ["rollout_id", "installation_id"])


def downgrade():
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_jobs_rollout_installation", type_="unique")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index("uq_rollouts_open_plugin")
        batch_op.drop_index("uq_rollouts_open_core_channel")
        batch_op.drop_column("skipped")
