"""The log applier: one task per instance appends its writes to the shared log and replays everyone's.

It is the embedded WAL's group commit with the database in place of fdatasync.  Queued writes are
taken together; in one transaction the applier takes ``WRITER_LOCK`` (so writers of all instances
take turns), reads the log rows after its index and replays them (other instances' writes become
visible here), *then* runs each queued write against the in-memory store -- so every compare sees
the true global head -- and appends the new entries with the next indexes, the lease-expiry rows
of grants and revokes and a NOTIFY, and commits.  Once committed the entries are durable: visible,
watchers told, writers answered.  One global revision, gap-free; each write atomic with its compares.

Between writes the applier catches up whenever another instance announces an index (LISTEN, see
``follower``) or a read needs it, and at least every ``POLL_SECONDS``.

A commit that fails leaves the store holding entries that may or may not be in the log.  Their
writers wait while the applier reconnects and looks for the batch's token in the log: committed,
they are answered; not, the store is rebuilt from the database (snapshot + log, ``loader``), core
re-derives what it keeps (``reset_listeners``) and the writers get etcd's UNAVAILABLE errors --
"etcdserver: request timed out" when the outcome cannot be known, as etcd when it loses quorum.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Any

import psycopg

from ... import errors
from ...lifecycle import OwnedTask
from ..backend import Entry, LeaseAttacher
from ..memory.mvcc import MVCCStore
from ..memory.records import decode_entry, encode_entry
from ..memory.snapshot import capture, encode_snapshot
from .batch import Batch, Pending, apply_committed, time_out
from .link import Link
from .loader import FETCH_ROWS, LogGap, Replay, decode_document, encode_document
from .schema import KIND_ENTRY, KIND_EVENT, KIND_STATE, NOTIFY_CHANNEL, SNAPSHOT_LOCK, WRITER_LOCK
from .snapshots import SNAPSHOT_CHUNK, store_snapshot

log = logging.getLogger("etcdlite.postgres")

POLL_SECONDS = 0.5  # catch up at least this often, even if no notification came
REQUEST_TIMEOUT = 7.0  # etcd's: 5 s + 2 election timeouts; then "request timed out"
UNAVAILABLE = (errors.NO_LEADER, errors.TIMEOUT)

# the log after an index, behind one row (idx -1) that holds the newest snapshot's index
_CATCH_UP = ("SELECT -1::bigint, 0::smallint, NULL::bytea, coalesce(max(idx), 0) FROM etcdlite_snapshot "
             "UNION ALL (SELECT idx, kind, entry, 0 FROM etcdlite_log WHERE idx > %s ORDER BY idx LIMIT %s) "
             "ORDER BY 1")
_SNAPSHOT_INDEX = "SELECT coalesce(max(idx), 0) FROM etcdlite_snapshot"
# the rows and the notification in one statement
_APPEND = ("WITH appended AS (INSERT INTO etcdlite_log (idx, kind, entry, batch) "
           "SELECT i, k, e, %s FROM unnest(%s::bigint[], %s::smallint[], %s::bytea[]) AS r(i, k, e)) "
           "SELECT pg_notify(%s, %s)")
_GRANT = ("INSERT INTO etcdlite_lease (id, ttl, expires_at) "
          "SELECT i, t, clock_timestamp() + t * interval '1 second' FROM unnest(%s::bigint[], %s::bigint[]) AS g(i, t) "
          "ON CONFLICT (id) DO UPDATE SET ttl = EXCLUDED.ttl, expires_at = EXCLUDED.expires_at, "
          "renewed_at = clock_timestamp()")
_REVOKE = "DELETE FROM etcdlite_lease WHERE id = ANY(%s::bigint[])"
_DOCUMENT = ("INSERT INTO etcdlite_state (name, idx, data) VALUES (%s, %s, %s) "
             "ON CONFLICT (name) DO UPDATE SET idx = EXCLUDED.idx, data = EXCLUDED.data")



def _time_out_waiter(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(errors.TIMEOUT)


class LogApplier:
    """The journal (``mvcc.Journal``) of the instance's store, over the shared log."""

    def __init__(self, url: str, replay: Replay, load: Callable[[], Replay], snapshot_count: int,
                 instance: str = "") -> None:
        self.store = replay.store
        self.index = replay.index  # the last log index applied here
        self.snapshot_index = replay.snapshot_index  # the newest snapshot the database holds, as last seen
        self.documents = replay.documents
        self._remote_docs: dict[str, int] = {name: idx for name, (idx, _) in replay.documents.items()}
        self.on_durable: Callable[[int], None] | None = None  # set by the store
        self.attacher: LeaseAttacher | None = None
        self.durable_listeners: list[Callable[[int, int], None]] = []
        self.document_listeners: list[Callable[[str, bytes], None]] = []
        self.event_listeners: list[Callable[[str, int, bytes], None]] = []
        self.reset_listeners: list[Callable[[], None]] = []
        self.is_leader: Callable[[], bool] = lambda: False  # the reaper-lock holder takes periodic snapshots
        self.link = Link(url, "log writer", instance)
        self._load = load
        self._snapshot_count = snapshot_count
        self._queue: list[Pending] = []
        self._last: Pending | None = None  # the newest write submitted
        self._batch: Batch | None = None
        self._uncertain: tuple[Batch, list[Pending]] | None = None
        self._wanted = 0  # an index announced or asked for that is not applied yet
        self._catch_up_asked = False
        self._stale = False  # the store must be rebuilt from the database before anything else
        self._wakeup = asyncio.Event()
        self._applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._snapshot_requests: list[asyncio.Future[bytes]] = []
        self._compacted = False
        self._closing = False
        self._task = OwnedTask("postgres-log", self._run)
        self.batches = 0
        self._install(self.store)

    def _install(self, store: MVCCStore) -> None:
        store.use_journal(self)
        store.lease_attacher = self.attacher
        for listener in self.durable_listeners:
            store.add_durable_listener(listener)

    # -- what the backend asks ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.link.down_since is None

    def check_writable(self) -> None:
        if self._closing:
            raise errors.STOPPED
        if not self.connected:
            raise errors.NO_LEADER

    def submit(self, run: Callable[[MVCCStore], Any]) -> asyncio.Future[Any]:
        self.check_writable()
        pending = Pending(run, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._last = pending
        self._wakeup.set()
        return pending.future

    def save_document(self, name: str, data: bytes) -> asyncio.Future[Any]:
        base = self._remote_docs.get(name, 0)
        return self.submit(lambda store: self._append_document(name, data, base))

    def append_event(self, name: str, data: bytes, apply: Callable[[int], Any]) -> asyncio.Future[Any]:
        return self.submit(lambda store: self._append_event(name, data, apply))

    async def wait_submitted(self) -> None:
        """Until every write submitted so far is answered; raises only if the database failed it
        while this call waited (a keep-alive must not fail for another request's own error)."""
        last = self._last
        if last is None or last.future.done():
            return
        try:
            await asyncio.shield(last.future)
        except errors.EtcdError as exc:
            if exc in UNAVAILABLE:
                raise
        except Exception:  # noqa: BLE001 - that request's own error, answered to it
            pass

    async def wait_index(self, index: int, timeout: float | None = None) -> None:
        """Until the log up to ``index`` is applied here (a linearizable read's barrier); etcd's
        "request timed out" after ``timeout`` seconds."""
        if index <= self.index:
            return
        self._wanted = max(self._wanted, index)
        self._wakeup.set()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._waiter_ids), fut))
        timer = None if timeout is None else loop.call_later(timeout, _time_out_waiter, fut)
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()

    def catch_up_soon(self) -> None:
        """Catch up once, whatever the log's head (notifications may have been missed)."""
        self._catch_up_asked = True
        self._wakeup.set()

    def announced(self, index: int) -> None:
        """Another instance committed up to ``index`` (a notification)."""
        if index > self.index:
            self._wanted = max(self._wanted, index)
            self._wakeup.set()

    async def snapshot(self) -> bytes:
        """A snapshot of everything applied, written to the database (the log before it is dropped)."""
        self.check_writable()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._snapshot_requests.append(fut)
        self._wakeup.set()
        return await fut

    # -- the journal protocol (called by the store inside a batch) ---------------------------------
    def append(self, entry: Entry) -> int:
        batch = self._batch
        if batch is None:  # only queued writes run against the store, and only inside a batch
            raise errors.NO_LEADER
        idx = batch.first + len(batch.rows)
        batch.rows.append((idx, KIND_ENTRY, encode_entry(entry)))
        for lease_id, ttl in entry.lease_grants:
            batch.leases[lease_id] = ttl
        for lease_id in entry.lease_revokes:
            batch.leases[lease_id] = None
        batch.compacted |= bool(entry.compact_revision)
        return idx

    def _append_document(self, name: str, data: bytes, base: int) -> None:
        batch = self._batch
        assert batch is not None
        if self._remote_docs.get(name, 0) != base:
            # another instance changed it first; its version replaced this one here already
            raise errors.TIMEOUT
        idx = batch.first + len(batch.rows)
        batch.rows.append((idx, KIND_STATE, encode_document(name, data)))
        batch.documents[name] = (idx, data)

    def _append_event(self, name: str, data: bytes, apply: Callable[[int], Any]) -> Any:
        batch = self._batch
        assert batch is not None
        idx = batch.first + len(batch.rows)
        result = apply(idx)  # here, at its place in the log: after every row before it, before any after
        batch.rows.append((idx, KIND_EVENT, encode_document(name, data)))
        return result

    # -- the task -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task.start()

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()

    async def wait_closed(self) -> None:
        await self._task.wait()
        for pending in self._queue:
            pending.finish(errors.STOPPED)
        self._queue = []
        for fut in self._snapshot_requests:
            if not fut.done():
                fut.set_exception(errors.STOPPED)
        await self.link.close()

    def _idle(self) -> bool:
        return not self._queue and self._uncertain is None and not self._snapshot_requests and not self._stale

    async def _run(self) -> None:
        poll_due = True  # catch up at once, then whenever a poll interval passed without news
        while True:
            if self._closing:
                if not self._queue and self._uncertain is None and not self._snapshot_requests:
                    return
                if not self.connected:  # stopping without a database: what is left cannot finish
                    self._give_up()
                    return
            if self._catch_up_asked:
                self._catch_up_asked, poll_due = False, True
            if self._idle() and self._wanted <= self.index and not poll_due:
                try:
                    async with asyncio.timeout(POLL_SECONDS):  # (wait_for would make a task of each wait)
                        await self._wakeup.wait()
                except TimeoutError:
                    poll_due = True
                self._wakeup.clear()
                continue
            try:
                conn = await self.link.get()
            except psycopg.Error:
                self._fail_queued(errors.NO_LEADER)
                continue
            try:
                if self._stale:
                    await self._rebuild()
                elif self._uncertain is not None:
                    await self._reconcile(conn)
                elif self._queue:
                    await self._commit(conn)  # which catches up first
                    poll_due = False
                elif self._snapshot_requests or self._snapshot_due():
                    await self._write_snapshot(conn)
                else:
                    await self._catch_up(conn)
                    poll_due = False
                self.link.ok()
            except LogGap as gap:
                log.info("the log was truncated past this instance; reloading", extra={"fields": {
                    "reason": str(gap)}})
                self._stale = True
                await self.link.drop(gap)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await self.link.drop(exc)
            except Exception as exc:  # a bug: log it, and recover as from a failed commit
                log.exception("the log applier failed; reconnecting")
                await self.link.drop(exc)
                await asyncio.sleep(POLL_SECONDS)

    def _give_up(self) -> None:
        if self._uncertain is not None:
            for item in self._uncertain[1]:
                item.finish(errors.TIMEOUT)
            self._uncertain = None
        self._fail_queued(errors.NO_LEADER)

    def _fail_queued(self, error: errors.EtcdError) -> None:
        queue, self._queue = self._queue, []
        for pending in queue:
            pending.finish(error)
        for fut in self._snapshot_requests:
            if not fut.done():
                fut.set_exception(error)
        self._snapshot_requests = []
        for _, _, waiter in self._applied_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._applied_waiters = []

    # -- applying committed rows ------------------------------------------------------------------------
    def _apply_rows(self, rows: list[Any], snapshot_index: int) -> None:
        self.snapshot_index = max(self.snapshot_index, snapshot_index)
        if (rows and rows[0][0] != self.index + 1) or (not rows and snapshot_index > self.index):
            raise LogGap(f"the log after index {self.index} starts at "
                         f"{rows[0][0] if rows else 'snapshot ' + str(snapshot_index)}")
        store = self.store
        old = store.visible_revision
        for idx, kind, payload, *_ in rows:
            if kind == KIND_ENTRY:
                apply_committed(store, self.attacher, decode_entry(bytes(payload)))
            elif kind == KIND_STATE:
                name, data = decode_document(bytes(payload))
                self.documents[name] = (idx, data)
                self._remote_docs[name] = idx
                for listener in self.document_listeners:
                    listener(name, data)
            elif kind == KIND_EVENT:
                name, data = decode_document(bytes(payload))
                for event_listener in self.event_listeners:
                    event_listener(name, idx, data)
            self.index = idx
        store.publish(old)
        self._applied()

    def _applied(self) -> None:
        waiters = self._applied_waiters
        while waiters and waiters[0][0] <= self.index:
            fut = heapq.heappop(waiters)[2]
            if not fut.done():
                fut.set_result(None)

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            rows = await (await conn.execute(_CATCH_UP, (self.index, FETCH_ROWS), binary=True)).fetchall()
            self._apply_rows(rows[1:], int(rows[0][3]))
            if len(rows) - 1 < FETCH_ROWS:
                return

    # -- writing -------------------------------------------------------------------------------------------
    async def _commit(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # a long backlog is replayed before the lock is taken, so writers elsewhere wait less
        if self._wanted > self.index + FETCH_ROWS:
            await self._catch_up(conn)
        pending, self._queue = self._queue, []
        batch = Batch(secrets.randbits(63), 0)
        ran = False
        try:
            async with asyncio.timeout(None) as deadline, conn.pipeline() as pipe:
                await conn.execute("BEGIN")
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
                # a statement of its own, after the lock: its snapshot sees every commit before ours
                rows_cur = await conn.execute(_CATCH_UP, (self.index, 2**62), binary=True)
                await pipe.sync()
                rows = await rows_cur.fetchall()
                self._apply_rows(rows[1:], int(rows[0][3]))
                batch.first = self.index + 1
                self._batch = batch
                ran = True
                for item in pending:
                    item.execute(self.store)
                self._batch = None
                if batch.rows:
                    await self._append(conn, batch)
                await conn.execute("COMMIT")
                # leaving the pipeline sends the Sync and reads the commit's answer: one round trip (a
                # pipe.sync() here would cost a second one on the way out), within REQUEST_TIMEOUT
                deadline.reschedule(asyncio.get_running_loop().time() + REQUEST_TIMEOUT)
        except BaseException:
            self._batch = None
            if not ran:
                self._queue[:0] = pending  # nothing ran: they go with the next batch
            elif batch.rows:
                self._uncertain = (batch, pending)
                asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, time_out, pending)
            else:  # read-only: answered from the state the lock saw
                for item in pending:
                    item.finish()
            raise
        self._committed(batch, pending)

    async def _append(self, conn: psycopg.AsyncConnection[Any], batch: Batch) -> None:
        rows = batch.rows
        await conn.execute(_APPEND, (batch.token, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                     NOTIFY_CHANNEL, str(batch.last)))
        grants = [(lease_id, ttl) for lease_id, ttl in batch.leases.items() if ttl is not None]
        revokes = [lease_id for lease_id, ttl in batch.leases.items() if ttl is None]
        if grants:
            await conn.execute(_GRANT, ([g[0] for g in grants], [g[1] for g in grants]))
        if revokes:
            await conn.execute(_REVOKE, (revokes,))
        for name, (idx, data) in batch.documents.items():
            await conn.execute(_DOCUMENT, (name, idx, data))

    def _committed(self, batch: Batch, pending: list[Pending]) -> None:
        self.batches += 1
        if batch.rows:
            self.index = batch.last
            self.documents.update(batch.documents)
            self._compacted |= batch.compacted
            if self.on_durable is not None:
                self.on_durable(self.index)
            self._applied()
        for item in pending:
            item.finish()

    async def _reconcile(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """After a failed commit: was the batch committed?  Answer its writers either way."""
        assert self._uncertain is not None
        batch, pending = self._uncertain
        cur = await conn.execute("SELECT batch FROM etcdlite_log WHERE idx = %s", (batch.first,))
        row = await cur.fetchone()
        if row is not None and row[0] == batch.token:
            self._uncertain = None
            log.info("a commit whose answer was lost had succeeded", extra={"fields": {"index": batch.last}})
            self._committed(batch, pending)
            return
        snap = await (await conn.execute(_SNAPSHOT_INDEX)).fetchone()
        unknown = row is None and snap is not None and int(snap[0]) >= batch.first
        self._uncertain = None
        log.warning("a commit failed; rebuilding the state from the database", extra={"fields": {
            "first-index": batch.first, "entries": len(batch.rows),
            "outcome": "unknown" if unknown else "not committed"}})
        for item in pending:
            item.finish(errors.TIMEOUT if unknown else errors.NO_LEADER)
        self._stale = True  # holds writes the log does not: nothing more is applied before the rebuild
        await self._rebuild()

    async def _rebuild(self) -> None:
        """A fresh store from the database: the snapshot and the log after it."""
        replay = await asyncio.to_thread(self._load)  # a failure leaves _stale set: tried again
        self._stale = False
        old_visible = self.store.visible_revision
        old_docs = dict(self.documents)
        self.store = replay.store
        self.index = replay.index
        self.snapshot_index = replay.snapshot_index
        self.documents = replay.documents
        self._remote_docs = {name: idx for name, (idx, _) in replay.documents.items()}
        self._install(self.store)
        for listener in self.reset_listeners:
            listener()
        for name, (_, data) in self.documents.items():
            if old_docs.get(name, (0, b""))[1] != data:
                for doc_listener in self.document_listeners:
                    doc_listener(name, data)
        self.store.publish(old_visible)
        self._applied()
        log.info("rebuilt the state from the database", extra={"fields": {
            "index": self.index, "revision": self.store.current_revision}})

    # -- snapshots ---------------------------------------------------------------------------------------
    def _snapshot_due(self) -> bool:
        return self._compacted or (self.index - self.snapshot_index >= self._snapshot_count and self.is_leader())

    async def _write_snapshot(self, conn: psycopg.AsyncConnection[Any]) -> None:
        requests, self._snapshot_requests = self._snapshot_requests, []
        self._compacted = False
        try:
            state = capture(self.index, self.store)  # between batches: exactly the log up to index
            data = await asyncio.get_running_loop().run_in_executor(None, encode_snapshot, state)
            chunks = [data[i:i + SNAPSHOT_CHUNK] for i in range(0, len(data), SNAPSHOT_CHUNK)]
            async with conn.transaction():
                got = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SNAPSHOT_LOCK,))).fetchone()
                if got and got[0]:
                    await store_snapshot(conn, state.index, state.revision, data, chunks)
                    self.snapshot_index = max(self.snapshot_index, state.index)
        except BaseException as exc:
            for fut in requests:
                if not fut.done():
                    fut.set_exception(errors.NO_LEADER if isinstance(exc, psycopg.Error) else exc)
            raise
        for fut in requests:
            if not fut.done():
                fut.set_result(data)
