"""What must hold in the committed state of the database, whatever the requests were: checked
after the fuzzing (``test_fuzz``) and after the database was cut mid-load (``test_faults``)."""
from __future__ import annotations

import sqlalchemy as sa

from cp.extensions import db


def _scalar(conn, sql: str) -> int:
    return conn.execute(sa.text(sql)).scalar() or 0


def inconsistencies(engine) -> list[str]:
    """What is wrong in the committed state (empty when all is well)."""
    problems = []
    tables = set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            for fk in table.foreign_key_constraints:
                parent = fk.referred_table
                if table.name not in tables or parent.name not in tables:
                    continue
                cols = [(c.name, e.column.name) for c, e in zip(fk.columns, fk.elements)]
                not_null = " AND ".join(f"c.{c} IS NOT NULL" for c, _ in cols)
                join = " AND ".join(f"p.{pc} = c.{c}" for c, pc in cols)
                n = _scalar(conn, f'SELECT count(*) FROM "{table.name}" c LEFT JOIN "{parent.name}" p ON {join} '
                                  f'WHERE {not_null} AND p.{cols[0][1]} IS NULL')
                if n:
                    problems.append(f"{n} {table.name} row(s) point at a missing {parent.name}")
        duplicates = {
            "open alerts": "SELECT count(*) FROM (SELECT 1 FROM alerts WHERE resolved_at IS NULL "
                           "GROUP BY installation_id, fingerprint HAVING count(*) > 1) d",
            "open job failures": "SELECT count(*) FROM (SELECT 1 FROM job_failures WHERE resolved_at IS NULL "
                                 "GROUP BY installation_id, fingerprint HAVING count(*) > 1) d",
            "pending plugin requests": "SELECT count(*) FROM (SELECT 1 FROM plugin_requests WHERE status = 'pending' "
                                       "GROUP BY installation_id, plugin HAVING count(*) > 1) d",
            "active core rollouts per channel": "SELECT count(*) FROM (SELECT 1 FROM rollouts WHERE kind = 'core' AND "
                                                "status IN ('active', 'paused') GROUP BY channel HAVING count(*) > 1) d",
            "active plugin rollouts per plugin": "SELECT count(*) FROM (SELECT 1 FROM rollouts WHERE kind = 'plugin' "
                                                 "AND status IN ('active', 'paused') GROUP BY plugin "
                                                 "HAVING count(*) > 1) d",
        }
        for what, sql in duplicates.items():
            if _scalar(conn, sql):
                problems.append(f"duplicate {what}")
        rows = {
            "installations seen before their first heartbeat":
                "SELECT count(*) FROM installations WHERE last_seen_at < first_seen_at OR heartbeats_total < 1",
            "alerts resolved before they opened or without occurrences":
                "SELECT count(*) FROM alerts WHERE (resolved_at IS NOT NULL AND resolved_at < opened_at) "
                "OR occurrences < 1",
            "job failures without occurrences": "SELECT count(*) FROM job_failures WHERE occurrences < 1",
            "finished jobs without finished_at":
                "SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed') AND finished_at IS NULL",
            "rollouts past their last batch":
                "SELECT count(*) FROM rollouts WHERE batches > 0 AND current_batch > batches",
            "reported restore verifications without a report time":
                "SELECT count(*) FROM restore_verifications WHERE status <> 'scheduled' AND reported_at IS NULL",
        }
        for what, sql in rows.items():
            if _scalar(conn, sql):
                problems.append(what)
    return problems
