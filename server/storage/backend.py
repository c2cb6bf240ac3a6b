"""The storage seam: what core needs from a store of etcd's key space, whatever keeps it.

A backend holds the MVCC key space (one global revision, every key's versions, compaction), the
granted leases, and makes writes durable.  Core talks to it through ``Backend`` only; the embedded
store (``storage.memory``: in-memory MVCC plus a write-ahead log in the data dir) implements it, and
a backend over a shared database can sit beside it.

Two revisions matter: ``current_revision`` is the last one *applied* (writes see it: a txn's
compares are decided against it), ``visible_revision`` the last one *durable* (reads and watchers
see only that).  A write is applied by ``write(apply)`` -- ``apply`` runs against a ``WriteTxn`` at
the moment the backend can order it -- and the call returns once the write is durable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

R = TypeVar("R")

# etcd's MaxLeaseTTL (seconds): the lessor refuses a longer grant, and a stored lease can hold no more
MAX_LEASE_TTL = 9_000_000_000


class KeyValue:
    """One version of a key.  ``version == 0`` marks a tombstone (a delete)."""

    __slots__ = ("key", "value", "create_revision", "mod_revision", "version", "lease", "sub")

    def __init__(
        self, key: bytes, value: bytes, create_revision: int, mod_revision: int, version: int, lease: int,
        sub: int = 0,
    ) -> None:
        self.key = key
        self.value = value
        self.create_revision = create_revision
        self.mod_revision = mod_revision
        self.version = version
        self.lease = lease
        self.sub = sub  # position within its revision's txn (etcd's sub-revision)

    @property
    def is_tombstone(self) -> bool:
        return self.version == 0

    def __repr__(self) -> str:
        return (
            f"KeyValue({self.key!r}, {self.value!r}, c={self.create_revision}, m={self.mod_revision}, "
            f"v={self.version}, lease={self.lease})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyValue) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    __hash__ = object.__hash__


def tombstone(key: bytes, revision: int, sub: int = 0) -> KeyValue:
    return KeyValue(key, b"", 0, revision, 0, 0, sub)


@dataclass(slots=True)
class Entry:
    """One durable step: what a write did, enough to replay it exactly.

    ``changes`` are the new versions (and tombstones) written at ``revision``; lease grants/revokes
    and compactions ride along so one entry is one atomic step (a lease revoke deletes its keys and
    the lease together).
    """

    revision: int
    changes: list[KeyValue] = field(default_factory=list)
    lease_grants: list[tuple[int, int]] = field(default_factory=list)  # (lease id, ttl)
    lease_revokes: list[int] = field(default_factory=list)
    compact_revision: int = 0


@dataclass(slots=True)
class RangeResult:
    kvs: list[KeyValue]
    count: int
    revision: int  # the store revision the read was served at the head of


@dataclass(slots=True)
class Recovered:
    """What ``Backend.open`` found."""

    index: int  # the last durable step the state includes (etcd's raft index)
    revision: int
    replayed: int  # steps applied on top of the newest snapshot
    source: str  # where the state came from, for the start-up log line
    cluster_id: int = 0  # the cluster's identity when the backend keeps one (a shared database); 0: none


@dataclass(slots=True)
class KeySpaceCapture:
    """The key space at one point in time, as a snapshot needs it (etcd's key bucket and meta)."""

    index: int  # the last step the state includes (etcd's consistent index)
    revision: int  # the current (applied) revision
    compact_revision: int  # etcd's compactMainRev: -1 until the first compaction
    leases: dict[int, int]  # the granted leases: id -> TTL (a copy)
    # every version the store holds, tombstones included -- what etcd's key bucket holds -- in
    # (revision, sub revision) order; iterable once, possibly in another thread
    versions: Iterable[KeyValue]


class LeaseAttacher(Protocol):
    """What the store tells the lessor when a key's lease changes (etcd's lease.LeaseAttacher).

    A backend shared by several instances also tells it of the grants and revokes other instances
    committed, and of the expiries learned from them (their keep-alives).
    """

    def attach(self, lease_id: int, key: bytes) -> None: ...

    def detach(self, lease_id: int, key: bytes) -> None: ...

    def granted(self, lease_id: int, ttl: int) -> None: ...

    def revoked(self, lease_id: int) -> None: ...

    def extend(self, lease_id: int, remaining: float) -> None:
        """The lease was kept alive elsewhere: it now expires ``remaining`` seconds from now."""
        ...


class SharedState(Protocol):
    """Small documents every instance of a shared backend must see (auth state, alarms, members),
    ordered with the key space's writes.  A backend of one process has none: core keeps files."""

    def load(self, name: str) -> bytes | None: ...

    def save(self, name: str, data: bytes) -> None:
        """Queue the new document; it is durable once ``Backend.wait_applied`` returns."""
        ...

    def on_change(self, listener: Callable[[str, bytes], None]) -> None:
        """``listener(name, data)`` runs when another instance's change is applied here."""
        ...

    def append_event(self, name: str, data: bytes, apply: Callable[[int], R]) -> Awaitable[R]:
        """Append a one-off event to the log (etcd's InternalAuthenticateRequest: a simple token's issue).

        ``apply(index)`` runs here at the event's place in the log -- ``index`` is that place, unique
        over every instance -- and its result comes once the event is committed; if it raises,
        nothing is appended.  Other instances run their ``on_event`` listeners as they apply the log.
        An event is not a document: ``load`` never returns it, and neither start-up nor a snapshot
        applies it again (tokens end with the process, as etcd's).
        """
        ...

    def on_event(self, listener: Callable[[str, int, bytes], None]) -> None:
        """``listener(name, index, data)`` runs when another instance's event is applied here."""
        ...

    def instances(self) -> list[Instance]:
        """The instances serving now (this one included)."""
        ...

    async def refresh_instances(self) -> None:
        """Read the instances serving now afresh (``instances`` may be a heartbeat old)."""
        ...


@dataclass(slots=True)
class Instance:
    """One etcdlite serving over a shared backend: etcd's member attributes."""

    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]


class WriteTxn(Protocol):
    """One write: reads see its own writes, every change shares one revision."""

    base_revision: int  # the revision before the txn
    revision: int  # the revision its changes get
    lease_grants: list[tuple[int, int]]
    lease_revokes: list[int]

    @property
    def read_revision(self) -> int: ...

    def range(self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0,
              count_only: bool = False) -> RangeResult: ...

    def get(self, key: bytes) -> KeyValue | None: ...

    def put(self, key: bytes, value: bytes, lease: int) -> KeyValue: ...

    def delete_range(self, key: bytes, end: bytes | None) -> list[KeyValue]: ...


DurableListener = Callable[[int, int], None]  # (old visible revision, new visible revision)


class Backend(Protocol):
    """The key space, its leases and their durability."""

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> Recovered:
        """Recover the state (keys, history, leases); nothing is served before this."""
        ...

    def start(self) -> None:
        """Start the background work (the log writer); needs the running event loop."""
        ...

    def close(self) -> None:
        """Stop taking writes; what was accepted is still made durable."""
        ...

    async def wait_closed(self) -> None: ...

    # -- revisions -------------------------------------------------------------------------------
    @property
    def current_revision(self) -> int: ...

    @property
    def visible_revision(self) -> int: ...

    @property
    def compact_revision(self) -> int: ...

    @property
    def compact_main_revision(self) -> int:
        """etcd's compactMainRev: -1 until the first compaction."""
        ...

    # -- reads (the durable state) ---------------------------------------------------------------
    def get(self, key: bytes, rev: int) -> KeyValue | None: ...

    def range(self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0, *,
              head: int | None = None, count_only: bool = False) -> RangeResult: ...

    def read_revision(self, rev: int) -> tuple[int, int]:
        """(the revision a read at ``rev`` serves (0: the head), the head) -- etcd's compacted and
        future-revision errors if it cannot be served."""
        ...

    def range_chunk(self, key: bytes, end: bytes, rev: int, max_keys: int, want: int
                    ) -> tuple[list[KeyValue], int, bytes | None]:
        """Part of a range at ``rev`` (from ``read_revision``): the live versions among at most
        ``max_keys`` keys from ``key`` on, below ``end`` (b"": no end), at most ``want`` (-1: all);
        returns them, how many keys were live, and the key to go on from (None: done).  A large
        range is read this way, a part at a time, so other requests are served in between."""
        ...

    def changes_since(self, start_rev: int, upto: int) -> Iterator[tuple[int, list[KeyValue]]]:
        """(revision, versions written at it) for ``start_rev <= revision <= upto``, oldest first."""
        ...

    def history(self) -> Iterator[KeyValue]:
        """Every version the store holds, key by key, oldest first."""
        ...

    def all_live(self) -> Iterator[KeyValue]: ...

    def key_count(self) -> int:
        """Keys that exist now (etcd's etcd_debugging_mvcc_keys_total): a put of a new key adds one, a
        delete takes one away, a compaction changes nothing."""
        ...

    def leases(self) -> dict[int, int]:
        """The granted leases: id -> granted TTL."""
        ...

    def add_durable_listener(self, listener: DurableListener) -> None:
        """``listener(old, new)`` runs when writes become visible, before their writers are answered."""
        ...

    def set_lease_attacher(self, attacher: LeaseAttacher) -> None: ...

    def add_reset_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs after the backend rebuilt its state from durable storage (a shared
        backend whose commit failed): whatever core derived from the old state must be derived again."""
        ...

    # -- leases kept by the backend (several instances share them) -------------------------------
    @property
    def shares_leases(self) -> bool:
        """True: the backend decides expiry (``set_lease_revoker``) and hears keep-alives
        (``lease_renewed``); the lessor's own reaper stays idle."""
        ...

    def lease_renewed(self, lease_id: int, ttl: int) -> None:
        """A keep-alive restarted the lease's TTL here."""
        ...

    def set_lease_revoker(self, revoke: Callable[[int], None]) -> None:
        """``revoke(lease_id)`` for each lease the backend found expired."""
        ...

    @property
    def shared_state(self) -> SharedState | None: ...

    async def read_index(self) -> None:
        """A linearizable read's barrier: returns once everything committed before the call is visible."""
        ...

    def check_readable(self) -> None:
        """Raise the error a linearizable read would fail with now (a shared store out of reach)."""
        ...

    async def wait_applied(self) -> None:
        """Returns once every write applied so far is durable (what lease reads wait for)."""
        ...

    # -- writes ------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise the error a write would fail with now (storage failure, stopping)."""
        ...

    def write(self, apply: Callable[[WriteTxn], R]) -> Awaitable[R]:
        """Run ``apply`` in a write txn; the result once the write is durable.

        An exception from ``apply`` ends the txn (its changes must not have begun) and is raised.
        """
        ...

    def write_nowait(self, apply: Callable[[WriteTxn], object]) -> None:
        """``write`` for callers that cannot wait (a lease reaper, a canceled lock): applied, not awaited."""
        ...

    async def compact(self, rev: int) -> None:
        """Drop history below ``rev`` (etcd's errors for compacted and future revisions)."""
        ...

    # -- maintenance -------------------------------------------------------------------------------
    @property
    def durable_index(self) -> int: ...

    @property
    def failure(self) -> Exception | None:
        """The latched storage failure, if writing broke."""
        ...

    @property
    def leader_id(self) -> int:
        """The member that leads (a shared backend: the lease reaper); 0: this one."""
        ...

    async def transfer_leadership(self, transferee: int) -> None:
        """Make ``transferee``, another member, the leader (MoveLeader, asked of the leader); etcd's
        timeout errors when it does not take over."""
        ...

    def size(self) -> int:
        """Bytes on disk (etcd's dbSize)."""
        ...

    def size_in_use(self) -> int:
        """What a compacted copy would take (etcd's dbSizeInUse)."""
        ...

    async def defragment(self) -> None: ...

    def capture_key_space(self) -> KeySpaceCapture:
        """The applied state now, for ``Maintenance.Snapshot``: taken at once on the event loop (so it
        is one point in time) and cheaply -- ``versions`` must stay valid while writes go on, and
        may be iterated in another thread.  What it holds may not be durable yet: the caller waits
        with ``wait_applied`` before handing it out."""
        ...

    def hash_kv(self, rev: int) -> tuple[int, int]:
        """etcd's HashByRev: (hash of the key space up to ``rev``, current revision)."""
        ...
