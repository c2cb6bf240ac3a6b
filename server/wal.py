"""The durable data dir: a write-ahead log plus snapshots under ``<data-dir>/member/`` (issue 4).

Layout (etcd also keeps ``member/snap`` and ``member/wal``; the files in them are etcdlite's own)::

    member/lock                      flock'ed while a server uses the data dir
    member/alarms                    raised alarms (see server/alarm.py)
    member/snap/<index:016x>.snap    the whole state after log entry <index>; the newest one is used
    member/wal/<first:016x>.wal      a log segment holding entries <first>, <first>+1, ...

All integers are little-endian.

*Segment*: a 20-byte header (magic ``ELWAL\\0\\0\\1``, u64 first index, u32 crc32 of the two), then
records.  *Record*: ``u32 body length | u32 crc32(body) | body``, body = ``u64 index | u8 kind |
payload``.  Kind 1 is an ``Entry``: ``q revision, q compact_revision, I #changes, I #grants,
I #revokes``; each change ``I key length, I value length, q create_revision, q mod_revision,
q version, q lease`` + key + value; each grant ``q lease id, q TTL``; each revoke ``q lease id``.

*Snapshot*: header ``16s magic, Q body length, Q index, q revision, q compact revision, I #leases,
I #groups``; leases ``q id, q TTL``; groups ``q revision, I #versions`` + versions encoded as changes
above (every version compaction kept, grouped by the revision that wrote it, in write order); then a
u32 crc32 of all of that, zero-padded to a multiple of 512 bytes.  ``etcdlite snapshot restore``
makes a data dir holding one from an etcd (bbolt) snapshot or from such a file (what
``Maintenance.Snapshot`` streamed before it sent bbolt), reading either as a stream.

Group commit: ``WAL.append`` only encodes and queues; one writer task takes everything queued,
writes it with one ``write`` and one ``fdatasync`` (on the event loop's thread while syncs take
under 2 ms, else in a one-thread executor so the loop keeps serving), then reports the last index
durable. Every ``snapshot_count`` entries, once the log outgrows the last snapshot (and at least 64
MiB), after a compaction, and on request (Defragment), the writer instead writes a
snapshot of the in-memory state -- which at that moment is exactly the effect of every entry
appended so far -- starts a new segment and deletes the old files. A write or fsync error latches:
the failing and all later writes are refused (gRPC UNAVAILABLE), reads keep serving what was
durable, and a restart recovers from disk.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import grpc

from . import errors
from .fsutil import fsync_dir
from .lease import Lessor
from .mvcc import Entry, KeyValue, MVCCStore

log = logging.getLogger("etcdlite.wal")

MEMBER_DIR = "member"
SNAP_DIR = "snap"
WAL_DIR = "wal"
SNAP_SUFFIX = ".snap"
WAL_SUFFIX = ".wal"

DEFAULT_SNAPSHOT_COUNT = 100_000  # etcd's --snapshot-count default
MIN_SNAPSHOT_LOG_BYTES = 64 * 1024 * 1024
INLINE_SYNC_MAX_SECONDS = 0.002  # the log is synced on the event loop's thread only while syncs take less
SNAPSHOT_ALIGN = 512  # files stay in whole sectors (what `etcdctl snapshot save` expected when they were streamed)

_ENTRY = struct.Struct("<qqIII")
_KV = struct.Struct("<IIqqqqI")  # key len, value len, create, mod, version, lease, sub
_LEASE = struct.Struct("<qq")
_ID = struct.Struct("<q")
_REC = struct.Struct("<II")
_REC_BODY = struct.Struct("<QB")
_SEG_MAGIC = b"ELWAL\x00\x00\x02"
_SEG_HEAD = struct.Struct("<8sQI")
_SNAP_MAGIC = b"etcdlite-snap\x00\x00\x02"
_SNAP_HEAD = struct.Struct("<16sQQqqII")
_GROUP = struct.Struct("<qI")
_CRC = struct.Struct("<I")
KIND_ENTRY = 1


class StorageError(Exception):
    """The data dir cannot be used (corruption, foreign files, in use): start-up stops with this line."""


def storage_failure(exc: OSError) -> errors.EtcdError:
    """What clients get once the log cannot be written (etcd itself would exit here)."""
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]  # Go's wording of errno: "no space left on device"
    return errors.EtcdError(grpc.StatusCode.UNAVAILABLE,
                            f"etcdserver: storage failure ({reason}); writes are refused until the server restarts")


# -- encoding ------------------------------------------------------------------------------------
def _pack_kv(parts: list[bytes], kv: KeyValue) -> None:
    parts.append(_KV.pack(len(kv.key), len(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease,
                          kv.sub))
    parts.append(kv.key)
    parts.append(kv.value)


def _unpack_kvs(buf: bytes, off: int, n: int) -> tuple[list[KeyValue], int]:
    out: list[KeyValue] = []
    unpack = _KV.unpack_from
    size = _KV.size
    for _ in range(n):
        klen, vlen, create, mod, version, lease, sub = unpack(buf, off)
        off += size
        key = buf[off:off + klen]
        off += klen
        value = buf[off:off + vlen]
        off += vlen
        out.append(KeyValue(key, value, create, mod, version, lease, sub))
    if off > len(buf):
        raise ValueError("versions run past the end of the record")
    return out, off


def encode_entry(entry: Entry) -> bytes:
    parts = [_ENTRY.pack(entry.revision, entry.compact_revision, len(entry.changes), len(entry.lease_grants),
                         len(entry.lease_revokes))]
    for kv in entry.changes:
        _pack_kv(parts, kv)
    parts.extend(_LEASE.pack(lease_id, ttl) for lease_id, ttl in entry.lease_grants)
    parts.extend(_ID.pack(lease_id) for lease_id in entry.lease_revokes)
    return b"".join(parts)


def decode_entry(buf: bytes) -> Entry:
    try:
        revision, compact, n_changes, n_grants, n_revokes = _ENTRY.unpack_from(buf, 0)
        changes, off = _unpack_kvs(buf, _ENTRY.size, n_changes)
        grants = [_LEASE.unpack_from(buf, off + i * _LEASE.size) for i in range(n_grants)]
        off += n_grants * _LEASE.size
        revokes = [_ID.unpack_from(buf, off + i * _ID.size)[0] for i in range(n_revokes)]
        off += n_revokes * _ID.size
    except struct.error as exc:
        raise ValueError(f"truncated entry: {exc}") from None
    if off != len(buf):
        raise ValueError(f"entry has {len(buf) - off} stray bytes")
    return Entry(revision=revision, changes=changes, lease_grants=[(i, t) for i, t in grants],
                 lease_revokes=revokes, compact_revision=compact)


# a record whose entry has one change and no lease grants/revokes (every Put): its body's head in one pack
_ONE_CHANGE_HEAD = struct.Struct("<QB" + _ENTRY.format[1:] + _KV.format[1:])


def encode_record(index: int, entry: Entry) -> bytes:
    """``frame_record(index, encode_entry(entry))``, in one pack and one join for the common one-change entry."""
    changes = entry.changes
    if len(changes) != 1 or entry.lease_grants or entry.lease_revokes:
        return frame_record(index, encode_entry(entry))
    kv = changes[0]
    key, value = kv.key, kv.value
    body = b"".join((_ONE_CHANGE_HEAD.pack(index, KIND_ENTRY, entry.revision, entry.compact_revision, 1, 0, 0,
                                           len(key), len(value), kv.create_revision, kv.mod_revision, kv.version,
                                           kv.lease, kv.sub), key, value))
    return _REC.pack(len(body), zlib.crc32(body)) + body


def frame_record(index: int, payload: bytes) -> bytes:
    head = _REC_BODY.pack(index, KIND_ENTRY)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((_REC.pack(len(head) + len(payload), crc), head, payload))


def _segment_header(first_index: int) -> bytes:
    crc = zlib.crc32(_SEG_MAGIC + first_index.to_bytes(8, "little"))
    return _SEG_HEAD.pack(_SEG_MAGIC, first_index, crc)


def _parse_segment_header(data: bytes) -> int | None:
    """The first index a segment header names, or None if it is missing or damaged."""
    if len(data) < _SEG_HEAD.size:
        return None
    magic, first, crc = _SEG_HEAD.unpack_from(data, 0)
    if magic != _SEG_MAGIC or crc != zlib.crc32(_SEG_MAGIC + first.to_bytes(8, "little")):
        return None
    return first


@dataclass(slots=True)
class SegmentScan:
    records: list[tuple[int, bytes]]  # (index, payload), in file order
    valid_size: int  # bytes up to the end of the last good record
    problem: str = ""  # why the scan stopped before the end of the file
    torn_tail: bool = False  # the bad bytes are the end of the log (nothing valid follows)


def _valid_record_at(data: bytes, off: int, index: int) -> bool:
    if off < 0 or off + _REC.size + _REC_BODY.size > len(data):
        return False
    length, crc = _REC.unpack_from(data, off)
    end = off + _REC.size + length
    return end <= len(data) and zlib.crc32(data[off + _REC.size:end]) == crc and \
        _REC_BODY.unpack_from(data, off + _REC.size)[0] == index


def _followed_by_valid_record(data: bytes, off: int, bad_index: int, lookahead: int = 64) -> bool:
    """Does an intact record of one of the next ``lookahead`` indexes follow ``off``?

    If so the damage is in the middle of the log, not a torn tail: cutting there would lose
    acknowledged writes.  (A torn group-commit write only ever leaves a prefix of itself.)
    """
    for index in range(bad_index + 1, bad_index + 1 + lookahead):
        needle = _REC_BODY.pack(index, KIND_ENTRY)
        pos = data.find(needle, off + 1)
        while pos != -1:
            if _valid_record_at(data, pos - _REC.size, index):
                return True
            pos = data.find(needle, pos + 1)
    return False


def scan_segment(data: bytes, start: int, first_index: int) -> SegmentScan:
    """Read records from ``start``; stops at the first damaged one and says whether it is the tail."""
    records: list[tuple[int, bytes]] = []
    off, n = start, len(data)
    expected = first_index
    while off < n:
        problem = ""
        if n - off < _REC.size:
            problem = "short record header"
        else:
            length, crc = _REC.unpack_from(data, off)
            end = off + _REC.size + length
            if length < _REC_BODY.size:
                problem = f"bad record length {length}"
            elif end > n:
                problem = f"short record ({n - off - _REC.size} of {length} bytes)"
            elif zlib.crc32(data[off + _REC.size:end]) != crc:
                problem = "crc mismatch"
        if problem:
            torn = not _followed_by_valid_record(data, off, expected)
            return SegmentScan(records, off, problem, torn)
        index, kind = _REC_BODY.unpack_from(data, off + _REC.size)
        if kind != KIND_ENTRY:
            return SegmentScan(records, off, f"unknown record kind {kind}", False)
        records.append((index, data[off + _REC.size + _REC_BODY.size:end]))
        expected = index + 1
        off = end
    return SegmentScan(records, off)


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


def capture(index: int, store: MVCCStore, lessor: Lessor) -> SnapshotState:
    """References to the live state (KeyValues are never mutated), so encoding can run off the loop."""
    leases = sorted((lease.id, lease.ttl) for lease in lessor.leases())
    return SnapshotState(index, store.current_revision, store.compact_revision, leases, _groups(store))


def encode_snapshot(state: SnapshotState) -> bytes:
    parts: list[bytes] = [b""]
    parts.extend(_LEASE.pack(lease_id, ttl) for lease_id, ttl in state.leases)
    pack = _KV.pack  # _pack_kv's layout, flattened: a third cheaper over a million versions
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
        leases = [_LEASE.unpack_from(body, off + i * _LEASE.size) for i in range(n_leases)]
        off += n_leases * _LEASE.size
        groups: list[tuple[int, list[KeyValue]]] = []
        for _ in range(n_groups):
            revision_of_group, count = _GROUP.unpack_from(body, off)
            kvs, off = _unpack_kvs(body, off + _GROUP.size, count)
            groups.append((revision_of_group, kvs))
    except struct.error as exc:
        raise ValueError(f"truncated body: {exc}") from None
    if off != body_len:
        raise ValueError(f"{body_len - off} stray bytes in the body")
    return SnapshotState(index, revision, compacted, [(i, t) for i, t in leases], groups)


def snapshot_size(store: MVCCStore, lessor: Lessor) -> int:
    """The exact size a snapshot of the state would take now (etcd's dbSizeInUse), without encoding it."""
    size = _SNAP_HEAD.size + _CRC.size + len(lessor.leases()) * _LEASE.size
    for _, kvs in _groups(store):
        size += _GROUP.size + sum(_KV.size + len(kv.key) + len(kv.value) for kv in kvs)
    return size + (-size % SNAPSHOT_ALIGN)


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
    if n_leases * _LEASE.size > body_len:
        raise ValueError(f"the header counts {n_leases} leases, more than the body holds")
    leases = [(i, t) for i, t in _LEASE.iter_unpack(reader.take(n_leases * _LEASE.size))]
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
        if count * _KV.size > reader.remaining:
            raise ValueError(f"revision {revision} counts {count} versions, more than the body holds")
        kvs = []
        for _ in range(count):
            klen, vlen, create, mod, version, lease, sub = _KV.unpack(reader.take(_KV.size))
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
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w+b") as f:
        f.write(bytes(_SNAP_HEAD.size))
        for lease_id, ttl in leases:
            f.write(_LEASE.pack(lease_id, ttl))
        n_groups = 0
        for group_revision, kvs in groups:
            f.write(_GROUP.pack(group_revision, len(kvs)))
            for kv in kvs:
                f.write(_KV.pack(len(kv.key), len(kv.value), kv.create_revision, kv.mod_revision, kv.version,
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


def restore_state(state: SnapshotState, store: MVCCStore, lessor: Lessor) -> None:
    for revision, kvs in state.groups:
        store.replay(Entry(revision=revision, changes=kvs))
    store.replay(Entry(revision=state.revision, compact_revision=state.compact_revision))
    for lease_id, ttl in state.leases:
        lessor.restore_grant(lease_id, ttl)


def apply_entry(entry: Entry, store: MVCCStore, lessor: Lessor) -> None:
    store.replay(entry)
    for lease_id, ttl in entry.lease_grants:
        lessor.restore_grant(lease_id, ttl)
    for lease_id in entry.lease_revokes:
        lessor.restore_revoke(lease_id)


def reattach_leases(store: MVCCStore, lessor: Lessor) -> None:
    if not lessor.leases():  # no lease to attach to: skip the walk over every key
        return
    for kv in store.all_live():
        if kv.lease:
            lessor.attach(kv.lease, kv.key)


# -- files ---------------------------------------------------------------------------------------
class DiskFaults:
    """Test hook: with ETCDLITE_FAULT_DISK_FULL_AFTER_BYTES=N, writes fail with ENOSPC after N bytes."""

    ENV = "ETCDLITE_FAULT_DISK_FULL_AFTER_BYTES"

    def __init__(self, budget: int) -> None:
        self.remaining = budget

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DiskFaults | None:
        raw = (os.environ if environ is None else environ).get(cls.ENV, "")
        return cls(int(raw)) if raw.strip() else None

    def allow(self, n: int) -> int:
        granted = min(n, self.remaining)
        self.remaining -= granted
        return granted


def _write_all(fd: int, data: bytes, faults: DiskFaults | None) -> None:
    allowed = faults.allow(len(data)) if faults is not None else len(data)
    view = memoryview(data)[:allowed]
    while view:
        view = view[os.write(fd, view):]
    if allowed < len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _listing(directory: Path, suffix: str) -> list[tuple[int, Path]]:
    """Files named ``<hex number><suffix>``, by number."""
    out = []
    for path in directory.iterdir():
        if path.name.endswith(suffix):
            try:
                out.append((int(path.name[:-len(suffix)], 16), path))
            except ValueError:
                continue
    return sorted(out)


def write_snapshot_file(snap_dir: Path, index: int, data: bytes, sync: bool,
                        faults: DiskFaults | None = None) -> Path:
    """Atomically: write a temporary file, fsync it, rename it into place, fsync the directory."""
    final = snap_dir / f"{index:016x}{SNAP_SUFFIX}"
    tmp = snap_dir / f"{final.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data, faults)
        if sync:
            os.fsync(fd)
    except OSError:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, final)
    if sync:
        fsync_dir(snap_dir)
    return final


class Segment:
    """The log segment being appended to; used by one thread at a time."""

    def __init__(self, path: Path, fd: int, first_index: int, size: int) -> None:
        self.path = path
        self.first_index = first_index
        self.size = size
        self._fd = fd

    @classmethod
    def create(cls, wal_dir: Path, first_index: int, sync: bool, faults: DiskFaults | None = None) -> Segment:
        path = wal_dir / f"{first_index:016x}{WAL_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            header = _segment_header(first_index)
            _write_all(fd, header, faults)
            if sync:
                os.fdatasync(fd)
                fsync_dir(wal_dir)
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd, first_index, len(header))

    @classmethod
    def reopen(cls, path: Path, first_index: int, size: int) -> Segment:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return cls(path, fd, first_index, size)

    def append(self, data: bytes, sync: bool, faults: DiskFaults | None) -> None:
        try:
            _write_all(self._fd, data, faults)
        finally:
            self.size = os.fstat(self._fd).st_size
        if sync:
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- recovery ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Recovery:
    index: int  # the last log index the state includes
    revision: int
    snapshot: Path | None
    snapshot_size: int
    segment: Segment  # open for appending
    replayed: int  # log entries applied on top of the snapshot
    dropped_bytes: int  # torn tail cut off


def _refuse(message: str) -> StorageError:
    return StorageError(f"{message}; refusing to start (the data dir is left untouched)")


def _load_snapshot(snap_dir: Path, store: MVCCStore, lessor: Lessor) -> tuple[int, Path | None, int]:
    for tmp in snap_dir.glob(f"*{SNAP_SUFFIX}.tmp"):
        tmp.unlink()  # a snapshot that never made it to its rename
    snaps = _listing(snap_dir, SNAP_SUFFIX)
    if not snaps:
        return 0, None, 0
    index, path = snaps[-1]
    data = path.read_bytes()
    try:
        state = decode_snapshot(data)
    except ValueError as exc:
        raise _refuse(f"snapshot {path} is corrupt ({exc})") from None
    if state.index != index:
        raise _refuse(f"snapshot {path} holds index {state.index}, its name says {index}")
    restore_state(state, store, lessor)
    return index, path, len(data)


def _replay_segment(path: Path, first: int, expected: int, last: bool, store: MVCCStore, lessor: Lessor,
                    sync: bool) -> tuple[int, int, int]:
    """Apply one segment's entries; returns (next expected index, valid size, dropped bytes)."""
    data = path.read_bytes()
    named = _parse_segment_header(data)
    if named is None:
        if last and len(data) <= _SEG_HEAD.size:
            log.warning("rewriting the torn header of the newest wal segment",
                        extra={"fields": {"path": str(path), "size": len(data)}})
            with open(path, "r+b") as f:
                f.truncate(0)
                f.write(_segment_header(first))
                if sync:
                    os.fsync(f.fileno())
            return expected, _SEG_HEAD.size, len(data)
        raise _refuse(f"wal segment {path} has a damaged header")
    if named != first:
        raise _refuse(f"wal segment {path} starts at index {named}, its name says {first}")
    scan = scan_segment(data, _SEG_HEAD.size, first)
    for index, payload in scan.records:
        if index != expected:
            raise _refuse(f"wal segment {path} holds index {index} where {expected} was expected")
        try:
            entry = decode_entry(payload)
        except ValueError as exc:
            raise _refuse(f"wal segment {path}: entry {index} cannot be decoded ({exc})") from None
        apply_entry(entry, store, lessor)
        expected += 1
    dropped = 0
    if scan.problem:
        if not (last and scan.torn_tail):
            raise _refuse(f"wal segment {path} is corrupt at offset {scan.valid_size} ({scan.problem}), "
                          f"before the end of the log")
        dropped = len(data) - scan.valid_size
        log.warning("dropping a torn record at the end of the wal",
                    extra={"fields": {"path": str(path), "offset": scan.valid_size, "dropped-bytes": dropped,
                                      "reason": scan.problem}})
        with open(path, "r+b") as f:
            f.truncate(scan.valid_size)
            if sync:
                os.fsync(f.fileno())
    return expected, scan.valid_size, dropped


def recover(member_dir: Path, store: MVCCStore, lessor: Lessor, sync: bool = True) -> Recovery:
    """Load the newest snapshot, replay the log after it, rebuild lease attachments, tidy old files."""
    snap_dir, wal_dir = member_dir / SNAP_DIR, member_dir / WAL_DIR
    snap_dir.mkdir(parents=True, exist_ok=True)
    wal_dir.mkdir(parents=True, exist_ok=True)
    store.begin_bulk_load()  # new keys join the sorted key index in one go, at the end
    index, snap_path, snap_size = _load_snapshot(snap_dir, store, lessor)
    segments = _listing(wal_dir, WAL_SUFFIX)
    live = [(first, path) for first, path in segments if first > index]
    stale = [path for first, path in segments if first <= index]
    expected = index + 1
    if live and live[0][0] != expected:
        raise _refuse(f"the wal lacks entries {expected}..{live[0][0] - 1} after snapshot index {index}")
    replayed = dropped = 0
    segment: Segment | None = None
    for i, (first, path) in enumerate(live):
        if first != expected:
            raise _refuse(f"wal segment {path} starts at {first} where {expected} was expected")
        last = i == len(live) - 1
        before = expected
        expected, size, cut = _replay_segment(path, first, expected, last, store, lessor, sync)
        replayed += expected - before
        dropped += cut
        if last:
            segment = Segment.reopen(path, first, size)
    if segment is None:
        segment = Segment.create(wal_dir, expected, sync)
    for path in stale:
        path.unlink()
    for _, path in _listing(snap_dir, SNAP_SUFFIX):
        if path != snap_path:
            path.unlink()
    store.end_bulk_load()
    reattach_leases(store, lessor)
    return Recovery(expected - 1, store.current_revision, snap_path, snap_size, segment, replayed, dropped)


def check_data_dir(member_dir: Path) -> None:
    """Refuse a real etcd's data dir instead of writing next to its files."""
    if (member_dir / SNAP_DIR / "db").exists():
        data_dir = member_dir.parent
        raise _refuse(f"{member_dir} holds a real etcd's bbolt database (snap/db): import it into a new data dir "
                      f"with `etcdlite snapshot restore {data_dir} --data-dir NEW_DIR` (etcd must be stopped)")


def lock_data_dir(member_dir: Path) -> int:
    path = member_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"cannot lock {path}: the data dir is in use by another etcdlite") from None
    return fd


# -- the journal ---------------------------------------------------------------------------------
@dataclass(slots=True)
class WALOptions:
    fsync: bool = True  # False: --unsafe-no-fsync
    snapshot_count: int = DEFAULT_SNAPSHOT_COUNT  # entries between snapshots (etcd's --snapshot-count)
    batch_limit: int = 0  # most entries per write+fsync; 0: all queued (group commit), 1: one per request
    min_snapshot_log_bytes: int = MIN_SNAPSHOT_LOG_BYTES
    faults: DiskFaults | None = None


@dataclass(slots=True)
class WALStats:
    writes: int = 0  # write (+ fsync) rounds
    entries: int = 0
    snapshots: int = 0


class WAL:
    """The journal (``mvcc.Journal``) over the data dir.

    ``open()`` recovers the store and lessor from disk, ``start()`` runs the writer task,
    ``close()``/``wait_closed()`` flush what is queued and stop it.
    """

    def __init__(self, data_dir: str | os.PathLike[str], store: MVCCStore, lessor: Lessor,
                 options: WALOptions | None = None) -> None:
        self.member_dir = Path(data_dir) / MEMBER_DIR
        self._store = store
        self._lessor = lessor
        self._opts = options or WALOptions()
        self.on_durable: Callable[[int], None] | None = None  # set by the store: the last durable index
        self.stats = WALStats()
        self._queue: list[tuple[int, bytes]] = []
        self._index = 0  # last appended
        self._durable_index = 0
        self._segment: Segment | None = None
        self._snapshot_size = 0
        self._since_snapshot = 0
        self._compacted = False
        self._requests: list[asyncio.Future[bytes]] = []  # Defragment/Snapshot callers
        self._inflight: list[asyncio.Future[bytes]] = []  # those the snapshot being written answers
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: errors.EtcdError | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._sync_fast = True  # the last write+sync done on the loop's thread was quick
        self._lock_fd = -1

    # -- start-up ---------------------------------------------------------------------------
    def open(self) -> Recovery:
        check_data_dir(self.member_dir)
        self.member_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_data_dir(self.member_dir)
        # recovery only builds acyclic data (versions, lists, bytes): the cycle collector would scan
        # the growing heap again and again for nothing (half the start-up time with 1M keys)
        collecting = gc.isenabled()
        gc.disable()
        try:
            rec = recover(self.member_dir, self._store, self._lessor, self._opts.fsync)
        except BaseException:
            self._unlock()
            raise
        finally:
            if collecting:
                gc.enable()
        gc.freeze()  # and later full collections skip what recovery built
        self._segment = rec.segment
        self._snapshot_size = rec.snapshot_size
        self._index = self._durable_index = rec.index
        self._since_snapshot = rec.replayed
        return rec

    def start(self) -> None:
        if self._task is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="etcdlite-wal")
            self._task = asyncio.get_running_loop().create_task(self._run(), name="wal-writer")

    # -- the journal protocol ------------------------------------------------------------------
    def append(self, entry: Entry) -> int:
        self.check_writable()
        self._index += 1
        self._queue.append((self._index, encode_record(self._index, entry)))
        if entry.compact_revision:
            self._compacted = True
        self._wakeup.set()
        return self._index

    def check_writable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise errors.STOPPED

    async def snapshot(self) -> bytes:
        """Write a snapshot of everything appended so far and start a new segment; returns the file."""
        self.check_writable()
        if self._task is None:
            raise errors.STOPPED
        request: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._requests.append(request)
        self._wakeup.set()
        return await request

    # -- figures --------------------------------------------------------------------------------
    @property
    def index(self) -> int:
        return self._index

    @property
    def durable_index(self) -> int:
        return self._durable_index

    @property
    def failure(self) -> errors.EtcdError | None:
        return self._failure

    def disk_size(self) -> int:
        """Bytes the data dir's snapshot and log take (etcd's dbSize)."""
        return self._snapshot_size + (self._segment.size if self._segment is not None else 0)

    # -- the writer -------------------------------------------------------------------------------
    def _snapshot_due(self) -> bool:
        if self._compacted or self._since_snapshot >= self._opts.snapshot_count:
            return True
        log_bytes = self._segment.size if self._segment is not None else 0
        return log_bytes >= max(self._opts.min_snapshot_log_bytes, self._snapshot_size)

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue and not self._requests:
                    if self._closing:
                        return
                    await self._wakeup.wait()
                    self._wakeup.clear()
                elif self._requests or self._snapshot_due():
                    await self._write_snapshot()
                else:
                    await self._write_batch()
        except Exception as exc:  # noqa: BLE001 - any failure latches; the server stays up for reads
            self._fail(exc)

    async def _write_batch(self) -> None:
        limit = self._opts.batch_limit or len(self._queue)
        batch = self._queue[:limit]
        del self._queue[:limit]
        data = b"".join(record for _, record in batch)
        segment = self._segment
        assert segment is not None
        if not self._opts.fsync:  # into the page cache only: cheaper than a thread hop
            segment.append(data, False, self._opts.faults)
        elif self._sync_fast:
            # on the loop's thread while the disk syncs fast: requests that arrive meanwhile queue in
            # gRPC core and join the next batch, and no thread hop is paid.  With the gRPC engine this
            # gave 1.3x the puts/s of a sync in the executor at 16 clients (bench/engine.md).
            started = time.monotonic()
            segment.append(data, True, self._opts.faults)
            self._sync_fast = time.monotonic() - started < INLINE_SYNC_MAX_SECONDS
        else:  # the event loop keeps serving while the disk syncs
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(
                self._executor, segment.append, data, True, self._opts.faults)
            self._sync_fast = time.monotonic() - started < INLINE_SYNC_MAX_SECONDS
        self._since_snapshot += len(batch)
        self.stats.writes += 1
        self.stats.entries += len(batch)
        self._made_durable(batch[-1][0])

    async def _write_snapshot(self) -> None:
        index = self._index
        state = capture(index, self._store, self._lessor)  # exactly the effect of entries 1..index
        covered = len(self._queue)
        self._queue.clear()  # the snapshot holds these entries' effects; they need no log record
        self._inflight, self._requests = self._requests, []
        self._compacted = False
        data, segment = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._install_snapshot, state)
        old = self._segment
        self._segment = segment
        if old is not None:
            old.close()
        self._snapshot_size = len(data)
        self._since_snapshot = 0
        self.stats.snapshots += 1
        self.stats.entries += covered
        log.info("saved snapshot", extra={"fields": {"index": index, "revision": state.revision,
                                                     "size-bytes": len(data)}})
        self._made_durable(index)
        for request in self._inflight:
            if not request.done():
                request.set_result(data)
        self._inflight = []

    def _install_snapshot(self, state: SnapshotState) -> tuple[bytes, Segment]:
        """In the executor: snapshot file, new segment, then the old files go."""
        data = encode_snapshot(state)
        snap_dir, wal_dir = self.member_dir / SNAP_DIR, self.member_dir / WAL_DIR
        path = write_snapshot_file(snap_dir, state.index, data, self._opts.fsync, self._opts.faults)
        segment = Segment.create(wal_dir, state.index + 1, self._opts.fsync, self._opts.faults)
        for _, old in _listing(wal_dir, WAL_SUFFIX):
            if old != segment.path:
                old.unlink()
        for _, old in _listing(snap_dir, SNAP_SUFFIX):
            if old != path:
                old.unlink()
        return data, segment

    def _made_durable(self, index: int) -> None:
        self._durable_index = index
        if self.on_durable is not None:
            self.on_durable(index)

    def _fail(self, exc: Exception) -> None:
        oserror = exc if isinstance(exc, OSError) else OSError(errno.EIO, f"{type(exc).__name__}: {exc}")
        self._failure = storage_failure(oserror)
        log.error("writing the wal failed: refusing writes until restart; reads serve the durable state",
                  exc_info=not isinstance(exc, OSError),
                  extra={"fields": {"error": str(exc), "durable-index": self._durable_index,
                                    "lost-index": self._index}})
        self._queue.clear()
        for request in (*self._inflight, *self._requests):
            if not request.done():
                request.set_exception(self._failure)
        self._inflight, self._requests = [], []
        self._store.fail_waiters(self._failure)

    # -- shutdown ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop taking entries; the writer flushes what is queued, then ends."""
        self._closing = True
        self._wakeup.set()

    async def wait_closed(self) -> None:
        if self._task is not None:
            await self._task
            self._task = None
        for request in self._requests:
            if not request.done():
                request.set_exception(errors.STOPPED)
        self._requests = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._segment is not None:
            self._segment.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
