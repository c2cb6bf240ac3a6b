"""The PostgreSQL backend: many etcdlite instances over one database, with etcd's guarantees.

PostgreSQL is the shared, ordered, durable log; every instance is a replica of etcd's state
machine.  It keeps the whole MVCC state in memory -- the embedded backend's ``MVCCStore``, so
semantics, HashKV and watch history are the same by construction -- and applies the log in order
(``applier``).  Writes go through the log (group commit under one advisory lock), reads are local:
serializable ones at once, linearizable ones after the log's head is applied here (``ReadIndex``).
Other instances' commits arrive by LISTEN/NOTIFY (``Follower``) and a poll.  Lease expiry,
the reaper and membership live in ``Keeper``; auth, alarms and members added through the API are
documents in the log (``SharedState``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import psycopg

from ... import errors
from ...config import Config
from ..backend import (
    DurableListener,
    Instance,
    KeySpaceCapture,
    KeyValue,
    LeaseAttacher,
    RangeResult,
    Recovered,
    SharedState,
    WriteTxn,
)
from ..memory.capture import capture_key_bucket
from ..memory.files import StorageError
from ..memory.mvcc import MVCCStore
from ..memory.snapshot import snapshot_size
from .applier import LogApplier
from .dsn import connect_kwargs, redacted
from .follower import Follower, ReadIndex
from .keeper import HEARTBEAT, Keeper, member_lock_key
from .loader import Replay, load
from .restore import start_restored_leases
from .schema import MEMBER_LOCK_SPACE, ensure_cluster, known_leader, migrate, to_signed

log = logging.getLogger("etcdlite.postgres")

R = TypeVar("R")
START_TIMEOUT_SECONDS = 10.0  # how long start-up waits for the database (its orchestrator restarts it after)
LEADER_TRANSFER_SECONDS = 5.0  # etcd's request timeout


class BackendUnavailable(StorageError):
    """The database cannot be used at start-up (the message says why)."""


class PostgresBackend:
    """``storage.backend.Backend`` over a PostgreSQL database shared by several instances."""

    def __init__(self, url: str, config: Config) -> None:
        self._url = url
        self._config = config
        self.local = Instance(config.member_id, config.name, list(config.peer_urls),
                              list(config.advertise_client_urls))
        self._applier: LogApplier | None = None
        self._follower: Follower | None = None
        self._reads: ReadIndex | None = None
        self.keeper = Keeper(url, self.local)
        self._attacher: LeaseAttacher | None = None
        self._revoker: Callable[[int], None] | None = None
        self._durable: list[DurableListener] = []
        self._resets: list[Callable[[], None]] = []
        self._state = _Documents(self)
        self._in_use: tuple[tuple[int, int, int], int] = ((-1, -1, -1), 0)
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._url, autocommit=True, **connect_kwargs(f"etcdlite {self._config.name}"))

    def open(self) -> Recovered:
        started = time.monotonic()
        conn = self._connect_at_start(started)
        try:
            migrate(conn)
            start_restored_leases(conn)  # a restored database's leases: their TTLs start now
            cluster_id = ensure_cluster(conn, self._config.cluster_id)
            self._check_member_free(conn, started)
            self.keeper.leader_id = known_leader(conn)  # Status names it from the first request on
            replay = load(conn)
        finally:
            conn.close()
        name = self._config.name
        applier = LogApplier(self._url, replay, self._load, self._config.snapshot_count or 100_000, name)
        applier.attacher = self._attacher
        applier.is_leader = lambda: self.keeper.leader
        for listener in self._durable:
            applier.durable_listeners.append(listener)
        applier.reset_listeners.extend(self._resets)
        self._applier = applier
        applier._install(applier.store)
        self._follower = Follower(self._url, applier, name)
        self._reads = ReadIndex(self._url, applier, name)
        return Recovered(index=replay.index, revision=replay.store.current_revision,
                         replayed=replay.index - replay.snapshot_index,
                         source=f"{redacted(self._url)} (snapshot {replay.snapshot_index})", cluster_id=cluster_id)

    def _connect_at_start(self, started: float) -> psycopg.Connection[Any]:
        while True:
            try:
                return self._connect()
            except psycopg.OperationalError as exc:
                if time.monotonic() - started > START_TIMEOUT_SECONDS:
                    raise BackendUnavailable(f"cannot reach the database {redacted(self._url)}: "
                                             f"{str(exc).strip()}") from None
                log.warning("waiting for the database", extra={"fields": {"url": redacted(self._url),
                                                                           "error": str(exc).strip()}})
                time.sleep(1.0)

    def _check_member_free(self, conn: psycopg.Connection[Any], started: float) -> None:
        """Refuse to start as a member another live instance serves as (after a kill -9 its lock
        lingers until the database notices the closed connection: wait a little)."""
        key = (MEMBER_LOCK_SPACE, member_lock_key(self.local.id))
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()
            if row and row[0]:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)
                local = self.local  # registered now: listed by the others from their next heartbeat
                conn.execute(HEARTBEAT, (to_signed(local.id), local.name, ",".join(local.peer_urls),
                                         ",".join(local.client_urls)))
                return
            if time.monotonic() - started > 10.0:
                raise BackendUnavailable(
                    f"member {self.local.id:x} ({self.local.name}) is already served by another instance over "
                    f"this database: give each instance its own --name and --initial-advertise-peer-urls")
            time.sleep(0.5)

    def _load(self) -> Replay:
        """A rebuild (in a thread): the state as the database holds it."""
        conn = self._connect()
        try:
            return load(conn)
        finally:
            conn.close()

    def start(self) -> None:
        self._log().start()
        assert self._follower is not None
        self._follower.start()
        self.keeper.attacher = self._attacher
        self.keeper.revoke = self._revoker
        self.keeper.start()

    def close(self) -> None:
        self._closing = True
        if self._applier is not None:
            self._applier.close()
        if self._follower is not None:
            self._follower.close()
        self.keeper.close()

    async def wait_closed(self) -> None:
        """Returns once every accepted write is committed (or failed) and the connections are closed."""
        if self._applier is not None:
            await self._applier.wait_closed()
        if self._follower is not None:
            await self._follower.wait_closed()
        if self._reads is not None:
            await self._reads.close()
        await self.keeper.wait_closed()

    def _log(self) -> LogApplier:
        if self._applier is None:
            raise errors.STOPPED
        return self._applier

    @property
    def store(self) -> MVCCStore:
        return self._log().store

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
        store = self.store
        head = store.visible_revision
        return store.check_revision(rev, head), head

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
        self._durable.append(listener)
        if self._applier is not None:
            self._applier.durable_listeners.append(listener)
            self._applier.store.add_durable_listener(listener)

    def set_lease_attacher(self, attacher: LeaseAttacher) -> None:
        self._attacher = attacher
        if self._applier is not None:
            self._applier.attacher = attacher
            self._applier.store.lease_attacher = attacher

    def add_reset_listener(self, listener: Callable[[], None]) -> None:
        self._resets.append(listener)
        if self._applier is not None:
            self._applier.reset_listeners.append(listener)

    @property
    def shares_leases(self) -> bool:
        return True

    def lease_renewed(self, lease_id: int, ttl: int) -> None:
        self.keeper.renewed(lease_id, ttl)

    def set_lease_revoker(self, revoke: Callable[[int], None]) -> None:
        self._revoker = revoke
        self.keeper.revoke = revoke

    @property
    def shared_state(self) -> SharedState:
        return self._state

    async def read_index(self) -> None:
        if self._reads is None:
            raise errors.STOPPED
        await self._reads.wait()

    def check_readable(self) -> None:
        if not self._log().connected:
            raise errors.NO_LEADER

    async def wait_applied(self) -> None:
        await self._log().wait_submitted()

    # -- writes ------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        self._log().check_writable()

    async def write(self, apply: Callable[[WriteTxn], R]) -> R:
        result: R = await asyncio.shield(self._log().submit(lambda store: _run_txn(store, apply)))
        return result

    def write_nowait(self, apply: Callable[[WriteTxn], object]) -> None:
        fut = self._log().submit(lambda store: _run_txn(store, apply))
        fut.add_done_callback(_consume)

    async def compact(self, rev: int) -> None:
        await asyncio.shield(self._log().submit(lambda store: store.compact(rev)))

    # -- maintenance -------------------------------------------------------------------------------
    @property
    def durable_index(self) -> int:
        return self._applier.index if self._applier is not None else 0

    @property
    def failure(self) -> errors.EtcdError | None:
        return None if self._applier is None or self._applier.connected else errors.NO_LEADER

    @property
    def leader_id(self) -> int:
        return self.keeper.leader_id

    async def transfer_leadership(self, transferee: int) -> None:
        """The reaper lock handed to a live instance; one that is not serving cannot take it."""
        await self.keeper.refresh_instances()
        if not any(i.id == transferee for i in self.keeper.instances):
            raise errors.TIMEOUT
        if not await self.keeper.transfer_leadership(transferee, LEADER_TRANSFER_SECONDS):
            raise errors.TIMEOUT_LEADER_TRANSFER

    def size(self) -> int:
        return self.keeper.size

    def size_in_use(self) -> int:
        store = self.store
        state = (store.current_revision, store.compact_revision, len(store.leases()))
        if state != self._in_use[0]:
            self._in_use = (state, snapshot_size(store))
        return self._in_use[1]

    async def defragment(self) -> None:
        """A snapshot into the database; the log before it is dropped."""
        await self._log().snapshot()

    def capture_key_space(self) -> KeySpaceCapture:
        applier = self._log()
        store = applier.store
        return KeySpaceCapture(index=applier.index, revision=store.current_revision,
                               compact_revision=store.compact_main_revision, leases=dict(store.leases()),
                               versions=capture_key_bucket(store))

    def hash_kv(self, rev: int) -> tuple[int, int]:
        return self.store.hash_kv(rev)

    def instances(self) -> list[Instance]:
        live = self.keeper.instances
        return live if any(i.id == self.local.id for i in live) else [self.local, *live]


class _Documents:
    """``SharedState`` over the log's documents."""

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend
        self._listeners: list[Callable[[str, bytes], None]] = []

    def load(self, name: str) -> bytes | None:
        found = self._backend._log().documents.get(name)
        return None if found is None else found[1]

    def save(self, name: str, data: bytes) -> None:
        self._backend._log().save_document(name, data).add_done_callback(_consume)

    def on_change(self, listener: Callable[[str, bytes], None]) -> None:
        self._backend._log().document_listeners.append(listener)

    def append_event(self, name: str, data: bytes, apply: Callable[[int], R]) -> Awaitable[R]:
        # shielded as a write: a caller that gives up does not cancel what the log may commit
        future: asyncio.Future[R] = self._backend._log().append_event(name, data, apply)
        return asyncio.shield(future)

    def on_event(self, listener: Callable[[str, int, bytes], None]) -> None:
        self._backend._log().event_listeners.append(listener)

    def instances(self) -> list[Instance]:
        return self._backend.instances()

    async def refresh_instances(self) -> None:
        await self._backend.keeper.refresh_instances()


def _run_txn(store: MVCCStore, apply: Callable[[WriteTxn], R]) -> R:
    txn = store.write_txn()
    try:
        return apply(txn)
    finally:
        txn.end()


def _consume(fut: asyncio.Future[Any]) -> None:
    """Nobody awaits it: its error was the writer's business (already logged where it matters)."""
    if not fut.cancelled():
        fut.exception()
