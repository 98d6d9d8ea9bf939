"""partitioning: the SLO history and the installation events, partitioned by time (PostgreSQL)

At 100,000 installations the 5-minute SLO history grows by about 29 million rows a day (860
million over its 30 days of retention); pruning it row by row is a DELETE of a day's rows every
day, with as many dead rows for VACUUM to clean up. Both history tables become PostgreSQL
range-partitioned tables under the same names: ``slo_samples`` by ``bucket``, one partition per
day; ``installation_events`` by ``at``, one per month; each with a ``default`` partition for a
row outside every partition. Retention drops whole partitions, and the worker creates them
ahead of time (``cp.background.partitions``). Writers and readers are unchanged: they name the
parent table, and PostgreSQL routes each row and prunes the partitions a read does not need.

A primary key of a partitioned table must include the partition key: ``(id, bucket)`` and
``(id, at)``; ``id`` becomes a bigint (it is never reused, and at a fleet's rate an integer
runs out within months). The unique key of the SLO history, ``(installation_id, bucket)``,
already includes it (the heartbeat's ``ON CONFLICT`` target stays as it is).

The rows are copied into the partitioned tables (partitions are created for the range the rows
span, up to ``ahead`` past today); on PostgreSQL the whole migration is one transaction. SQLite
keeps plain tables (retention there stays a chunked DELETE).

Revision ID: 0011
Revises: 0010
"""
from datetime import datetime, timezone

from alembic import op
from sqlalchemy import text

from cp.background.partitions import INSTALLATION_EVENTS, SLO_SAMPLES, create_partition, ensure_ahead

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# table -> (columns after id, unique constraints other than the primary key, plain indexes)
TABLES = {
    "slo_samples": (
        "installation_id integer NOT NULL, bucket timestamptz NOT NULL, slo_p95_ms double precision, "
        "slo_error_rate double precision, slo_webhook_retry_rate double precision",
        ["CONSTRAINT uq_slo_samples_installation_bucket UNIQUE (installation_id, bucket)"],
        ["CREATE INDEX ix_slo_samples_bucket ON slo_samples (bucket)"],
    ),
    "installation_events": (
        "installation_id integer NOT NULL, field varchar(32) NOT NULL, old_value varchar(255), "
        "new_value varchar(255), at timestamptz NOT NULL",
        [],
        ["CREATE INDEX ix_installation_events_installation_at ON installation_events (installation_id, at)"],
    ),
}
SPECS = {"slo_samples": SLO_SAMPLES, "installation_events": INSTALLATION_EVENTS}
COLUMNS = {
    "slo_samples": "id, installation_id, bucket, slo_p95_ms, slo_error_rate, slo_webhook_retry_rate",
    "installation_events": "id, installation_id, field, old_value, new_value, at",
}


def _create(table: str, *, partitioned: bool, name: str | None = None) -> None:
    """The table as ``name`` (default: its own), with its keys and indexes under their names."""
    columns, uniques, indexes = TABLES[table]
    spec = SPECS[table]
    key = f"id, {spec.column}" if partitioned else "id"
    constraints = [f"CONSTRAINT pk_{table} PRIMARY KEY ({key})", *uniques,
                   f"CONSTRAINT fk_{table}_installation_id_installations FOREIGN KEY (installation_id) "
                   "REFERENCES installations (id) ON DELETE CASCADE"]
    id_type = "bigint" if partitioned else "integer"
    op.execute(f"CREATE TABLE {name or table} (id {id_type} NOT NULL DEFAULT nextval('{table}_id_seq'), "
               f"{columns}, {', '.join(constraints)})"
               + (f" PARTITION BY RANGE ({spec.column})" if partitioned else ""))
    for index in indexes:
        op.execute(index)
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {name or table}.id")


def _move(table: str, *, partitioned: bool) -> None:
    """Copy ``table`` into a new table of the other kind under the same names."""
    conn = op.get_bind()
    spec = SPECS[table]
    old = f"{table}_{'unpartitioned' if partitioned else 'partitioned'}"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY NONE")
    # the old keys' and indexes' names go with it (index names are unique per schema)
    for con in conn.execute(text("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t) "
                                 "AND contype IN ('p', 'u', 'f')"), {"t": old}).scalars().all():
        op.execute(f"ALTER TABLE {old} DROP CONSTRAINT {con}")
    for index in conn.execute(text("SELECT indexrelid::regclass::text FROM pg_index "
                                   "WHERE indrelid = to_regclass(:t)"), {"t": old}).scalars().all():
        op.execute(f"DROP INDEX {index}")
    _create(table, partitioned=partitioned)
    if partitioned:
        op.execute(f"ALTER SEQUENCE {table}_id_seq AS bigint")
        op.execute(f"CREATE TABLE {spec.default} PARTITION OF {table} DEFAULT")
        first = conn.execute(text(f"SELECT min({spec.column}) FROM {old}")).scalar()
        now = datetime.now(timezone.utc)
        start = spec.start_of(first or now)
        while start < spec.start_of(now):
            create_partition(conn, spec, start)
            start = spec.after(start)
        ensure_ahead(conn, spec, now)
    op.execute(f"INSERT INTO {table} ({COLUMNS[table]}) SELECT {COLUMNS[table]} FROM {old}")
    op.execute(f"DROP TABLE {old}")
    if not partitioned:
        op.execute(f"ALTER SEQUENCE {table}_id_seq AS integer")
    op.execute(f"ANALYZE {table}")


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: plain tables
    for table in TABLES:
        _move(table, partitioned=True)


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        _move(table, partitioned=False)
