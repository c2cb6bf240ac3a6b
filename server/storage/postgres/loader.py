"""Reading the shared log: the newest snapshot and the log after it, into an ``MVCCStore``.

Start-up and a rebuild both read in one REPEATABLE READ transaction on a plain (blocking)
connection -- at start-up nothing is served yet, a rebuild runs it in a thread -- so the snapshot
and the log after it are one consistent picture even while other instances write and truncate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..memory.mvcc import MVCCStore
from ..memory.records import decode_entry
from ..memory.snapshot import decode_snapshot, restore_state
from .schema import KIND_ENTRY, KIND_STATE

FETCH_ROWS = 5000  # log rows read per round trip


class LogGap(Exception):
    """The log no longer holds the rows after this instance's index (a snapshot truncated them)."""


def encode_document(name: str, data: bytes) -> bytes:
    return name.encode() + b"\0" + data


def decode_document(payload: bytes) -> tuple[str, bytes]:
    name, _, data = payload.partition(b"\0")
    return name.decode(), data


@dataclass
class Replay:
    """Rows applied in order to a store that nobody serves from yet (no listeners, no lessor)."""

    store: MVCCStore
    index: int = 0
    snapshot_index: int = 0
    documents: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # name -> (idx, data)

    def snapshot(self, data: bytes) -> None:
        state = decode_snapshot(data)
        restore_state(state, self.store)
        self.index = self.snapshot_index = state.index

    def row(self, idx: int, kind: int, payload: bytes) -> None:
        if idx != self.index + 1:
            raise LogGap(f"log row {idx} follows index {self.index}")
        if kind == KIND_ENTRY:
            self.store.replay(decode_entry(payload))
        elif kind == KIND_STATE:
            name, data = decode_document(payload)
            self.documents[name] = (idx, data)
        # KIND_EVENT: skipped; an event (a simple token's issue) lives as long as the processes that applied it
        self.index = idx


def load(conn: psycopg.Connection[Any]) -> Replay:
    """A new store holding the newest snapshot plus every log row after it."""
    store = MVCCStore()
    replay = Replay(store)
    store.begin_bulk_load()
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for name, idx, data in conn.execute("SELECT name, idx, data FROM etcdlite_state").fetchall():
            replay.documents[str(name)] = (int(idx), bytes(data))
        row = conn.execute("SELECT idx, chunks FROM etcdlite_snapshot ORDER BY idx DESC LIMIT 1").fetchone()
        if row is not None:
            chunks = conn.execute("SELECT data FROM etcdlite_snapshot_chunk WHERE idx = %s ORDER BY n",
                                  (row[0],)).fetchall()
            if len(chunks) != row[1]:
                raise LogGap(f"snapshot {row[0]} has {len(chunks)} of {row[1]} chunks")
            replay.snapshot(b"".join(bytes(c[0]) for c in chunks))
        with conn.cursor(name="etcdlite_load") as cur:  # server-side: a long log is not held in memory twice
            cur.itersize = FETCH_ROWS
            cur.execute("SELECT idx, kind, entry FROM etcdlite_log WHERE idx > %s ORDER BY idx", (replay.index,))
            for idx, kind, payload in cur:
                replay.row(int(idx), int(kind), bytes(payload))
    store.end_bulk_load()
    return replay
