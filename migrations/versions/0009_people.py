"""people: named accounts (``users``) and their personal API tokens (``api_tokens``)

Adds two tables and one nullable column; no existing row is rewritten.

- ``users``: one row per person; ``email`` is stored lower-cased and unique (the domain,
  ``cp.people``, lower-cases before every write and lookup). ``session_epoch`` is part of every
  login session of the person: deactivating bumps it, so every open session ends at once.
- ``api_tokens``: ``token_hash`` is the SHA-256 of a 256-bit random secret (the secret itself is
  shown once and never stored), unique, so a lookup is one index probe on the hash.
- ``audit_log.actor``: who did it (a person's email, or a role name for a role token), next to
  the role they held; indexed with ``at`` for the audit screen's filter.
- The columns that name who did something are widened to hold an email (255 characters), and
  ``login_sessions.role`` to hold ``user:<id>`` for a person's session.

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ACTOR_COLUMNS = (
    ("alerts", "acknowledged_by"),
    ("alerts", "resolved_by"),
    ("job_failures", "resolved_by"),
    ("releases", "created_by"),
    ("rollouts", "created_by"),
    ("restore_verifications", "created_by"),
    ("plugin_requests", "decided_by"),
)


def _utc():
    return sa.DateTime(timezone=True)


def _widen(actor_length: int, session_role_length: int) -> None:
    """Set the length of the actor columns (PostgreSQL: an in-place ALTER that rewrites no row
    when it widens; SQLite: batch mode copies the table, keeping every row)."""
    columns = {}
    for table, column in ACTOR_COLUMNS:
        columns.setdefault(table, []).append((column, actor_length))
    columns["login_sessions"] = [("role", session_role_length)]
    for table, cols in columns.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, length in cols:
                batch_op.alter_column(column, type_=sa.String(length=length))


def upgrade():
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.Column("last_seen_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("expires_at", _utc(), nullable=True),
        sa.Column("last_used_at", _utc(), nullable=True),
        sa.Column("revoked_at", _utc(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index("ix_api_tokens_user", "api_tokens", ["user_id", "created_at"])
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor", sa.String(length=255), nullable=True))
        batch_op.create_index("ix_audit_log_actor_at", ["actor", "at"], unique=False)
    _widen(255, 64)


def downgrade():
    # the widened columns stay wide: narrowing them back would fail on (or cut) the emails
    # recorded since, and a wider VARCHAR changes nothing for the code of 0008
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_actor_at")
        batch_op.drop_column("actor")
    op.drop_index("ix_api_tokens_user", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("users")
