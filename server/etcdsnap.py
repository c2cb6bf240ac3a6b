"""``Maintenance.Snapshot`` as etcd sends it: a bbolt database in etcd's layout (``server.etcddb``).

``capture`` takes the running node's state as plain data -- every version etcd's key bucket would
hold, in revision order, and the leases, users, roles, members, alarms and indexes -- in one step on
the event loop.  The versions are references to the store's immutable ``KeyValue`` objects (a list
of pointers, 8 bytes each), so ``write`` can run in a thread while the loop keeps serving; it streams
pages into a file, never holding the database in memory.

This module is the only place that reads the live objects; everything past ``capture`` is plain data.
"""

from __future__ import annotations

import base64
import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from .etcddb import AuthRecord, EtcdState, LeaseRecord, MemberRecord, RoleRecord, UserRecord, write_db
from .mvcc import KeyValue, MVCCStore

if TYPE_CHECKING:
    from .node import Node


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

    def ordered(self) -> Iterator[KeyValue]:
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


def key_bucket_versions(store: MVCCStore) -> list[KeyValue]:
    return list(capture_key_bucket(store).ordered())


def auth_record(state: dict[str, Any]) -> AuthRecord:
    """``AuthStore.export_state()`` (auth.json) as etcd's records."""
    users = [UserRecord(u["name"], base64.b64decode(u["password"]), sorted(u["roles"]), bool(u["no_password"]))
             for u in state["users"]]
    roles = [RoleRecord(r["name"], [(int(p["type"]), base64.b64decode(p["key"]), base64.b64decode(p["range_end"]))
                                    for p in r["permissions"]]) for r in state["roles"]]
    return AuthRecord(bool(state["enabled"]), int(state["revision"]), users, roles)


def auth_state(record: AuthRecord, version: int) -> dict[str, Any]:
    """etcd's auth records as ``auth.json`` holds them (``version``: auth.STATE_VERSION)."""
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return {
        "version": version, "enabled": record.enabled, "revision": record.revision,
        "users": [{"name": u.name, "password": b64(u.password), "roles": sorted(u.roles),
                   "no_password": u.no_password} for u in record.users],
        "roles": [{"name": r.name, "permissions": [{"key": b64(key), "range_end": b64(end), "type": perm}
                                                   for perm, key, end in r.perms]}
                  for r in record.roles],
    }


@dataclass(slots=True)
class Capture:
    state: EtcdState
    keys: KeyBucket


def capture(node: Node) -> Capture:
    """The node's whole state now (on the event loop; nothing is copied but pointers)."""
    store = node.store
    wal = node.wal
    state = EtcdState(
        revision=store.current_revision,
        compact_revision=store.compact_main_revision,
        scheduled_compact_revision=store.compact_main_revision,
        consistent_index=wal.index if wal is not None else 0,
        term=node.raft_term,
        leases=sorted((LeaseRecord(le.id, le.ttl) for le in node.lessor.leases()), key=lambda le: le.id),
        auth=auth_record(node.auth.export_state()),
        members=[MemberRecord(m.id, m.name, list(m.peer_urls), m.is_learner) for m in node.membership.members()],
        alarms=[(a.memberID, a.alarm) for a in node.alarms.get()],
    )
    return Capture(state, capture_key_bucket(store))


def write(f: BinaryIO, snap: Capture) -> int:
    """The database into the seekable ``f`` (in a thread: it only reads what ``capture`` returned)."""
    return write_db(f, snap.state, snap.keys.ordered())
