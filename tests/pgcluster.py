"""A throw-away PostgreSQL server for the tests: Debian's ``postgresql`` package, ``initdb`` and ``pg_ctl``
in a temporary directory on a free port, run as a non-root user (PostgreSQL refuses root).

    cluster = PgCluster.start()
    url = cluster.new_database()      # postgres://postgres@127.0.0.1:PORT/etcdlite_test_N
    cluster.restart()                 # a database restart (immediate: like a crash of the server)
    cluster.stop()

``fsync=off`` (a test's data must survive the server process, not the machine) keeps it quick;
``synchronous_commit`` stays on, so a commit that was answered survives ``restart(immediate=True)``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from etcdlite.process import free_port

PG_USER = "postgres"  # the OS user the server runs as when the tests run as root (Debian's package makes it)


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def available() -> bool:
    return pg_bin_dir() is not None


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True)
    return ["runuser", "-u", PG_USER, "--"]


class PgCluster:
    def __init__(self, base: Path, port: int, bin_dir: Path, durable: bool = False) -> None:
        self.durable = durable
        self.base = base
        self.port = port
        self.bin = bin_dir
        self.data = base / "data"
        self.log = base / "postgres.log"
        self._names = itertools.count(1)
        self._as = _run_as()

    @classmethod
    def start(cls, durable: bool = False) -> PgCluster:
        """``durable``: fsync on, as a production database (benchmarks); off for tests."""
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        base = Path(tempfile.mkdtemp(prefix="etcdlite-pg-"))
        cluster = cls(base, free_port(), bin_dir, durable)
        if cluster._as:
            shutil.chown(base, PG_USER)
        cluster._pg("initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        cluster.up()
        return cluster

    def _pg(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self._as, str(self.bin / program), *args], check=check, capture_output=True,
                              cwd=self.base)

    def up(self) -> None:
        sync = "" if self.durable else "-c fsync=off -c full_page_writes=off "
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 {sync}"
                   f"-c max_connections=300 -c shared_buffers=64MB")
        self._pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")

    def down(self, immediate: bool = False) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate" if immediate else "fast", "-w", "stop",
                 check=False)

    def restart(self, immediate: bool = True, downtime: float = 0.0) -> None:
        self.down(immediate)
        time.sleep(downtime)
        self.up()

    def stop(self) -> None:
        self.down()
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", self.url(database), "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"etcdlite_test_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)
