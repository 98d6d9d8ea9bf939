"""Time-partitioned history on PostgreSQL: the 5-minute SLO history (``slo_samples``, by
``bucket``, one partition per day) and the installation events (``installation_events``, by
``at``, one partition per month), with PostgreSQL's native declarative partitioning
(migration 0011). Writers and readers use the parent table's name and never know.

The worker keeps them (``maintain``, from ``cp.background.sweeps.prune_all``):
- partitions are created ``ahead`` of time (a week of days, two months), so an insert always
  has its partition; a row that lands outside them anyway (a worker down for longer, a clock
  far off) goes to the table's ``default`` partition and is moved into its own partition when
  that one is created;
- a partition whose whole range is past the retention is dropped (``DROP TABLE``: no row by row
  ``DELETE``, no dead rows, no vacuum); the ``DROP`` waits at most ``LOCK_TIMEOUT`` for its lock
  (writers of the table queue behind a waiting ``DROP``) and is tried again at the next sweep.

Partition ``<table>_pYYYYMMDD`` holds ``[day, next day)``, ``<table>_pYYYYMM`` ``[month, next
month)``, in UTC. On SQLite the tables are plain and retention is a chunked ``DELETE``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

log = logging.getLogger("cp.background.partitions")

LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class Partitioned:
    table: str
    column: str
    step: str  # "day" | "month"
    ahead: int  # partitions kept ready past the current one

    def start_of(self, at: datetime) -> datetime:
        at = at.astimezone(timezone.utc)
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return day if self.step == "day" else day.replace(day=1)

    def after(self, start: datetime) -> datetime:
        if self.step == "day":
            return start + timedelta(days=1)
        return (start + timedelta(days=32)).replace(day=1)

    def name(self, start: datetime) -> str:
        return f"{self.table}_p{start:%Y%m%d}" if self.step == "day" else f"{self.table}_p{start:%Y%m}"

    def parse(self, name: str) -> datetime | None:
        """The start of the partition called ``name`` (None: not one of this table's)."""
        fmt, pattern = ("%Y%m%d", r"\d{8}") if self.step == "day" else ("%Y%m", r"\d{6}")
        m = re.fullmatch(re.escape(self.table) + r"_p(" + pattern + ")", name)
        return datetime.strptime(m.group(1), fmt).replace(tzinfo=timezone.utc) if m else None

    @property
    def default(self) -> str:
        return f"{self.table}_default"


SLO_SAMPLES = Partitioned("slo_samples", "bucket", "day", ahead=7)
INSTALLATION_EVENTS = Partitioned("installation_events", "at", "month", ahead=2)
PARTITIONED = (SLO_SAMPLES, INSTALLATION_EVENTS)


def is_partition(name: str | None) -> bool:
    """Whether a table name is one of the partitions (they are not in the models; schema
    comparisons such as Alembic's autogenerate leave them out with this)."""
    return bool(name) and any(spec.parse(name) is not None or name == spec.default for spec in PARTITIONED)


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic's ``include_name`` hook: everything but the partitions (and their indexes)."""
    table = name if type_ == "table" else parent_names.get("table_name")
    return not is_partition(table)


def is_partitioned(conn: Connection, table: str) -> bool:
    return conn.dialect.name == "postgresql" and bool(conn.execute(
        text("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(:t)"), {"t": table}).scalar())


def partitions(conn: Connection, spec: Partitioned) -> dict[str, datetime]:
    """The table's range partitions: name -> start (the default partition left out)."""
    rows = conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(:t)"), {"t": spec.table}).scalars()
    return {name: start for name in rows if (start := spec.parse(name)) is not None}


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def create_partition(conn: Connection, spec: Partitioned, start: datetime) -> bool:
    """Create the partition starting at ``start`` unless it exists; rows of its range already in
    the default partition move into it. Returns whether it was created."""
    name = spec.name(start)
    if name in partitions(conn, spec):
        return False
    end = spec.after(start)
    q = lambda n: _quote(conn, n)  # noqa: E731
    bounds = {"lo": start, "hi": end}
    # a new table attached afterwards: ATTACH takes a weaker lock on the parent than CREATE
    # TABLE ... PARTITION OF (the table's writers go on), and lets the default's rows move first
    conn.execute(text(f"CREATE TABLE {q(name)} (LIKE {q(spec.table)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    column = q(spec.column)
    moved = conn.execute(text(
        f"WITH gone AS (DELETE FROM {q(spec.default)} WHERE {column} >= :lo AND {column} < :hi RETURNING *) "
        f"INSERT INTO {q(name)} SELECT * FROM gone"), bounds).rowcount
    conn.execute(text(f"ALTER TABLE {q(spec.table)} ATTACH PARTITION {q(name)} "
                      f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"))
    log.info("partition created", extra={"event": "partition_created", "partition": name, "moved": moved or 0})
    return True


def ensure_ahead(conn: Connection, spec: Partitioned, now: datetime) -> list[str]:
    """The current partition and ``ahead`` more exist; returns the ones created."""
    created = []
    start = spec.start_of(now)
    for _ in range(spec.ahead + 1):
        if create_partition(conn, spec, start):
            created.append(spec.name(start))
        start = spec.after(start)
    return created


def drop_expired(conn: Connection, spec: Partitioned, cutoff: datetime) -> int:
    """Drop every partition whose whole range is older than ``cutoff``, and delete such rows from
    the default partition; returns how many rows went. A partition whose lock is not granted
    within ``LOCK_TIMEOUT`` stays for the next sweep."""
    removed = 0
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    for name, start in sorted(partitions(conn, spec).items(), key=lambda kv: kv[1]):
        if spec.after(start) > cutoff:
            continue
        rows = conn.execute(text(f"SELECT count(*) FROM {_quote(conn, name)}")).scalar_one()
        try:
            with conn.begin_nested():
                conn.execute(text(f"DROP TABLE {_quote(conn, name)}"))
        except OperationalError:
            log.warning("partition not dropped (locked), next time", extra={"event": "partition_drop_later",
                                                                           "partition": name})
            continue
        removed += rows
        log.info("partition dropped", extra={"event": "partition_dropped", "partition": name, "rows": rows})
    removed += conn.execute(text(f"DELETE FROM {_quote(conn, spec.default)} "
                                 f"WHERE {_quote(conn, spec.column)} < :cutoff"), {"cutoff": cutoff}).rowcount or 0
    return removed
