"""A throwaway PostgreSQL database for the data benchmarks (``bench.counters``,
``bench.history``): created, migrated with ``flask --app cp db upgrade``, handed over with the
service's settings, dropped at the end (unless kept)."""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from typing import Iterator

import psycopg

from bench import serverside
from bench.run import ROOT, create_database, drop_database


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every data benchmark takes: ``--repeat``, ``--pg``, ``--keep-db``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=15, help="timed runs of each read (default 15)")
    ap.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
                    help="the PostgreSQL server (a scratch database is created there and dropped)")
    ap.add_argument("--keep-db", action="store_true", help="do not drop the scratch database")
    return ap


@contextmanager
def scratch_database(server_dsn: str, *, keep: bool = False) -> Iterator[tuple[str, dict[str, str], object]]:
    """Yields ``(dsn, env, release_key)``: the database's psycopg DSN, the service's settings
    (tokens, a trusted release key ``bench``) and the private half of that key."""
    dbname = f"cp_bench_{uuid.uuid4().hex[:10]}"
    dsn = f"{server_dsn.rsplit('/', 1)[0]}/{dbname}"
    release_key, release_pub = serverside.release_keypair()
    env = {
        "CONTROL_PLANE_DATABASE_URL": "postgresql+psycopg://" + dsn.split("://", 1)[1],
        "CONTROL_PLANE_INSTANCE_PATH": tempfile.mkdtemp(prefix="cp-bench-"),
        "CONTROL_PLANE_SECRET_KEY": secrets.token_hex(32),
        **{f"CONTROL_PLANE_{r.upper()}_TOKEN": secrets.token_hex(16) for r in ("support", "ops", "admin", "agent")},
        "CONTROL_PLANE_RELEASE_KEYS": json.dumps({"bench": release_pub}),
        "CONTROL_PLANE_LOG_LEVEL": "WARNING",
    }
    create_database(server_dsn, dbname)
    try:
        subprocess.run([sys.executable, "-m", "flask", "--app", "cp", "db", "upgrade"], cwd=ROOT, check=True,
                       env={**os.environ, **env}, capture_output=True)
        yield dsn, env, release_key
    finally:
        if keep:
            print(f"kept database {dbname}", file=sys.stderr)
        else:
            drop_database(server_dsn, dbname)


def execute(dsn: str, statements: list[str]) -> None:
    """Run statements in one transaction."""
    with psycopg.connect(dsn) as conn:
        for stmt in statements:
            conn.execute(stmt)
        conn.commit()


def one(dsn: str, sql: str):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


def timed_sql(dsn: str, sql: str, repeat: int) -> dict:
    """Median and worst time of one statement (after a warm-up), measured on the client."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return serverside._timed(lambda: conn.execute(sql).fetchall(), repeat)


def fmt_table(rows: list[tuple], header: tuple) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
