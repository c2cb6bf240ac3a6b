"""``etcdlite snapshot restore --backend postgres://...``: a restored state written into an empty database.

What the restore writes is what an instance writes when it takes a snapshot (``applier``): one
``etcdlite_snapshot`` row and its ``etcdlite_snapshot_chunk`` rows (``memory.snapshot``'s format, in
``SNAPSHOT_CHUNK`` pieces), the newest auth and alarms documents in ``etcdlite_state``, and an
``etcdlite_lease`` row per lease -- with an empty log after the snapshot.  A starting instance then
loads it by the usual path (``loader.load``: the newest snapshot plus the log after it).

All of it is one transaction, which also creates the schema (``schema.migrate``) and holds the
schema, writer and snapshot locks: a refused or failed restore leaves the database as it was, and an
instance that starts meanwhile waits for it.  A database that already holds a cluster (a log,
snapshot, document or lease row) or that a live instance serves is refused, as ``etcdutl snapshot
restore`` refuses a data dir that exists.

Leases restart with their full TTL when the cluster starts, as after etcd's restore: their rows
carry ``expires_at = 'infinity'`` (never reaped, never read back as a keep-alive) until the first
instance that opens the database starts their clocks (``start_restored_leases``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from ..memory.files import StorageError
from .dsn import connect_kwargs, redacted
from .keeper import LIVE_SECONDS
from .schema import SNAPSHOT_LOCK, WRITER_LOCK, migrate
from .snapshots import SNAPSHOT_CHUNK

# the tables that hold a cluster's state: any row in one of them and the database is in use
STATE_TABLES = ("etcdlite_log", "etcdlite_snapshot", "etcdlite_state", "etcdlite_lease")

_RESTORED_LEASES = ("INSERT INTO etcdlite_lease (id, ttl, expires_at, renewed_at) "
                    "SELECT i, t, 'infinity', '-infinity' FROM unnest(%s::bigint[], %s::bigint[]) AS g(i, t)")
_START_LEASES = ("UPDATE etcdlite_lease SET expires_at = clock_timestamp() + ttl * interval '1 second', "
                 "renewed_at = clock_timestamp() WHERE expires_at = 'infinity'")


class DatabaseInUse(StorageError):
    """The database already holds a cluster, or an instance serves it."""


@dataclass(slots=True)
class RestoredState:
    snapshot: Path  # a data-dir snapshot file (``memory.snapshot``'s format), streamed into chunks
    index: int  # the log index it stands for (etcd's consistent index)
    revision: int
    leases: list[tuple[int, int]]  # (id, TTL)
    documents: dict[str, bytes]  # etcdlite_state: "auth", "alarms"


def connect(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=True, **connect_kwargs("etcdlite snapshot restore"))
    except psycopg.Error as exc:
        raise StorageError(f"cannot reach the database {redacted(url)}: {_one_line(exc)}") from None


def check_unused(conn: psycopg.Connection[Any], url: str) -> None:
    """Refuse a database that holds a cluster or that an instance serves (writes nothing)."""
    for table in STATE_TABLES:
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        if not (found and found[0]):
            continue
        row = conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()  # a constant name
        if row and row[0]:
            raise DatabaseInUse(f"the database {redacted(url)} already holds an etcdlite cluster ({table} is not "
                                f"empty): restore into a new, empty database")
    found = conn.execute("SELECT to_regclass('etcdlite_member') IS NOT NULL").fetchone()
    if found and found[0]:
        row = conn.execute("SELECT count(*) FROM etcdlite_member WHERE heartbeat > clock_timestamp() - "
                           "%s * interval '1 second'", (LIVE_SECONDS,)).fetchone()
        if row and row[0]:
            raise DatabaseInUse(f"{row[0]} etcdlite instance(s) serve the database {redacted(url)}: stop them first")


def check_target(url: str) -> None:
    """The database can be reached and holds no cluster: asked before the source is read."""
    conn = connect(url)
    try:
        check_unused(conn, url)
    except psycopg.Error as exc:
        raise StorageError(f"cannot use the database {redacted(url)}: {_one_line(exc)}") from None
    finally:
        conn.close()


def write(url: str, state: RestoredState) -> None:
    """The restored state into the database, in one transaction (the schema created with it if new)."""
    conn = connect(url)
    try:
        with conn.transaction():
            migrate(conn)  # a savepoint of this transaction; its schema lock is held until the commit
            conn.execute("SELECT pg_advisory_xact_lock(%s), pg_advisory_xact_lock(%s)", (WRITER_LOCK, SNAPSHOT_LOCK))
            check_unused(conn, url)  # again, under the locks: nothing started or restored meanwhile
            _write_snapshot(conn, state)
            for name, data in sorted(state.documents.items()):
                conn.execute("INSERT INTO etcdlite_state (name, idx, data) VALUES (%s, %s, %s)",
                             (name, state.index, data))
            if state.leases:
                conn.execute(_RESTORED_LEASES, ([i for i, _ in state.leases], [t for _, t in state.leases]))
    except psycopg.Error as exc:
        raise StorageError(f"cannot write into the database {redacted(url)} (nothing was written): "
                           f"{_one_line(exc)}") from None
    finally:
        conn.close()


def _write_snapshot(conn: psycopg.Connection[Any], state: RestoredState) -> None:
    with open(state.snapshot, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        chunks = -(-size // SNAPSHOT_CHUNK)
        conn.execute("INSERT INTO etcdlite_snapshot (idx, revision, size, chunks) VALUES (%s, %s, %s, %s)",
                     (state.index, state.revision, size, chunks))
        for n in range(chunks):
            data = f.read(SNAPSHOT_CHUNK)
            if not data:
                raise StorageError(f"the staged snapshot {state.snapshot} shrank while it was read")
            conn.execute("INSERT INTO etcdlite_snapshot_chunk (idx, n, data) VALUES (%s, %s, %s)",
                         (state.index, n, data))


def start_restored_leases(conn: psycopg.Connection[Any]) -> None:
    """A restored database's leases get their full TTL from now (the first instance's start)."""
    conn.execute(_START_LEASES)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
