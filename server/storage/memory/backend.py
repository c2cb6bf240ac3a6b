"""The embedded backend: the in-memory MVCC store, made durable by the log in the data dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from ... import errors
from ..backend import (
    DurableListener,
    KeySpaceCapture,
    KeyValue,
    LeaseAttacher,
    RangeResult,
    Recovered,
    SharedState,
    WriteTxn,
)
from .capture import capture_key_bucket
from .mvcc import MVCCStore
from .snapshot import snapshot_size
from .writer import WAL, WALOptions

R = TypeVar("R")


class MemoryBackend:
    """``storage.backend.Backend`` over ``MVCCStore`` and ``WAL``.

    ``data_dir`` None keeps everything in memory, durable at once (in-process tests of core).
    """

    def __init__(self, data_dir: str | None, options: WALOptions | None = None) -> None:
        self.store = MVCCStore()
        self.wal = WAL(data_dir, self.store, options) if data_dir is not None else None
        self._in_use: tuple[tuple[int, int, int], int] = ((-1, -1, -1), 0)  # (state it was computed for, size)

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> Recovered:
        if self.wal is None:
            return Recovered(index=0, revision=self.store.current_revision, replayed=0, source="memory")
        rec = self.wal.open()
        self.store.use_journal(self.wal)
        return Recovered(index=rec.index, revision=rec.revision, replayed=rec.replayed,
                         source=str(rec.snapshot or ""))

    def start(self) -> None:
        if self.wal is not None:
            self.wal.start()

    def close(self) -> None:
        if self.wal is not None:
            self.wal.close()

    async def wait_closed(self) -> None:
        """Returns once every queued write is on disk and the data dir is unlocked."""
        if self.wal is not None:
            await self.wal.wait_closed()

    # -- revisions -------------------------------------------------------------------------------
    @property
    def current_revision(self) -> int:
        return self.store.current_revision

    @property
    def visible_revision(self) -> int:
        return self.store.visible_revision

    @property
    def compact_revision(self) -> int:
        return self.store.compact_revision

    @property
    def compact_main_revision(self) -> int:
        return self.store.compact_main_revision

    # -- reads -------------------------------------------------------------------------------------
    def get(self, key: bytes, rev: int) -> KeyValue | None:
        return self.store.get(key, rev)

    def range(self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0, *,
              head: int | None = None, count_only: bool = False) -> RangeResult:
        return self.store.range(key, end, rev, limit, head=head, count_only=count_only)

    def read_revision(self, rev: int) -> tuple[int, int]:
        head = self.store.visible_revision
        return self.store.check_revision(rev, head), head

    def range_chunk(self, key: bytes, end: bytes, rev: int, max_keys: int, want: int
                    ) -> tuple[list[KeyValue], int, bytes | None]:
        return self.store.range_chunk(key, end, rev, max_keys, want)

    def changes_since(self, start_rev: int, upto: int) -> Iterator[tuple[int, list[KeyValue]]]:
        return self.store.changes_since(start_rev, upto)

    def history(self) -> Iterator[KeyValue]:
        return self.store.history()

    def all_live(self) -> Iterator[KeyValue]:
        return self.store.all_live()

    def key_count(self) -> int:
        return self.store.live_key_count()

    def leases(self) -> dict[int, int]:
        return self.store.leases()

    def add_durable_listener(self, listener: DurableListener) -> None:
        self.store.add_durable_listener(listener)

    def set_lease_attacher(self, attacher: LeaseAttacher) -> None:
        self.store.lease_attacher = attacher

    def add_reset_listener(self, listener: Callable[[], None]) -> None:
        """The state is never rebuilt under a running server: nothing to tell."""

    @property
    def shares_leases(self) -> bool:
        return False

    def lease_renewed(self, lease_id: int, ttl: int) -> None:
        """The lessor's own expiry is the only one."""

    def set_lease_revoker(self, revoke: Callable[[int], None]) -> None:
        """The lessor's reaper revokes expired leases."""

    @property
    def shared_state(self) -> SharedState | None:
        return None

    async def read_index(self) -> None:
        """One process orders every write: what is visible is everything committed."""

    def check_readable(self) -> None:
        """Reads serve the durable state, also after a write failure."""

    async def wait_applied(self) -> None:
        store = self.store
        await store.wait_durable(store.last_seq)

    # -- writes ------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        if self.wal is not None:
            self.wal.check_writable()

    async def write(self, apply: Callable[[WriteTxn], R]) -> R:
        txn = self.store.write_txn()
        try:
            result = apply(txn)
        finally:
            seq = txn.end()
        await self.store.wait_durable(seq)
        return result

    def write_nowait(self, apply: Callable[[WriteTxn], object]) -> None:
        txn = self.store.write_txn()
        try:
            apply(txn)
        finally:
            txn.end()

    async def compact(self, rev: int) -> None:
        await self.store.wait_durable(self.store.compact(rev))

    # -- maintenance -------------------------------------------------------------------------------
    @property
    def durable_index(self) -> int:
        return self.wal.durable_index if self.wal is not None else 0

    @property
    def failure(self) -> errors.EtcdError | None:
        return self.wal.failure if self.wal is not None else None

    @property
    def leader_id(self) -> int:
        return 0

    async def transfer_leadership(self, transferee: int) -> None:
        raise errors.TIMEOUT  # the other members were added through the API and never start: none takes over

    def size(self) -> int:
        return self.wal.disk_size() if self.wal is not None else 0

    def size_in_use(self) -> int:
        """What a snapshot would take now; walking the history is O(versions), so it is kept per state."""
        store = self.store
        state = (store.current_revision, store.compact_revision, len(store.leases()))
        if state != self._in_use[0]:
            self._in_use = (state, snapshot_size(store))
        return self._in_use[1]

    async def defragment(self) -> None:
        await self._writer().snapshot()

    def capture_key_space(self) -> KeySpaceCapture:
        store = self.store
        return KeySpaceCapture(index=self.wal.index if self.wal is not None else 0,
                               revision=store.current_revision, compact_revision=store.compact_main_revision,
                               leases=dict(store.leases()), versions=capture_key_bucket(store))

    def hash_kv(self, rev: int) -> tuple[int, int]:
        return self.store.hash_kv(rev)

    def _writer(self) -> WAL:
        if self.wal is None:
            raise errors.STOPPED
        return self.wal
