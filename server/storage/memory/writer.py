"""The log writer: group commit of entries into the current segment, and snapshots (issue 4).

``WAL.append`` only encodes and queues; one writer task takes everything queued, writes it with
one ``write`` and one ``fdatasync`` (on the event loop's thread while syncs take under 2 ms, else in
a one-thread executor so the loop keeps serving), then reports the last index durable.  Every
``snapshot_count`` entries, once the log outgrows the last snapshot (and at least 64 MiB), after a
compaction, and on request (Defragment), the writer instead writes a snapshot of the
in-memory state -- which at that moment is exactly the effect of every entry appended so far --
starts a new segment and deletes the old files.  A write or fsync error latches: the failing and all
later writes are refused (UNAVAILABLE), reads keep serving what was durable, and a restart recovers
from disk.  The files are described in ``files``, ``records`` and ``snapshot``.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ... import errors
from ...lifecycle import OwnedTask
from ..backend import Entry
from ..fsutil import make_private_dir
from .files import (
    MEMBER_DIR,
    SNAP_DIR,
    SNAP_SUFFIX,
    WAL_DIR,
    WAL_SUFFIX,
    DiskFaults,
    Segment,
    check_data_dir,
    listing,
    lock_data_dir,
    write_snapshot_file,
)
from .mvcc import MVCCStore
from .records import encode_record
from .recovery import Recovery, recover
from .snapshot import SnapshotState, capture, encode_snapshot

log = logging.getLogger("etcdlite.wal")

DEFAULT_SNAPSHOT_COUNT = 100_000  # etcd's --snapshot-count default
MIN_SNAPSHOT_LOG_BYTES = 64 * 1024 * 1024
INLINE_SYNC_MAX_SECONDS = 0.002  # the log is synced on the event loop's thread only while syncs take less



# -- the journal ---------------------------------------------------------------------------------
@dataclass(slots=True)
class WALOptions:
    fsync: bool = True  # False: --unsafe-no-fsync
    snapshot_count: int = DEFAULT_SNAPSHOT_COUNT  # entries between snapshots (etcd's --snapshot-count)
    batch_limit: int = 0  # most entries per write+fsync; 0: all queued (group commit), 1: one per request
    min_snapshot_log_bytes: int = MIN_SNAPSHOT_LOG_BYTES
    faults: DiskFaults | None = None


@dataclass(slots=True)
class WALStats:
    writes: int = 0  # write (+ fsync) rounds
    entries: int = 0
    snapshots: int = 0


class WAL:
    """The journal (``mvcc.Journal``) over the data dir.

    ``open()`` recovers the store from disk, ``start()`` runs the writer task,
    ``close()``/``wait_closed()`` flush what is queued and stop it.
    """

    def __init__(self, data_dir: str | os.PathLike[str], store: MVCCStore,
                 options: WALOptions | None = None) -> None:
        self.member_dir = Path(data_dir) / MEMBER_DIR
        self._store = store
        self._opts = options or WALOptions()
        self.on_durable: Callable[[int], None] | None = None  # set by the store: the last durable index
        self.stats = WALStats()
        self._queue: list[tuple[int, bytes]] = []
        self._index = 0  # last appended
        self._durable_index = 0
        self._segment: Segment | None = None
        self._snapshot_size = 0
        self._since_snapshot = 0
        self._compacted = False
        self._requests: list[asyncio.Future[bytes]] = []  # Defragment/Snapshot callers
        self._inflight: list[asyncio.Future[bytes]] = []  # those the snapshot being written answers
        self._wakeup = asyncio.Event()
        self._task = OwnedTask("wal-writer", self._run)  # ends by itself once closing and flushed
        self._closing = False
        self._failure: errors.EtcdError | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._sync_fast = True  # the last write+sync done on the loop's thread was quick
        self._lock_fd = -1

    # -- start-up ---------------------------------------------------------------------------
    def open(self) -> Recovery:
        check_data_dir(self.member_dir)
        make_private_dir(self.member_dir)
        self._lock_fd = lock_data_dir(self.member_dir)
        # recovery only builds acyclic data (versions, lists, bytes): the cycle collector would scan
        # the growing heap again and again for nothing (half the start-up time with 1M keys)
        collecting = gc.isenabled()
        gc.disable()
        try:
            rec = recover(self.member_dir, self._store, self._opts.fsync)
        except BaseException:
            self._unlock()
            raise
        finally:
            if collecting:
                gc.enable()
        gc.freeze()  # and later full collections skip what recovery built
        self._segment = rec.segment
        self._snapshot_size = rec.snapshot_size
        self._index = self._durable_index = rec.index
        self._since_snapshot = rec.replayed
        return rec

    def start(self) -> None:
        if not self._task.started:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="etcdlite-wal")
            self._task.start()

    # -- the journal protocol ------------------------------------------------------------------
    def append(self, entry: Entry) -> int:
        self.check_writable()
        self._index += 1
        self._queue.append((self._index, encode_record(self._index, entry)))
        if entry.compact_revision:
            self._compacted = True
        self._wakeup.set()
        return self._index

    def check_writable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise errors.STOPPED

    async def snapshot(self) -> bytes:
        """Write a snapshot of everything appended so far and start a new segment; returns the file."""
        self.check_writable()
        if not self._task.started:
            raise errors.STOPPED
        request: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._requests.append(request)
        self._wakeup.set()
        return await request

    # -- figures --------------------------------------------------------------------------------
    @property
    def index(self) -> int:
        return self._index

    @property
    def durable_index(self) -> int:
        return self._durable_index

    @property
    def failure(self) -> errors.EtcdError | None:
        return self._failure

    def disk_size(self) -> int:
        """Bytes the data dir's snapshot and log take (etcd's dbSize)."""
        return self._snapshot_size + (self._segment.size if self._segment is not None else 0)

    # -- the writer -------------------------------------------------------------------------------
    def _snapshot_due(self) -> bool:
        if self._compacted or self._since_snapshot >= self._opts.snapshot_count:
            return True
        log_bytes = self._segment.size if self._segment is not None else 0
        return log_bytes >= max(self._opts.min_snapshot_log_bytes, self._snapshot_size)

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue and not self._requests:
                    if self._closing:
                        return
                    await self._wakeup.wait()
                    self._wakeup.clear()
                elif self._requests or self._snapshot_due():
                    await self._write_snapshot()
                else:
                    await self._write_batch()
        except Exception as exc:  # noqa: BLE001 - any failure latches; the server stays up for reads
            self._fail(exc)

    async def _write_batch(self) -> None:
        limit = self._opts.batch_limit or len(self._queue)
        batch = self._queue[:limit]
        del self._queue[:limit]
        data = b"".join(record for _, record in batch)
        segment = self._segment
        assert segment is not None
        if not self._opts.fsync:  # into the page cache only: cheaper than a thread hop
            segment.append(data, False, self._opts.faults)
        elif self._sync_fast:
            # on the loop's thread while the disk syncs fast: requests that arrive meanwhile queue in
            # gRPC core and join the next batch, and no thread hop is paid.  With the gRPC engine this
            # gave 1.3x the puts/s of a sync in the executor at 16 clients (bench/engine.md).
            started = time.monotonic()
            segment.append(data, True, self._opts.faults)
            self._sync_fast = time.monotonic() - started < INLINE_SYNC_MAX_SECONDS
        else:  # the event loop keeps serving while the disk syncs
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(
                self._executor, segment.append, data, True, self._opts.faults)
            self._sync_fast = time.monotonic() - started < INLINE_SYNC_MAX_SECONDS
        self._since_snapshot += len(batch)
        self.stats.writes += 1
        self.stats.entries += len(batch)
        self._made_durable(batch[-1][0])

    async def _write_snapshot(self) -> None:
        index = self._index
        state = capture(index, self._store)  # exactly the effect of entries 1..index
        covered = len(self._queue)
        self._queue.clear()  # the snapshot holds these entries' effects; they need no log record
        self._inflight, self._requests = self._requests, []
        self._compacted = False
        data, segment = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._install_snapshot, state)
        old = self._segment
        self._segment = segment
        if old is not None:
            old.close()
        self._snapshot_size = len(data)
        self._since_snapshot = 0
        self.stats.snapshots += 1
        self.stats.entries += covered
        log.info("saved snapshot", extra={"fields": {"index": index, "revision": state.revision,
                                                     "size-bytes": len(data)}})
        self._made_durable(index)
        for request in self._inflight:
            if not request.done():
                request.set_result(data)
        self._inflight = []

    def _install_snapshot(self, state: SnapshotState) -> tuple[bytes, Segment]:
        """In the executor: snapshot file, new segment, then the old files go."""
        data = encode_snapshot(state)
        snap_dir, wal_dir = self.member_dir / SNAP_DIR, self.member_dir / WAL_DIR
        path = write_snapshot_file(snap_dir, state.index, data, self._opts.fsync, self._opts.faults)
        segment = Segment.create(wal_dir, state.index + 1, self._opts.fsync, self._opts.faults)
        for _, old in listing(wal_dir, WAL_SUFFIX):
            if old != segment.path:
                old.unlink()
        for _, old in listing(snap_dir, SNAP_SUFFIX):
            if old != path:
                old.unlink()
        return data, segment

    def _made_durable(self, index: int) -> None:
        self._durable_index = index
        if self.on_durable is not None:
            self.on_durable(index)

    def _fail(self, exc: Exception) -> None:
        oserror = exc if isinstance(exc, OSError) else OSError(errno.EIO, f"{type(exc).__name__}: {exc}")
        self._failure = errors.storage_failure(oserror)
        log.error("writing the wal failed: refusing writes until restart; reads serve the durable state",
                  exc_info=not isinstance(exc, OSError),
                  extra={"fields": {"error": str(exc), "durable-index": self._durable_index,
                                    "lost-index": self._index}})
        self._queue.clear()
        for request in (*self._inflight, *self._requests):
            if not request.done():
                request.set_exception(self._failure)
        self._inflight, self._requests = [], []
        self._store.fail_waiters(self._failure)

    # -- shutdown ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop taking entries; the writer flushes what is queued, then ends."""
        self._closing = True
        self._wakeup.set()

    async def wait_closed(self) -> None:
        await self._task.wait()
        for request in self._requests:
            if not request.done():
                request.set_exception(errors.STOPPED)
        self._requests = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._segment is not None:
            self._segment.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


