"""The log's records: how an ``Entry`` is framed in a segment, and the scan that reads them back.

All integers are little-endian.  *Segment*: a 20-byte header (magic ``ELWAL\\0\\0\\2``, u64 first
index, u32 crc32 of the two), then records.  *Record*: ``u32 body length | u32 crc32(body) | body``,
body = ``u64 index | u8 kind | payload``.  Kind 1 is an ``Entry``: ``q revision, q compact_revision,
I #changes, I #grants, I #revokes``; each change ``I key length, I value length, q create_revision,
q mod_revision, q version, q lease, I sub`` + key + value; each grant ``q lease id, q TTL``; each
revoke ``q lease id``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..backend import Entry, KeyValue

_ENTRY = struct.Struct("<qqIII")
KV = struct.Struct("<IIqqqqI")  # key len, value len, create, mod, version, lease, sub
LEASE = struct.Struct("<qq")
_ID = struct.Struct("<q")
_REC = struct.Struct("<II")
_REC_BODY = struct.Struct("<QB")
_SEG_MAGIC = b"ELWAL\x00\x00\x02"
SEG_HEAD = struct.Struct("<8sQI")
KIND_ENTRY = 1


# -- encoding ------------------------------------------------------------------------------------
def _pack_kv(parts: list[bytes], kv: KeyValue) -> None:
    parts.append(KV.pack(len(kv.key), len(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease,
                          kv.sub))
    parts.append(kv.key)
    parts.append(kv.value)


def unpack_kvs(buf: bytes, off: int, n: int) -> tuple[list[KeyValue], int]:
    out: list[KeyValue] = []
    unpack = KV.unpack_from
    size = KV.size
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
    parts.extend(LEASE.pack(lease_id, ttl) for lease_id, ttl in entry.lease_grants)
    parts.extend(_ID.pack(lease_id) for lease_id in entry.lease_revokes)
    return b"".join(parts)


def decode_entry(buf: bytes) -> Entry:
    try:
        revision, compact, n_changes, n_grants, n_revokes = _ENTRY.unpack_from(buf, 0)
        changes, off = unpack_kvs(buf, _ENTRY.size, n_changes)
        grants = [LEASE.unpack_from(buf, off + i * LEASE.size) for i in range(n_grants)]
        off += n_grants * LEASE.size
        revokes = [_ID.unpack_from(buf, off + i * _ID.size)[0] for i in range(n_revokes)]
        off += n_revokes * _ID.size
    except struct.error as exc:
        raise ValueError(f"truncated entry: {exc}") from None
    if off != len(buf):
        raise ValueError(f"entry has {len(buf) - off} stray bytes")
    return Entry(revision=revision, changes=changes, lease_grants=[(i, t) for i, t in grants],
                 lease_revokes=revokes, compact_revision=compact)


# a record whose entry has one change and no lease grants/revokes (every Put): its body's head in one pack
_ONE_CHANGE_HEAD = struct.Struct("<QB" + _ENTRY.format[1:] + KV.format[1:])


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


def segment_header(first_index: int) -> bytes:
    crc = zlib.crc32(_SEG_MAGIC + first_index.to_bytes(8, "little"))
    return SEG_HEAD.pack(_SEG_MAGIC, first_index, crc)


def parse_segment_header(data: bytes) -> int | None:
    """The first index a segment header names, or None if it is missing or damaged."""
    if len(data) < SEG_HEAD.size:
        return None
    magic, first, crc = SEG_HEAD.unpack_from(data, 0)
    if magic != _SEG_MAGIC or crc != zlib.crc32(_SEG_MAGIC + first.to_bytes(8, "little")):
        return None
    return int(first)


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
        bool(_REC_BODY.unpack_from(data, off + _REC.size)[0] == index)


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

