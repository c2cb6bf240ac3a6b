"""Snapshots: the whole state in one file in the data dir (``member/snap``).

*Snapshot*: header ``16s magic, Q body length, Q index, q revision, q compact revision, I #leases,
I #groups``; leases ``q id, q TTL``; groups ``q revision, I #versions`` + versions encoded as the log's
changes (every version compaction kept, grouped by the revision that wrote it, in write order); then
a u32 crc32 of all of that, zero-padded to a multiple of 512 bytes.  ``etcdlite snapshot restore``
(``core.restore``) makes a data dir holding one from an etcd (bbolt) snapshot or from such a file
(what ``Maintenance.Snapshot`` streamed before it sent bbolt), reading either as a stream.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..backend import Entry, KeyValue
from ..fsutil import fsync_dir, open_private
from .files import SNAP_SUFFIX
from .mvcc import MVCCStore
from .records import KV, LEASE, unpack_kvs

SNAPSHOT_ALIGN = 512  # files stay in whole sectors (what `etcdctl snapshot save` expected when they were streamed)
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


# -- streamed: ``etcdlite snapshot restore`` never holds a snapshot whole --------------------------
@dataclass(slots=True)
class SnapshotHead:
    index: int
    revision: int
    compact_revision: int
    leases: list[tuple[int, int]]
    body_len: int


def stream_snapshot(f: BinaryIO) -> tuple[SnapshotHead, Iterator[tuple[int, list[KeyValue]]]]:
    """A snapshot file read group by group from ``f``, never whole (``etcdlite snapshot restore``).

    The groups iterator raises ValueError on damage; its crc is checked once it has read the last one.
    """
    head = f.read(_SNAP_HEAD.size)
    if len(head) < _SNAP_HEAD.size:
        raise ValueError(f"too short ({len(head)} bytes)")
    magic, body_len, index, revision, compacted, n_leases, n_groups = _SNAP_HEAD.unpack(head)
    if magic != _SNAP_MAGIC:
        raise ValueError("not an etcdlite snapshot (bad magic)")
    reader = _CrcReader(f, body_len - _SNAP_HEAD.size, zlib.crc32(head))
    if n_leases * LEASE.size > body_len:
        raise ValueError(f"the header counts {n_leases} leases, more than the body holds")
    leases = [(i, t) for i, t in LEASE.iter_unpack(reader.take(n_leases * LEASE.size))]
    return SnapshotHead(index, revision, compacted, leases, body_len), _stream_groups(reader, f, n_groups)


class _CrcReader:
    """Exact reads of the snapshot body, crc'ed on the way."""

    def __init__(self, f: BinaryIO, remaining: int, crc: int) -> None:
        self._f = f
        self.remaining = remaining
        self.crc = crc

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise ValueError("a record runs past the end of the body")
        data = self._f.read(n)
        if len(data) != n:
            raise ValueError("truncated")
        self.remaining -= n
        self.crc = zlib.crc32(data, self.crc)
        return data


def _stream_groups(reader: _CrcReader, f: BinaryIO, n_groups: int) -> Iterator[tuple[int, list[KeyValue]]]:
    for _ in range(n_groups):
        revision, count = _GROUP.unpack(reader.take(_GROUP.size))
        if count * KV.size > reader.remaining:
            raise ValueError(f"revision {revision} counts {count} versions, more than the body holds")
        kvs = []
        for _ in range(count):
            klen, vlen, create, mod, version, lease, sub = KV.unpack(reader.take(KV.size))
            data = reader.take(klen + vlen)
            kvs.append(KeyValue(data[:klen], data[klen:], create, mod, version, lease, sub))
        yield revision, kvs
    if reader.remaining:
        raise ValueError(f"{reader.remaining} stray bytes in the body")
    crc = f.read(_CRC.size)
    if len(crc) != _CRC.size or _CRC.unpack(crc)[0] != reader.crc:
        raise ValueError("crc mismatch")


def write_snapshot_streamed(snap_dir: Path, index: int, revision: int, compact_revision: int,
                            leases: list[tuple[int, int]], groups: Iterable[tuple[int, list[KeyValue]]],
                            sync: bool = True) -> tuple[Path, int]:
    """A snapshot file from groups that arrive one at a time (a restore never holds them all).

    The header, which counts them, is written last; the crc is then taken over the file.
    """
    final = snap_dir / f"{index:016x}{SNAP_SUFFIX}"
    tmp = snap_dir / f"{final.name}.tmp"
    with os.fdopen(open_private(tmp, os.O_RDWR | os.O_TRUNC), "w+b") as f:
        f.write(bytes(_SNAP_HEAD.size))
        for lease_id, ttl in leases:
            f.write(LEASE.pack(lease_id, ttl))
        n_groups = 0
        for group_revision, kvs in groups:
            f.write(_GROUP.pack(group_revision, len(kvs)))
            for kv in kvs:
                f.write(KV.pack(len(kv.key), len(kv.value), kv.create_revision, kv.mod_revision, kv.version,
                                kv.lease, kv.sub))
                f.write(kv.key)
                f.write(kv.value)
            n_groups += 1
        body_len = f.tell()
        f.seek(0)
        f.write(_SNAP_HEAD.pack(_SNAP_MAGIC, body_len, index, revision, compact_revision, len(leases), n_groups))
        f.seek(0)
        crc, left = 0, body_len
        while left:
            chunk = f.read(min(left, 1 << 20))
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
        total = body_len + _CRC.size
        f.write(_CRC.pack(crc) + bytes(-total % SNAPSHOT_ALIGN))
        f.flush()
        if sync:
            os.fsync(f.fileno())
        size = f.tell()
    os.replace(tmp, final)
    if sync:
        fsync_dir(snap_dir)
    return final, size
