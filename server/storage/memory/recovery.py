"""Start-up: the newest snapshot, then the log after it; a torn tail is cut, other damage refuses."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import make_private_dir
from .files import SNAP_DIR, SNAP_SUFFIX, WAL_DIR, WAL_SUFFIX, Segment, listing, refuse
from .mvcc import MVCCStore
from .records import SEG_HEAD, decode_entry, parse_segment_header, scan_segment, segment_header
from .snapshot import decode_snapshot, restore_state

log = logging.getLogger("etcdlite.wal")


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


def _load_snapshot(snap_dir: Path, store: MVCCStore) -> tuple[int, Path | None, int]:
    for tmp in snap_dir.glob(f"*{SNAP_SUFFIX}.tmp"):
        tmp.unlink()  # a snapshot that never made it to its rename
    snaps = listing(snap_dir, SNAP_SUFFIX)
    if not snaps:
        return 0, None, 0
    index, path = snaps[-1]
    data = path.read_bytes()
    try:
        state = decode_snapshot(data)
    except ValueError as exc:
        raise refuse(f"snapshot {path} is corrupt ({exc})") from None
    if state.index != index:
        raise refuse(f"snapshot {path} holds index {state.index}, its name says {index}")
    restore_state(state, store)
    return index, path, len(data)


def _replay_segment(path: Path, first: int, expected: int, last: bool, store: MVCCStore,
                    sync: bool) -> tuple[int, int, int]:
    """Apply one segment's entries; returns (next expected index, valid size, dropped bytes)."""
    data = path.read_bytes()
    named = parse_segment_header(data)
    if named is None:
        if last and len(data) <= SEG_HEAD.size:
            log.warning("rewriting the torn header of the newest wal segment",
                        extra={"fields": {"path": str(path), "size": len(data)}})
            with open(path, "r+b") as f:
                f.truncate(0)
                f.write(segment_header(first))
                if sync:
                    os.fsync(f.fileno())
            return expected, SEG_HEAD.size, len(data)
        raise refuse(f"wal segment {path} has a damaged header")
    if named != first:
        raise refuse(f"wal segment {path} starts at index {named}, its name says {first}")
    scan = scan_segment(data, SEG_HEAD.size, first)
    for index, payload in scan.records:
        if index != expected:
            raise refuse(f"wal segment {path} holds index {index} where {expected} was expected")
        try:
            entry = decode_entry(payload)
        except ValueError as exc:
            raise refuse(f"wal segment {path}: entry {index} cannot be decoded ({exc})") from None
        store.replay(entry)
        expected += 1
    dropped = 0
    if scan.problem:
        if not (last and scan.torn_tail):
            raise refuse(f"wal segment {path} is corrupt at offset {scan.valid_size} ({scan.problem}), "
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


def recover(member_dir: Path, store: MVCCStore, sync: bool = True) -> Recovery:
    """Load the newest snapshot, replay the log after it, rebuild lease attachments, tidy old files."""
    snap_dir, wal_dir = member_dir / SNAP_DIR, member_dir / WAL_DIR
    make_private_dir(snap_dir)
    make_private_dir(wal_dir)
    store.begin_bulk_load()  # new keys join the sorted key index in one go, at the end
    index, snap_path, snap_size = _load_snapshot(snap_dir, store)
    segments = listing(wal_dir, WAL_SUFFIX)
    live = [(first, path) for first, path in segments if first > index]
    stale = [path for first, path in segments if first <= index]
    expected = index + 1
    if live and live[0][0] != expected:
        raise refuse(f"the wal lacks entries {expected}..{live[0][0] - 1} after snapshot index {index}")
    replayed = dropped = 0
    segment: Segment | None = None
    for i, (first, path) in enumerate(live):
        if first != expected:
            raise refuse(f"wal segment {path} starts at {first} where {expected} was expected")
        last = i == len(live) - 1
        before = expected
        expected, size, cut = _replay_segment(path, first, expected, last, store, sync)
        replayed += expected - before
        dropped += cut
        if last:
            segment = Segment.reopen(path, first, size)
    if segment is None:
        segment = Segment.create(wal_dir, expected, sync)
    for path in stale:
        path.unlink()
    for _, path in listing(snap_dir, SNAP_SUFFIX):
        if path != snap_path:
            path.unlink()
    store.end_bulk_load()
    return Recovery(expected - 1, store.current_revision, snap_path, snap_size, segment, replayed, dropped)


