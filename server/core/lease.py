"""The lessor: leases, their keys and their expiry (etcd's lease package).

The lessor does not know the store.  Grants and revokes happen inside a write
txn through a small interface: a revoke deletes the lease's keys in sorted
order and drops the lease in one txn, so it is one revision, as in etcd.  A
background reaper, owned by the lessor, hands each expired lease to
``on_expired`` (core revokes it through the backend).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .. import errors
from ..lifecycle import OwnedTask
from ..storage.backend import MAX_LEASE_TTL

log = logging.getLogger("etcdlite.lease")

# etcd: ceil(1.5 * election timeout) with the default 100 ms heartbeat and 10 election ticks
DEFAULT_MIN_TTL = math.ceil((3 * 10) // 2 * 0.1)


RECENT_REVOKES_SECONDS = 1.0  # how long a revoke is remembered for keep-alives racing it


class LeaseTxn(Protocol):
    """What a grant or revoke needs of a write txn (etcd's lessor has a delete-txn interface)."""

    lease_grants: list[tuple[int, int]]
    lease_revokes: list[int]

    def delete_range(self, key: bytes, end: bytes | None) -> list[Any]: ...


class Lease:
    __slots__ = ("id", "ttl", "expiry", "keys")

    def __init__(self, lease_id: int, ttl: int, expiry: float) -> None:
        self.id = lease_id
        self.ttl = ttl  # granted TTL in seconds (after the minimum is applied)
        self.expiry = expiry  # time.monotonic() deadline
        self.keys: set[bytes] = set()

    def remaining(self, now: float) -> float:
        return self.expiry - now


class IdGenerator:
    """etcd's idutil.Generator: member id's low 16 bits, 40 bits of ms clock, 8-bit counter."""

    def __init__(self, member_id: int) -> None:
        self._prefix = (member_id & 0xFFFF) << 48
        self._suffix = ((time.time_ns() // 1_000_000) & ((1 << 40) - 1)) << 8

    def next(self) -> int:
        self._suffix += 1
        return (self._prefix | (self._suffix & ((1 << 48) - 1))) & ((1 << 63) - 1)


class Lessor:
    def __init__(self, member_id: int, min_ttl: int = DEFAULT_MIN_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ids = IdGenerator(member_id)
        self._min_ttl = min_ttl
        self._clock = clock
        self._leases: dict[int, Lease] = {}
        self._expiry_heap: list[tuple[float, int]] = []
        self._wakeup = asyncio.Event()
        self._reaper = OwnedTask("lease-reaper", self._reap_forever)
        self._recently_revoked: dict[int, float] = {}  # lease id -> when (a keep-alive racing it waits)
        self._revoke_order: collections.deque[tuple[float, int]] = collections.deque()
        self.on_expired: Callable[[int], None] | None = None  # revoke an expired lease (set by core)
        self.local_expiry = True  # False: a shared backend's reaper decides expiry, this one stays idle

    # -- the store's side (LeaseAttacher) ------------------------------------------------
    def exists(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def attach(self, lease_id: int, key: bytes) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def granted(self, lease_id: int, ttl: int) -> None:
        """Another instance granted it (``ttl`` is already the granted one)."""
        if lease_id not in self._leases:
            self._add(lease_id, ttl)

    def revoked(self, lease_id: int) -> None:
        """Another instance revoked it (its keys' deletes came with it)."""
        if self._leases.pop(lease_id, None) is not None:
            self._note_revoked(lease_id)

    def extend(self, lease_id: int, remaining: float) -> None:
        """Kept alive through another instance: it expires ``remaining`` seconds from now (or later,
        if a keep-alive here, not yet told to the others, said so)."""
        lease = self._leases.get(lease_id)
        expiry = self._clock() + remaining
        if lease is not None and expiry > lease.expiry:
            lease.expiry = expiry
            self._schedule(lease)

    def clear(self) -> None:
        """Forget every lease (before ``restore`` from a rebuilt backend)."""
        self._leases.clear()
        self._expiry_heap.clear()

    # -- operations -----------------------------------------------------------------------
    def new_id(self) -> int:
        while True:
            lease_id = self._ids.next()
            if lease_id and lease_id not in self._leases:
                return lease_id

    def grant(self, txn: LeaseTxn, lease_id: int, ttl: int) -> Lease:
        """Grant a lease in ``txn`` (``lease_id`` 0: choose one)."""
        if lease_id == 0:
            lease_id = self.new_id()
        if ttl > MAX_LEASE_TTL:
            raise errors.LEASE_TTL_TOO_LARGE
        if lease_id in self._leases:
            raise errors.LEASE_EXIST
        lease = self._add(lease_id, ttl)
        txn.lease_grants.append((lease.id, lease.ttl))
        return lease

    def _add(self, lease_id: int, ttl: int) -> Lease:
        ttl = max(ttl, self._min_ttl)
        lease = Lease(lease_id, ttl, self._clock() + ttl)
        self._leases[lease_id] = lease
        self._schedule(lease)
        return lease

    def revoke(self, txn: LeaseTxn, lease_id: int) -> None:
        """Delete the lease and its keys in ``txn``."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LEASE_NOT_FOUND
        for key in sorted(lease.keys):
            txn.delete_range(key, None)
        txn.lease_revokes.append(lease_id)
        del self._leases[lease_id]
        self._note_revoked(lease_id)

    def _note_revoked(self, lease_id: int) -> None:
        now = self._clock()
        recent, order = self._recently_revoked, self._revoke_order
        while order and now - order[0][0] > RECENT_REVOKES_SECONDS:  # oldest first: keep the last second's
            recent.pop(order.popleft()[1], None)
        recent[lease_id] = now
        order.append((now, lease_id))

    def revoked_within(self, lease_id: int, seconds: float) -> bool:
        """Whether the lease was revoked (here) in the last ``seconds``."""
        at = self._recently_revoked.get(lease_id)
        return at is not None and self._clock() - at <= seconds

    def renew(self, lease_id: int) -> int:
        """Keep-alive: restart the lease's TTL; returns the TTL."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LEASE_NOT_FOUND
        now = self._clock()
        if lease.expiry <= now:
            # expired, its revoke is due: etcd answers "not found" rather than resurrect it
            self._wakeup.set()
            raise errors.LEASE_NOT_FOUND
        lease.expiry = now + lease.ttl
        self._schedule(lease)
        return lease.ttl

    def lookup(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def remaining_seconds(self, lease: Lease) -> int:
        return int(lease.remaining(self._clock()))

    def leases(self) -> list[Lease]:
        return list(self._leases.values())

    # -- recovery -------------------------------------------------------------------------
    def restore(self, granted: dict[int, int], live: Iterable[tuple[bytes, int]]) -> None:
        """The leases the backend recovered and the live keys with their leases: like etcd, each
        lease gets its full TTL again from start-up."""
        for lease_id, ttl in granted.items():
            self._add(lease_id, ttl)
        if self._leases:  # no lease to attach to: skip the walk over every key
            for key, lease_id in live:
                self.attach(lease_id, key)

    # -- expiry -------------------------------------------------------------------------------
    def _schedule(self, lease: Lease) -> None:
        heapq.heappush(self._expiry_heap, (lease.expiry, lease.id))
        if self._expiry_heap[0][1] == lease.id:
            self._wakeup.set()
        # renewals leave stale heap entries behind; rebuild before they dominate
        if len(self._expiry_heap) > 2 * len(self._leases) + 64:
            self._expiry_heap = [(le.expiry, le.id) for le in self._leases.values()]
            heapq.heapify(self._expiry_heap)

    def expired(self) -> list[int]:
        """Leases past their expiry, popping stale heap entries on the way."""
        now = self._clock()
        heap = self._expiry_heap
        due: list[int] = []
        while heap and heap[0][0] <= now:
            expiry, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is not None and lease.expiry == expiry:
                due.append(lease_id)
        return due

    def _next_deadline(self) -> float | None:
        heap = self._expiry_heap
        while heap:
            expiry, lease_id = heap[0]
            lease = self._leases.get(lease_id)
            if lease is not None and lease.expiry == expiry:
                return expiry
            heapq.heappop(heap)
        return None

    async def _reap_forever(self) -> None:
        while True:
            deadline = self._next_deadline()
            self._wakeup.clear()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            if timeout is None or timeout > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                except TimeoutError:
                    pass
            for lease_id in self.expired():
                if lease_id not in self._leases or self.on_expired is None:
                    continue  # revoked meanwhile by a client
                try:
                    self.on_expired(lease_id)
                except errors.EtcdError:
                    continue
                except Exception:  # the reaper must outlive a failing journal
                    log.exception("revoking expired lease %x failed", lease_id)
            await asyncio.sleep(0)

    def start(self) -> None:
        if self.local_expiry:
            self._reaper.start()

    def close(self) -> None:
        self._reaper.cancel()

    async def wait_closed(self) -> None:
        await self._reaper.wait()
