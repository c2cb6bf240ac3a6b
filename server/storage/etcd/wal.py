"""etcd's write-ahead log (``member/wal/<seq>-<index>.wal``), read to import a stopped etcd.

A WAL file is a sequence of frames: ``int64 length`` (little-endian; the low 56 bits count the record's
bytes, a set top bit puts the padding to 8 bytes in the top byte's low 3 bits), then a marshalled
``walpb.Record{type, crc, data}`` and the padding.  Record types: 1 metadata, 2 a ``raftpb.Entry``,
3 a ``raftpb.HardState``, 4 the CRC carried over from the previous file, 5 a ``walpb.Snapshot``.
``crc`` is a running CRC-32C over every record's data since the first file.  Files are preallocated
(64 MiB of zeros): a zero length ends a file.  The last record of the last file may be torn (a crash
during a write); etcd drops it, and so does this reader.  Damage anywhere else is refused.

Only entries after the database's consistent index matter (the database already holds the rest);
later entries at an index replace earlier ones, as raft's log does.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from crc32c import crc32c

from .etcddb import SnapshotError
from .protowire import WireError, as_int64, int_fields, iter_fields

METADATA, ENTRY, STATE, CRC, SNAPSHOT = 1, 2, 3, 4, 5
ENTRY_NORMAL, ENTRY_CONF_CHANGE, ENTRY_CONF_CHANGE_V2 = 0, 1, 2
MAX_RECORD = 10 * 1024 * 1024  # etcd's maxWALEntrySizeLimit
SECTOR = 512
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_LEN = struct.Struct("<q")


@dataclass(slots=True)
class RaftEntry:
    index: int
    term: int
    type: int
    data: bytes


@dataclass(slots=True)
class WalTail:
    """What the WAL holds after the database's consistent index."""

    entries: list[RaftEntry] = field(default_factory=list)  # consecutive, each after the index
    commit: int = 0  # the last HardState's commit index
    last_index: int = 0  # the newest entry in the WAL at all
    torn_bytes: int = 0  # a torn record dropped at the end (-1: its size is not known)


def wal_files(wal_dir: Path) -> list[Path]:
    """The WAL's files in order; their sequence numbers must be consecutive."""
    named = []
    for path in wal_dir.iterdir():
        m = _NAME.match(path.name)
        if m:
            named.append((int(m.group(1), 16), path))
    named.sort()
    for (seq, path), (next_seq, _) in zip(named, named[1:]):
        if next_seq != seq + 1:
            raise SnapshotError(f"etcd's WAL misses a file after {path.name}")
    return [path for _, path in named]


def read_tail(wal_dir: Path, after: int) -> WalTail:
    """The entries after index ``after`` (bounded by how much of the WAL is past it)."""
    tail = WalTail()
    files = wal_files(wal_dir) if wal_dir.is_dir() else []
    crc = 0
    for i, path in enumerate(files):
        last_file = i == len(files) - 1
        for kind, rec_crc, data, body in _records(path, last_file, tail):
            if kind == CRC:
                if crc and rec_crc != crc:
                    raise SnapshotError(f"etcd's WAL file {path.name} does not continue the previous one's CRC")
                crc = rec_crc
                continue
            crc = crc32c(data, crc)
            if rec_crc != crc:
                if last_file and _has_zero_sector(body):  # a torn write: the log ends here
                    tail.torn_bytes = -1
                    break
                raise SnapshotError(f"etcd's WAL file {path.name} has a record whose CRC does not match")
            if kind == ENTRY:
                _add_entry(tail, _entry(data, path), after)
            elif kind == STATE:
                tail.commit = int_fields(data, {3: "commit"})["commit"]
            elif kind not in (METADATA, SNAPSHOT):
                raise SnapshotError(f"etcd's WAL file {path.name} has a record of unknown type {kind}")
    _check_consecutive(tail, after)
    return tail


def _add_entry(tail: WalTail, entry: RaftEntry, after: int) -> None:
    tail.last_index = entry.index
    kept = tail.entries
    while kept and kept[-1].index >= entry.index:  # raft rewrote its log from here
        kept.pop()
    if entry.index > after:
        kept.append(entry)


def _check_consecutive(tail: WalTail, after: int) -> None:
    if tail.entries and tail.entries[0].index != after + 1:
        raise SnapshotError(f"etcd's WAL starts at entry {tail.entries[0].index}, after the database's consistent "
                            f"index {after}: entries {after + 1}..{tail.entries[0].index - 1} are missing")
    for a, b in zip(tail.entries, tail.entries[1:]):
        if b.index != a.index + 1:
            raise SnapshotError(f"etcd's WAL skips from entry {a.index} to {b.index}")


def _entry(data: bytes, path: Path) -> RaftEntry:
    try:
        fields = {num: value for num, _, value in iter_fields(data)}
    except WireError as exc:
        raise SnapshotError(f"etcd's WAL file {path.name} holds an entry that is not a raftpb.Entry ({exc})") from None
    payload = fields.get(4, b"")
    return RaftEntry(as_int64(_int(fields.get(3, 0))), as_int64(_int(fields.get(2, 0))), _int(fields.get(1, 0)),
                     payload if isinstance(payload, bytes) else b"")


def _int(value: int | bytes) -> int:
    return value if isinstance(value, int) else 0


def _records(path: Path, last_file: bool, tail: WalTail) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(type, crc, data, raw frame body) of each record in one file, up to its zero-filled end."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            head = f.read(8)
            if len(head) < 8 or head == bytes(8):
                return
            (length,) = _LEN.unpack(head)
            size = length & ((1 << 56) - 1)
            pad = (length >> 56) & 7 if length < 0 else 0
            if size >= MAX_RECORD - pad:
                yield from _torn_or_refuse(path, last_file, offset, b"", tail, f"a record of {size} bytes")
                return
            body = f.read(size + pad)
            try:
                if len(body) < size + pad:
                    raise WireError("the file ends inside a record")
                rec = {num: value for num, _, value in iter_fields(body[:size])}
            except WireError as exc:
                yield from _torn_or_refuse(path, last_file, offset + 8, body, tail, str(exc))
                return
            data = rec.get(3, b"")
            yield _int(rec.get(1, 0)), _int(rec.get(2, 0)), data if isinstance(data, bytes) else b"", body
            offset += 8 + size + pad


def _has_zero_sector(body: bytes) -> bool:
    return any(not any(body[i:i + SECTOR]) for i in range(0, len(body), SECTOR))


def _torn_or_refuse(path: Path, last_file: bool, offset: int, body: bytes, tail: WalTail,
                    problem: str) -> Iterator[tuple[int, int, bytes, bytes]]:
    """A damaged record ends the log if it is the last file's torn write (a sector of zeros or a
    short file, as etcd's isTornEntry decides); anywhere else the WAL is corrupt."""
    torn = last_file and (not body or _has_zero_sector(body) or problem == "the file ends inside a record")
    if not torn:
        raise SnapshotError(f"etcd's WAL file {path.name} is damaged at offset {offset} ({problem})")
    tail.torn_bytes = path.stat().st_size - offset
    return iter(())
