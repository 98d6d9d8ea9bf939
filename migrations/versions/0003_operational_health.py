"""operational health

The tables of this area (``slo_samples``, ``restore_verifications``, ``outbox_events``,
``installation_events``) come with 0001; this adds the index the delivery log, the metrics
and the pruning of old deliveries filter on.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa  # noqa: F401

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_status_created", ["status", "created_at"], unique=False)


def downgrade():
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_status_created")
