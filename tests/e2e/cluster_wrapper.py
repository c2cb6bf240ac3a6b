"""The ``etcd`` that ``run_e2e.py --postgres`` gives etcd's e2e suite: each member of a multi-member cluster
becomes an etcdlite instance over one PostgreSQL database per cluster.

    cluster_wrapper.py SERVER_URL ETCDLITE PID_DIR [etcd's arguments ...]

etcd's e2e framework starts an N-member cluster as N ``etcd`` processes, each with its own ``--name``,
client and peer URLs and data dir, and the same ``--initial-cluster`` (all N ``name=peer-url``) and
``--initial-cluster-token``. Here each keeps all of that -- so its member ID is etcd's, and ``member list``
shows N members -- and gets ``--backend SERVER_URL/<database>``, the database of its cluster. A command
line with one member (or none) in ``--initial-cluster``, or a subcommand (``etcd gateway``), runs etcdlite
unchanged.

Which database: a test may start the same cluster (same ``--initial-cluster`` and token) several times,
fresh each time (``TestCtlV3MoveLeaderScenarios``' four subtests), or restart its members, which must find
their data again. As in etcd, the data dir tells them apart: a member whose data dir names a database
(``etcdlite-e2e-backend``, written here) is restarting and goes back to it; a member starting with an
empty data dir joins the newest generation of its cluster that it has not joined yet, or starts the next
generation (a new database). The generations live in the server's ``postgres`` database, in the table
``run_e2e.py`` creates (``GENERATIONS``).

The suite starts each member in a session of its own (on a pty), out of reach of the runner's kill of the
test's process group: each member leaves its process ID in PID_DIR for the runner to end after the test.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import psycopg
from psycopg import errors

MARKER = "etcdlite-e2e-backend"  # in a member's data dir: the database its cluster uses
GENERATIONS = ("CREATE TABLE IF NOT EXISTS etcdlite_e2e_cluster "
               "(key text, gen int, names text[] NOT NULL, PRIMARY KEY (key, gen))")
DATABASE_PREFIX = "etcdlite_e2e_"
_FLAG = re.compile(r"^--?([a-z0-9-]+)(?:=(.*))?$", re.S)
_WANTED = ("name", "data-dir", "initial-cluster", "initial-cluster-token", "initial-cluster-state")


def member_flags(args: list[str]) -> dict[str, str] | None:
    """The flags naming the member and its cluster, as etcd's flag parser reads them (the last of a repeated
    flag wins, ``ETCD_*`` where the command line is silent); None for a subcommand (``etcd gateway ...``)."""
    if args and not args[0].startswith("-"):
        return None
    found: dict[str, str] = {}
    i = 0
    while i < len(args):  # other flags' values are stepped over as if they were flags of their own
        arg = args[i]
        if arg == "--":
            break
        m = _FLAG.match(arg)
        if m and m.group(1) in _WANTED:
            if m.group(2) is not None:
                found[m.group(1)] = m.group(2)
            elif i + 1 < len(args):
                found[m.group(1)] = args[i + 1]
                i += 1
        i += 1
    for flag in _WANTED:
        env = os.environ.get("ETCD_" + flag.upper().replace("-", "_"))
        if flag not in found and env is not None:
            found[flag] = env
    found.setdefault("name", "default")
    found.setdefault("data-dir", f"{found['name']}.etcd")
    found.setdefault("initial-cluster-token", "etcd-cluster")
    return found


def cluster_key(flags: dict[str, str]) -> str | None:
    """What identifies the cluster a member belongs to; None for a one-member cluster."""
    entries = sorted(e.strip() for e in flags.get("initial-cluster", "").split(",") if "=" in e)
    if len({e.split("=", 1)[0] for e in entries}) < 2:
        return None
    return ",".join(entries) + "|" + flags["initial-cluster-token"]


def database_for(conn: psycopg.Connection, key: str, name: str, joining: bool) -> str:
    """The database of the generation of ``key`` this member starts in (see the module's docstring)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
        row = conn.execute("SELECT gen, names FROM etcdlite_e2e_cluster WHERE key = %s ORDER BY gen DESC LIMIT 1",
                           (key,)).fetchone()
        if row is not None and (joining or name not in row[1]):
            gen = int(row[0])
            conn.execute("UPDATE etcdlite_e2e_cluster SET names = array_append(names, %s) WHERE key = %s AND gen = %s",
                         (name, key, gen))
        else:
            gen = int(row[0]) + 1 if row is not None else 1
            conn.execute("INSERT INTO etcdlite_e2e_cluster (key, gen, names) VALUES (%s, %s, %s)", (key, gen, [name]))
    database = f"{DATABASE_PREFIX}{hashlib.sha1(key.encode()).hexdigest()[:16]}_{gen}"
    try:  # the cluster's first member creates it; the others find it (or wait on its creation and find it)
        conn.execute(f'CREATE DATABASE "{database}"')
    except (errors.DuplicateDatabase, errors.UniqueViolation):
        pass
    return database


def backend_url(server: str, flags: dict[str, str], key: str) -> str:
    data_dir = Path(flags["data-dir"])
    marker = data_dir / MARKER
    if marker.exists():
        database = marker.read_text().strip()
    else:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            database = database_for(conn, key, flags["name"], flags.get("initial-cluster-state") == "existing")
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(database + "\n")
    return f"{server}/{database}"


def main(argv: list[str]) -> int:
    server, etcdlite, pid_dir, args = argv[1], argv[2], Path(argv[3]), argv[4:]
    (pid_dir / str(os.getpid())).touch()  # the process etcdlite becomes
    flags = member_flags(args)
    key = cluster_key(flags) if flags is not None else None
    if key is not None and flags is not None:
        args = ["--backend", backend_url(server, flags, key), *args]
    os.execv(etcdlite, [etcdlite, *args])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
