"""A throwaway PostgreSQL 15 server of a test's own (Debian's server binaries, run as the
``postgres`` user), for tests that must stop the database server the way a crash does."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def available() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if not (BIN / "initdb").exists():
        return f"no PostgreSQL server binaries in {BIN}"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        return "needs root (runuser) or the postgres user"
    return None


class Cluster:
    """``initdb`` in a temporary directory, then ``start`` / ``stop(mode)`` on ``port``."""

    def __init__(self, port: int, settings: dict[str, str] | None = None):
        self.port = port
        self.settings = settings or {}
        self.root = Path(tempfile.mkdtemp(prefix="cp-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(_as_postgres(args), cwd=self.root, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> "Cluster":
        options = " ".join([f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.root}",
                            *(f"-c {k}={v}" for k, v in self.settings.items())])
        self._run([str(BIN / "pg_ctl"), "start", "-w", "-D", str(self.data), "-l", str(self.log), "-o", options])
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m immediate`` is a crash: no checkpoint, every server process killed,
        what was only in shared memory lost (recovery replays the WAL at the next start)."""
        self._run([str(BIN / "pg_ctl"), "stop", "-w", "-D", str(self.data), "-m", mode])

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)
