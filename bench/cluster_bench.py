"""``make cluster-bench``: heartbeats per second of one host talking to PostgreSQL directly (with
and without psycopg's server-side prepared statements), one host through PgBouncer, and two
hosts through PgBouncer (the scale-out topology of ``bench.cluster``), on this machine, with where
the CPU went and what each heartbeat cost.

One run: create a database, migrate it, seed a fleet (``bench.fleet``), then for each topology
start its processes, warm up, and measure the peak with ``wrk`` (``bench/heartbeat.lua``,
pre-signed heartbeats). Two hosts get one ``wrk`` each, started together, each with half the
connections and its own half of the fleet: the round robin of a load balancer, without a proxy
process taking CPU from the machine being measured. Every host runs the same gunicorn settings
as ``make bench`` (``bench.run.WORKERS`` x ``THREADS``). The CPU columns are cores used during
the measurement: the hosts' gunicorn processes, PgBouncer, the PostgreSQL backends of the
database, the load generator, and the whole machine. The database is dropped at the end.

    python -m bench.cluster_bench --fleet 2000 --seconds 15
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from bench import fleet as bf
from bench.cluster import SERVER_DSN, Host, PgBouncer, wait_until
from bench.run import (LUA, THREADS, WORKERS, _bench_json, _children, _machine, _proc_cpu, create_database,
                       drop_database, ensure_wrk, log, seed)

ROOT = Path(__file__).resolve().parent.parent
# (name, hosts, through PgBouncer, CONTROL_PLANE_DB_POOLER): the second row separates the cost of
# running without server-side prepared statements from the cost of PgBouncer itself
TOPOLOGIES = (("one host, direct", 1, False, "none"), ("one host, direct, unprepared", 1, False, "transaction"),
              ("one host, PgBouncer", 1, True, "transaction"), ("two hosts, PgBouncer", 2, True, "transaction"))


def split_bodies(path: Path, parts: int) -> list[Path]:
    """``parts`` files, each with every ``parts``-th line (disjoint installations)."""
    lines = path.read_text().splitlines(keepends=True)
    out = []
    for k in range(parts):
        p = path.with_name(f"{path.stem}-{k}.tsv")
        p.write_text("".join(lines[k::parts]))
        out.append(p)
    return out


def pg_pids(direct_dsn: str, dbname: str) -> list[int]:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))]


def cpu_snapshot(host_pids: list[int], bouncer_pid: int | None, direct_dsn: str, dbname: str) -> dict:
    trees = [p for pid in host_pids for p in [pid, *_children(pid)]]
    busy, _total = _machine()
    return {"hosts": sum(_proc_cpu(p) for p in trees), "pgbouncer": _proc_cpu(bouncer_pid) if bouncer_pid else 0.0,
            "pg": {p: _proc_cpu(p) for p in pg_pids(direct_dsn, dbname)}, "busy": busy, "t": time.monotonic()}


def measure(wrk: str, hosts: list[Host], bodies: list[Path], seconds: float, connections: int,
            snapshot) -> dict:
    """All hosts at once, one ``wrk`` each with its share of the connections and of the fleet."""
    per = max(1, connections // len(hosts))
    before = snapshot()
    procs = [subprocess.Popen([wrk, "-t", "1", "-c", str(per), "-d", f"{int(round(seconds))}s", "--timeout", "10s",
                               "-s", str(LUA), h.url, "--", str(b), "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for h, b in zip(hosts, bodies)]
    gen_cpu, results = 0.0, []
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        gen_cpu += usage.ru_utime + usage.ru_stime
        out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"wrk failed: {err or out}")
        results.append(_bench_json(out))
    after = snapshot()
    wall = after["t"] - before["t"]
    errors = sum(r[k] for r in results for k in ("connect_errors", "read_errors", "write_errors", "status_errors",
                                                 "timeouts"))
    pg = sum(v - before["pg"].get(p, 0.0) for p, v in after["pg"].items())
    return {"rate": sum(r["requests"] / (r["duration_us"] / 1e6) for r in results),
            "p50_ms": max(r["p50_us"] for r in results) / 1000, "p99_ms": max(r["p99_us"] for r in results) / 1000,
            "errors": errors, "hosts_cores": (after["hosts"] - before["hosts"]) / wall,
            "pgbouncer_cores": (after["pgbouncer"] - before["pgbouncer"]) / wall, "postgres_cores": pg / wall,
            "generator_cores": gen_cpu / wall, "machine_busy_cores": (after["busy"] - before["busy"]) / wall}


def run_topology(name: str, n_hosts: int, pooled: bool, pooler: str, *, env: dict, work: Path, server_dsn: str, dbname: str,
                 direct_dsn: str, bodies: Path, wrk: str, args) -> dict:
    bouncer = PgBouncer(work, server_dsn).start() if pooled else None
    hosts: list[Host] = []
    try:
        url = bouncer.url(dbname) if bouncer else "postgresql+psycopg://" + direct_dsn.split("://", 1)[1]
        host_env = {**os.environ, **env, "CONTROL_PLANE_DATABASE_URL": url,
                    "CONTROL_PLANE_DB_POOLER": pooler}
        for k in range(n_hosts):
            instance = work / f"{name.replace(' ', '_').replace(',', '')}-{k}"
            instance.mkdir(parents=True, exist_ok=True)
            hosts.append(Host(str(k), {**host_env, "CONTROL_PLANE_INSTANCE_PATH": str(instance)},
                              work / f"host-{k}.log", workers=args.workers, threads=args.threads))
        for h in hosts:
            h.start()
        for h in hosts:
            wait_until(h.ready, 60, f"{name}: host {h.name}", interval=0.2)
        shares = split_bodies(bodies, n_hosts) if n_hosts > 1 else [bodies]

        def snapshot():
            return cpu_snapshot([h.process.pid for h in hosts], bouncer.process.pid if bouncer else None,
                                direct_dsn, dbname)

        measure(wrk, hosts, shares, args.warmup, args.connections, snapshot)
        runs = [measure(wrk, hosts, shares, args.seconds, args.connections, snapshot) for _ in range(args.rounds)]
        best = max(runs, key=lambda r: r["rate"])
        if best["errors"]:
            raise RuntimeError(f"{name}: wrk saw errors: {best}")
        rates = ", ".join(f"{r['rate']:.0f}" for r in runs)
        log(f"{name}: {best['rate']:.0f}/s (rounds: {rates})")
        return {"topology": name, "hosts": n_hosts, "pgbouncer": pooled, "db_pooler": pooler, **best,
                "rounds": [round(r["rate"], 1) for r in runs]}
    finally:
        for h in hosts:
            h.process.stop()
        if bouncer:
            bouncer.close()


def print_report(res: dict) -> None:
    """hb/s, latency, cores in use, and the CPU each heartbeat cost (ms of one core: the figure to
    size with, since it does not depend on how much of the machine others were using)."""
    print(f"\nheartbeats/s, fleet {res['fleet']}, {res['cpus']} CPUs, each host gunicorn {res['gunicorn']}, "
          f"{res['connections']} connections, best of {res['rounds']} x {res['seconds']:g} s")
    print(f"{'topology':30} {'hb/s':>6} {'vs 1':>5} {'p50':>5} {'p99':>5} | cores: {'web':>5} {'pgb':>5} {'pg':>5} "
          f"{'wrk':>5} {'busy':>5} | CPU ms/hb: {'web':>5} {'pgb':>5} {'pg':>5}")
    base = res["runs"][0]["rate"]
    for r in res["runs"]:
        per = lambda cores: cores * 1000 / r["rate"]  # noqa: E731
        print(f"{r['topology']:30} {r['rate']:6.0f} {r['rate'] / base:5.2f} {r['p50_ms']:5.0f} {r['p99_ms']:5.0f} | "
              f"       {r['hosts_cores']:5.2f} {r['pgbouncer_cores']:5.2f} {r['postgres_cores']:5.2f} "
              f"{r['generator_cores']:5.2f} {r['machine_busy_cores']:5.2f} |            "
              f"{per(r['hosts_cores']):5.2f} {per(r['pgbouncer_cores']):5.2f} {per(r['postgres_cores']):5.2f}")
    print(json.dumps(res))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleet", type=int, default=2000, help="installations (default 2,000)")
    ap.add_argument("--seconds", type=float, default=15, help="length of each measurement (default 15)")
    ap.add_argument("--warmup", type=float, default=4, help="warm-up load before the measurements (default 4)")
    ap.add_argument("--rounds", type=int, default=2, help="measurements per topology, the best counts (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections in all (default 32)")
    ap.add_argument("--workers", type=int, default=WORKERS, help=f"gunicorn workers per host (default {WORKERS})")
    ap.add_argument("--threads", type=int, default=THREADS, help=f"threads per worker (default {THREADS})")
    ap.add_argument("--pg", default=os.environ.get("BENCH_PG", SERVER_DSN), help="the PostgreSQL server")
    args = ap.parse_args(argv)
    wrk = ensure_wrk()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"terminated by signal {signum}"))

    dbname = f"cp_cluster_bench_{uuid.uuid4().hex[:10]}"
    direct_dsn = f"{args.pg.rsplit('/', 1)[0]}/{dbname}"
    work = Path(tempfile.mkdtemp(prefix="cp-cluster-bench-"))
    agent_token = secrets.token_hex(16)
    env = {"CONTROL_PLANE_SECRET_KEY": secrets.token_hex(32), "CONTROL_PLANE_AGENT_TOKEN": agent_token,
           "CONTROL_PLANE_AGENT_RATE_LIMIT": "1000000", "CONTROL_PLANE_LOG_LEVEL": "WARNING"}
    res = {"fleet": args.fleet, "seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
           "cpus": os.cpu_count(), "gunicorn": f"{args.workers} workers x {args.threads} threads", "runs": []}
    create_database(args.pg, dbname)
    try:
        subprocess.run([sys.executable, "-m", "flask", "--app", "cp", "db", "upgrade"], cwd=ROOT, check=True,
                       capture_output=True, env={**os.environ, **env, "CONTROL_PLANE_INSTANCE_PATH": str(work),
                                                 "CONTROL_PLANE_DATABASE_URL":
                                                     "postgresql+psycopg://" + direct_dsn.split("://", 1)[1]})
        seed(direct_dsn, args.fleet)
        bodies = bf.write_bodies(work / "bodies.tsv", args.fleet, agent_token)
        log(f"database {dbname}: {args.fleet} installations seeded")
        for name, n_hosts, pooled, pooler in TOPOLOGIES:
            res["runs"].append(run_topology(name, n_hosts, pooled, pooler, env=env, work=work, server_dsn=args.pg,
                                            dbname=dbname, direct_dsn=direct_dsn, bodies=bodies, wrk=wrk, args=args))
    finally:
        drop_database(args.pg, dbname)
        shutil.rmtree(work, ignore_errors=True)
    print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
