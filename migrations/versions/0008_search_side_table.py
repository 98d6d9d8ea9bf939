"""search side table: the fleet search's trigram indexes move off ``installations``

Every heartbeat UPDATEs its installation row and changes ``last_seen_at``, an indexed column,
so the update is never HOT: PostgreSQL inserts an entry for the new row version into every
index of ``installations``, including the three pg_trgm GIN indexes of 0007 (about 0.33 ms of
PostgreSQL CPU per heartbeat, 0.83 -> 0.50 ms once they were dropped), though instance_id
never changes and client/domain rarely do.

The search (``?q=``, ``cp.fleet.queries.installation_filters``) now reads ``installation_search``:
one narrow row per installation (instance_id, client, domain) carrying the trigram indexes,
with GIN's default settings (the pending list no longer fills with heartbeat row versions:
the table is written only when an installation registers or its client/domain change).

It is kept right by database triggers, so every writer does so without knowing about it (the
heartbeat hot path sends raw SQL; tests and the bench seed insert installations directly):
a row is written after each INSERT into installations, and rewritten after an UPDATE only when
instance_id, client or domain actually change (``WHEN ... IS DISTINCT FROM``: a heartbeat lists
client and domain in its SET clause every time, and must not fire it otherwise); the row goes
with its installation (``ON DELETE CASCADE``). On PostgreSQL that is one plpgsql function and
two row triggers; on SQLite the same two triggers in SQLite's dialect. The triggers are created
before the backfill, so an installation registered while this migration runs is not missed.

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SEARCH_COLUMNS = ("instance_id", "client", "domain")

PG_FUNCTION = """
CREATE FUNCTION installation_search_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO installation_search (installation_id, instance_id, client, domain)
    VALUES (NEW.id, NEW.instance_id, NEW.client, NEW.domain)
    ON CONFLICT (installation_id) DO UPDATE
        SET instance_id = EXCLUDED.instance_id, client = EXCLUDED.client, domain = EXCLUDED.domain;
    RETURN NULL;
END
$$
"""
PG_TRIGGERS = (
    """CREATE TRIGGER installation_search_on_insert AFTER INSERT ON installations
    FOR EACH ROW EXECUTE FUNCTION installation_search_sync()""",
    """CREATE TRIGGER installation_search_on_update AFTER UPDATE OF instance_id, client, domain ON installations
    FOR EACH ROW WHEN (OLD.instance_id IS DISTINCT FROM NEW.instance_id OR OLD.client IS DISTINCT FROM NEW.client
                       OR OLD.domain IS DISTINCT FROM NEW.domain)
    EXECUTE FUNCTION installation_search_sync()""",
)

_SQLITE_COPY = """INSERT OR REPLACE INTO installation_search (installation_id, instance_id, client, domain)
        VALUES (NEW.id, NEW.instance_id, NEW.client, NEW.domain);"""
SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER installation_search_on_insert AFTER INSERT ON installations
    FOR EACH ROW BEGIN
        {_SQLITE_COPY}
    END""",
    f"""CREATE TRIGGER installation_search_on_update AFTER UPDATE OF instance_id, client, domain ON installations
    FOR EACH ROW WHEN OLD.instance_id IS NOT NEW.instance_id OR OLD.client IS NOT NEW.client
                      OR OLD.domain IS NOT NEW.domain
    BEGIN
        {_SQLITE_COPY}
    END""",
)
TRIGGER_NAMES = ("installation_search_on_insert", "installation_search_on_update")


def upgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "installation_search",
        sa.Column("installation_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=128), nullable=False),
        sa.Column("client", sa.String(length=255), nullable=True),
        sa.Column("domain", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(["installation_id"], ["installations.id"],
                                name=op.f("fk_installation_search_installation_id_installations"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("installation_id", name=op.f("pk_installation_search")),
    )
    # triggers first: from here on every new or changed installation reaches the side table (on
    # PostgreSQL, CREATE TRIGGER also holds off the writers of installations until this commits,
    # and the backfill below sees every row committed before it)
    if postgres:
        op.execute(PG_FUNCTION)
        for stmt in PG_TRIGGERS:
            op.execute(stmt)
    else:
        for stmt in SQLITE_TRIGGERS:
            op.execute(stmt)
    op.execute("INSERT INTO installation_search (installation_id, instance_id, client, domain) "
               "SELECT id, instance_id, client, domain FROM installations")
    with op.batch_alter_table("installation_search", schema=None) as batch_op:
        for col in SEARCH_COLUMNS:
            batch_op.create_index(f"ix_installation_search_{col}_trgm", [col], unique=False,
                                  postgresql_using="gin", postgresql_ops={col: "gin_trgm_ops"})
    with op.batch_alter_table("installations", schema=None) as batch_op:
        for col in SEARCH_COLUMNS:
            batch_op.drop_index(f"ix_installations_{col}_trgm")


def downgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON installations" if postgres else f"DROP TRIGGER IF EXISTS {name}")
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS installation_search_sync()")
    op.drop_table("installation_search")
    # 0007's indexes, as 0007 built them
    with op.batch_alter_table("installations", schema=None) as batch_op:
        for col in SEARCH_COLUMNS:
            batch_op.create_index(f"ix_installations_{col}_trgm", [col], unique=False,
                                  postgresql_using="gin", postgresql_ops={col: "gin_trgm_ops"},
                                  postgresql_with={"fastupdate": "off"})
