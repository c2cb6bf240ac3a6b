"""The store's key space captured for an etcd snapshot: every version etcd's key bucket would hold.

Taken on the event loop in one step, cheaply: the versions are references to the store's immutable
``KeyValue`` objects (a list of pointers, 8 bytes each), so ordering and writing them can run in a
thread while the loop keeps serving writes (1M keys: 0.08 s on the loop).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from ..backend import KeyValue
from .mvcc import MVCCStore


@dataclass(slots=True)
class KeyBucket:
    """Every version etcd's key bucket holds for a store, as captured on the event loop.

    The change log holds every version until the first compaction; after one, the versions below
    it come from the per-key histories.  A compaction at C keeps, for each key, the newest version
    at or below C unless it is a tombstone, and everything above C -- as etcd's compactor does --
    while the change log may still list versions at or below C that were dropped.
    """

    older: list[KeyValue]  # below the change log, in no order yet
    compacted: list[KeyValue]  # the change log's versions at or below the compaction that the store kept
    revisions: list[int]  # the rest of the change log: revisions above the compaction ...
    changes: list[list[KeyValue]]  # ... and the versions written at each

    def __iter__(self) -> Iterator[KeyValue]:
        """(revision, sub revision) order; the sorting and flattening may run in another thread."""
        self.older.sort(key=lambda kv: (kv.mod_revision << 32) + kv.sub)
        yield from self.older
        yield from self.compacted
        for changes in self.changes:
            yield from changes


def capture_key_bucket(store: MVCCStore) -> KeyBucket:
    """On the event loop: pointers only, and a walk of the histories once the store was compacted."""
    compact = store.compact_main_revision
    revisions, changes = store.change_log()
    cut = bisect.bisect_right(revisions, compact)
    compacted = [kv for versions in changes[:cut] for kv in versions if store.get(kv.key, compact) is kv]
    first_logged = revisions[0] if revisions else store.current_revision + 1
    older = [kv for versions in store.histories() for kv in versions
             if kv.mod_revision < first_logged] if compact >= 0 else []
    return KeyBucket(older, compacted, revisions[cut:], changes[cut:])
