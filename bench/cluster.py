"""The scale-out topology on one machine, from one command: ``make cluster``.

    PostgreSQL 127.0.0.1:5432
      <- PgBouncer, transaction pooling, on a free port of 127.0.0.1 (its own ini in a temp dir)
           <- host a: gunicorn ``cp:create_app()`` on 127.0.0.1:<port a>
           <- host b: gunicorn ``cp:create_app()`` on 127.0.0.1:<port b>
           <- worker 1, worker 2: ``flask --app cp worker``
    clients: alternate between the hosts (``Cluster.round_robin``)

The hosts and workers share nothing but the database (reached through PgBouncer, with
``CONTROL_PLANE_DB_POOLER=transaction``) and the secret key: each has its own instance folder.
There is no proxy in front: the client (the tests, the load generator of ``bench.cluster_bench``)
alternates hosts itself. A proxy would add nothing to what is proven (any proxy spreads requests
over hosts; what matters is that consecutive requests of one client land on different hosts,
which alternating makes certain rather than likely) and, on a 2-core machine, its CPU would come
out of what the hosts are measured with. Production puts its own load balancer there.

Every process runs in its own process group with its output in a log file of the run's folder;
``stop()`` (also on Ctrl-C or SIGTERM) stops them in reverse order (SIGTERM, then SIGKILL of the
group after a grace period), drops the run's database and removes the folder. PgBouncer refuses
to run as root: started by root, it switches to the ``postgres`` user (or ``nobody``).

    python -m bench.cluster                       # up until Ctrl-C, prints URLs and tokens
    python -m bench.cluster --seed 50 --webhook-url http://127.0.0.1:9000/hook
"""
from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from itertools import cycle
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PGBOUNCER_USERS = ("postgres", "nobody")  # who PgBouncer runs as when started by root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout:g} s")


class Process:
    """A child process in its own process group, its output appended to ``log_path``."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path):
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def check_alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
        return True

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL of the whole group after ``grace`` seconds."""
        if not self.running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL of the process group: no clean-up of any kind (a crash)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


class PgBouncer:
    """Debian's ``pgbouncer`` in transaction pooling mode on a free port of 127.0.0.1, in front of
    the PostgreSQL of ``server_dsn``; every database of that server is reachable through it."""

    def __init__(self, workdir: Path, server_dsn: str = SERVER_DSN, *, pool_size: int = 20,
                 max_client_conn: int = 1000, ignore_startup_parameters: tuple[str, ...] = ("extra_float_digits",)):
        info = psycopg.conninfo.conninfo_to_dict(server_dsn)
        self.server_host, self.server_port = info.get("host", "127.0.0.1"), int(info.get("port", 5432))
        self.user = info.get("user", "postgres")
        self.log_path = workdir / "pgbouncer.log"
        # its own folder under the temp dir (which the unprivileged user it may run as can reach)
        self.dir = Path(tempfile.mkdtemp(prefix="cp-pgbouncer-"))
        self.port = free_port()
        self.pool_size, self.max_client_conn = pool_size, max_client_conn
        # sent by some clients at start-up, harmless to drop; anything else (a session's
        # ``options``, say) is refused with an error rather than dropped silently
        self.ignore_startup_parameters = ignore_startup_parameters
        self.process: Process | None = None

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` through PgBouncer."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _write_config(self) -> Path:
        (self.dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text("\n".join([
            "[databases]",
            f"* = host={self.server_host} port={self.server_port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir / 'userlist.txt'}",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            f"max_client_conn = {self.max_client_conn}",
            f"ignore_startup_parameters = {','.join(self.ignore_startup_parameters)}",
            f"admin_users = {self.user}",
            f"pidfile = {self.dir / 'pgbouncer.pid'}",
            "log_connections = 0",
            "log_disconnections = 0",
            "",
        ]))
        return ini

    def _command(self, ini: Path) -> list[str]:
        binary = pgbouncer_binary()
        if os.geteuid() != 0:
            return [binary, str(ini)]
        user = next(u for u in PGBOUNCER_USERS if _user_exists(u))
        entry = pwd.getpwnam(user)
        for path in [self.dir, *self.dir.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return [binary, "-u", user, str(ini)]

    def start(self) -> "PgBouncer":
        ini = self._write_config()
        self.process = Process("pgbouncer", self._command(ini), dict(os.environ), self.log_path)
        self.process.start()
        wait_until(lambda: self.process.check_alive() and self._accepts(), 20, "pgbouncer")
        return self

    def _accepts(self) -> bool:
        try:
            with psycopg.connect(self.dsn("pgbouncer"), autocommit=True, prepare_threshold=None,
                                 connect_timeout=2) as conn:
                conn.execute("SHOW VERSION")
            return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        """An immediate shutdown (SIGTERM): open client connections are cut."""
        if self.process:
            self.process.stop(grace=10)

    def restart(self) -> None:
        """Stop and start again on the same port (clients see their connections cut once)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and remove its folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def pgbouncer_binary() -> str:
    """Debian's ``pgbouncer`` (``/usr/sbin``), installed with apt-get on a fresh machine."""
    found = shutil.which("pgbouncer", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found:
        return found
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
    print("pgbouncer not found: apt-get install -y pgbouncer", file=sys.stderr, flush=True)
    quiet = {"env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, "stdout": subprocess.DEVNULL}
    if subprocess.run([*apt, "install", "-y", "-q", "pgbouncer"], **quiet).returncode != 0:
        subprocess.run([*apt, "update", "-q"], check=True, **quiet)
        subprocess.run([*apt, "install", "-y", "-q", "pgbouncer"], check=True, **quiet)
    return shutil.which("pgbouncer", path="/usr/sbin") or sys.exit("pgbouncer could not be installed")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class Host:
    """One web host: gunicorn serving ``cp:create_app()`` on its own port and instance folder."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, *, workers: int, threads: int):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
               "--threads", str(threads), "--log-level", "warning", "cp:create_app()"]
        self.process = Process(f"host {name}", cmd, env, log_path)

    def start(self) -> None:
        self.process.start()

    def ready(self) -> bool:
        self.process.check_alive()
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False


class Worker:
    """One background worker: ``flask --app cp worker``."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path):
        self.name = name
        self.process = Process(f"worker {name}", [sys.executable, "-m", "flask", "--app", "cp", "worker"], env,
                               log_path)
        self._log_start = 0

    def start(self) -> None:
        self._log_start = self.process.log_path.stat().st_size if self.process.log_path.exists() else 0
        self.process.start()

    def ready(self) -> bool:
        self.process.check_alive()
        with self.process.log_path.open("rb") as fh:
            fh.seek(self._log_start)
            return b"worker_started" in fh.read()


class Cluster:
    """PgBouncer, ``hosts`` web hosts and ``workers`` workers on one database.

    ``env``: the application settings every process gets (tokens, webhook, limits); the cluster
    adds the database URL (through PgBouncer), ``CONTROL_PLANE_DB_POOLER=transaction``, the shared
    secret key (``env``'s, or a random one) and each process's own instance folder.
    ``database``: an existing, migrated database to serve; unset, the cluster creates its own
    (``cp_cluster_<random>``), migrates it through PgBouncer and drops it at ``stop()``.
    """

    def __init__(self, env: dict[str, str] | None = None, *, database: str | None = None,
                 server_dsn: str = SERVER_DSN, hosts: int = 2, workers: int = 2, gunicorn_workers: int = 1,
                 threads: int = 4, pool_size: int = 20, workdir: Path | None = None):
        self.app_env = dict(env or {})
        self.server_dsn = server_dsn
        self.own_database = database is None
        self.database = database or f"cp_cluster_{uuid.uuid4().hex[:12]}"
        self.own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cp-cluster-"))
        self.pgbouncer = PgBouncer(self.workdir, server_dsn, pool_size=pool_size)
        self.secret_key = self.app_env.get("CONTROL_PLANE_SECRET_KEY") or secrets.token_hex(32)
        self.hosts = [Host(chr(ord("a") + i), self.process_env(f"host-{chr(ord('a') + i)}"),
                           self.workdir / f"host-{chr(ord('a') + i)}.log", workers=gunicorn_workers, threads=threads)
                      for i in range(hosts)]
        self.workers = [Worker(str(i + 1), self.process_env(f"worker-{i + 1}"), self.workdir / f"worker-{i + 1}.log")
                        for i in range(workers)]
        self._created = False

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL every process of the cluster uses (through PgBouncer)."""
        return self.pgbouncer.url(self.database)

    @property
    def direct_dsn(self) -> str:
        """The database itself, not through PgBouncer (for set-up and inspection)."""
        info = psycopg.conninfo.conninfo_to_dict(self.server_dsn)
        info["dbname"] = self.database
        return psycopg.conninfo.make_conninfo(**info)

    @property
    def urls(self) -> list[str]:
        return [h.url for h in self.hosts]

    def round_robin(self) -> Iterator[str]:
        """The hosts' base URLs, alternating forever."""
        return cycle(self.urls)

    def process_env(self, name: str) -> dict[str, str]:
        instance = self.workdir / name
        instance.mkdir(parents=True, exist_ok=True)
        return {**os.environ, **self.app_env,
                "CONTROL_PLANE_DATABASE_URL": self.database_url,
                "CONTROL_PLANE_DB_POOLER": "transaction",
                "CONTROL_PLANE_SECRET_KEY": self.secret_key,
                "CONTROL_PLANE_INSTANCE_PATH": str(instance)}

    def _flask(self, *args: str) -> None:
        env = self.process_env("cli")
        proc = subprocess.run([sys.executable, "-m", "flask", "--app", "cp", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")

    def start(self, *, seed: int = 0) -> "Cluster":
        try:
            if self.own_database:
                with psycopg.connect(self.server_dsn, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{self.database}"')
                self._created = True
            self.pgbouncer.start()
            if self.own_database:
                self._flask("db", "upgrade")
                if seed:
                    self._flask("seed-demo", "--count", str(seed))
            for proc in [*self.hosts, *self.workers]:
                proc.start()
            for proc in [*self.hosts, *self.workers]:
                wait_until(proc.ready, 60, proc.process.name, interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Workers, hosts, PgBouncer, in that order; then the run's database and folder."""
        stoppers = [threading.Thread(target=p.process.stop) for p in [*self.workers, *self.hosts]]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        self.pgbouncer.close()
        if self._created:
            with psycopg.connect(self.server_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self._created = False
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default=os.environ.get("BENCH_PG", SERVER_DSN), help="the PostgreSQL server")
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="background workers (flask --app cp worker)")
    ap.add_argument("--gunicorn-workers", type=int, default=2, help="gunicorn workers per host")
    ap.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    ap.add_argument("--seed", type=int, default=20, help="demo installations to create (seed-demo; 0: none)")
    ap.add_argument("--webhook-url", default="", help="CONTROL_PLANE_ALERT_WEBHOOK_URL of the workers")
    args = ap.parse_args(argv)

    tokens = {role: os.environ.get(f"CONTROL_PLANE_{role.upper()}_TOKEN") or secrets.token_urlsafe(24)
              for role in ("support", "ops", "admin", "agent")}
    env = {f"CONTROL_PLANE_{role.upper()}_TOKEN": tok for role, tok in tokens.items()}
    env.setdefault("CONTROL_PLANE_LOG_FORMAT", os.environ.get("CONTROL_PLANE_LOG_FORMAT", "text"))
    if args.webhook_url:
        env["CONTROL_PLANE_ALERT_WEBHOOK_URL"] = args.webhook_url
    cluster = Cluster(env, server_dsn=args.pg, hosts=args.hosts, workers=args.workers,
                      gunicorn_workers=args.gunicorn_workers, threads=args.threads)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster.start(seed=args.seed)
    try:
        print(f"\n  control-plane cluster up (logs in {cluster.workdir})")
        print(f"  database:  {cluster.database} through PgBouncer {cluster.database_url}")
        for host in cluster.hosts:
            print(f"  host {host.name}:    {host.url}  (log in at {host.url}/login)")
        print(f"  workers:   {len(cluster.workers)} x flask --app cp worker")
        for role, tok in tokens.items():
            print(f"  {role + ' token:':15}{tok}")
        print("  Ctrl-C stops everything and drops the database.\n", flush=True)
        while not stop.wait(1):
            for proc in [*cluster.hosts, *cluster.workers]:
                proc.process.check_alive()
            cluster.pgbouncer.process.check_alive()
    finally:
        cluster.stop()
        print("  cluster stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
