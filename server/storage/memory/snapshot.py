"""Snapshots: the whole state in one file, and the stream ``etcdctl snapshot save`` stores.

*Snapshot*: header ``16s magic, Q body length, Q index, q revision, q compact revision, I #leases,
I #groups``; leases ``q id, q TTL``; groups ``q revision, I #versions`` + versions encoded as the log's
changes (every version compaction kept, grouped by the revision that wrote it, in write order); then
a u32 crc32 of all of that, zero-padded to a multiple of 512 bytes.  ``Maintenance.Snapshot`` streams
exactly such a file followed by etcd's 32-byte SHA-256 trailer, which is all ``etcdctl snapshot save``
checks; ``etcdlite snapshot restore FILE --data-dir DIR`` makes a data dir from it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..backend import Entry, KeyValue
from ..fsutil import fsync_dir, make_private_dir
from .files import MEMBER_DIR, SNAP_DIR, WAL_DIR, Segment, StorageError, write_snapshot_file
from .mvcc import MVCCStore
from .records import KV, LEASE, unpack_kvs

SNAPSHOT_ALIGN = 512  # bbolt's page multiple: what `etcdctl snapshot save` expects before the SHA-256
SHA256_SIZE = 32
_SNAP_MAGIC = b"etcdlite-snap\x00\x00\x02"
_SNAP_HEAD = struct.Struct("<16sQQqqII")
_GROUP = struct.Struct("<qI")
_CRC = struct.Struct("<I")


# -- snapshots -----------------------------------------------------------------------------------
@dataclass(slots=True)
class SnapshotState:
    """The whole state after log entry ``index``."""

    index: int
    revision: int
    compact_revision: int
    leases: list[tuple[int, int]]  # (lease id, granted TTL)
    groups: list[tuple[int, list[KeyValue]]]  # (revision, versions written at it), oldest first


def _groups(store: MVCCStore) -> list[tuple[int, list[KeyValue]]]:
    """The versions older than the store's change log, grouped by revision, then the change log itself.

    Replaying them and then the compaction rebuilds the store exactly: the history compaction kept,
    and the change log from the compact revision on (which may still list tombstones compaction
    already dropped from the history; compacting again drops them again).
    """
    log_groups = list(store.changes_since(0, store.current_revision))
    if store.compact_main_revision < 0:
        # never compacted: the change log still holds every version there is, and a walk over every
        # key (half a second with 1M keys, on the event loop) would find nothing older
        return log_groups
    first_logged = log_groups[0][0] if log_groups else store.current_revision + 1
    old: dict[int, list[KeyValue]] = {}
    for kv in store.history():
        if kv.mod_revision < first_logged:
            old.setdefault(kv.mod_revision, []).append(kv)
    return sorted(old.items()) + log_groups


def capture(index: int, store: MVCCStore) -> SnapshotState:
    """References to the live state (KeyValues are never mutated), so encoding can run off the loop."""
    leases = sorted(store.leases().items())
    return SnapshotState(index, store.current_revision, store.compact_revision, leases, _groups(store))


def encode_snapshot(state: SnapshotState) -> bytes:
    parts: list[bytes] = [b""]
    parts.extend(LEASE.pack(lease_id, ttl) for lease_id, ttl in state.leases)
    pack = KV.pack  # _pack_kv's layout, flattened: a third cheaper over a million versions
    for revision, kvs in state.groups:
        parts.append(_GROUP.pack(revision, len(kvs)))
        parts += [part for kv in kvs for part in (
            pack(len(kv.key), len(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.sub),
            kv.key, kv.value)]
    body_len = _SNAP_HEAD.size + sum(map(len, parts))
    parts[0] = _SNAP_HEAD.pack(_SNAP_MAGIC, body_len, state.index, state.revision, state.compact_revision,
                               len(state.leases), len(state.groups))
    body = b"".join(parts)
    total = body_len + _CRC.size
    return b"".join((body, _CRC.pack(zlib.crc32(body)), bytes(-total % SNAPSHOT_ALIGN)))


def decode_snapshot(data: bytes) -> SnapshotState:
    if len(data) < _SNAP_HEAD.size + _CRC.size:
        raise ValueError(f"too short ({len(data)} bytes)")
    magic, body_len, index, revision, compacted, n_leases, n_groups = _SNAP_HEAD.unpack_from(data, 0)
    if magic != _SNAP_MAGIC:
        raise ValueError("not an etcdlite snapshot (bad magic)")
    if body_len + _CRC.size > len(data):
        raise ValueError(f"truncated ({len(data)} bytes, header says {body_len + _CRC.size})")
    if zlib.crc32(data[:body_len]) != _CRC.unpack_from(data, body_len)[0]:
        raise ValueError("crc mismatch")
    body = data[:body_len]
    try:
        off = _SNAP_HEAD.size
        leases = [LEASE.unpack_from(body, off + i * LEASE.size) for i in range(n_leases)]
        off += n_leases * LEASE.size
        groups: list[tuple[int, list[KeyValue]]] = []
        for _ in range(n_groups):
            revision_of_group, count = _GROUP.unpack_from(body, off)
            kvs, off = unpack_kvs(body, off + _GROUP.size, count)
            groups.append((revision_of_group, kvs))
    except struct.error as exc:
        raise ValueError(f"truncated body: {exc}") from None
    if off != body_len:
        raise ValueError(f"{body_len - off} stray bytes in the body")
    return SnapshotState(index, revision, compacted, [(i, t) for i, t in leases], groups)


def snapshot_revision(data: bytes) -> int:
    """The store revision a snapshot file holds (from its header)."""
    return int(_SNAP_HEAD.unpack_from(data, 0)[3])


def snapshot_size(store: MVCCStore) -> int:
    """The exact size a snapshot of the state would take now (etcd's dbSizeInUse), without encoding it."""
    size = _SNAP_HEAD.size + _CRC.size + len(store.leases()) * LEASE.size
    for _, kvs in _groups(store):
        size += _GROUP.size + sum(KV.size + len(kv.key) + len(kv.value) for kv in kvs)
    return size + (-size % SNAPSHOT_ALIGN)


def restore_state(state: SnapshotState, store: MVCCStore) -> None:
    for revision, kvs in state.groups:
        store.replay(Entry(revision=revision, changes=kvs))
    store.replay(Entry(revision=state.revision, compact_revision=state.compact_revision,
                       lease_grants=list(state.leases)))


def _go_bytes(data: bytes) -> str:
    """A byte slice as Go's %v prints it (etcdutl's wording)."""
    return "[" + " ".join(str(b) for b in data) + "]"


def split_hash(data: bytes, skip_hash_check: bool = False) -> bytes:
    """The snapshot without etcd's SHA-256 trailer, checked as ``etcdutl snapshot restore`` does."""
    if len(data) % SNAPSHOT_ALIGN == SHA256_SIZE:
        body, digest = data[:-SHA256_SIZE], data[-SHA256_SIZE:]
        actual = hashlib.sha256(body).digest()
        if not skip_hash_check and actual != digest:
            raise StorageError(f"expected sha256 {_go_bytes(digest)}, got {_go_bytes(actual)}")
        return body
    if not skip_hash_check:
        raise StorageError("snapshot missing hash but --skip-hash-check=false")
    return data


def restore_snapshot_file(snapshot_file: str | os.PathLike[str], data_dir: str | os.PathLike[str],
                          skip_hash_check: bool = False) -> SnapshotState:
    """``etcdlite snapshot restore``: a new data dir holding the snapshot and an empty log."""
    target = Path(data_dir)
    if target.exists() and any(target.iterdir()):
        raise StorageError(f'data-dir "{target}" not empty or could not be read')
    try:
        data = Path(snapshot_file).read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read {snapshot_file}: {exc.strerror}") from None
    body = split_hash(data, skip_hash_check)
    try:
        state = decode_snapshot(body)
    except ValueError as exc:
        raise StorageError(f"{snapshot_file} is not an etcdlite snapshot ({exc})") from None
    member = target / MEMBER_DIR
    make_private_dir(member / SNAP_DIR)
    make_private_dir(member / WAL_DIR)
    write_snapshot_file(member / SNAP_DIR, state.index, body, sync=True)
    Segment.create(member / WAL_DIR, state.index + 1, sync=True).close()
    fsync_dir(member)
    return state
