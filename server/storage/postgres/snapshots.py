"""Writing a snapshot of the shared log: its chunks, then the log and the snapshots before it dropped."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

log = logging.getLogger("etcdlite.postgres")

SNAPSHOT_CHUNK = 4 * 1024 * 1024


async def store_snapshot(conn: psycopg.AsyncConnection[Any], index: int, revision: int, data: bytes,
                         chunks: list[bytes]) -> None:
    """In the caller's transaction (which holds the snapshot lock)."""
    cur = await conn.execute(
        "INSERT INTO etcdlite_snapshot (idx, revision, size, chunks) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (idx) DO NOTHING RETURNING idx", (index, revision, len(data), len(chunks)))
    if await cur.fetchone() is not None:
        async with conn.cursor() as chunk_cur:
            await chunk_cur.executemany("INSERT INTO etcdlite_snapshot_chunk (idx, n, data) VALUES (%s, %s, %s)",
                                        [(index, n, chunk) for n, chunk in enumerate(chunks)])
    await conn.execute("DELETE FROM etcdlite_log WHERE idx <= %s", (index,))
    await conn.execute("DELETE FROM etcdlite_snapshot_chunk WHERE idx < %s", (index,))
    await conn.execute("DELETE FROM etcdlite_snapshot WHERE idx < %s", (index,))
    log.info("saved snapshot", extra={"fields": {"index": index, "revision": revision, "size-bytes": len(data)}})
