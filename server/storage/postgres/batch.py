"""What one commit of the shared log carries: the queued writes it answers and the rows it appends;
and how another instance's committed entry is replayed here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ... import errors
from ..backend import Entry, LeaseAttacher
from ..memory.mvcc import MVCCStore

Row = tuple[int, int, bytes]  # (idx, kind, payload)


class Pending:
    """One queued write: ``run(store)`` at its turn, then its writer is answered."""

    __slots__ = ("run", "future", "result", "error")

    def __init__(self, run: Callable[[MVCCStore], Any], future: asyncio.Future[Any]) -> None:
        self.run = run
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None

    def execute(self, store: MVCCStore) -> None:
        try:
            self.result = self.run(store)
        except Exception as exc:  # noqa: BLE001 - the writer's error (etcd's), given back to it
            self.error = exc

    def finish(self, error: BaseException | None = None) -> None:
        if self.future.done():
            return
        error = error or self.error
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(self.result)


@dataclass
class Batch:
    """The rows one commit appends."""

    token: int
    first: int  # the index its first row gets
    rows: list[Row] = field(default_factory=list)
    leases: dict[int, int | None] = field(default_factory=dict)  # lease id -> TTL granted, None: revoked (last wins)
    documents: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    compacted: bool = False

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1


def time_out(pending: list[Pending]) -> None:
    for item in pending:
        item.finish(errors.TIMEOUT)


def apply_committed(store: MVCCStore, attacher: LeaseAttacher | None, entry: Entry) -> None:
    """Replay another instance's entry: the store as at start-up, the lessor as its writer's was."""
    if attacher is not None:
        for lease_id, ttl in entry.lease_grants:
            attacher.granted(lease_id, ttl)
        head = store.current_revision
        for kv in entry.changes:
            prev = store.get(kv.key, head)
            if prev is not None and prev.lease and prev.lease != kv.lease:
                attacher.detach(prev.lease, kv.key)
            if kv.lease and kv.version:
                attacher.attach(kv.lease, kv.key)
    store.replay(entry)
    if attacher is not None:
        for lease_id in entry.lease_revokes:
            attacher.revoked(lease_id)
