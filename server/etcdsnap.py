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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from .etcddb import AuthRecord, EtcdState, LeaseRecord, MemberRecord, RoleRecord, UserRecord, write_db
from .mvcc import KeyValue, MVCCStore

if TYPE_CHECKING:
    from .node import Node


def split_versions(store: MVCCStore) -> tuple[list[KeyValue], list[KeyValue]]:
    """Every version etcd's key bucket holds for this store: those older than the change log (in key
    order: ``ordered`` sorts them, off the event loop) and the change log's (in revision order).

    The change log holds every version until the first compaction; after one, the versions below
    it come from the per-key history.  A compaction at C keeps, for each key, the newest version at
    or below C unless it is a tombstone, and everything above C -- as etcd's compactor does -- while
    the change log may still list versions at or below C that were dropped.
    """
    compact = store.compact_main_revision
    logged = list(store.changes_since(0, store.current_revision))
    older: list[KeyValue] = []
    if compact >= 0:
        first_logged = logged[0][0] if logged else store.current_revision + 1
        older = [kv for kv in store.history() if kv.mod_revision < first_logged]
    recent: list[KeyValue] = []
    for revision, changes in logged:
        if revision <= compact:
            recent.extend(kv for kv in changes if store.get(kv.key, compact) is kv)
        else:
            recent.extend(changes)
    return older, recent


def ordered(older: list[KeyValue], recent: list[KeyValue]) -> Iterator[KeyValue]:
    """The key bucket's order: (revision, sub revision)."""
    older.sort(key=lambda kv: (kv.mod_revision << 32) + kv.sub)
    yield from older
    yield from recent


def key_bucket_versions(store: MVCCStore) -> list[KeyValue]:
    return list(ordered(*split_versions(store)))


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
    older: list[KeyValue]  # see split_versions
    recent: list[KeyValue]


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
    return Capture(state, *split_versions(store))


def write(f: BinaryIO, snap: Capture) -> int:
    """The database into the seekable ``f`` (in a thread: it only reads what ``capture`` returned)."""
    return write_db(f, snap.state, ordered(snap.older, snap.recent))
