"""The tables etcdlite keeps in PostgreSQL, created and migrated by etcdlite itself.

    etcdlite_schema         the schema version (one row)
    etcdlite_cluster        the cluster's identity (one row), which member holds the reaper lock, and the member it
                            is being handed to (MoveLeader) until when, and when a reaper was last at work
    etcdlite_log            the log: (idx, kind, entry, batch); idx gap-free from 1, one row per step
    etcdlite_snapshot       snapshots of the whole key space (``memory.snapshot``'s format), by index,
    etcdlite_snapshot_chunk   in chunks of a few MiB; the log up to a snapshot's index is deleted
    etcdlite_state          the newest auth / alarms / members documents (also logged as they change)
    etcdlite_lease          lease expiry in the database's clock, kept current by every instance's keep-alives
    etcdlite_member         the instances: their member attributes and heartbeat

Every writer of the log holds ``WRITER_LOCK`` (a transaction-level advisory lock) from before it reads
the log's head until its commit: one writer at a time, over all instances, so the log is gap-free
and each write's compares see the true head.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from ..memory.files import StorageError

log = logging.getLogger("etcdlite.postgres")

SCHEMA_VERSION = 3

# advisory lock keys: "etcdlite" and a purpose, as 64-bit numbers nothing else is likely to use
WRITER_LOCK = 0x6574_6364_6C69_7401  # held by the one instance writing the log (transaction level)
REAPER_LOCK = 0x6574_6364_6C69_7402  # held by the one instance revoking expired leases (session level)
SNAPSHOT_LOCK = 0x6574_6364_6C69_7403  # held while a snapshot is written (transaction level)
SCHEMA_LOCK = 0x6574_6364_6C69_7404  # held while the schema is created or migrated
MEMBER_LOCK_SPACE = 0x6574_6364  # pg_advisory_lock(space, member id's low 32 bits): one instance per member

KIND_ENTRY = 1  # records.encode_entry of a storage.backend.Entry
KIND_STATE = 2  # a shared document: name, NUL, data
KIND_EVENT = 3  # a one-off event (a simple token issued): name, NUL, data; never replayed at start-up

NOTIFY_CHANNEL = "etcdlite_log"  # payload: the last index a commit appended

_TABLES = """
CREATE TABLE IF NOT EXISTS etcdlite_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS etcdlite_cluster (
    id integer PRIMARY KEY CHECK (id = 1),
    cluster_id bigint NOT NULL,
    leader bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    transferee bigint,
    transfer_until timestamptz,
    reaped_at timestamptz);
CREATE TABLE IF NOT EXISTS etcdlite_log (
    idx bigint PRIMARY KEY,
    kind smallint NOT NULL,
    entry bytea NOT NULL,
    batch bigint NOT NULL);
CREATE TABLE IF NOT EXISTS etcdlite_snapshot (
    idx bigint PRIMARY KEY,
    revision bigint NOT NULL,
    size bigint NOT NULL,
    chunks integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS etcdlite_snapshot_chunk (
    idx bigint NOT NULL,
    n integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (idx, n));
ALTER TABLE etcdlite_snapshot_chunk ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS etcdlite_state (
    name text PRIMARY KEY,
    idx bigint NOT NULL,
    data bytea NOT NULL);
CREATE TABLE IF NOT EXISTS etcdlite_lease (
    id bigint PRIMARY KEY,
    ttl bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS etcdlite_lease_expires_at ON etcdlite_lease (expires_at);
CREATE INDEX IF NOT EXISTS etcdlite_lease_renewed_at ON etcdlite_lease (renewed_at);
CREATE TABLE IF NOT EXISTS etcdlite_member (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    peer_urls text NOT NULL,
    client_urls text NOT NULL,
    heartbeat timestamptz NOT NULL);
"""

# version -> statements that bring a database of version-1 to it
_MIGRATIONS: dict[int, str] = {
    2: "ALTER TABLE etcdlite_cluster ADD COLUMN transferee bigint, ADD COLUMN transfer_until timestamptz",  # MoveLeader
    3: "ALTER TABLE etcdlite_cluster ADD COLUMN reaped_at timestamptz",  # leases resumed after an outage
}


class SchemaError(StorageError):
    """The database holds a schema this etcdlite cannot use."""


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Create the tables, or bring them to ``SCHEMA_VERSION``; returns the version found before."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        found = _version(conn)
        if found > SCHEMA_VERSION:
            raise SchemaError(f"the database's etcdlite schema is version {found}, newer than this etcdlite's "
                              f"{SCHEMA_VERSION}: upgrade etcdlite")
        if found == 0:
            conn.execute(_TABLES)
            conn.execute("INSERT INTO etcdlite_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            log.info("created the etcdlite schema", extra={"fields": {"version": SCHEMA_VERSION}})
        for version in range(found + 1, SCHEMA_VERSION + 1):
            if found and version in _MIGRATIONS:
                conn.execute(_MIGRATIONS[version])
                conn.execute("UPDATE etcdlite_schema SET version = %s", (version,))
                log.info("migrated the etcdlite schema", extra={"fields": {"version": version}})
    return found


def _version(conn: psycopg.Connection[Any]) -> int:
    exists = conn.execute("SELECT to_regclass('etcdlite_schema') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM etcdlite_schema").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def ensure_cluster(conn: psycopg.Connection[Any], cluster_id: int) -> int:
    """The cluster's identity: the first instance's, kept for every later one."""
    with conn.transaction():
        conn.execute("INSERT INTO etcdlite_cluster (id, cluster_id) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
                     (to_signed(cluster_id),))
        row = conn.execute("SELECT cluster_id FROM etcdlite_cluster WHERE id = 1").fetchone()
    assert row is not None
    return to_unsigned(int(row[0]))


def known_leader(conn: psycopg.Connection[Any]) -> int:
    """The member that last took the reaper lock (0: none yet)."""
    row = conn.execute("SELECT leader FROM etcdlite_cluster WHERE id = 1").fetchone()
    return to_unsigned(int(row[0])) if row and row[0] else 0


def to_signed(value: int) -> int:
    """etcd's IDs are uint64; PostgreSQL's bigint is signed."""
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned(value: int) -> int:
    return value + (1 << 64) if value < 0 else value
