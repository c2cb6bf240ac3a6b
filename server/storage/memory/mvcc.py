"""The MVCC key space: one global revision, per-key history, compaction.

Like etcd's mvcc package: every write transaction that changes something gets
the next main revision; each key keeps its versions so reads at an old
revision work until a compaction drops them.  All of it lives in memory and is
touched only from the event loop, so no locks.  Durability is the journal's
job: every change is handed to it as an ``Entry`` and becomes visible to
readers (``visible_revision``) and watchers only once the journal says it is
on disk.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from crc32c import crc32c
from sortedcontainers import SortedList

from ... import errors
from ..backend import Entry, KeyValue, LeaseAttacher, RangeResult, tombstone
from ..etcd.etcddb import marshal_version, revision_key


class Journal(Protocol):
    """Where entries go to become durable (see ``server.wal``)."""

    def append(self, entry: Entry) -> int:
        """Queue ``entry``; returns its sequence number."""
        ...


class MemoryJournal:
    """A journal that is durable at once: for tests and ``--unsafe-no-fsync``-free in-memory use."""

    def __init__(self) -> None:
        self._seq = 0
        self.on_durable: Callable[[int], None] | None = None

    def append(self, entry: Entry) -> int:
        self._seq += 1
        if self.on_durable is not None:
            self.on_durable(self._seq)
        return self._seq


def _end_of(end: bytes | None) -> bytes | None:
    """etcd's range_end: ``None``/empty is a single key, ``b"\\0"`` is "to the end" (returned as b"")."""
    if end == b"\x00":
        return b""
    return end or None


class MVCCStore:
    def __init__(self) -> None:
        self._history: dict[bytes, list[KeyValue]] = {}
        self._keys: SortedList = SortedList()
        # per revision, the versions written at it, in write order; trimmed by compaction
        self._revisions: list[int] = []
        self._changes: list[list[KeyValue]] = []
        self.current_revision = 1  # the last applied revision (etcd starts at 1)
        self.compact_revision = 0
        self._compacted = False
        self.visible_revision = 1  # the last durable revision: what readers see
        self.lease_attacher: LeaseAttacher | None = None  # told when a key's lease changes
        self._granted: dict[int, int] = {}  # the granted leases: id -> TTL
        self._bulk_keys: list[bytes] | None = None  # during a bulk load: new keys, not yet in _keys
        self._live_keys = 0  # keys whose newest version is not a tombstone (etcd's keys gauge)
        self._journal: Journal = MemoryJournal()
        self._pending: list[tuple[int, int]] = []  # (journal seq, revision) not yet durable
        self._durable_seq = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap: (seq, tie-breaker, future)
        self._waiter_ids = itertools.count()
        self._failure: BaseException | None = None  # set once the journal broke
        self._durable_listeners: list[Callable[[int, int], None]] = []
        self._install_journal(self._journal)

    # -- wiring -------------------------------------------------------------------------
    def use_journal(self, journal: Journal) -> None:
        self._install_journal(journal)

    def _install_journal(self, journal: Journal) -> None:
        self._journal = journal
        if hasattr(journal, "on_durable"):
            journal.on_durable = self._mark_durable

    def add_durable_listener(self, listener: Callable[[int, int], None]) -> None:
        """``listener(old_visible_revision, new_visible_revision)`` runs when writes become visible."""
        self._durable_listeners.append(listener)

    # -- durability -----------------------------------------------------------------------
    def journal(self, entry: Entry) -> int:
        seq = self._journal.append(entry)
        self._pending.append((seq, entry.revision))
        if seq <= self._durable_seq:  # a journal that is durable at once (the in-memory one)
            self._advance()
        return seq

    def _mark_durable(self, seq: int) -> None:
        self._durable_seq = max(self._durable_seq, seq)
        self._advance()

    def _advance(self) -> None:
        durable = self._durable_seq
        old = self.visible_revision
        n = 0
        for seq, rev in self._pending:
            if seq > durable:
                break
            if rev > self.visible_revision:
                self.visible_revision = rev
            n += 1
        if n:
            del self._pending[:n]
        if self.visible_revision != old:
            # watchers first, then the writers' answers: as etcd, whose apply notifies the watchers
            # before the request is answered, an event does not trail the response to its put
            for listener in self._durable_listeners:
                listener(old, self.visible_revision)
        waiters = self._waiters
        while waiters and waiters[0][0] <= durable:
            fut = heapq.heappop(waiters)[2]
            if not fut.done():
                fut.set_result(None)

    async def wait_durable(self, seq: int) -> None:
        if seq <= self._durable_seq:
            return
        if self._failure is not None:
            raise self._failure
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._waiter_ids), fut))
        await fut

    def fail_waiters(self, exc: BaseException) -> None:
        """The journal broke: nothing pending will become durable, now or later."""
        self._failure = exc
        for _, _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._waiters = []

    @property
    def last_seq(self) -> int:
        return self._pending[-1][0] if self._pending else self._durable_seq

    @property
    def waiting(self) -> int:
        """Requests waiting for their writes to become durable."""
        return len(self._waiters)

    # -- reads ----------------------------------------------------------------------------
    def check_revision(self, rev: int, head: int) -> int:
        """etcd's rangeKeys checks: 0 means ``head``; past it is future; below compaction is gone."""
        if rev > head:
            raise errors.FUTURE_REV
        if rev <= 0:
            rev = head
        if rev < self.compact_revision:
            raise errors.COMPACTED
        return rev

    @staticmethod
    def _at(versions: list[KeyValue], rev: int) -> KeyValue | None:
        last = versions[-1]
        if last.mod_revision <= rev:
            return None if last.version == 0 else last
        for kv in reversed(versions):
            if kv.mod_revision <= rev:
                return None if kv.version == 0 else kv
        return None

    def get(self, key: bytes, rev: int) -> KeyValue | None:
        versions = self._history.get(key)
        if versions is None:
            return None
        return self._at(versions, rev)

    def range(self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0, *, head: int | None = None,
              count_only: bool = False) -> RangeResult:
        """Keys in [key, end) as of ``rev`` (0: ``head``).  ``end`` follows etcd's range_end rules.

        ``count`` is every live key in the range; ``kvs`` stops at ``limit``.
        """
        head = self.visible_revision if head is None else head
        rev = self.check_revision(rev, head)
        end = _end_of(end)
        if end is None:
            one = self.get(key, rev)
            found_one = [] if one is None else [one]
            return RangeResult([] if count_only else found_one, len(found_one), head)
        keys = self._keys
        if end and key >= end:
            return RangeResult([], 0, head)
        # the keys in [key, end) by position: a slice of the sorted list, ~15x cheaper than irange
        found = keys[keys.bisect_left(key):keys.bisect_left(end) if end else len(keys)]
        want = 0 if count_only else (limit if limit > 0 else -1)  # versions still to collect; -1: all
        kvs, count = self._live(found, rev, want)
        return RangeResult(kvs, count, head)

    def range_chunk(self, key: bytes, end: bytes, rev: int, max_keys: int, want: int
                    ) -> tuple[list[KeyValue], int, bytes | None]:
        """Part of a range at ``rev`` (already checked): the live versions among at most ``max_keys``
        keys of the index from ``key`` on, below ``end`` (b"": no end), at most ``want`` of them (-1:
        all); returns them, how many were live, and the key to go on from (None: the range is done)."""
        keys = self._keys
        start = keys.bisect_left(key)
        stop = keys.bisect_left(end) if end else len(keys)
        resume = None
        if stop - start > max_keys:
            stop = start + max_keys
            resume = keys[stop]
        kvs, count = self._live(keys[start:stop], rev, want)
        return kvs, count, resume

    def _live(self, found: list[bytes], rev: int, want: int) -> tuple[list[KeyValue], int]:
        """The versions of ``found`` live at ``rev`` (at most ``want``; -1: all) and how many are live."""
        history = self._history
        at = self._at
        kvs: list[KeyValue] = []
        count = 0
        for k in found:
            versions = history[k]
            last = versions[-1]
            if last.mod_revision > rev:  # written after rev: an older version (or none) was live then
                kv = at(versions, rev)
                if kv is None:
                    continue
            elif last.version == 0:  # deleted
                continue
            else:
                kv = last
            count += 1
            if want:
                kvs.append(kv)
                want -= 1
        return kvs, count

    def changes_since(self, start_rev: int, upto: int) -> Iterator[tuple[int, list[KeyValue]]]:
        """(revision, versions written at it) for start_rev <= revision <= upto, oldest first."""
        i = bisect.bisect_left(self._revisions, start_rev)
        revisions, changes = self._revisions, self._changes
        while i < len(revisions) and revisions[i] <= upto:
            yield revisions[i], changes[i]
            i += 1

    def live_key_count(self) -> int:
        """Keys that exist now (etcd_debugging_mvcc_keys_total: a put of a new key adds one, a delete
        takes one away); compaction changes no key's newest version, so not this count."""
        return self._live_keys

    # -- writes ---------------------------------------------------------------------------
    def write_txn(self) -> WriteTxn:
        return WriteTxn(self)

    def _apply(self, kv: KeyValue) -> None:
        versions = self._history.get(kv.key)
        was_live = versions is not None and versions[-1].version != 0
        self._live_keys += (kv.version != 0) - was_live
        if versions is None:
            self._history[kv.key] = [kv]
            if self._bulk_keys is None:
                self._keys.add(kv.key)
            else:
                self._bulk_keys.append(kv.key)
        else:
            versions.append(kv)

    def begin_bulk_load(self) -> None:
        """Recovery: new keys are collected and sorted into the key index at once (``end_bulk_load``),
        several times cheaper than an insertion each.  Reads must wait for ``end_bulk_load``."""
        if self._bulk_keys is None:
            self._bulk_keys = []

    def end_bulk_load(self) -> None:
        self._flush_bulk_keys()
        self._bulk_keys = None

    def _flush_bulk_keys(self) -> None:
        if self._bulk_keys:
            self._keys.update(self._bulk_keys)
            self._bulk_keys = []

    def _record(self, revision: int, changes: list[KeyValue]) -> None:
        self._revisions.append(revision)
        self._changes.append(changes)
        self.current_revision = revision

    def compact(self, rev: int) -> int:
        """Drop history below ``rev``; returns the journal sequence to wait on."""
        # etcd starts with no compaction at all (compactMainRev -1), so a first Compact(0) succeeds
        if rev <= self.compact_revision and (self._compacted or rev < 0):
            raise errors.COMPACTED
        if rev > self.current_revision:
            raise errors.FUTURE_REV
        self._compact(rev)
        return self.journal(Entry(revision=self.current_revision, compact_revision=rev))

    def _compact(self, rev: int) -> None:
        self._flush_bulk_keys()  # a replayed compaction removes keys from the index
        self._compacted = True
        self.compact_revision = rev
        cut = bisect.bisect_right(self._revisions, rev)
        touched = {kv.key for changes in self._changes[:cut] for kv in changes}
        # The change log keeps the compact revision itself (a watch from it replays its puts, as
        # etcd's) and anything not yet visible (its watchers have not been told of it yet).
        keep = bisect.bisect_left(self._revisions, min(rev, self.visible_revision + 1))
        del self._revisions[:keep]
        del self._changes[:keep]
        for key in touched:
            versions = self._history.get(key)
            if versions is None:  # a previous compaction already dropped it (its tombstone stayed logged)
                continue
            # keep the newest version at or below rev (unless it is a tombstone) and all above
            i = len(versions) - 1
            while i >= 0 and versions[i].mod_revision > rev:
                i -= 1
            if i < 0:
                continue
            keep_from = i + 1 if versions[i].version == 0 else i
            if keep_from:
                del versions[:keep_from]
            if not versions:
                del self._history[key]
                self._keys.remove(key)

    # -- replay (journal recovery, and a follower applying a shared log) ----------------------
    def publish(self, old_visible: int) -> None:
        """Tell the durable listeners that what ``replay`` applied since ``old_visible`` is visible
        (a follower of a shared log replays other instances' entries while it serves)."""
        if self.visible_revision != old_visible:
            for listener in self._durable_listeners:
                listener(old_visible, self.visible_revision)

    def replay(self, entry: Entry) -> None:
        """Re-apply a journaled entry at start-up: no lease checks, no journaling."""
        if entry.changes:
            for kv in entry.changes:
                self._apply(kv)
            self._record(entry.revision, list(entry.changes))
        if entry.compact_revision:
            self._compact(entry.compact_revision)
        self._record_leases(entry.lease_grants, entry.lease_revokes)
        self.visible_revision = self.current_revision = max(self.current_revision, entry.revision)

    def _record_leases(self, grants: list[tuple[int, int]], revokes: list[int]) -> None:
        granted = self._granted
        for lease_id, ttl in grants:
            granted[lease_id] = ttl
        for lease_id in revokes:
            granted.pop(lease_id, None)

    def leases(self) -> dict[int, int]:
        """The granted leases (id -> TTL), as applied."""
        return self._granted

    def change_log(self) -> tuple[list[int], list[list[KeyValue]]]:
        """Copies of the change log: its revisions and the versions written at each (pointers only;
        a revision's list never changes once recorded, so another thread may read them)."""
        return self._revisions[:], self._changes[:]

    def histories(self) -> Iterable[list[KeyValue]]:
        """Every key's versions, keys in no particular order (a tenth of ``history()``'s cost)."""
        return self._history.values()

    def history(self) -> Iterator[KeyValue]:
        """Every version the store holds (all that compaction kept), key by key, oldest first."""
        for key in self._keys:
            yield from self._history[key]

    @property
    def compact_main_revision(self) -> int:
        """etcd's compactMainRev: -1 until the first compaction."""
        return self.compact_revision if self._compacted else -1

    def hash_kv(self, rev: int) -> tuple[int, int]:
        """etcd's HashByRev: (crc32c over the key bucket up to ``rev``, current revision).

        etcdlite keeps the same versions etcd's bbolt key bucket does, keyed and
        encoded the same way (main/sub revision, marshalled mvccpb.KeyValue), so
        the hash equals a real etcd's after the same operations.
        """
        compact, current = self.compact_main_revision, self.current_revision
        if 0 < rev <= compact:
            raise errors.COMPACTED
        if rev > current:
            raise errors.FUTURE_REV
        if rev == 0:
            rev = current
        below: list[KeyValue] = []  # versions at or below the compaction: counted only if etcd would keep them
        counted: list[KeyValue] = []
        keep: set[int] = set()
        for versions in self._history.values():
            latest = None
            for kv in versions:
                if kv.mod_revision > rev:
                    break
                latest = kv
                (below if kv.mod_revision <= compact else counted).append(kv)
            if latest is not None and latest.version != 0:
                keep.add(id(latest))
        if keep:
            below = [kv for kv in below if id(kv) in keep]
        h = crc32c(b"key")
        for kv in sorted(below + counted, key=lambda kv: (kv.mod_revision, kv.sub)):
            h = crc32c(revision_key(kv.mod_revision, kv.sub, kv.version == 0), h)
            h = crc32c(marshal_version(kv), h)
        return h, current

    def all_live(self) -> Iterator[KeyValue]:
        for key in self._keys:
            kv = self._at(self._history[key], self.current_revision)
            if kv is not None:
                yield kv


class WriteTxn:
    """A write transaction: reads see its own writes; all writes share one revision.

    Changes go into the store as they are made (the event loop runs one txn
    at a time); ``end()`` records them under the new revision and journals
    them.  A txn that changed nothing takes no revision.
    """

    def __init__(self, store: MVCCStore) -> None:
        self._store = store
        self.base_revision = store.current_revision
        self.revision = store.current_revision + 1
        self.changes: list[KeyValue] = []
        self.lease_grants: list[tuple[int, int]] = []
        self.lease_revokes: list[int] = []

    @property
    def read_revision(self) -> int:
        """The revision a read inside the txn reports: its own once it has written."""
        return self.revision if self.changes else self.base_revision

    def range(self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0,
              count_only: bool = False) -> RangeResult:
        head = self.read_revision
        return self._store.range(key, end, rev or head, limit, head=head, count_only=count_only)

    def get(self, key: bytes) -> KeyValue | None:
        return self._store.get(key, self.revision)

    def put(self, key: bytes, value: bytes, lease: int) -> KeyValue:
        store = self._store
        prev = store.get(key, self.revision)
        if prev is None:
            kv = KeyValue(key, value, self.revision, self.revision, 1, lease, len(self.changes))
        else:
            kv = KeyValue(key, value, prev.create_revision, self.revision, prev.version + 1, lease,
                          len(self.changes))
        store._apply(kv)
        self.changes.append(kv)
        leases = store.lease_attacher
        if leases is not None:
            if prev is not None and prev.lease and prev.lease != lease:
                leases.detach(prev.lease, key)
            if lease:
                leases.attach(lease, key)
        return kv

    def delete_range(self, key: bytes, end: bytes | None) -> list[KeyValue]:
        store = self._store
        deleted = store.range(key, end, self.revision, head=self.revision).kvs
        for prev in deleted:
            self._delete(prev)
        return deleted

    def _delete(self, prev: KeyValue) -> None:
        store = self._store
        dead = tombstone(prev.key, self.revision, len(self.changes))
        store._apply(dead)
        self.changes.append(dead)
        if prev.lease and store.lease_attacher is not None:
            store.lease_attacher.detach(prev.lease, prev.key)

    def end(self) -> int:
        """Commit; returns the journal sequence number to wait on for durability."""
        store = self._store
        if self.changes:
            store._record(self.revision, self.changes)
            revision = self.revision
        else:
            revision = self.base_revision
        grants, revokes = self.lease_grants, self.lease_revokes
        if not self.changes and not revokes and not grants:
            return store.last_seq
        if grants or revokes:
            store._record_leases(grants, revokes)
        return store.journal(Entry(revision=revision, changes=self.changes, lease_grants=grants,
                                   lease_revokes=revokes))
