"""counters: exact alert and rollout-job counts without counting the rows on every read

``GET /api/alerts`` answers with an exact ``total`` and ``GET /api/rollouts/<id>`` with the
per-status (and per-batch) job counts of the rollout; the dashboard and the panel's rollout
screens show the same figures, and the dashboard the fleet by health and by channel. Counting
a million alerts or a 100,000-job rollout on every read costs tens to hundreds of milliseconds.
From here on these figures are kept in ``counter_deltas``: insert-only rows ``(counter, key
columns, delta)`` whose sum per key is the count. A single counter row per key would serialise
every writer of that key (every heartbeat that opens or resolves an alert would queue on one
row); inserted rows never contend. Reads sum a few rows per key; the worker's sweep folds the
rows of each key into one (``cp.counters.compact``).

The rows are written by database triggers, so every writer counts without knowing about it
(the heartbeat's raw SQL, the rollout engine's set-based UPDATEs, cascaded deletes, tests and
the bench seed). The rule of each counted table (which rows count, under which key) is written
once below, in ``COUNTED``, and rendered for both backends:

- PostgreSQL: statement-level triggers with transition tables, one INSERT ... SELECT per
  statement grouped by key (a 100,000-job rollout creation writes one row per batch, not one
  per job; an UPDATE that changes no key writes none: the old and new rows cancel out); except
  on the tables every heartbeat writes (``ROW_LEVEL``), whose INSERTs are counted per row and
  whose UPDATEs by a row-level trigger that fires only when the row's key changes: a heartbeat
  that sees its alerts again and keeps its health and channel calls no trigger function.
- SQLite: row-level triggers (SQLite has no statement-level ones), firing only when the key of
  the row changes.

Counted:
- ``alerts``: every alert, keyed by status (``open`` while ``resolved_at`` is NULL, else
  ``resolved``), level, source and whether it is acknowledged.
- ``jobs``: every job of a rollout, keyed by rollout id, batch (0 when NULL) and status.
- ``installations``: every installation, keyed by health and release channel ('' when NULL).

The triggers are created before the backfill, in the same transaction (on PostgreSQL CREATE
TRIGGER holds off the tables' writers until this commits), so nothing is counted twice or missed.

Revision ID: 0010
Revises: 0008 (on this branch; the chain is 0008 -> 0009 -> 0010)
"""
from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

KEY_COLUMNS = ("counter", "scope_id", "batch", "status", "level", "source", "acknowledged", "channel")

# table -> (key column -> SQL expression over the row alias ``{r}``, condition for the row to count)
COUNTED = {
    "alerts": ({
        "counter": "'alerts'",
        "scope_id": "0",
        "batch": "0",
        "status": "CASE WHEN {r}.resolved_at IS NULL THEN 'open' ELSE 'resolved' END",
        "level": "{r}.level",
        "source": "{r}.source",
        "acknowledged": "{r}.acknowledged_at IS NOT NULL",
        "channel": "''",
    }, "1 = 1"),
    "jobs": ({
        "counter": "'jobs'",
        "scope_id": "{r}.rollout_id",
        "batch": "COALESCE({r}.batch, 0)",
        "status": "{r}.status",
        "level": "''",
        "source": "''",
        "acknowledged": "1 = 0",
        "channel": "''",
    }, "{r}.rollout_id IS NOT NULL"),
    "installations": ({
        "counter": "'installations'",
        "scope_id": "0",
        "batch": "0",
        "status": "COALESCE({r}.health, '')",
        "level": "''",
        "source": "''",
        "acknowledged": "1 = 0",
        "channel": "COALESCE({r}.release_channel, '')",
    }, "1 = 1"),
}
# PostgreSQL: the operations counted by row-level triggers instead of statement-level ones, on
# the tables every heartbeat writes. A statement-level trigger runs its function (and captures
# transition tables) for every statement, even one that changes no key or no row: a heartbeat
# updates its installation, sees its open alerts again and inserts the alerts it opens (often
# none). A row-level UPDATE trigger fires only ``WHEN`` the row's key changes, an INSERT one
# only for a row inserted.
ROW_LEVEL = {"installations": ("update",), "alerts": ("insert", "update")}
OPERATIONS = ("insert", "update", "delete")
COLUMN_LIST = ", ".join(KEY_COLUMNS)


def _keys(table: str, alias: str) -> str:
    exprs, _ = COUNTED[table]
    return ", ".join(f"{exprs[k].format(r=alias)} AS {k}" for k in KEY_COLUMNS)


def _condition(table: str, alias: str) -> str:
    return COUNTED[table][1].format(r=alias)


def _trigger_name(table: str, operation: str) -> str:
    return f"{table}_count_{operation}"


def _pg_function(table: str) -> str:
    def changes(transition: str, alias: str, sign: int) -> str:
        return (f"SELECT {_keys(table, alias)}, {sign} AS delta FROM {transition} {alias} "
                f"WHERE {_condition(table, alias)}")

    def write(*parts: str) -> str:
        return (f"INSERT INTO counter_deltas ({COLUMN_LIST}, delta) "
                f"SELECT {COLUMN_LIST}, sum(delta) FROM ({' UNION ALL '.join(parts)}) AS c "
                f"GROUP BY {COLUMN_LIST} HAVING sum(delta) <> 0;")

    return f"""
CREATE FUNCTION {table}_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {write(changes("new_rows", "n", 1))}
    ELSIF TG_OP = 'DELETE' THEN
        {write(changes("old_rows", "o", -1))}
    ELSE
        {write(changes("old_rows", "o", -1), changes("new_rows", "n", 1))}
    END IF;
    RETURN NULL;
END
$$
"""


def _write_row(table: str, alias: str, sign: int) -> str:
    """A row trigger's statement: count the row ``alias`` (OLD or NEW) with ``sign``."""
    return (f"INSERT INTO counter_deltas ({COLUMN_LIST}, delta) SELECT {_keys(table, alias)}, {sign} "
            f"WHERE {_condition(table, alias)};")


def _pg_row_function(table: str) -> str:
    """The row-level counterpart of ``_pg_function`` (``ROW_LEVEL``)."""
    return f"""
CREATE FUNCTION {table}_count_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        {_write_row(table, "OLD", -1)}
    END IF;
    IF TG_OP <> 'DELETE' THEN
        {_write_row(table, "NEW", 1)}
    END IF;
    RETURN NULL;
END
$$
"""


def _key_changed(table: str) -> str:
    """SQL: the row's key (or whether it counts) differs between OLD and NEW."""
    exprs, cond = COUNTED[table]

    def key(alias: str) -> str:
        return ", ".join([exprs[k].format(r=alias) for k in KEY_COLUMNS] + [cond.format(r=alias)])

    return f"({key('OLD')}) IS DISTINCT FROM ({key('NEW')})"


def _pg_triggers(table: str) -> list[str]:
    referencing = {"insert": "NEW TABLE AS new_rows", "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                   "delete": "OLD TABLE AS old_rows"}
    out = []
    for op_ in OPERATIONS:
        name = _trigger_name(table, op_)
        if op_ in ROW_LEVEL.get(table, ()):
            when = f" WHEN ({_key_changed(table)})" if op_ == "update" else ""
            out.append(f"CREATE TRIGGER {name} AFTER {op_.upper()} ON {table} FOR EACH ROW{when} "
                       f"EXECUTE FUNCTION {table}_count_row()")
        else:
            out.append(f"CREATE TRIGGER {name} AFTER {op_.upper()} ON {table} REFERENCING {referencing[op_]} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_count()")
    return out


def _sqlite_triggers(table: str) -> list[str]:
    def write(alias: str, sign: int) -> str:
        return _write_row(table, alias, sign)

    return [
        f"CREATE TRIGGER {_trigger_name(table, 'insert')} AFTER INSERT ON {table} FOR EACH ROW "
        f"BEGIN {write('NEW', 1)} END",
        f"CREATE TRIGGER {_trigger_name(table, 'update')} AFTER UPDATE ON {table} FOR EACH ROW "
        f"WHEN {_key_changed(table)} BEGIN {write('OLD', -1)} {write('NEW', 1)} END",
        f"CREATE TRIGGER {_trigger_name(table, 'delete')} AFTER DELETE ON {table} FOR EACH ROW "
        f"BEGIN {write('OLD', -1)} END",
    ]


def upgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "counter_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("counter", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.BigInteger(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("acknowledged", sa.Boolean(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_counter_deltas")),
    )
    # every read is ``WHERE counter = ? AND scope_id ...`` summing ``delta``: index-only
    op.create_index("ix_counter_deltas_key", "counter_deltas", [*KEY_COLUMNS, "delta"], unique=False)
    for table in COUNTED:
        if postgres:
            op.execute(_pg_function(table))
            if table in ROW_LEVEL:
                op.execute(_pg_row_function(table))
            for stmt in _pg_triggers(table):
                op.execute(stmt)
        else:
            for stmt in _sqlite_triggers(table):
                op.execute(stmt)
        op.execute(f"INSERT INTO counter_deltas ({COLUMN_LIST}, delta) "
                   f"SELECT {COLUMN_LIST}, count(*) FROM (SELECT {_keys(table, table)} FROM {table} "
                   f"WHERE {_condition(table, table)}) AS c GROUP BY {COLUMN_LIST}")


def downgrade():
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in COUNTED:
        for op_ in OPERATIONS:
            name = _trigger_name(table, op_)
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}" if postgres else f"DROP TRIGGER IF EXISTS {name}")
        if postgres:
            op.execute(f"DROP FUNCTION IF EXISTS {table}_count()")
            op.execute(f"DROP FUNCTION IF EXISTS {table}_count_row()")
    op.drop_index("ix_counter_deltas_key", table_name="counter_deltas")
    op.drop_table("counter_deltas")
